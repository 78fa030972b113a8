"""Derived intervals through the cache: forex 4H from 1h, 1W and 1M from 1day, on the service's grid.

The store's SQL aggregation is held to the Python one (marketdata.resample) on the same rows, and the
service end to end to the fake upstream's truth (tests.support.truth, computed with the fake's own
arithmetic), with provider requests counted where they arrive.
"""

from __future__ import annotations

import calendar
import random

import pytest

from marketdata.intervals import Interval, add_bars, bar_open, base_span, last_closed_open, next_open
from marketdata.resample import resample
from marketdata.schemas import AssetClass, CacheStatus, Candle
from tests.cache.service_helpers import NOW, real_service
from tests.support.truth import service_truth
from tests.support.upstream_fixtures import settings_for

SERIES = "/time_series"
H1, H4, D1, W1, MO1 = Interval.H1, Interval.H4, Interval.D1, Interval.W1, Interval.MO1
H, D = 3600, 86400


def ts(*args: int) -> int:
    return calendar.timegm((*args, 0, 0, 0, 0, 0, 0)[:6])


# --- the store: SQL aggregation equals the Python one ------------------------------------------------


def _random_bars(times: list[int], seed: int) -> list[Candle]:
    rng = random.Random(seed)
    out = []
    for t in times:
        o, c = rng.uniform(1, 2), rng.uniform(1, 2)
        high, low = max(o, c) + rng.random() / 7, min(o, c) - rng.random() / 7
        out.append(Candle(t, o, high, low, c, rng.choice([0.0, rng.random() * 10**rng.randint(0, 9)])))
    return out


@pytest.mark.parametrize(
    ("interval", "base", "first", "count", "step"),
    [
        (H4, H1, ts(2024, 3, 1), 24 * 40, H),  # across the March DST switch and month ends
        (W1, D1, 0, 60, D),  # days before the first Monday (1970-01-05) included
        (W1, D1, ts(2023, 12, 1), 120, D),
        (MO1, D1, ts(2023, 11, 15), 500, D),  # leap February 2024
    ],
)
def test_store_builds_the_same_bars_as_resample(store, interval, base, first, count, step) -> None:
    rng = random.Random(count)
    times = [first + i * step for i in range(count) if rng.random() > 0.3]  # gaps, weekend-like holes
    bars = _random_bars(times, seed=count)
    store.store_candles("twelve_data", "EUR/USD", base, bars)
    lo, hi = bar_open(interval, first), bar_open(interval, times[-1])
    expected = resample(interval, bars)
    assert store.read_candles("EUR/USD", interval, lo, hi, base=base) == expected
    # limit and newest select whole built bars, ascending, like a native read.
    assert store.read_candles("EUR/USD", interval, lo, hi, base=base, limit=3) == expected[:3]
    assert store.read_candles("EUR/USD", interval, lo, hi, base=base, limit=3, newest=True) == expected[-3:]
    # A window starting mid-bar skips that bar; one ending mid-bar takes that whole bar.
    inner_lo, inner_hi = next_open(interval, lo) + 1, next_open(interval, next_open(interval, lo)) + 1
    span = base_span(interval, base, inner_lo, inner_hi)
    inside = resample(interval, [b for b in bars if span[0] <= b.time <= span[1]])
    assert store.read_candles("EUR/USD", interval, inner_lo, inner_hi, base=base) == inside
    # Nothing of another series or interval leaks in.
    store.store_candles("twelve_data", "GBP/USD", base, _random_bars(times, seed=1))
    assert store.read_candles("EUR/USD", interval, lo, hi, base=base) == expected


# --- the service end to end -----------------------------------------------------------------------


def _intervals_stored(raw_conn, table: str = "ohlcv_cache") -> set[str]:
    return {row[0] for row in raw_conn.run(f"SELECT DISTINCT interval FROM {table}")}


def _asked(fake) -> list[str]:
    return [r.query["interval"] for r in fake.requests if r.path == SERIES]


def test_cold_500_bar_4h_is_one_hour_request_then_a_hit(service, fake, raw_conn) -> None:
    result = service.get_historical_candles("EUR/USD", "4H", limit=500)
    last = last_closed_open(H4, NOW)
    truth = service_truth(fake, "EUR/USD", "4H", add_bars(H4, last, -1000), last)[-500:]
    assert len(result.candles) == 500 and result.candles == truth
    assert _asked(fake) == ["1h"]  # one request, for hours
    assert _intervals_stored(raw_conn) == {"1H"} and _intervals_stored(raw_conn, "ohlcv_coverage") == {"1H"}
    again = service.get_historical_candles("EUR/USD", "4H", limit=500)
    assert again.candles == truth and again.cache is CacheStatus.HIT and fake.count(SERIES) == 1


