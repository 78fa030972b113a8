"""Cache-first history rules, checked precisely with the provider double against the real store."""

from __future__ import annotations

import calendar

import pytest

from marketdata.intervals import (
    ALL_INTERVALS,
    Interval,
    add_bars,
    bar_open,
    last_closed_open,
    next_open,
)
from marketdata.schemas import AssetClass, CacheStatus
from marketdata.service import MarketDataService
from tests.cache.service_helpers import NOW, DoubleProvider, FrozenClock, is_forex_closed, make_bar

H1 = Interval.H1
LAST_H1 = last_closed_open(H1, NOW)


def ts(*parts: int) -> int:
    return calendar.timegm((*parts, 0, 0, 0)[:6])


@pytest.fixture
def crypto(clock: FrozenClock) -> DoubleProvider:
    return DoubleProvider(clock, listed=ts(2017, 8, 17))


@pytest.fixture
def forex(clock: FrozenClock) -> DoubleProvider:
    return DoubleProvider(clock, asset_class=AssetClass.FOREX, max_page_bars=5000)


@pytest.fixture
def service(store, db_settings, crypto, forex, clock) -> MarketDataService:
    return MarketDataService(
        store, {AssetClass.CRYPTO: crypto, AssetClass.FOREX: forex}, db_settings, clock=clock
    )


def stored_rows(raw_conn, symbol: str, interval: Interval) -> list[int]:
    rows = raw_conn.run(
        "SELECT open_time FROM ohlcv_cache WHERE symbol = :s AND interval = :i ORDER BY open_time",
        s=symbol,
        i=interval.value,
    )
    return [r[0] for r in rows]


def coverage_rows(raw_conn, symbol: str, interval: Interval) -> list[tuple[int, int]]:
    rows = raw_conn.run(
        "SELECT start_time, end_time FROM ohlcv_coverage WHERE symbol = :s AND interval = :i ORDER BY 1",
        s=symbol,
        i=interval.value,
    )
    return [(r[0], r[1]) for r in rows]


# --- cache hit, overlap, minimum pages ------------------------------------------------------------


def test_cold_request_fills_in_minimum_pages_then_repeat_is_a_hit(service, crypto, raw_conn) -> None:
    first = service.get_historical_candles("btcusdt", "1H", limit=1500)
    lo = add_bars(H1, LAST_H1, -1499)
    truth = crypto.truth("BTCUSDT", H1, lo, LAST_H1)
    assert len(truth) == 1500
    assert (
        first.symbol == "BTCUSDT" and first.provider == "binance" and first.asset_class is AssetClass.CRYPTO
    )
    assert first.candles == truth
    assert first.cache is CacheStatus.MISS
    # The latest bars are filled newest first, in whole pages (the second reaches 500 bars further back).
    page_lo = add_bars(H1, LAST_H1, -1999)
    assert first.provider_calls == 2 and first.rows_written == 2000
    assert crypto.requests == [
        ("BTCUSDT", H1, add_bars(H1, LAST_H1, -999), LAST_H1),
        ("BTCUSDT", H1, page_lo, add_bars(H1, LAST_H1, -1000)),
    ]
    assert first.next_start is None and first.reaches_present
    stored = crypto.truth("BTCUSDT", H1, page_lo, LAST_H1)
    assert stored_rows(raw_conn, "BTCUSDT", H1) == [c.time for c in stored]
    assert coverage_rows(raw_conn, "BTCUSDT", H1) == [(page_lo, LAST_H1)]

    second = service.get_historical_candles("BTCUSDT", H1, limit=1500)
    assert second.candles == truth
    assert second.cache is CacheStatus.HIT
    assert second.provider_calls == 0 and second.rows_written == 0
    assert crypto.calls == 2


