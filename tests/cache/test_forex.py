"""Forex through the service against the fake that models the recorded Twelve Data (the default "real"
model): refused pairs store nothing, empty windows are remembered, weekend bars are served."""

from __future__ import annotations

import calendar
import time

import pytest

from devtools.fake_upstream import weekend_closure, weekend_populated
from marketdata.errors import SymbolNotFound, SymbolNotInPlan
from marketdata.schemas import CacheStatus
from marketdata.service import MarketDataService

SERIES = "/time_series"
H = 3600


def ts(*args: int) -> int:
    return calendar.timegm((*args, 0, 0, 0, 0, 0, 0)[:6])


@pytest.fixture
def service(make_service) -> MarketDataService:
    # ABC/XYZ is served by this deployment (FOREX_PAIRS) but unknown to Twelve Data: a typo in the config.
    return make_service(FOREX_PAIRS="EUR/USD,GBP/NZD,ABC/XYZ")


def _tables(raw_conn) -> tuple[int, int]:
    return (
        raw_conn.run("SELECT count(*) FROM ohlcv_cache")[0][0],
        raw_conn.run("SELECT count(*) FROM ohlcv_coverage")[0][0],
    )


@pytest.mark.parametrize("real_status", [False, True], ids=["http-200", "http-status"])
@pytest.mark.parametrize("string_codes", [False, True], ids=["numeric-code", "string-code"])
def test_refused_pairs_store_nothing_and_are_not_asked_again(
    service, fake, raw_conn, real_status: bool, string_codes: bool
) -> None:
    fake.twelve_data_real_status = real_status
    fake.twelve_data_string_codes = string_codes
    fake.plan_gated_symbols = {"GBP/NZD"}
    with pytest.raises(SymbolNotFound):
        service.get_historical_candles("ABC/XYZ", "1H", limit=10)
    with pytest.raises(SymbolNotInPlan):
        service.get_historical_candles("GBP/NZD", "4H", limit=10)
    assert _tables(raw_conn) == (0, 0)  # no row, no coverage: a typo is never remembered as "no data"
    asked = fake.count(SERIES)
    assert asked == 2
    # Remembered for every Lambda: the same answers without a credit, whatever the interval.
    with pytest.raises(SymbolNotFound):
        service.get_historical_candles("ABC/XYZ", "1D", limit=10)
    with pytest.raises(SymbolNotInPlan):
        service.get_historical_candles("GBP/NZD", "1H", limit=10)
    assert fake.count(SERIES) == asked


def test_an_empty_window_is_an_empty_answer_and_remembered(service, fake, raw_conn) -> None:
    start, end = ts(2003, 1, 6), ts(2003, 1, 10)  # before the fake's EUR/USD history: code 400 "No data"
    fake.twelve_data_real_status = True  # the 400 arrives with HTTP 400 too
    first = service.get_historical_candles("EUR/USD", "1H", start=start, end=end)
    assert first.candles == [] and first.cache is CacheStatus.MISS
    again = service.get_historical_candles("EUR/USD", "1H", start=start, end=end)
    assert again.candles == [] and again.cache is CacheStatus.HIT and fake.count(SERIES) == 1
    rows, coverage = _tables(raw_conn)
    assert rows == 0 and coverage == 1


def test_weekend_bars_the_provider_serves_are_returned(service, fake) -> None:
    # The first populated weekend before NOW: Twelve Data serves bars right through its closure.
    monday = ts(2024, 5, 13)
    while not weekend_populated(monday - 86400):
        monday -= 7 * 86400
    closes, reopens = weekend_closure(monday - 86400)
    result = service.get_historical_candles("EUR/USD", "1H", start=closes, end=reopens - H, limit=5000)
    truth = fake.expected_candles("EUR/USD", "1H", closes, reopens - H)
    assert result.candles == truth and len(truth) >= 40  # Saturday and Sunday hours, not an empty weekend
    saturday = {c.time for c in result.candles if calendar.weekday(*_ymd(c.time)) == 5}
    assert len(saturday) >= 20
    # Built intervals keep them too: the 4H bars of that Saturday exist.
    four = service.get_historical_candles("EUR/USD", "4H", start=closes, end=reopens - H, limit=5000)
    assert any(calendar.weekday(*_ymd(c.time)) == 5 for c in four.candles)


def _ymd(t: int) -> tuple[int, int, int]:
    tm = time.gmtime(t)
    return tm.tm_year, tm.tm_mon, tm.tm_mday


def test_daily_bars_are_the_providers_trading_days_dated_at_midnight_utc(service, fake) -> None:
    start, end = ts(2024, 3, 4), ts(2024, 3, 29)
    result = service.get_historical_candles("EUR/USD", "1D", start=start, end=end, limit=100)
    truth = fake.expected_candles("EUR/USD", "1day", start, end)
    assert result.candles == truth
    assert all(c.time % 86400 == 0 for c in result.candles)
    assert [r.query["interval"] for r in fake.requests if r.path == SERIES] == ["1day"]
    weeks = service.get_historical_candles("EUR/USD", "1W", start=start, end=end, limit=100)
    assert [c.time for c in weeks.candles] == [ts(2024, 3, d) for d in (4, 11, 18, 25)]
    assert weeks.cache is CacheStatus.HIT  # built from the days just cached


@pytest.mark.parametrize("limit", [1, 3, 30])
def test_the_last_bars_before_a_weekend_are_found_whatever_the_limit(service, fake, limit: int) -> None:
    # Asked on Monday 00:00 for the bars up to it: the weekend (bars or not) lies between; the answer is
    # the newest `limit` bars that exist, never fewer when more exist.
    monday = ts(2024, 1, 15)  # winter: the market reopens Sunday 22:00 UTC, two hours before Monday
    while weekend_populated(monday - 86400):  # a weekend without bars throughout: the long gap
        monday -= 7 * 86400
    end = monday - 1
    result = service.get_historical_candles("EUR/USD", "1H", end=end, limit=limit)
    truth = fake.expected_candles("EUR/USD", "1H", end - 14 * 86400, end)[-limit:]
    assert result.candles == truth and len(truth) == limit