@pytest.mark.parametrize(
    "monday",
    [ts(2024, 1, 8), ts(2023, 7, 10)],  # New York in winter (UTC-5) and in summer (UTC-4)
    ids=["winter", "summer"],
)
def test_a_week_of_4h_equals_the_hour_aggregate_on_the_utc_grid(service, fake, monday) -> None:
    start, end = monday - D, monday + 6 * D  # Sunday to Sunday: the weekend's edges included
    result = service.get_historical_candles("EUR/USD", "4H", start=start, end=end, limit=5000)
    truth = service_truth(fake, "EUR/USD", "4H", start, end)
    assert result.candles == truth and len(truth) >= 30
    assert all(c.time % (4 * H) == 0 for c in result.candles)
    assert fake.count(SERIES) == 1
    again = service.get_historical_candles("EUR/USD", "4H", start=start, end=end, limit=5000)
    assert again.candles == truth and again.cache is CacheStatus.HIT and fake.count(SERIES) == 1


def test_hours_already_cached_serve_4h_without_a_request(service, fake) -> None:
    start, end = ts(2024, 2, 5), ts(2024, 2, 9, 20)
    service.get_historical_candles("EUR/USD", "1H", start=start, end=end + 3 * H, limit=5000)
    assert fake.count(SERIES) == 1
    result = service.get_historical_candles("EUR/USD", "4H", start=start, end=end, limit=5000)
    assert result.candles == service_truth(fake, "EUR/USD", "4H", start, end)
    assert result.cache is CacheStatus.HIT and fake.count(SERIES) == 1


def test_a_4h_bar_is_known_only_once_all_its_hours_are(service, fake, raw_conn) -> None:
    monday = ts(2024, 2, 12)
    # Hours up to 02:00 cached (a request for the bars up to it fills a whole page back from 02:00): the
    # 00:00 4H bar still lacks its 03:00 hour.
    service.get_historical_candles("EUR/USD", "1H", end=monday + 2 * H, limit=3)
    assert fake.count(SERIES) == 1
    result = service.get_historical_candles("EUR/USD", "4H", start=monday, end=monday, limit=10)
    assert result.candles == service_truth(fake, "EUR/USD", "4H", monday, monday)
    assert len(result.candles) == 1 and result.cache is CacheStatus.MISS
    asked = [r.query for r in fake.requests if r.path == SERIES][-1]
    assert asked["interval"] == "1h" and asked["start_date"] == "2024-02-12 03:00:00"  # only the missing hour


def test_open_4h_bar_is_built_from_its_closed_hours_and_the_open_hour(service, fake) -> None:
    result = service.get_historical_candles("EUR/USD", "4H", limit=2, include_open=True)
    open_time = bar_open(H4, int(NOW))  # 08:00; NOW is 10:37: hours 08 and 09 closed, 10 open
    truth = service_truth(fake, "EUR/USD", "4H", open_time, open_time, include_open=True)
    assert len(truth) == 1 and result.candles[-1] == truth[0]
    hours = fake.expected_bars("EUR/USD", "1h", open_time, int(NOW), include_open=True)
    assert [h.time for h in hours] == [open_time, open_time + H, open_time + 2 * H]
    assert result.candles[-1].open == hours[0].open and result.candles[-1].close == hours[-1].close
    assert result.candles[:-1] == service_truth(fake, "EUR/USD", "4H", add_bars(H4, open_time, -10), NOW)[-2:]


@pytest.mark.parametrize(("interval", "bars"), [("1W", 30), ("1M", 14)])
def test_weeks_and_months_are_built_from_trading_days(service, fake, raw_conn, interval, bars) -> None:
    result = service.get_historical_candles("EUR/USD", interval, limit=bars)
    iv = Interval(interval)
    last = last_closed_open(iv, NOW)
    truth = service_truth(fake, "EUR/USD", interval, add_bars(iv, last, -(bars + 5)), last)[-bars:]
    assert result.candles == truth and len(truth) == bars
    assert _asked(fake) == ["1day"]
    assert _intervals_stored(raw_conn) == {"1D"}
    # The days serve the daily interval too, with no further request.
    days_end = next_open(iv, last) - D
    days = service.get_historical_candles("EUR/USD", "1D", start=truth[0].time, end=days_end, limit=5000)
    assert days.cache is CacheStatus.HIT and fake.count(SERIES) == 1
    assert resample(iv, days.candles) == truth


def test_derived_answers_without_the_database_equal_the_cached_ones(fake) -> None:
    settings = settings_for(fake)
    svc = real_service(settings, None, fake.clock)
    try:
        start, end = ts(2024, 4, 1), ts(2024, 4, 30)
        for interval in ("4H", "1W"):
            result = svc.get_historical_candles("EUR/USD", interval, start=start, end=end, limit=5000)
            assert result.cache is CacheStatus.BYPASS
            assert result.candles == service_truth(fake, "EUR/USD", interval, start, end)
    finally:
        for provider in svc.providers.values():
            provider.close()


def test_storage_interval_names_the_base(service) -> None:
    assert service.storage_interval("eur/usd", "4H") is H1
    assert service.storage_interval("EUR/USD", "1M") is D1
    assert service.storage_interval("EUR/USD", "1D") is D1
    assert service.storage_interval("BTCUSDT", "4H") is H4
    assert service.providers[AssetClass.FOREX].derived_intervals[H4] is H1