def test_overlap_fetches_only_the_uncovered_parts(service, crypto) -> None:
    base = add_bars(H1, LAST_H1, -4000)
    service.get_historical_candles("BTCUSDT", "1H", start=base, end=add_bars(H1, base, 999), limit=5000)
    assert crypto.calls == 1
    crypto.requests.clear()

    wide_lo, wide_hi = add_bars(H1, base, -200), add_bars(H1, base, 1499)
    result = service.get_historical_candles("BTCUSDT", "1H", start=wide_lo, end=wide_hi, limit=5000)
    assert result.candles == crypto.truth("BTCUSDT", H1, wide_lo, wide_hi)
    # Two gaps, one whole page each from the gap on (the second reaches ahead of the answer).
    assert result.cache is CacheStatus.MISS and result.rows_written == 200 + 1000
    assert crypto.requests == [
        ("BTCUSDT", H1, wide_lo, add_bars(H1, base, 799)),
        ("BTCUSDT", H1, add_bars(H1, base, 1000), add_bars(H1, base, 1999)),
    ]
    crypto.requests.clear()

    # After what is cached (to base + 1999): 2000 uncovered bars, 2 pages, nothing refetched.
    far_hi = add_bars(H1, wide_hi, 2500)
    result = service.get_historical_candles("BTCUSDT", "1H", start=base, end=far_hi, limit=5000)
    assert len(result.candles) == 4000
    assert result.candles == crypto.truth("BTCUSDT", H1, base, far_hi)
    assert [r[2] for r in crypto.requests] == [add_bars(H1, base, k) for k in (2000, 3000)]
    assert result.provider_calls == 2 and result.rows_written == 2000


def test_forex_weekend_is_remembered_as_covered(service, forex, raw_conn) -> None:
    friday, monday_end = ts(2024, 5, 10), ts(2024, 5, 13, 23)
    first = service.get_historical_candles("EUR/USD", "1H", start=friday, end=monday_end, limit=5000)
    truth = forex.truth("EUR/USD", H1, friday, monday_end)
    assert first.candles == truth
    assert not any(is_forex_closed(H1, c.time) for c in first.candles)
    assert len(truth) == 22 + 2 + 24  # Friday until 22:00, Sunday from 22:00, Monday
    assert forex.calls == 1

    again = service.get_historical_candles("EUR/USD", "1H", start=friday, end=monday_end, limit=5000)
    assert again.candles == truth and again.cache is CacheStatus.HIT and forex.calls == 1

    # A range entirely inside the weekend is empty, and that emptiness is remembered too.
    saturday = ts(2024, 5, 11)
    inside = service.get_historical_candles("EUR/USD", "1H", start=saturday, end=saturday + 23 * 3600)
    assert inside.candles == [] and forex.calls == 1
    assert coverage_rows(raw_conn, "EUR/USD", H1) == [(friday, LAST_H1)]  # one whole page, to the present


def test_latest_forex_bars_widen_across_weekends_to_reach_the_limit(service, forex) -> None:
    result = service.get_historical_candles("EUR/USD", "1H", limit=500)
    truth = forex.truth("EUR/USD", H1, add_bars(H1, LAST_H1, -1000), LAST_H1)[-500:]
    assert result.candles == truth and len(result.candles) == 500
    assert result.provider_calls <= 2
    calls = forex.calls
    again = service.get_historical_candles("EUR/USD", "1H", limit=500)
    assert again.candles == truth and again.cache is CacheStatus.HIT and forex.calls == calls

    daily = service.get_historical_candles("EUR/USD", "1D", end=ts(2024, 5, 1), limit=100)
    assert len(daily.candles) == 100
    assert daily.candles == forex.truth("EUR/USD", Interval.D1, ts(2023, 1, 1), ts(2024, 5, 1))[-100:]
    assert daily.next_start is None and not daily.reaches_present


def test_latest_bars_asked_on_a_weekend_reach_back_to_friday(service, forex) -> None:
    daily = service.get_historical_candles("EUR/USD", "1D", end=ts(2024, 5, 12, 12), limit=1)
    assert daily.candles == [make_bar("EUR/USD", Interval.D1, ts(2024, 5, 10))]
    hourly = service.get_historical_candles("EUR/USD", "1H", end=ts(2024, 5, 11, 12), limit=3)
    assert [c.time for c in hourly.candles] == [ts(2024, 5, 10, h) for h in (19, 20, 21)]


# --- the open bar ---------------------------------------------------------------------------------


