"""Contract tests: the recorded Twelve Data bodies (tests/data/provider-samples, SOURCES.md) replayed
through the real TwelveDataClient over local HTTP (a real socket and the client's own httpx client).

Each body is served as recorded; the tests pin what the client makes of it: the bars it keeps, the
bars it drops and why, and the typed error where one is due. Error bodies are replayed in both
transports Twelve Data uses (HTTP 200, and the HTTP status matching the body's code) and with the
code as a JSON number and as a string. What the bodies showed is written up in docs/providers.md.

The service never asks Twelve Data for 4h, 1week or 1month bars (forex 4H is built from 1h, 1W/1M
from 1day): the weekly and monthly samples here pin only how the client reads date-only rows.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from marketdata.errors import (
    InvalidRequest,
    MarketDataError,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamAuthError,
    UpstreamRateLimited,
)
from marketdata.intervals import Interval
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.schemas import Candle
from tests.providers.helpers import FakeTime, make_settings, sample_bytes, sample_json, utc

# --- a tiny local server replaying canned bodies ------------------------------------------------


@dataclass
class Replay:
    """Answers every request with the next queued (status, body); records the query strings."""

    answers: list[tuple[int, bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    url: str = ""

    def serve(self, body: bytes, status: int = 200) -> None:
        self.answers.append((status, body))


def _handler(replay: Replay) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            replay.paths.append(self.path)
            status, body = replay.answers.pop(0) if replay.answers else (599, b"no answer queued")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture(scope="module")
def replay_server() -> Iterator[Replay]:
    replay = Replay()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(replay))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    replay.url = f"http://{host!s}:{port}"
    try:
        yield replay
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def replay(replay_server: Replay) -> Iterator[Replay]:
    replay_server.answers.clear()
    replay_server.paths.clear()
    yield replay_server
    replay_server.answers.clear()


Make = Callable[[], TwelveDataClient]


@pytest.fixture
def client(replay: Replay, fake_time: FakeTime) -> Iterator[Make]:
    made: list[TwelveDataClient] = []

    def make() -> TwelveDataClient:
        settings = make_settings(twelve_data_rest_url=replay.url, http_read_timeout=2.0)
        made.append(
            TwelveDataClient(
                settings,
                clock=fake_time.time,
                sleep=fake_time.sleep,
                monotonic=fake_time.monotonic,
                rng=lambda: 1.0,
            )
        )
        return made[-1]

    yield make
    for c in made:
        c.close()


# --- bars in, bars out -------------------------------------------------------------------------


def test_8h_bars_anchored_at_17_new_york_are_off_the_4h_grid_and_dropped(
    client: Make, replay: Replay, caplog: pytest.LogCaptureFixture
) -> None:
    # GBP/USD 8h, March 2022 (winter): bars open at 06:00, 14:00 and 22:00 UTC = 01, 09, 17 New York.
    # Asked as 4H they are all off the UTC 4H grid (00, 04, ... UTC): dropped, and the page is not
    # covered, so nothing wrong is stored. (This is why forex 4H is built from 1h bars.)
    replay.serve(sample_bytes("td_issue47_GBPUSD_8h_utc.json"))
    with caplog.at_level(logging.WARNING, logger="marketdata"):
        result = client().fetch_timeseries("GBP/USD", Interval.H4, utc("2022-03-04"), utc("2022-03-07"))
    assert result.candles == [] and result.dropped == 4 and result.covered == []
    reasons = [r.getMessage() for r in caplog.records if "dropping bad bar" in r.getMessage()]
    assert len(reasons) == 4 and all("not aligned to 4H" in m for m in reasons)


def test_daily_bars_with_a_saturday_bar_are_all_kept_at_midnight_utc(client: Make, replay: Replay) -> None:
    replay.serve(sample_bytes("td_issue47_GBPUSD_1day_utc.json"))
    result = client().fetch_timeseries("GBP/USD", Interval.D1, utc("2022-03-04"), utc("2022-03-07"))
    assert [c.time for c in result.candles] == [utc("2022-03-04"), utc("2022-03-05"), utc("2022-03-07")]
    saturday = result.candles[1]
    assert saturday == Candle(utc("2022-03-05"), 1.32385, 1.32495, 1.32175, 1.32275, 0.0)
    # The Saturday-dated bar is the Friday 14:00-22:00 UTC 8h bar of the same recording.
    friday_8h = next(
        v
        for v in sample_json("td_issue47_GBPUSD_8h_utc.json")["values"]
        if v["datetime"] == "2022-03-04 14:00:00"
    )
    assert (saturday.open, saturday.high, saturday.low, saturday.close) == tuple(
        float(friday_8h[k]) for k in ("open", "high", "low", "close")
    )
    assert result.dropped == 0 and result.covered == [(utc("2022-03-04"), utc("2022-03-07"))]


def test_forex_daily_bars_without_volume(client: Make, replay: Replay) -> None:
    replay.serve(sample_bytes("td_USDCZK_1day_2023-08.json"))
    result = client().fetch_timeseries("USD/CZK", Interval.D1, utc("2023-08-01"), utc("2023-08-04"))
    assert [c.time for c in result.candles] == [utc(f"2023-08-0{d}") for d in range(1, 5)]
    assert result.candles[0] == Candle(utc("2023-08-01"), 21.7225, 21.8648, 21.6934, 21.8184, 0.0)
    assert all(c.volume == 0.0 for c in result.candles) and result.dropped == 0


def test_minute_bars_in_utc_newest_first(client: Make, replay: Replay, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-08-14 00:30:00")
    replay.serve(sample_bytes("td_AUDUSD_1min_utc_captured.json"))
    result = client().fetch_timeseries(
        "AUD/USD", Interval.M1, utc("2026-08-14 00:25"), utc("2026-08-14 00:26")
    )
    assert result.candles == [
        Candle(utc("2026-08-14 00:25"), 0.70644, 0.70651, 0.70644, 0.7065, 0.0),
        Candle(utc("2026-08-14 00:26"), 0.70648, 0.70648, 0.70644, 0.70645, 0.0),
    ]
    assert "timezone=UTC" in replay.paths[0]


def test_a_saturday_hour_bar_is_kept(client: Make, replay: Replay) -> None:
    # XAU/USD 1h at Saturday 23:00 UTC, in a body without a "status" key: weekend bars are bars.
    replay.serve(sample_bytes("td_XAUUSD_1h_saturday.json"))
    start, end = utc("2026-01-03 22:00"), utc("2026-01-04 00:00")
    result = client().fetch_timeseries("XAU/USD", Interval.H1, start, end)
    assert result.candles == [
        Candle(utc("2026-01-03 23:00"), 4330.48907, 4330.68336, 4330.43095, 4330.47347, 0.0)
    ]
    assert result.covered == [(start, end)]


@pytest.mark.parametrize(
    ("sample", "interval", "start", "end", "dates"),
    [
        ("td_AAPL_1week.json", Interval.W1, "2025-09-08", "2025-09-15", ["2025-09-08", "2025-09-15"]),
        (
            "td_MSFT_1month.json",
            Interval.MO1,
            "2025-07-01",
            "2025-09-01",
            ["2025-07-01", "2025-08-01", "2025-09-01"],
        ),
    ],
)
def test_date_only_weeks_on_mondays_and_months_on_the_1st_are_on_the_grid(
    client: Make, replay: Replay, sample: str, interval: Interval, start: str, end: str, dates: list[str]
) -> None:
    # Stock recordings (no forex weekly or monthly one was found): the dates are Mondays and 1sts, so
    # read as 00:00 UTC they sit on the service's week and month grid, volume included.
    replay.serve(sample_bytes(sample))
    result = client().fetch_timeseries("EUR/USD", interval, utc(start), utc(end))
    assert [c.time for c in result.candles] == [utc(d) for d in dates]
    assert all(c.volume > 0 for c in result.candles) and result.dropped == 0


# --- error bodies: both transports, numeric and string codes ------------------------------------

EMPTY_WINDOW = [
    "td_err_400_empty_window.json",  # 2026: code 400 "No data is available on the specified dates"
    "td_err_404_data_not_found_issue58.json",  # older: code 404 "Data not found" (with meta)
    "twelvedata_error_404_not_found.json",  # older: code 404 "nothing found from your very strict query."
]

ERRORS: list[tuple[str, type[MarketDataError]]] = [
    ("td_err_404_bad_ticker.json", SymbolNotFound),
    ("td_err_404_plan_gated.json", SymbolNotInPlan),
    ("td_err_429_throttled_2026.json", UpstreamRateLimited),
    ("twelvedata_error_429_minute_credits.json", UpstreamRateLimited),
    ("twelvedata_error_401_apikey.json", UpstreamAuthError),
    ("twelvedata_error_400_bad_interval.json", InvalidRequest),
]

TRANSPORTS = ["http-200", "http-status"]
CODES = ["number", "string"]


def _error_body(sample: str, code_as: str) -> tuple[dict[str, Any], int]:
    body = sample_json(sample)
    code = int(body["code"])
    if code_as == "string":
        body["code"] = str(code)
    return body, code


def _serve_error(replay: Replay, sample: str, transport: str, code_as: str) -> None:
    body, code = _error_body(sample, code_as)
    replay.serve(json.dumps(body).encode(), code if transport == "http-status" else 200)


@pytest.mark.parametrize("code_as", CODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("sample", EMPTY_WINDOW)
def test_no_bars_here_bodies_are_an_empty_covered_page(
    client: Make, replay: Replay, sample: str, transport: str, code_as: str
) -> None:
    _serve_error(replay, sample, transport, code_as)
    start, end = utc("2024-05-18"), utc("2024-05-19 21:00")
    result = client().fetch_timeseries("EUR/USD", Interval.H1, start, end)
    assert result.candles == [] and result.pages == 1 and result.dropped == 0
    assert result.covered == [(start, end)]
    assert len(replay.paths) == 1


@pytest.mark.parametrize("code_as", CODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("sample", "error"), ERRORS)
def test_error_bodies_raise_their_typed_error_before_any_page(
    client: Make,
    replay: Replay,
    fake_time: FakeTime,
    sample: str,
    error: type[MarketDataError],
    transport: str,
    code_as: str,
) -> None:
    fake_time.now = utc("2026-01-14 12:00:30")
    _serve_error(replay, sample, transport, code_as)
    pages = client().iter_pages("EUR/USD", Interval.H1, utc("2024-05-13"), utc("2024-05-14"))
    with pytest.raises(error) as info:
        next(pages)  # raised before a page is yielded: nothing to store, nothing covered
    assert type(info.value) is error
    assert len(replay.paths) == 1  # none of these is retried
    if error is SymbolNotFound:
        assert info.value.symbol == "EUR/USD" and info.value.provider == "twelve_data"
    if error is SymbolNotInPlan:
        assert info.value.symbol == "EUR/USD" and info.value.provider == "twelve_data"
        assert info.value.plan == "Grow or Venture"
        assert "higher Twelve Data plan" in info.value.message
    if error is UpstreamRateLimited:
        assert info.value.retry_after == 30  # per-minute credits, either wording: the next minute
    if error is InvalidRequest:
        assert info.value.param == "interval"


@pytest.mark.parametrize("code_as", CODES)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_older_unknown_symbol_body_is_symbol_not_found(
    client: Make, replay: Replay, transport: str, code_as: str
) -> None:
    body = sample_json("twelvedata_batch_time_series_with_invalid_symbol.json")["INVALID"]
    if code_as == "string":
        body["code"] = str(body["code"])
    replay.serve(json.dumps(body).encode(), 400 if transport == "http-status" else 200)
    with pytest.raises(SymbolNotFound):
        client().fetch_timeseries("ABC/XYZ", Interval.H1, utc("2024-05-13"), utc("2024-05-14"))


def test_an_error_on_a_later_window_keeps_only_the_earlier_pages(client: Make, replay: Replay) -> None:
    # Two windows of 1min bars: the first is answered with bars, the second with the plan-gated body.
    rows = [
        {"datetime": f"2024-05-13 00:0{m}:00", "open": "1.1", "high": "1.2", "low": "1.0", "close": "1.1"}
        for m in range(3)
    ]
    replay.serve(json.dumps({"values": rows, "status": "ok"}).encode())
    replay.serve(sample_bytes("td_err_404_plan_gated.json"), 404)
    pages = client().iter_pages("EUR/USD", Interval.M1, utc("2024-05-13"), utc("2024-05-13") + 6000 * 60)
    first = next(pages)
    assert [c.time for c in first.candles] == [utc("2024-05-13") + m * 60 for m in range(3)]
    with pytest.raises(SymbolNotInPlan):
        next(pages)
    assert len(replay.paths) == 2
