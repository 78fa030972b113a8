"""The scheduled Lambda: a ScheduleV2 invocation (the schedule's Input as the event) against real Postgres and
the fake upstream."""

from __future__ import annotations

import calendar
import importlib.util
import json
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata import backfill
from marketdata.config import get_settings
from marketdata.errors import InvalidRequest
from marketdata.intervals import Interval, first_open_at_or_after
from marketdata.store import CandleStore
from scripts.lambda_context import FakeLambdaContext
from tests.support.upstream_fixtures import TEST_TWELVE_DATA_API_KEY

ROOT = Path(__file__).resolve().parents[2]
EVENTS = ROOT / "events"


def context(remaining_ms: int) -> FakeLambdaContext:
    """A context with a fixed remaining time (its clock stands still) and a known request id."""
    return FakeLambdaContext(
        "marketdata-backfill", timeout_ms=remaining_ms, aws_request_id=REQUEST_ID, clock=lambda: 0.0
    )


REQUEST_ID = "6f0d4c52-3b1e-4f55-9a6c-0b0a3c2f1d77"


def _load_handler() -> ModuleType:
    # Each function directory has its own app.py (as on Lambda): load this one under a distinct name.
    spec = importlib.util.spec_from_file_location(
        "backfill_function_app", ROOT / "functions" / "backfill" / "app.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def handler_env(
    monkeypatch: pytest.MonkeyPatch, fake_upstream: FakeUpstream, database_url: str
) -> Iterator[FakeUpstream]:
    """The environment a deployed function has, pointed at the test database and the fake upstream."""
    for name, value in {
        "DATABASE_URL": database_url,
        "BINANCE_REST_URL": fake_upstream.url,
        "TWELVE_DATA_REST_URL": fake_upstream.url,
        "TWELVE_DATA_API_KEY": TEST_TWELVE_DATA_API_KEY,
        "BACKFILL_SAFETY_MARGIN_SECONDS": "20",
        "BACKFILL_DEFAULT_LOOKBACK_DAYS": "10",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    backfill.get_backfill_service.cache_clear()
    yield fake_upstream
    service = backfill.get_backfill_service() if backfill.get_backfill_service.cache_info().currsize else None
    if service is not None and service.store is not None:
        service.store.close()
    backfill.get_backfill_service.cache_clear()
    get_settings.cache_clear()


def _unix(iso: str) -> int:
    return calendar.timegm(time.strptime(iso, "%Y-%m-%dT%H:%M:%SZ"))


def _emf_metrics(output: str) -> dict[str, float]:
    """Metric values from the EMF JSON lines Powertools printed."""
    values: dict[str, float] = {}
    for line in output.splitlines():
        if '"_aws"' not in line:
            continue
        blob = json.loads(line)
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert directive["Namespace"] == "MarketData"
            for metric in directive["Metrics"]:
                value = blob[metric["Name"]]
                values[metric["Name"]] = sum(value) if isinstance(value, list) else value
    return values


def test_schedule_invocation_returns_and_logs_the_summary(
    handler_env: FakeUpstream, database_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _load_handler()
    since = int(time.time()) - 3 * 86400
    event = {
        "jobs": [
            {"symbol": "BTCUSDT", "interval": "1H", "since": since},
            {"symbol": "EUR/USD", "interval": "4H"},
            {"symbol": "NOPEUSDT", "interval": "1D", "since": "2024-01-01"},
            {"symbol": "ETHUSDT", "interval": "1h"},
        ]
    }

    summary = app.lambda_handler(event, context(remaining_ms=120_000))

    statuses = [(j["symbol"], j["status"]) for j in summary["jobs"]]
    assert statuses == [
        ("BTCUSDT", "complete"),
        ("EUR/USD", "complete"),
        ("NOPEUSDT", "failed"),
        ("ETHUSDT", "invalid"),
    ]
    assert summary["totals"]["pages"] == 2
    assert handler_env.count() == 3  # one page each, and the request that found NOPEUSDT unknown
    btc, eur = summary["jobs"][0], summary["jobs"][1]
    # The default lookback of the settings (10 days) applies to the job without since.
    assert abs(_unix(eur["since"]) - (time.time() - 10 * 86400)) < 120
    # What the summary says is what the database holds.
    store = CandleStore.from_settings(get_settings())
    assert store is not None
    try:
        first = first_open_at_or_after(Interval.H1, since)
        covered_until = _unix(btc["covered_until"])
        rows = store.read_candles("BTCUSDT", Interval.H1, first, covered_until)
        assert rows == handler_env.expected_candles("BTCUSDT", "1H", first, covered_until)
        assert btc["rows_written"] == len(rows) > 0
    finally:
        store.close()
    out = capsys.readouterr().out
    metrics = _emf_metrics(out)
    assert metrics["BackfillPages"] == 2
    assert metrics["BackfillRowsWritten"] == summary["totals"]["rows_written"]
    assert metrics["BackfillJobsFailed"] == 2
    assert metrics["BackfillJobsDeferred"] == 0
    logs = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"_aws"' not in line]
    finished = [entry for entry in logs if entry.get("message") == "backfill run finished"]
    assert len(finished) == 1 and finished[0]["totals"] == summary["totals"]
    assert finished[0]["function_request_id"] == REQUEST_ID
    per_job = [entry["backfill_job"] for entry in logs if "backfill_job" in entry]
    assert [j["status"] for j in per_job] == ["complete", "complete", "failed", "invalid"]


def test_the_committed_schedule_event_runs(handler_env: FakeUpstream) -> None:
    app = _load_handler()
    event = json.loads((EVENTS / "backfill_schedule.json").read_text())
    summary = app.lambda_handler(event, context(remaining_ms=120_000))
    assert [j["status"] for j in summary["jobs"]] == ["complete"] * len(event["jobs"])


def test_too_little_remaining_time_defers_every_job(handler_env: FakeUpstream) -> None:
    app = _load_handler()
    event = {"jobs": [{"symbol": "BTCUSDT", "interval": "1H"}, {"symbol": "EUR/USD", "interval": "1H"}]}
    # 15 s left, 20 s safety margin: no page may start.
    summary = app.lambda_handler(event, context(remaining_ms=15_000))
    assert [j["status"] for j in summary["jobs"]] == ["deferred", "deferred"]
    assert handler_env.count() == 0


@pytest.mark.parametrize("event", [{}, {"jobs": "BTCUSDT"}, [{"symbol": "BTCUSDT", "interval": "1H"}]])
def test_an_event_that_is_not_a_jobs_document_fails_the_invocation(
    handler_env: FakeUpstream, event: object, capsys: pytest.CaptureFixture[str]
) -> None:
    app = _load_handler()
    with pytest.raises(InvalidRequest, match="jobs"):
        app.lambda_handler(event, context(remaining_ms=60_000))
    assert handler_env.count() == 0
    assert _emf_metrics(capsys.readouterr().out)["BackfillInputRejected"] == 1