def test_open_bar_is_returned_live_and_never_stored(service, crypto, raw_conn) -> None:
    open_time = bar_open(H1, NOW)
    result = service.get_historical_candles("BTCUSDT", "1H", limit=10, include_open=True)
    assert len(result.candles) == 11
    assert result.candles[:10] == crypto.truth("BTCUSDT", H1, add_bars(H1, LAST_H1, -9), LAST_H1)
    assert result.candles[-1] == make_bar("BTCUSDT", H1, open_time, open_bar=True)
    assert result.reaches_present
    assert max(stored_rows(raw_conn, "BTCUSDT", H1)) == LAST_H1
    assert max(end for _, end in coverage_rows(raw_conn, "BTCUSDT", H1)) == LAST_H1

    # Asked again within BINANCE_OPEN_BAR_TTL_SECONDS: the open bar fetched for the first caller serves
    # every caller (shared in Postgres), with no call at all.
    before = crypto.calls
    again = service.get_historical_candles("BTCUSDT", "1H", limit=10, include_open=True)
    assert again.candles == result.candles and again.cache is CacheStatus.HIT
    assert crypto.calls == before and again.provider_calls == 0
    # Past the TTL it is fetched live again (one call), and still never stored.
    crypto.clock.now += 3
    later = service.get_historical_candles("BTCUSDT", "1H", limit=10, include_open=True)
    assert later.candles[-1] == make_bar("BTCUSDT", H1, open_time, open_bar=True)
    assert crypto.calls == before + 1 and later.provider_calls == 1
    assert max(stored_rows(raw_conn, "BTCUSDT", H1)) == LAST_H1
    before += 1

    # A range that ends before the open bar never includes it.
    closed_only = service.get_historical_candles("BTCUSDT", "1H", end=LAST_H1, limit=10, include_open=True)
    assert closed_only.candles == result.candles[:10] and crypto.calls == before

    # Without include_open the open bar is not there.
    plain = service.get_historical_candles("BTCUSDT", "1H", limit=10)
    assert plain.candles[-1].time == LAST_H1


# --- range and limit edges ------------------------------------------------------------------------


def test_start_equals_end(service, crypto, raw_conn) -> None:
    t = add_bars(H1, LAST_H1, -5)
    one = service.get_historical_candles("BTCUSDT", "1H", start=t, end=t)
    assert one.candles == [make_bar("BTCUSDT", H1, t)] and one.next_start is None and not one.reaches_present

    # Mid-bar: the bar opening at or after start is after end, so there is nothing (and nothing is asked).
    calls = crypto.calls
    none = service.get_historical_candles("BTCUSDT", "1H", start=t + 60, end=t + 60)
    assert none.candles == [] and crypto.calls == calls and none.cache is CacheStatus.HIT
    # One whole page was fetched from t on: up to the present.
    assert stored_rows(raw_conn, "BTCUSDT", H1) == [c.time for c in crypto.truth("BTCUSDT", H1, t, LAST_H1)]


def test_start_mid_bar_skips_to_the_next_bar_and_end_mid_bar_includes_its_bar(service) -> None:
    t = add_bars(H1, LAST_H1, -10)
    result = service.get_historical_candles("BTCUSDT", "1H", start=t + 1, end=add_bars(H1, t, 3) + 1799)
    assert [c.time for c in result.candles] == [add_bars(H1, t, k) for k in (1, 2, 3)]


def test_end_in_the_future_stops_at_the_last_closed_bar(service, crypto) -> None:
    start = add_bars(H1, LAST_H1, -9)
    result = service.get_historical_candles("BTCUSDT", "1H", start=start, end=NOW + 10 * 86400)
    assert result.candles == crypto.truth("BTCUSDT", H1, start, LAST_H1)
    assert result.next_start is None and result.reaches_present
    future = service.get_historical_candles("BTCUSDT", "1H", start=NOW + 86400)
    assert future.candles == [] and future.next_start is None and future.reaches_present


def test_range_before_listing_is_empty_and_remembered(service, crypto, raw_conn) -> None:
    d1 = Interval.D1
    result = service.get_historical_candles("BTCUSDT", "1D", start=ts(2017, 1, 1), end=ts(2017, 2, 1))
    assert result.candles == [] and crypto.calls == 1
    # One whole page from the start: the 1000 days after it are known (bars from the listing on).
    assert coverage_rows(raw_conn, "BTCUSDT", d1) == [(ts(2017, 1, 1), add_bars(d1, ts(2017, 1, 1), 999))]
    again = service.get_historical_candles("BTCUSDT", "1D", start=ts(2017, 1, 1), end=ts(2017, 2, 1))
    assert again.candles == [] and again.cache is CacheStatus.HIT and crypto.calls == 1

    # Only a start shortly before the listing: the window widens forward to the first `limit` bars.
    listed = service.get_historical_candles("BTCUSDT", "1D", start=ts(2017, 8, 10), limit=10)
    assert [c.time for c in listed.candles] == [ts(2017, 8, 17) + k * 86400 for k in range(10)]
    assert listed.next_start == ts(2017, 8, 27)


