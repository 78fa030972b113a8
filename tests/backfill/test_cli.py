"""`python -m marketdata.backfill`: a real subprocess against the test database and the fake upstream; and the
progress display itself."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.backfill import (
    BackfillSummary,
    JobProgress,
    JobResult,
    JobStatus,
    PlannedJob,
    TerminalProgress,
    format_summary,
    main,
)
from marketdata.intervals import Interval, first_open_at_or_after, last_closed_open
from marketdata.store import CandleStore
from tests.support.upstream_fixtures import upstream_env

ROOT = Path(__file__).resolve().parents[2]


def _env(fake: FakeUpstream, database_url: str | None) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DB_", "DATABASE_", "TWELVE_", "BINANCE_"))
    }
    env.update(upstream_env(fake), UPSTREAM_RETRY_BUDGET_SECONDS="1", PYTHONUNBUFFERED="1")
    if database_url is not None:
        env["DATABASE_URL"] = database_url
    return env


def backfill_cli(
    fake: FakeUpstream, database_url: str | None, *args: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "marketdata.backfill", *args],
        cwd=ROOT,
        env=_env(fake, database_url),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_fills_shows_progress_and_exits_1_on_a_failed_job(
    fake_upstream: FakeUpstream, database_url: str, store: CandleStore
) -> None:
    since = int(time.time()) - 50 * 86400  # 1200 hourly bars: two Binance pages
    proc = backfill_cli(
        fake_upstream, database_url, f"BTCUSDT:1H:{since}", "NOPEUSDT:1D:2024-01-01", "ETHUSDT:1h"
    )

    assert proc.returncode == 1, proc.stderr
    # Progress on stderr, one plain line per update (not a terminal here).
    assert "[1/3] BTCUSDT 1H since" in proc.stderr
    assert (
        "1 pages" in proc.stderr
        and "2 pages" in proc.stderr
        and "rows/s" in proc.stderr
        and "ETA" in proc.stderr
    )
    assert "\r" not in proc.stderr
    assert "unknown symbol 'NOPEUSDT'" in proc.stderr
    # The summary table on stdout.
    lines = proc.stdout.splitlines()
    assert lines[0].split() == ["SYMBOL", "INTERVAL", "STATUS", "PAGES", "ROWS", "COVERED", "UNTIL", "NOTE"]
    assert lines[1].split()[:4] == ["BTCUSDT", "1H", "complete", "2"]
    assert lines[2].split()[:3] == ["NOPEUSDT", "1D", "failed"]
    assert lines[3].split()[:3] == ["ETHUSDT", "1h", "invalid"] and "did you mean '1H'" in lines[3]
    assert lines[4].startswith("total: 3 job(s) (1 complete, 1 failed, 1 invalid), 2 page(s)")
    # And the database holds what the fake says is true.
    first = first_open_at_or_after(Interval.H1, since)
    rows = store.read_candles("BTCUSDT", Interval.H1, first, last_closed_open(Interval.H1, time.time()))
    assert rows and rows == fake_upstream.expected_candles("BTCUSDT", "1H", first, rows[-1].time)
    assert lines[1].split()[4] == f"{len(rows):,}"

    # Run again: nothing left to fetch, exit 0 (unless an hour closed in between: then exactly that bar).
    calls = fake_upstream.count()
    again = backfill_cli(fake_upstream, database_url, f"BTCUSDT:1H:{since}")
    assert again.returncode == 0, again.stderr
    new_hours = int(last_closed_open(Interval.H1, time.time()) > rows[-1].time)
    assert fake_upstream.count() - calls == new_hours
    assert again.stdout.splitlines()[1].split()[:4] == ["BTCUSDT", "1H", "complete", str(new_hours)]


def test_cli_jobs_file_and_json_summary(
    fake_upstream: FakeUpstream, database_url: str, tmp_path: Path
) -> None:
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(
        json.dumps({"jobs": [{"symbol": "EUR/USD", "interval": "1D", "since": "2024-01-01"}]})
    )
    proc = backfill_cli(
        fake_upstream,
        database_url,
        "--jobs-file",
        str(jobs_file),
        "--json",
        "ETHUSDT:1W:2024-01-01T00:00:00Z",
    )

    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert [(j["symbol"], j["interval"], j["status"]) for j in summary["jobs"]] == [
        ("EUR/USD", "1D", "complete"),
        ("ETHUSDT", "1W", "complete"),
    ]
    assert summary["jobs"][0]["since"] == "2024-01-01T00:00:00Z"
    pages = fake_upstream.count("/api/v3/klines") + fake_upstream.count("/time_series")
    assert summary["totals"]["failed"] == 0 and summary["totals"]["pages"] == pages == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "give at least one job"),
        (("BTCUSDT:1H", "--max-seconds", "0"), "--max-seconds must be a positive number"),
        (("--jobs-file", "/nonexistent/jobs.json"), "cannot read /nonexistent/jobs.json"),
    ],
)
def test_cli_usage_errors_exit_2(
    fake_upstream: FakeUpstream, database_url: str, args: tuple[str, ...], message: str
) -> None:
    proc = backfill_cli(fake_upstream, database_url, *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert fake_upstream.count() == 0


def test_cli_without_a_database_says_what_to_set(fake_upstream: FakeUpstream) -> None:
    proc = backfill_cli(fake_upstream, None, "BTCUSDT:1H")
    assert proc.returncode == 2
    assert "set DATABASE_URL" in proc.stderr
    assert fake_upstream.count() == 0


# --- the progress display ------------------------------------------------------------------------------


def _progress(pages: int, covered: int) -> JobProgress:
    job = PlannedJob("BTCUSDT", Interval.M1, 1_700_000_000)
    live = JobProgress(1, 2, job, bars_needed=4000, started=100.0, now=110.0, covered_before=1000)
    live.pages, live.covered_now, live.bars_fetched = pages, covered, covered
    return live


def test_terminal_progress_draws_a_rich_bar_on_a_tty() -> None:
    out = io.StringIO()
    display = TerminalProgress(out, tty=True)
    assert display.rich  # rich is a dev dependency: installed here
    display.job_started(_progress(0, 0))
    display.page_stored(_progress(1, 1000))
    display.page_stored(_progress(2, 2000))
    display.job_finished(
        _progress(2, 2000), JobResult("BTCUSDT", "1m", JobStatus.PARTIAL, pages=2, error="stopped")
    )
    display.close()
    text = out.getvalue()
    assert "\x1b[" in text  # drawn in place with terminal controls
    # 3000 of 4000 covered, 2000 in 10 s: 200 rows/s, 1000 bars left at 200 bars/s = 5 s.
    assert "[1/2] BTCUSDT 1m" in text
    assert "75.0% 3,000/4,000 bars  2 pages  200 rows/s  ETA 00:05" in text
    assert "BTCUSDT 1m: partial: stopped\n" in text


def test_without_rich_the_progress_is_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)  # import rich... raises ImportError
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setitem(sys.modules, "rich.progress", None)
    out = io.StringIO()
    display = TerminalProgress(out, tty=True)
    assert not display.rich
    display.page_stored(_progress(1, 1000))
    assert out.getvalue().endswith("50.0% 2,000/4,000 bars  1 pages  100 rows/s  ETA 00:20\n")


def test_plain_progress_writes_whole_lines() -> None:
    out = io.StringIO()
    display = TerminalProgress(out, tty=False)
    display.page_stored(_progress(1, 1000))
    display.waiting(_progress(1, 1000), 42.0, "rate limited")
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in out.getvalue()
    assert "50.0% 2,000/4,000 bars  1 pages" in lines[0]
    assert lines[1].endswith("(waiting 42 s: rate limit)")


def test_the_eta_includes_the_rate_limit_pauses_ahead_and_the_wait_in_progress() -> None:
    live = _progress(1, 1000)  # 2000 bars left at 100 bars/s: 20 s at the fetching pace
    assert live.eta_seconds == pytest.approx(20.0)
    # A budget of 1 page (1000 bars) per minute: the 2 pages left take 2 minutes, whatever the pace.
    live.bars_per_page, live.pages_per_minute = 1000, 1.0
    assert live.eta_seconds == pytest.approx(120.0)
    # 5 s of the 10 s elapsed were a rate-limit wait: the fetching pace is 200 bars/s, not 100.
    live.pages_per_minute, live.waited = None, 5.0
    assert live.eta_seconds == pytest.approx(10.0)
    # Waiting now, 20 s to go: they come on top.
    live.waiting_until = live.now + 20
    assert live.eta_seconds == pytest.approx(30.0)


def test_summary_table_lists_every_job_and_the_totals() -> None:
    summary = BackfillSummary(
        [
            JobResult(
                "BTCUSDT", "1m", JobStatus.COMPLETE, since=0, pages=3, rows_written=2500, covered_until=86400
            ),
            JobResult("EUR/USD", "1H", JobStatus.DEFERRED, error="not started"),
        ],
        elapsed_seconds=2.0,
    )
    text = format_summary(summary)
    lines = text.splitlines()
    assert lines[0].split() == ["SYMBOL", "INTERVAL", "STATUS", "PAGES", "ROWS", "COVERED", "UNTIL", "NOTE"]
    assert lines[1].split() == ["BTCUSDT", "1m", "complete", "3", "2,500", "1970-01-02T00:00:00Z"]
    assert lines[2].split() == ["EUR/USD", "1H", "deferred", "0", "0", "-", "not", "started"]
    assert (
        lines[3] == "total: 2 job(s) (1 complete, 1 deferred), 3 page(s), 2,500 rows in 2.0 s (1,250 rows/s)"
    )
    assert summary.ok


def test_without_rich_the_summary_is_one_line_per_job(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "rich", None)
    monkeypatch.setitem(sys.modules, "rich.console", None)
    monkeypatch.setitem(sys.modules, "rich.table", None)
    summary = BackfillSummary(
        [JobResult("EUR/USD", "1H", JobStatus.DEFERRED, error="not started")], elapsed_seconds=1.0
    )
    assert format_summary(summary).splitlines() == [
        "EUR/USD 1H: deferred, 0 page(s), 0 rows, covered until -: not started",
        "total: 1 job(s) (1 deferred), 0 page(s), 0 rows in 1.0 s (0 rows/s)",
    ]


def test_cli_max_seconds_defers_what_does_not_fit(
    fake_upstream: FakeUpstream,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # In-process with a clock that jumps 10 s after its first reading: a 5 s budget is spent before the
    # first job starts, so both jobs are deferred, nothing is fetched, and that is not a failure (exit 0).
    for name, value in _env(fake_upstream, database_url).items():
        monkeypatch.setenv(name, value)
    readings = iter([1_700_000_000.0])

    def clock() -> float:
        return next(readings, 1_700_000_010.0)

    backfill_logger = logging.getLogger("marketdata.backfill")
    level = backfill_logger.level
    try:
        code = main(["BTCUSDT:1H:2023-11-01", "EUR/USD:1D", "--max-seconds", "5"], clock=clock)
    finally:
        backfill_logger.setLevel(level)
    out = capsys.readouterr().out
    assert code == 0
    assert [line.split()[2] for line in out.splitlines()[1:3]] == ["deferred", "deferred"]
    assert "not started" in out
    assert fake_upstream.count() == 0
