"""TwelveDataClient: real payloads, windows, UTC handling, error bodies (even with HTTP 200), the API key."""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from marketdata.errors import (
    ConfigurationError,
    InvalidRequest,
    MarketDataError,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamError,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from marketdata.intervals import Interval, add_bars, count_bars, next_open
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.schemas import Candle
from tests.providers.helpers import (
    API_KEY,
    FakeTime,
    Recorder,
    json_response,
    raw_response,
    sample_bytes,
    sample_json,
    twelve_time_series,
    utc,
)

Make = Callable[..., tuple[TwelveDataClient, Recorder]]

ISSUE_PAIRS = [
    "EUR/USD",
    "GBP/USD",
    "USD/JPY",
    "USD/CHF",
    "AUD/USD",
    "NZD/USD",
    "USD/CAD",
    "EUR/GBP",
    "EUR/JPY",
    "GBP/JPY",
    "AUD/JPY",
    "EUR/AUD",
    "GBP/AUD",
    "EUR/CAD",
    "GBP/CAD",
    "AUD/NZD",
    "EUR/NZD",
    "CHF/JPY",
    "CAD/JPY",
    "NZD/JPY",
    "EUR/CHF",
    "GBP/CHF",
    "AUD/CAD",
    "NZD/CAD",
    "GBP/NZD",
]


def _sample(name: str, status: int = 200) -> httpx.Response:
    return raw_response(sample_bytes(name), status=status)


# --- real payloads ----------------------------------------------------------------------------


def test_daily_sample_newest_first_with_date_only_datetimes(twelve: Make) -> None:
    client, rec = twelve(Recorder(_sample("twelvedata_time_series_IBM_1day.json")))
    result = client.fetch_timeseries("EUR/USD", Interval.D1, utc("2021-06-29"), utc("2021-07-01"))

    assert rec.count == 1
    request = rec.requests[0]
    assert request.url.path == "/time_series"
    assert dict(request.url.params) == {
        "symbol": "EUR/USD",
        "interval": "1day",
        "start_date": "2021-06-29 00:00:00",
        # One bar past the last wanted bar: correct whether end_date is inclusive or exclusive.
        "end_date": "2021-07-02 00:00:00",
        "timezone": "UTC",
        "order": "asc",
        "outputsize": "5000",
    }
    # Date-only values are midnight UTC, sorted ascending although the sample is newest first.
    assert [c.time for c in result.candles] == [utc("2021-06-29"), utc("2021-06-30"), utc("2021-07-01")]
    assert result.candles[0] == Candle(utc("2021-06-29"), 145.25999, 146.74001, 145.10001, 145.55, 2428500.0)
    assert result.candles[2].volume == 2665427.0
    assert result.covered == [(utc("2021-06-29"), utc("2021-07-01"))]


def test_forex_minute_sample_without_volume(twelve: Make) -> None:
    client, _ = twelve(Recorder(_sample("twelvedata_time_series_USDJPY_1min_forex.json")))
    result = client.fetch_timeseries("USD/JPY", Interval.M1, utc("2024-04-29 06:30"), utc("2024-04-29 06:31"))
    # '2024-04-29 06:30:00' is read as UTC (timezone=UTC was requested), not local or exchange time.
    assert result.candles == [
        Candle(1714372200, 155.82001, 155.84, 155.81, 155.84, 0.0),
        Candle(1714372260, 155.86, 155.88499, 155.84, 155.845, 0.0),
    ]


def test_symbols_are_the_25_pairs_sorted_without_a_request(twelve: Make) -> None:
    client, rec = twelve(Recorder(), twelve_data_api_key=None)
    symbols = client.get_available_symbols()
    assert symbols == sorted(ISSUE_PAIRS)
    assert len(symbols) == 25
    assert rec.count == 0


# --- windows ----------------------------------------------------------------------------------


@pytest.mark.parametrize("end_inclusive", [True, False])
def test_windows_of_at_most_5000_bars(twelve: Make, end_inclusive: bool) -> None:
    start = utc("2025-03-03 00:00")  # a Monday
    end = add_bars(Interval.M1, start, 11999)
    client, rec = twelve(Recorder(fallback=twelve_time_series(end_inclusive=end_inclusive)))

    pages = list(client.iter_pages("EUR/USD", Interval.M1, start, end))

    assert rec.count == 3
    windows = [(rec.params(i)["start_date"], rec.params(i)["end_date"]) for i in range(3)]

    def text(t: int) -> str:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))

    assert windows == [
        (text(start), text(add_bars(Interval.M1, start, 4999))),
        (text(add_bars(Interval.M1, start, 4999)), text(add_bars(Interval.M1, start, 9998))),
        (text(add_bars(Interval.M1, start, 9998)), text(add_bars(Interval.M1, start, 12000))),
    ]
    for i in range(3):
        span = utc(rec.params(i)["end_date"]) - utc(rec.params(i)["start_date"])
        assert span // 60 + 1 <= 5000  # bars in the request, even if end_date is inclusive
    times = [c.time for p in pages for c in p.candles]
    assert len(times) == 12000 == len(set(times))
    assert times == sorted(times) and times[0] == start and times[-1] == end
    assert [(p.start, p.end) for p in pages] == [
        (start, add_bars(Interval.M1, start, 4998)),
        (add_bars(Interval.M1, start, 4999), add_bars(Interval.M1, start, 9997)),
        (add_bars(Interval.M1, start, 9998), end),
    ]