def test_limit_one_and_five_thousand(service, crypto) -> None:
    one = service.get_historical_candles("BTCUSDT", "1H", limit=1)
    assert one.candles == [make_bar("BTCUSDT", H1, LAST_H1)] and crypto.calls == 1

    m1 = Interval.M1
    start = ts(2024, 5, 1)
    big = service.get_historical_candles("BTCUSDT", "1m", start=start, limit=5000)
    truth = crypto.truth("BTCUSDT", m1, start, add_bars(m1, start, 4999))
    # Five pages fill the largest answer: within BINANCE_MAX_REQUESTS_PER_CALL (5).
    assert big.candles == truth and big.cache is CacheStatus.MISS
    assert big.provider_calls == 5 and big.rows_written == 5000
    assert big.next_start == add_bars(m1, start, 5000) and not big.reaches_present


def test_next_start_pages_through_a_range_exactly(service, crypto) -> None:
    start, end = add_bars(H1, LAST_H1, -2999), LAST_H1
    collected = []
    cursor: int | None = start
    pages = 0
    while cursor is not None:
        page = service.get_historical_candles("BTCUSDT", "1H", start=cursor, end=end, limit=1000)
        assert page.reaches_present == (page.next_start is None)
        collected.extend(page.candles)
        cursor = page.next_start
        pages += 1
    assert pages == 3
    assert collected == crypto.truth("BTCUSDT", H1, start, end)
    assert crypto.calls == 3


def test_only_end_returns_the_last_bars_up_to_end(service, crypto) -> None:
    end = add_bars(H1, LAST_H1, -100) + 1234  # mid-bar
    result = service.get_historical_candles("BTCUSDT", "1H", end=end, limit=50)
    last = bar_open(H1, end)
    assert result.candles == crypto.truth("BTCUSDT", H1, add_bars(H1, last, -49), last)
    assert result.next_start is None and not result.reaches_present


@pytest.mark.parametrize("interval", ALL_INTERVALS, ids=lambda i: i.value)
def test_every_interval_latest_bars_then_hit(service, crypto, interval: Interval) -> None:
    result = service.get_historical_candles("ETHUSDT", interval.value, limit=30)
    last = last_closed_open(interval, NOW)
    assert result.candles == crypto.truth("ETHUSDT", interval, add_bars(interval, last, -29), last)
    assert len(result.candles) == 30
    assert all(next_open(interval, c.time) <= NOW for c in result.candles)
    assert result.cache is CacheStatus.MISS and crypto.calls == 1
    again = service.get_historical_candles("ETHUSDT", interval.value, limit=30)
    assert again.candles == result.candles and again.cache is CacheStatus.HIT and crypto.calls == 1


def test_calendar_intervals_mid_bar_bounds(service, crypto) -> None:
    # Weeks open Monday 00:00 UTC: a Wednesday start skips to the next Monday, a Wednesday end keeps its week.
    weeks = service.get_historical_candles("BTCUSDT", "1W", start=ts(2024, 1, 3), end=ts(2024, 2, 7))
    assert [c.time for c in weeks.candles] == [
        ts(2024, 1, 8),
        ts(2024, 1, 15),
        ts(2024, 1, 22),
        ts(2024, 1, 29),
        ts(2024, 2, 5),
    ]
    # Calendar months: a mid-month start skips to the next month; next_start is the following month.
    months = service.get_historical_candles(
        "BTCUSDT", "1M", start=ts(2023, 1, 15), end=ts(2024, 3, 31), limit=6
    )
    assert [c.time for c in months.candles] == [ts(2023, m, 1) for m in range(2, 8)]
    assert months.next_start == ts(2023, 8, 1)
    rest = service.get_historical_candles(
        "BTCUSDT", "1M", start=months.next_start, end=ts(2024, 3, 31), limit=6
    )
    assert [c.time for c in rest.candles] == [ts(2023, m, 1) for m in range(8, 13)] + [ts(2024, 1, 1)]
    assert crypto.calls == 2  # weeks once, months once (one whole page reaches past both answers)
