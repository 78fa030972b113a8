"""The provider clients against the fake upstream server (devtools/fake_upstream.py), over real HTTP.

The fake speaks both APIs as docs/providers.md describes them (paging, caps, timezones, weekends, error
bodies) and computes the truth independently (`expected_bars`), so these tests check the clients'
paging, parsing, UTC handling, open-bar split, error mapping and retries end to end. Timeouts and
retry budgets are the small ones of `upstream_settings` (read 1 s, budget 2 s, 3 attempts).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from devtools import fake_upstream as fu
from devtools.fake_upstream import FakeUpstream
from marketdata.config import Settings
from marketdata.errors import (
    InvalidRequest,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from marketdata.intervals import Interval
from marketdata.providers.binance import BinanceClient
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.schemas import Candle
from tests.support.upstream_fixtures import TEST_TWELVE_DATA_API_KEY, settings_for

KLINES = "/api/v3/klines"
SERIES = "/time_series"
HOUR, DAY = 3600, 86400
NON_ASCII = "\u5e01\u5b89\u4eba\u751fUSDT"  # a real Binance symbol with a Chinese base asset name


def ts(text: str) -> int:
    """'2024-01-05 21:00' or '2024-01-05' as Unix seconds UTC."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M" if ":" in text else "%Y-%m-%d"
    return calendar.timegm(datetime.strptime(text, fmt).timetuple())


@pytest.fixture
def binance_on_fake(fake_upstream: FakeUpstream, upstream_settings: Settings) -> Iterator[BinanceClient]:
    # The fake's clock is frozen at a fixed instant (30 s into a minute) unless a test moves it.
    fake_upstream.now = ts("2026-01-14 12:00:30")
    client = BinanceClient(upstream_settings, clock=fake_upstream.clock)
    yield client
    client.close()


@pytest.fixture
def twelve_on_fake(fake_upstream: FakeUpstream, upstream_settings: Settings) -> Iterator[TwelveDataClient]:
    fake_upstream.now = ts("2026-01-14 12:00:30")
    client = TwelveDataClient(upstream_settings, clock=fake_upstream.clock)
    yield client
    client.close()


# --- Binance: paging and the truth ------------------------------------------------------------------