def test_monthly_windows_use_calendar_months(twelve: Make) -> None:
    client, rec = twelve(Recorder(fallback=twelve_time_series()))
    result = client.fetch_timeseries("EUR/USD", Interval.MO1, utc("2023-11-15"), utc("2024-03-01"))
    assert rec.params()["interval"] == "1month"
    assert rec.params()["start_date"] == "2023-12-01 00:00:00"
    assert rec.params()["end_date"] == "2024-04-01 00:00:00"
    assert [c.time for c in result.candles] == [
        utc(d) for d in ("2023-12-01", "2024-01-01", "2024-02-01", "2024-03-01")
    ]


def test_weekend_window_without_bars_is_an_empty_covered_page(twelve: Make) -> None:
    saturday, monday = utc("2025-03-08"), utc("2025-03-10")
    client, rec = twelve(Recorder(_sample("twelvedata_error_404_not_found.json")))
    [page] = list(client.iter_pages("EUR/USD", Interval.H1, saturday, monday - 3600))
    assert rec.count == 1
    assert (page.start, page.end, page.candles, page.dropped) == (saturday, monday - 3600, [], 0)
    client, _ = twelve(
        Recorder(json_response({"code": 404, "message": "Data not found", "status": "error"}, 404))
    )
    assert client.fetch_timeseries("EUR/USD", Interval.H1, saturday, monday - 3600).covered == [
        (saturday, monday - 3600)
    ]


def test_missing_weekend_bars_inside_a_window(twelve: Make) -> None:
    def weekend(t: int) -> bool:
        return (t // 86400 + 3) % 7 >= 5  # Saturday, Sunday

    client, _ = twelve(Recorder(fallback=twelve_time_series(skip=weekend)))
    result = client.fetch_timeseries("EUR/USD", Interval.H4, utc("2025-03-06"), utc("2025-03-11 20:00"))
    days = {c.time // 86400 for c in result.candles}
    assert len(result.candles) == 4 * 6
    assert utc("2025-03-08") // 86400 not in days and utc("2025-03-09") // 86400 not in days
    assert result.covered == [(utc("2025-03-06"), utc("2025-03-11 20:00"))]


def test_open_bar_is_split_off(twelve: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:34:10")
    client, rec = twelve(Recorder(fallback=twelve_time_series()))
    result = client.fetch_timeseries(
        "EUR/USD", Interval.M15, utc("2026-01-14 11:00"), utc("2026-01-14 23:00")
    )
    assert rec.params()["end_date"] == "2026-01-14 12:45:00"  # never past the open bar
    assert [c.time for c in result.candles][-1] == utc("2026-01-14 12:15")
    assert result.open_bar is not None and result.open_bar.time == utc("2026-01-14 12:30")
    assert result.covered == [(utc("2026-01-14 11:00"), utc("2026-01-14 12:15"))]


def test_a_recent_bar_not_yet_published_is_not_covered(twelve: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:30")
    unpublished = {utc("2026-01-14 11:59")}
    client, _ = twelve(Recorder(fallback=twelve_time_series(skip=lambda t: t in unpublished)))
    result = client.fetch_timeseries("EUR/USD", Interval.M1, utc("2026-01-14 11:50"), utc("2026-01-14 11:59"))
    assert result.candles[-1].time == utc("2026-01-14 11:58")
    assert result.covered == [(utc("2026-01-14 11:50"), utc("2026-01-14 11:58"))]


def test_duplicates_extra_keys_and_rows_outside_the_window(twelve: Make) -> None:
    rows = [
        {
            "datetime": "2025-03-03 10:00:00",
            "open": "1.1",
            "high": "1.2",
            "low": "1.0",
            "close": "1.15",
            "x": "y",
        },
        {"datetime": "2025-03-03 10:00:00", "open": "9.1", "high": "9.2", "low": "9.0", "close": "9.15"},
        {
            "datetime": "2025-03-03 11:00:00",
            "open": "1.15",
            "high": "1.3",
            "low": "1.1",
            "close": "1.2",
            "previous_close": "1.15",
            "volume": "12.5",
        },
        {
            "datetime": "2025-03-03 12:00:00",
            "open": "1",
            "high": "1",
            "low": "1",
            "close": "1",
        },  # past the window
        {"datetime": "2025-03-03 09:00:00", "open": "1", "high": "1", "low": "1", "close": "1"},  # before it
    ]
    client, _ = twelve(Recorder(json_response({"meta": {}, "values": rows, "status": "ok"})))
    result = client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03 10:00"), utc("2025-03-03 11:00"))
    assert result.candles == [
        Candle(utc("2025-03-03 10:00"), 1.1, 1.2, 1.0, 1.15, 0.0),
        Candle(utc("2025-03-03 11:00"), 1.15, 1.3, 1.1, 1.2, 12.5),
    ]


def test_bad_bars_are_dropped(twelve: Make, caplog: pytest.LogCaptureFixture) -> None:
    rows = [
        {
            "datetime": "2025-03-03 10:00:00",
            "open": "1.1",
            "high": "1.0",
            "low": "0.9",
            "close": "1.05",
        },  # high < open
        {
            "datetime": "2025-03-03 10:07:00",
            "open": "1.1",
            "high": "1.2",
            "low": "1.0",
            "close": "1.1",
        },  # misaligned
        {
            "datetime": "2025-03-03 10:15:00",
            "open": "1.1",
            "high": "1.2",
            "low": "1.0",
            "close": "1.1",
            "volume": "-3",
        },
        {"datetime": "2025-03-03 10:30:00", "open": "nan", "high": "1.2", "low": "1.0", "close": "1.1"},
        {"datetime": "2025-03-03 10:45:00", "open": "1.1", "high": "1.2", "low": "1.0", "close": "1.1"},
    ]
    client, _ = twelve(Recorder(json_response({"values": rows, "status": "ok"})))
    with caplog.at_level(logging.WARNING, logger="marketdata"):
        result = client.fetch_timeseries(
            "EUR/USD", Interval.M15, utc("2025-03-03 10:00"), utc("2025-03-03 10:45")
        )
    assert [c.time for c in result.candles] == [utc("2025-03-03 10:45")]
    assert result.dropped == 4
    assert result.covered == []
    assert sum("dropping bad bar" in r.getMessage() for r in caplog.records) == 4


def test_missing_key_fails_the_first_call_not_construction(twelve: Make) -> None:
    client, rec = twelve(Recorder(), twelve_data_api_key=None)  # constructing is fine
    with pytest.raises(ConfigurationError, match="TWELVE_DATA_API_KEY"):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    with pytest.raises(ConfigurationError):
        next(client.iter_pages("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04")))
    assert rec.count == 0


# --- error bodies -----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 400])
def test_bad_interval_body(twelve: Make, status: int) -> None:
    client, rec = twelve(Recorder(_sample("twelvedata_error_400_bad_interval.json", status)))
    with pytest.raises(InvalidRequest) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert info.value.param == "interval"
    assert "Invalid **interval** provided" in info.value.message
    assert rec.count == 1


@pytest.mark.parametrize("status", [200, 400])
def test_unknown_symbol_body(twelve: Make, status: int) -> None:
    body = sample_json("twelvedata_batch_time_series_with_invalid_symbol.json")["INVALID"]
    client, rec = twelve(Recorder(json_response(body, status)))
    with pytest.raises(SymbolNotFound) as info:
        client.fetch_timeseries("ABC/XYZ", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert info.value.symbol == "ABC/XYZ" and info.value.provider == "twelve_data"
    assert rec.count == 1


def test_batch_shaped_body_is_a_bad_response(twelve: Make) -> None:
    client, _ = twelve(Recorder(_sample("twelvedata_batch_time_series_with_invalid_symbol.json")))
    with pytest.raises(UpstreamBadResponse):
        client.fetch_timeseries("EUR/USD", Interval.D1, utc("2024-11-20"), utc("2024-11-22"))


@pytest.mark.parametrize("status", [200, 401])
def test_bad_api_key_body(twelve: Make, status: int) -> None:
    client, rec = twelve(Recorder(_sample("twelvedata_error_401_apikey.json", status)))
    with pytest.raises(UpstreamAuthError) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert "**apikey** parameter is incorrect" in info.value.message
    assert rec.count == 1


def test_forbidden_body(twelve: Make) -> None:
    # A 403 naming a plan is the pair outside the key's plan (as the 2026 code 404 body); any other
    # 403 is the key's problem.
    body = {
        "code": 403,
        "message": "This symbol is available starting with the Grow plan.",
        "status": "error",
    }
    client, _ = twelve(Recorder(json_response(body)))
    with pytest.raises(SymbolNotInPlan) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert info.value.plan == "Grow"
    other = {"code": 403, "message": "Access to this endpoint is forbidden.", "status": "error"}
    client, _ = twelve(Recorder(json_response(other)))
    with pytest.raises(UpstreamAuthError, match="forbidden"):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (400, "No data is available on the specified dates. Try setting different start/end dates."),
        ("400", "no data is available on the specified dates"),  # a string code, other case
        (404, "Data not found"),
        (" 404", "DATA NOT FOUND for SET100:SET"),  # trailing text
        (404, "nothing found from your very strict query."),
        (None, "No data is available on the specified dates."),  # no code: the HTTP status (400) counts
    ],
)
def test_only_the_no_data_messages_are_an_empty_page(twelve: Make, code: object, message: str) -> None:
    body = {"code": code, "message": message, "status": "error"}
    if code is None:
        del body["code"]
    client, rec = twelve(Recorder(json_response(body, 400 if code is None else 200)))
    result = client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-08"), utc("2025-03-09"))
    assert result.candles == [] and result.covered == [(utc("2025-03-08"), utc("2025-03-09"))]
    assert rec.count == 1


@pytest.mark.parametrize(
    ("code", "message", "error"),
    [
        # The no-data words under the other code are not the no-data body: code and message together.
        (404, "No data is available on the specified dates.", UpstreamBadResponse),
        (400, "Data not found", InvalidRequest),
        # An unrecognised 404 is an upstream error, never an empty range.
        (404, "Resource gone", UpstreamBadResponse),
        ("404", "", UpstreamBadResponse),
        (
            404,
            "**symbol** or **figi** parameter is missing or invalid. Please provide a valid symbol",
            SymbolNotFound,
        ),
        ("404", "**Symbol** or **FIGI** parameter is missing or invalid.", SymbolNotFound),
        (400, "**symbol** not found: ABC/XYZ.", SymbolNotFound),
        (
            404,
            "This symbol is available starting with the Grow or Venture plan. Consider upgrading",
            SymbolNotInPlan,
        ),
        ("404", "this symbol is available starting with the Pro plan", SymbolNotInPlan),
    ],
)
def test_error_bodies_by_code_and_message(
    twelve: Make, code: object, message: str, error: type[Exception]
) -> None:
    body = {"code": code, "message": message, "status": "error"}
    client, rec = twelve(Recorder(json_response(body)))
    pages = client.iter_pages("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    with pytest.raises(error) as info:
        next(pages)  # before any page: nothing is stored or covered for an error
    assert type(info.value) is error
    assert rec.count == 1


def test_plan_gated_pair_is_not_an_upstream_failure(twelve: Make) -> None:
    client, _ = twelve(Recorder(_sample("td_err_404_plan_gated.json", 404)))
    with pytest.raises(SymbolNotInPlan) as info:
        client.fetch_timeseries("USD/TRY", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    # Not an UpstreamError: the service must not serve a partial answer around an entitlement problem.
    assert not isinstance(info.value, UpstreamError)
    assert (info.value.symbol, info.value.provider, info.value.plan) == (
        "USD/TRY",
        "twelve_data",
        "Grow or Venture",
    )


def test_minute_credits_exhausted_beyond_the_budget(twelve: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:10")
    client, rec = twelve(Recorder(_sample("twelvedata_error_429_minute_credits.json")))
    with pytest.raises(UpstreamRateLimited) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert info.value.retry_after == 50  # seconds to the next minute, as no Retry-After came
    assert "run out of API credits" in info.value.message
    assert rec.count == 1 and fake_time.sleeps == []
    # Until the minute is over the client does not spend a round trip on a certain refusal.
    fake_time.advance(20)
    with pytest.raises(UpstreamRateLimited) as again:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert again.value.retry_after == 30 and rec.count == 1


def test_minute_credits_exhausted_near_the_minute_end_waits(twelve: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:57")
    client, rec = twelve(
        Recorder(_sample("twelvedata_error_429_minute_credits.json"), fallback=twelve_time_series())
    )
    result = client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-03 05:00"))
    assert fake_time.sleeps == [pytest.approx(3.0)]
    assert rec.count == 2 and len(result.candles) == 6


@pytest.mark.parametrize(
    "sample", ["twelvedata_error_429_minute_credits.json", "td_err_429_throttled_2026.json"]
)
def test_minute_credits_in_either_wording_wait_for_the_next_minute(
    twelve: Make, fake_time: FakeTime, sample: str
) -> None:
    fake_time.now = utc("2026-01-14 23:00:10")  # late in the UTC day: a daily reading would say 3590 s
    client, rec = twelve(Recorder(_sample(sample)))
    with pytest.raises(UpstreamRateLimited) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert info.value.retry_after == 50 and rec.count == 1


def test_429_with_retry_after_and_daily_quota(twelve: Make, fake_time: FakeTime) -> None:
    limited = json_response(
        {"code": 429, "message": "slow down", "status": "error"}, 429, {"Retry-After": "2"}
    )
    client, rec = twelve(Recorder(limited, fallback=twelve_time_series()))
    client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-03 05:00"))
    assert fake_time.sleeps == [2.0] and rec.count == 2

    fake_time.now = utc("2026-01-14 23:00:00")
    daily = {"code": 429, "message": "You have run out of API credits for the day.", "status": "error"}
    client, rec = twelve(Recorder(json_response(daily)))
    with pytest.raises(UpstreamRateLimited) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert info.value.retry_after == 3600  # until 00:00 UTC, when daily credits reset
    assert rec.count == 1


def test_server_errors_are_retried(twelve: Make, fake_time: FakeTime) -> None:
    in_body = json_response({"code": 500, "message": "Internal error", "status": "error"})  # HTTP 200
    html = raw_response(b"<html>502</html>", status=502, content_type="text/html")
    client, rec = twelve(Recorder(in_body, html, fallback=twelve_time_series()))
    result = client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-03 05:00"))
    assert rec.count == 3 and len(result.candles) == 6
    assert fake_time.sleeps == [0.25, 0.5]


def test_server_errors_until_attempts_run_out(twelve: Make) -> None:
    client, rec = twelve(Recorder(fallback=lambda r: json_response({"code": 503, "status": "error"}, 503)))
    with pytest.raises(UpstreamUnavailable):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert rec.count == 4


def test_timeouts_are_retried_then_unavailable(twelve: Make) -> None:
    client, rec = twelve(Recorder(*[httpx.ReadTimeout("timed out")] * 4))
    with pytest.raises(UpstreamUnavailable, match="did not answer in time"):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert rec.count == 4


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b'{"values": [{"datetime": "2025-03-03 10:00:00", "open": "1.1"', "application/json"),  # truncated
        (b"<!DOCTYPE html><html>Cloudflare</html>", "text/html"),
        (b"", "application/json"),
        (b'{"status": "ok"}', "application/json"),  # no values
        (b'{"values": {"a": 1}, "status": "ok"}', "application/json"),
        (b'{"values": [["2025-03-03 10:00:00", "1", "1", "1", "1"]], "status": "ok"}', "application/json"),
        (
            b'{"values": [{"open": "1", "high": "1", "low": "1", "close": "1"}], "status": "ok"}',
            "application/json",
        ),
        (
            b'{"values": [{"datetime": "03/03/2025", "open": "1", "high": "1", "low": "1", "close": "1"}]}',
            "application/json",
        ),
        (
            b'{"values": [{"datetime": "2025-03-03 10:00:00", '
            b'"open": "one", "high": "1", "low": "1", "close": "1"}]}',
            "application/json",
        ),
        (
            b'{"values": [{"datetime": "2025-03-03 10:00:00", "high": "1", "low": "1", "close": "1"}]}',
            "application/json",
        ),
        (b"[1, 2, 3]", "application/json"),
    ],
)
def test_unreadable_bodies_are_bad_responses(twelve: Make, content: bytes, content_type: str) -> None:
    client, rec = twelve(Recorder(raw_response(content, content_type=content_type)))
    with pytest.raises(UpstreamBadResponse) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03 10:00"), utc("2025-03-03 11:00"))
    assert info.value.provider == "twelve_data"
    assert rec.count == 1


def test_other_error_codes(twelve: Make) -> None:
    client, _ = twelve(Recorder(json_response({"code": 414, "message": "URI too long", "status": "error"})))
    with pytest.raises(InvalidRequest):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    client, _ = twelve(Recorder(raw_response(b"moved", status=301, content_type="text/plain")))
    with pytest.raises(UpstreamBadResponse):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))


# --- the API key ------------------------------------------------------------------------------


def test_key_travels_in_a_header_never_in_the_url(twelve: Make) -> None:
    client, rec = twelve(Recorder(fallback=twelve_time_series()))
    client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-03 05:00"))
    request = rec.requests[0]
    assert request.headers["authorization"] == f"apikey {API_KEY}"
    assert API_KEY not in str(request.url)
    assert "apikey" not in request.url.params


def _echoing_key(request: httpx.Request) -> httpx.Response:
    body = {"code": 401, "message": f"apikey {API_KEY} is not valid", "status": "error"}
    return json_response(body)


@pytest.mark.parametrize(
    "answer",
    [
        _echoing_key,
        lambda r: json_response(
            {"code": 400, "message": f"**symbol** not found ({API_KEY})", "status": "error"}
        ),
        lambda r: json_response({"code": 400, "message": f"bad **start_date** {API_KEY}", "status": "error"}),
        lambda r: json_response({"code": 429, "message": f"credits {API_KEY}", "status": "error"}),
        lambda r: json_response({"code": 500, "message": f"error {API_KEY}", "status": "error"}, 500),
        lambda r: raw_response(f"<html>{API_KEY}</html>".encode(), status=200, content_type="text/html"),
        lambda r: raw_response(f'{{"values": [{API_KEY}'.encode()),
        lambda r: (_ for _ in ()).throw(httpx.ConnectError(f"failed for {r.url}", request=r)),
        lambda r: (_ for _ in ()).throw(httpx.ReadTimeout("timed out", request=r)),
    ],
)
def test_the_key_never_appears_in_errors_or_logs(
    twelve: Make, caplog: pytest.LogCaptureFixture, answer: Callable[[httpx.Request], httpx.Response]
) -> None:
    client, _ = twelve(Recorder(fallback=answer))
    with caplog.at_level(logging.DEBUG), pytest.raises(MarketDataError) as info:
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    rendered = "".join(traceback.format_exception(info.value))
    assert API_KEY not in rendered
    assert API_KEY not in repr(info.value.args)
    assert caplog.records  # the client did log (requests, retries)
    for record in caplog.records:
        assert API_KEY not in record.getMessage()
        assert API_KEY not in json.dumps([str(a) for a in (record.args or ())])


def test_windows_bar_count_for_daily_and_weekly(twelve: Make) -> None:
    client, rec = twelve(Recorder(fallback=twelve_time_series()))
    start = utc("2000-01-03")  # a Monday
    client.fetch_timeseries("EUR/USD", Interval.W1, start, utc("2025-12-29"))
    assert rec.count == 1  # ~1356 weeks fit in one window
    client, rec = twelve(Recorder(fallback=twelve_time_series()))
    result = client.fetch_timeseries("EUR/USD", Interval.D1, start, utc("2025-12-31"))
    days = count_bars(Interval.D1, start, utc("2025-12-31"))
    assert 4999 < days <= 2 * 4999
    assert rec.count == 2
    assert rec.params(1)["start_date"] == "2013-09-10 00:00:00"
    assert next_open(Interval.D1, add_bars(Interval.D1, start, 4998)) == utc("2013-09-10")
    assert len(result.candles) == days


def test_fixture_dict_types(twelve: Make) -> None:
    # Numbers may come as JSON numbers rather than strings: both are read.
    rows: list[dict[str, Any]] = [
        {"datetime": "2025-03-03", "open": 1.1, "high": 1.2, "low": 1, "close": 1.15}
    ]
    client, _ = twelve(Recorder(json_response({"values": rows, "status": "ok"})))
    result = client.fetch_timeseries("EUR/USD", Interval.D1, utc("2025-03-03"), utc("2025-03-03"))
    assert result.candles == [Candle(utc("2025-03-03"), 1.1, 1.2, 1.0, 1.15, 0.0)]