def test_2500_bars_take_exactly_3_requests_and_equal_the_truth(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    start = ts("2024-01-01")
    end = start + 2499 * HOUR
    result = binance_on_fake.fetch_klines("BTCUSDT", Interval.H1, start, end)
    assert fake_upstream.count(KLINES) == 3
    assert result.pages == 3
    times = [c.time for c in result.candles]
    assert len(times) == 2500 == len(set(times)) and times == sorted(times)
    assert result.candles == fake_upstream.expected_candles("BTCUSDT", "1H", start, end)
    assert result.open_bar is None and result.dropped == 0
    # Consecutive pages tile the range without gaps or overlaps.
    assert result.covered[0][0] == start and result.covered[-1][1] == end
    for (_, a_end), (b_start, _) in zip(result.covered, result.covered[1:], strict=False):
        assert b_start == a_end + HOUR
    # Every request stayed within Binance's cap and asked for the same symbol and interval.
    for path, query in fake_upstream.requests:
        assert path == KLINES and query["symbol"] == "BTCUSDT" and query["interval"] == "1h"
        assert int(query.get("limit", 500)) <= 1000


def test_mid_bar_start_skips_to_the_next_bar(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    start = ts("2024-01-30 15:23:11")  # inside the 15:00 bar, as in the real capture
    result = binance_on_fake.fetch_klines("BTCUSDT", "1H", start, ts("2024-01-30 20:00"))
    assert [c.time for c in result.candles] == [ts(f"2024-01-30 {h}:00") for h in range(16, 21)]
    assert result.candles == fake_upstream.expected_candles("BTCUSDT", "1H", start, ts("2024-01-30 20:00"))


def test_open_last_bar_is_split_from_the_closed_bars(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.now = ts("2026-01-14 12:20:00")  # 20 minutes into the 12:00 bar
    start = ts("2026-01-14 08:00")
    result = binance_on_fake.fetch_klines("ETHUSDT", "1H", start, ts("2026-01-15"))
    assert [c.time for c in result.candles] == [ts(f"2026-01-14 {h}:00") for h in range(8, 12)]
    assert result.candles == fake_upstream.expected_candles("ETHUSDT", "1H", start, ts("2026-01-15"))
    open_bar = fake_upstream.expected_candles("ETHUSDT", "1H", start, ts("2026-01-15"), include_open=True)[-1]
    assert result.open_bar == open_bar and open_bar.time == ts("2026-01-14 12:00")
    # Coverage never claims the open bar.
    assert result.covered == [(start, ts("2026-01-14 11:00"))]


@pytest.mark.parametrize(
    ("interval", "start", "end", "count"),
    [
        # Calendar months across two year ends and the leap February of 2024.
        ("1M", "2022-11-15", "2024-04-01", 17),
        # Monday weeks across the 2024/2025 year end (2024-12-30 is a Monday).
        ("1W", "2024-12-01", "2025-01-20", 8),
        # Daily bars across 2024-02-29.
        ("1D", "2024-02-27", "2024-03-02", 5),
    ],
)
def test_months_weeks_and_days_across_year_and_leap_boundaries(
    binance_on_fake: BinanceClient,
    fake_upstream: FakeUpstream,
    interval: str,
    start: str,
    end: str,
    count: int,
) -> None:
    result = binance_on_fake.fetch_klines("BTCUSDT", interval, ts(start), ts(end))
    assert len(result.candles) == count
    assert result.candles == fake_upstream.expected_candles("BTCUSDT", interval, ts(start), ts(end))
    assert fake_upstream.count(KLINES) == 1


def test_1500_daily_bars_take_2_requests(binance_on_fake: BinanceClient, fake_upstream: FakeUpstream) -> None:
    start = ts("2019-01-01")
    end = start + 1499 * DAY
    result = binance_on_fake.fetch_klines("ETHBTC", "1D", start, end)
    assert fake_upstream.count(KLINES) == 2 and len(result.candles) == 1500
    assert result.candles == fake_upstream.expected_candles("ETHBTC", "1D", start, end)


def test_range_before_listing_is_empty_and_a_range_across_it_starts_at_the_listing(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    empty = binance_on_fake.fetch_klines("BTCUSDT", "1D", ts("2017-01-01"), ts("2017-08-10"))
    assert empty.candles == [] and empty.covered == [(ts("2017-01-01"), ts("2017-08-10"))]
    across = binance_on_fake.fetch_klines("BTCUSDT", "1D", ts("2017-08-01"), ts("2017-08-20"))
    assert [c.time for c in across.candles] == [ts(f"2017-08-{d}") for d in range(17, 21)]


def test_limit_stops_paging_early(binance_on_fake: BinanceClient, fake_upstream: FakeUpstream) -> None:
    start = ts("2024-01-01")
    result = binance_on_fake.fetch_klines("BTCUSDT", "1m", start, start + 5000 * 60, limit=1200)
    assert len(result.candles) == 1200 and fake_upstream.count(KLINES) == 2
    assert result.candles == fake_upstream.expected_candles("BTCUSDT", "1m", start, start + 1199 * 60)


def test_available_symbols_are_trading_pairs_in_the_quote_set(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream, upstream_settings: Settings
) -> None:
    expected = sorted(
        s
        for s, inst in fu.BINANCE_SYMBOLS.items()
        if inst.status == "TRADING" and inst.quote_asset in upstream_settings.binance_quote_assets
    )
    assert binance_on_fake.get_available_symbols() == expected
    assert "BTCEUR" not in expected and "BTCBUSD" not in expected and "LUNAUSDT" not in expected
    assert {"BNBBUSD", "ETHBTC", NON_ASCII} <= set(expected)
    assert fake_upstream.count("/api/v3/exchangeInfo") == 1


def test_non_ascii_symbol_round_trips(binance_on_fake: BinanceClient, fake_upstream: FakeUpstream) -> None:
    start, end = ts("2025-11-01"), ts("2025-11-03")
    result = binance_on_fake.fetch_klines(NON_ASCII, "4H", start, end)
    assert (
        result.candles == fake_upstream.expected_candles(NON_ASCII, "4H", start, end)
        and len(result.candles) == 13
    )
    assert fake_upstream.requests[0].query["symbol"] == NON_ASCII


# --- Binance: errors and retries --------------------------------------------------------------------


def test_unknown_symbol_is_symbol_not_found(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(SymbolNotFound):
        binance_on_fake.fetch_klines("NOPEUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert fake_upstream.count(KLINES) == 1  # 4xx is not retried


def test_lowercase_symbol_is_an_invalid_request(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(InvalidRequest) as info:
        binance_on_fake.fetch_klines("btcusdt", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert info.value.param == "symbol" and fake_upstream.count(KLINES) == 1


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        (500, {}),
        (502, {}),
        (503, {}),
        ("timeout", {}),
        ("reset", {}),
        ("truncated_transport", {}),
        (429, {"retry_after": 1}),
    ],
)
def test_transient_faults_are_retried_to_success(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream, kind: object, extra: dict[str, float]
) -> None:
    fake_upstream.fail_next(1, kind, KLINES, **extra)
    start = ts("2024-01-01")
    result = binance_on_fake.fetch_klines("BTCUSDT", "1H", start, start + 9 * HOUR)
    assert result.candles == fake_upstream.expected_candles("BTCUSDT", "1H", start, start + 9 * HOUR)
    assert fake_upstream.count(KLINES) == 2


@pytest.mark.parametrize("kind", [500, 503, "reset"])
def test_persistent_5xx_ends_in_upstream_unavailable_after_max_attempts(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream, upstream_settings: Settings, kind: object
) -> None:
    fake_upstream.fail_next(10, kind, KLINES)
    with pytest.raises(UpstreamUnavailable):
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert fake_upstream.count(KLINES) == upstream_settings.upstream_max_attempts


def test_persistent_timeouts_end_in_upstream_unavailable_within_the_budget(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(10, "timeout", KLINES)
    with pytest.raises(UpstreamUnavailable):
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    # 1 s read timeouts inside a 2 s budget: a second attempt, never more than the 3 allowed.
    assert 2 <= fake_upstream.count(KLINES) <= 3


@pytest.mark.parametrize("kind", ["malformed", "html", "truncated", "wrong_shape"])
def test_unreadable_bodies_are_bad_responses_not_retried(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream, kind: str
) -> None:
    fake_upstream.fail_next(1, kind, KLINES)
    with pytest.raises(UpstreamBadResponse):
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert fake_upstream.count(KLINES) == 1


def test_429_longer_than_the_budget_is_rate_limited_and_blocks_later_calls(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(1, 429, KLINES, retry_after=30)
    with pytest.raises(UpstreamRateLimited) as info:
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert info.value.retry_after == 30
    # Calling again before the advertised time would earn a ban: the client refuses without a request.
    with pytest.raises(UpstreamRateLimited):
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert fake_upstream.count(KLINES) == 1
    fake_upstream.advance(31)
    assert (
        len(binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02")).candles) == 25
    )


def test_418_ban_is_rate_limited_at_once(binance_on_fake: BinanceClient, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail_next(1, 418, KLINES, retry_after=120)
    with pytest.raises(UpstreamRateLimited) as info:
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert info.value.retry_after == 120 and fake_upstream.count(KLINES) == 1


def test_403_waf_block_is_unavailable_and_not_retried(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(1, 403, KLINES)
    with pytest.raises(UpstreamUnavailable):
        binance_on_fake.fetch_klines("BTCUSDT", "1H", ts("2024-01-01"), ts("2024-01-02"))
    assert fake_upstream.count(KLINES) == 1


def test_failure_on_a_later_page_keeps_the_earlier_pages(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    start = ts("2024-01-01")
    pages = binance_on_fake.iter_pages("BTCUSDT", Interval.H1, start, start + 2499 * HOUR)
    first = next(pages)
    assert first.candles == fake_upstream.expected_candles("BTCUSDT", "1H", start, start + 999 * HOUR)
    fake_upstream.fail_next(1, "malformed", KLINES)
    with pytest.raises(UpstreamBadResponse):
        next(pages)
    assert fake_upstream.count(KLINES) == 2


def test_bad_bar_is_dropped_and_its_page_not_covered(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(1, "bad_bar", KLINES)
    start = ts("2024-01-01")
    result = binance_on_fake.fetch_klines("BTCUSDT", "1H", start, start + 9 * HOUR)
    truth = fake_upstream.expected_candles("BTCUSDT", "1H", start, start + 9 * HOUR)
    assert result.dropped == 1 and result.candles == truth[1:]
    assert result.covered == []


def test_weight_guard_stops_before_the_limit(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    # 30 s into the minute with 4799 of 6000 used: the first page pushes it past the 80 % share.
    fake_upstream.binance_used_weight = 4799
    start = ts("2024-01-01")
    with pytest.raises(UpstreamRateLimited) as info:
        binance_on_fake.fetch_klines("BTCUSDT", "1H", start, start + 2499 * HOUR)
    assert fake_upstream.count(KLINES) == 1
    assert info.value.retry_after == 30


# --- Twelve Data ------------------------------------------------------------------------------------


def test_forex_timestamps_are_utc_and_equal_the_truth(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    start, end = ts("2024-05-13"), ts("2024-05-20")  # Monday to Monday, across a weekend
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "1H", start, end)
    truth = fake_upstream.expected_candles("EUR/USD", "1H", start, end)
    assert result.candles == truth
    # Every hour outside the weekend closure (Friday 17:00 to Sunday 17:00 New York = 21:00 UTC in
    # May), and whatever weekend hours the provider has.
    closes, reopens = fu.weekend_closure(start)
    assert (closes, reopens) == (ts("2024-05-17 21:00"), ts("2024-05-19 21:00"))
    open_hours = [t for t in range(start, end + 1, HOUR) if not closes <= t < reopens]
    assert {c.time for c in truth} >= set(open_hours) and len(open_hours) == 5 * 24 + 1
    assert all(c.volume == 0.0 for c in result.candles)
    # The request asked for UTC, oldest first, and did not put the key in the URL.
    (path, query), *_ = fake_upstream.requests
    assert path == SERIES and query["timezone"] == "UTC" and query.get("order") == "asc"
    assert "apikey" not in query
    assert fake_upstream.requests[0].headers["authorization"] == f"apikey {TEST_TWELVE_DATA_API_KEY}"


@pytest.mark.parametrize(
    ("interval", "start", "end"),
    [
        ("1D", "2024-02-20", "2024-03-08"),
        ("1W", "2023-12-01", "2024-02-01"),
        ("1M", "2023-10-01", "2024-04-01"),
    ],
)
def test_daily_and_longer_forex_bars_are_midnight_utc(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, interval: str, start: str, end: str
) -> None:
    # (The client reads Twelve Data's own 1week/1month bars here; the service builds 1W/1M from 1day.)
    result = twelve_on_fake.fetch_timeseries("USD/JPY", interval, ts(start), ts(end))
    assert result.candles == fake_upstream.expected_candles("USD/JPY", interval, ts(start), ts(end))
    assert result.candles and all(c.time % DAY == 0 for c in result.candles)
    if interval == "1D":
        # Every weekday, and the Saturday- and Sunday-dated bars the provider has: none is dropped.
        weekdays = [t for t in range(ts(start), ts(end) + 1, DAY) if time.gmtime(t).tm_wday < 5]
        assert {c.time for c in result.candles} >= set(weekdays) and result.dropped == 0


@pytest.mark.parametrize("populated", [True, False])
def test_weekend_bars_are_kept_and_the_weekend_covered(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, populated: bool
) -> None:
    monday = next(
        m for m in range(ts("2024-01-01"), ts("2025-01-01"), 7 * DAY) if fu.weekend_populated(m) == populated
    )
    start, end = monday + 5 * DAY, monday + 6 * DAY + 20 * HOUR  # Saturday 00:00 .. Sunday 20:00 UTC
    result = twelve_on_fake.fetch_timeseries("GBP/USD", "1H", start, end)
    truth = fake_upstream.expected_candles("GBP/USD", "1H", start, end)
    assert result.candles == truth and result.pages == 1 and result.dropped == 0
    assert len(truth) == 45 if populated else len(truth) < 10  # throughout, or a few sporadic hours
    assert result.covered == [(start, end)]
    assert fake_upstream.count(SERIES) == 1


def test_weekend_range_without_bars_is_a_covered_empty_page(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.forex_model = "simple"  # no weekend bars at all: the 2026 code 400 "no data" body
    start, end = ts("2024-05-18"), ts("2024-05-19 21:00")  # Saturday 00:00 .. Sunday 21:00
    result = twelve_on_fake.fetch_timeseries("GBP/USD", "1H", start, end)
    assert result.candles == [] and result.pages == 1
    assert result.covered == [(start, end)]
    assert fake_upstream.count(SERIES) == 1


def test_a_long_minute_range_pages_in_windows_of_at_most_5000(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    start, end = ts("2024-03-04"), ts("2024-03-18") - 60  # two weeks of 1-minute bars
    result = twelve_on_fake.fetch_timeseries("EUR/GBP", "1m", start, end)
    assert result.candles == fake_upstream.expected_candles("EUR/GBP", "1m", start, end)
    nominal = (end - start) // 60 + 1
    assert fake_upstream.count(SERIES) == result.pages == -(-nominal // 4999)
    assert all(int(q["outputsize"]) <= 5000 for _, q in fake_upstream.requests)
    covered_bars = sum((b - a) // 60 + 1 for a, b in result.covered)
    assert covered_bars == nominal


def test_open_forex_bar_is_split(twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream) -> None:
    fake_upstream.now = ts("2026-01-14 12:07:10")
    start = ts("2026-01-14 11:00")
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "15m", start, ts("2026-01-14 13:00"))
    assert [c.time for c in result.candles] == [start + i * 900 for i in range(4)]
    assert (
        result.open_bar
        == fake_upstream.expected_candles("EUR/USD", "15m", start, ts("2026-01-14 13:00"), include_open=True)[
            -1
        ]
    )
    assert result.open_bar is not None and result.open_bar.time == ts("2026-01-14 12:00")


def test_no_data_404_before_the_history_is_an_empty_result(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "1D", ts("1999-01-01"), ts("1999-06-01"))
    assert result.candles == [] and result.covered == [(ts("1999-01-01"), ts("1999-06-01"))]


@pytest.mark.parametrize("string_codes", [False, True])
@pytest.mark.parametrize("real_status", [False, True])
def test_no_data_with_either_transport_and_code_type_is_still_empty(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, real_status: bool, string_codes: bool
) -> None:
    fake_upstream.twelve_data_real_status = real_status
    fake_upstream.twelve_data_string_codes = string_codes
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "1H", ts("2004-05-18"), ts("2004-05-19"))
    assert result.candles == [] and result.pages == 1
    assert result.covered == [(ts("2004-05-18"), ts("2004-05-19"))]


@pytest.mark.parametrize("string_codes", [False, True])
@pytest.mark.parametrize("real_status", [False, True])
def test_unknown_and_plan_gated_pairs_are_typed_errors_before_any_page(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, real_status: bool, string_codes: bool
) -> None:
    fake_upstream.twelve_data_real_status = real_status
    fake_upstream.twelve_data_string_codes = string_codes
    with pytest.raises(SymbolNotFound):
        next(twelve_on_fake.iter_pages("ABC/XYZ", Interval.H1, ts("2024-05-13"), ts("2024-05-14")))
    with pytest.raises(SymbolNotInPlan) as info:
        next(twelve_on_fake.iter_pages("USD/TRY", Interval.H1, ts("2024-05-13"), ts("2024-05-14")))
    assert info.value.symbol == "USD/TRY" and info.value.plan == "Grow or Venture"
    assert fake_upstream.count(SERIES) == 2  # neither is retried


def test_unknown_forex_symbol_is_symbol_not_found(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    with pytest.raises(SymbolNotFound):
        twelve_on_fake.fetch_timeseries("ABC/XYZ", "1H", ts("2024-05-13"), ts("2024-05-14"))
    assert fake_upstream.count(SERIES) == 1


def test_wrong_api_key_is_an_auth_error_without_the_key(fake_upstream: FakeUpstream) -> None:
    key = "wrong-key-DO-NOT-LEAK-42"
    client = TwelveDataClient(settings_for(fake_upstream, TWELVE_DATA_API_KEY=key), clock=fake_upstream.clock)
    try:
        with pytest.raises(UpstreamAuthError) as info:
            client.fetch_timeseries("EUR/USD", "1H", ts("2024-05-13"), ts("2024-05-14"))
    finally:
        client.close()
    assert key not in str(info.value) and fake_upstream.count(SERIES) == 1


@pytest.mark.parametrize(
    ("kind", "extra"),
    [
        ("error_body", {"code": 500}),  # {"code": 500, "status": "error"} with HTTP 200
        (500, {}),
        (502, {}),
        ("timeout", {}),
        ("reset", {}),
        (429, {"retry_after": 1}),
    ],
)
def test_twelve_data_transient_faults_are_retried(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, kind: object, extra: dict[str, float]
) -> None:
    fake_upstream.fail_next(1, kind, SERIES, **extra)
    start, end = ts("2024-05-13"), ts("2024-05-14")
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "1H", start, end)
    assert result.candles == fake_upstream.expected_candles("EUR/USD", "1H", start, end)
    assert fake_upstream.count(SERIES) == 2


@pytest.mark.parametrize("kind", ["malformed", "html", "truncated", "wrong_shape"])
def test_twelve_data_unreadable_bodies_are_bad_responses(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, kind: str
) -> None:
    fake_upstream.fail_next(1, kind, SERIES)
    with pytest.raises(UpstreamBadResponse):
        twelve_on_fake.fetch_timeseries("EUR/USD", "1H", ts("2024-05-13"), ts("2024-05-14"))
    assert fake_upstream.count(SERIES) == 1


def test_out_of_minute_credits_is_rate_limited_until_the_next_minute(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(1, "td_credits", SERIES)  # the 429 body with HTTP 200, no Retry-After
    with pytest.raises(UpstreamRateLimited) as info:
        twelve_on_fake.fetch_timeseries("EUR/USD", "1H", ts("2024-05-13"), ts("2024-05-14"))
    assert info.value.retry_after == 30  # the fake clock is 30 s into the minute
    assert fake_upstream.count(SERIES) == 1


def test_free_tier_credit_limit_stops_a_long_fetch(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.twelve_data_credits_per_minute = 2
    start = ts("2024-03-04")
    pages = twelve_on_fake.iter_pages("EUR/GBP", Interval.M1, start, start + 20_000 * 60)
    assert len(next(pages).candles) > 0 and len(next(pages).candles) > 0
    with pytest.raises(UpstreamRateLimited):
        next(pages)
    assert fake_upstream.count(SERIES) == 3


def test_bad_forex_bar_is_dropped(twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail_next(1, "bad_bar", SERIES)
    start, end = ts("2024-05-13"), ts("2024-05-13 05:00")
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "1H", start, end)
    assert (
        result.dropped == 1
        and result.candles == fake_upstream.expected_candles("EUR/USD", "1H", start, end)[1:]
    )
    assert result.covered == []


def test_forex_symbols_are_the_25_pairs(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    assert twelve_on_fake.get_available_symbols() == sorted(fu.FOREX_PAIRS)


ALL_APP_INTERVALS = ["1m", "5m", "15m", "30m", "1H", "4H", "1D", "1W", "1M"]


@pytest.mark.parametrize("interval", ALL_APP_INTERVALS)
def test_every_binance_interval_equals_the_truth(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream, interval: str
) -> None:
    start, end = ts("2023-12-28 13:17"), ts("2024-01-03 09:00")  # a mid-bar start, across a year end
    result = binance_on_fake.fetch_klines("SOLUSDT", interval, start, end)
    truth = fake_upstream.expected_candles("SOLUSDT", interval, start, end)
    assert result.candles == truth
    assert fake_upstream.count(KLINES) == max(1, -(-len(truth) // 1000))


@pytest.mark.parametrize("interval", [i for i in ALL_APP_INTERVALS if i != "4H"])
def test_every_forex_interval_equals_the_truth_across_a_weekend(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, interval: str
) -> None:
    start, end = ts("2024-02-28 13:17"), ts("2024-03-05 09:00")  # leap day, then Fri 1 Mar - Sun 3 Mar
    result = twelve_on_fake.fetch_timeseries("AUD/NZD", interval, start, end)
    truth = fake_upstream.expected_candles("AUD/NZD", interval, start, end)
    assert result.candles == truth and result.dropped == 0
    assert truth or interval == "1M"  # no monthly bar opens inside this range


def test_native_forex_4h_bars_are_off_the_grid_and_dropped(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream
) -> None:
    # Twelve Data's own 4h bars open at 17:00 New York + 4k hours (02:00, 06:00 ... UTC in winter):
    # none is on the UTC 4H grid, so the client keeps none and covers nothing. (The service never asks
    # for them: it builds forex 4H from 1h bars.)
    start, end = ts("2024-02-28 13:17"), ts("2024-03-05 09:00")
    result = twelve_on_fake.fetch_timeseries("AUD/NZD", "4H", start, end)
    provider_bars = fake_upstream.expected_candles("AUD/NZD", "4H", start, end)
    assert provider_bars and all(c.time % (4 * HOUR) == 2 * HOUR for c in provider_bars)
    # (The 14:00 bar before the first 4H slot of the range, 16:00, is outside the window: ignored.)
    in_window = [c for c in provider_bars if c.time >= ts("2024-02-28 16:00")]
    assert result.candles == [] and result.dropped == len(in_window) and result.covered == []
    fake_upstream.forex_model = "simple"  # bars on the epoch grid are read like any other
    assert twelve_on_fake.fetch_timeseries("AUD/NZD", "4H", start, end).candles == (
        fake_upstream.expected_candles("AUD/NZD", "4H", start, end)
    )


@pytest.mark.parametrize("model", ["simple", "real"])
def test_weekend_now_coverage_stops_at_the_last_closed_hour(
    twelve_on_fake: TwelveDataClient, fake_upstream: FakeUpstream, model: str
) -> None:
    fake_upstream.forex_model = model
    fake_upstream.now = ts("2024-05-18 10:30")  # Saturday
    start, end = ts("2024-05-17 12:00"), ts("2024-05-18 23:00")
    result = twelve_on_fake.fetch_timeseries("EUR/USD", "1H", start, end)
    assert result.candles == fake_upstream.expected_candles("EUR/USD", "1H", start, end)
    assert result.open_bar == (
        None if (bar := fake_upstream.open_bar("EUR/USD", "1H")) is None else Candle(*bar)
    )
    if model == "simple":  # no weekend bars: the last is Friday 21:00 UTC, and no open bar
        assert [c.time for c in result.candles] == [ts(f"2024-05-17 {h}:00") for h in range(12, 22)]
        assert result.open_bar is None
    assert result.covered == [(start, ts("2024-05-18 09:00"))]


@pytest.mark.parametrize("provider", ["binance", "twelve_data"])
def test_duplicate_rows_are_deduplicated_keeping_the_first(
    binance_on_fake: BinanceClient,
    twelve_on_fake: TwelveDataClient,
    fake_upstream: FakeUpstream,
    provider: str,
) -> None:
    fake_upstream.fail_next(1, "duplicate")
    start, end = ts("2024-05-13"), ts("2024-05-13 05:00")
    if provider == "binance":
        result = binance_on_fake.fetch_klines("BTCUSDT", "1H", start, end)
        truth = fake_upstream.expected_candles("BTCUSDT", "1H", start, end)
    else:
        result = twelve_on_fake.fetch_timeseries("EUR/USD", "1H", start, end)
        truth = fake_upstream.expected_candles("EUR/USD", "1H", start, end)
    assert result.candles == truth and result.dropped == 0


def test_exchange_outage_hole_is_covered_without_bars(
    binance_on_fake: BinanceClient, fake_upstream: FakeUpstream
) -> None:
    start, end = ts("2018-02-07"), ts("2018-02-10")
    result = binance_on_fake.fetch_klines("BTCUSDT", "15m", start, end)
    truth = fake_upstream.expected_candles("BTCUSDT", "15m", start, end)
    assert result.candles == truth and len(truth) == 3 * 96 + 1 - 26 * 4
    assert result.covered == [(start, end)] and fake_upstream.count(KLINES) == 1
