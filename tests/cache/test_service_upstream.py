"""The service end to end: real Binance/Twelve Data clients against the fake upstream, real store on Postgres.

Provider requests are counted where they arrive (the fake upstream), not by the service's own metrics.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from marketdata.intervals import ALL_INTERVALS, Interval, add_bars, bar_open, last_closed_open
from marketdata.schemas import CacheStatus, Candle
from tests.cache.service_helpers import NOW, real_service
from tests.support.truth import service_truth
from tests.support.upstream_fixtures import settings_for

KLINES = "/api/v3/klines"
SERIES = "/time_series"
H1 = Interval.H1
LAST_H1 = last_closed_open(H1, NOW)


def test_repeat_request_makes_no_upstream_request(service, fake) -> None:
    first = service.get_historical_candles("BTCUSDT", "1H", limit=1500)
    lo = add_bars(H1, LAST_H1, -1499)
    assert first.candles == fake.expected_candles("BTCUSDT", "1H", lo, LAST_H1)
    assert len(first.candles) == 1500 and first.cache is CacheStatus.MISS
    assert fake.count(KLINES) == 2  # 1500 bars at 1000 per request

    second = service.get_historical_candles("BTCUSDT", "1H", limit=1500)
    assert second.candles == first.candles and second.cache is CacheStatus.HIT
    assert fake.count(KLINES) == 2


def test_partial_overlap_requests_only_the_uncovered_part(service, fake) -> None:
    base = add_bars(H1, LAST_H1, -4000)
    service.get_historical_candles("BTCUSDT", "1H", start=base, end=add_bars(H1, base, 999), limit=5000)
    assert fake.count(KLINES) == 1

    wide_lo, wide_hi = add_bars(H1, base, -200), add_bars(H1, base, 1499)
    result = service.get_historical_candles("BTCUSDT", "1H", start=wide_lo, end=wide_hi, limit=5000)
    assert result.candles == fake.expected_candles("BTCUSDT", "1H", wide_lo, wide_hi)
    new = [r for r in fake.requests if r.path == KLINES][1:]
    # One whole page from each gap's start (Binance answers with the first 1000 bars from startTime).
    assert len(new) == 2
    assert [int(r.query["startTime"]) // 1000 for r in new] == [wide_lo, add_bars(H1, base, 1000)]
    assert {int(r.query["endTime"]) // 1000 for r in new} == {LAST_H1}


def test_forex_weekend_is_remembered(service, fake, raw_conn) -> None:
    friday, monday_end = 1715299200, 1715641200  # 2024-05-10 00:00, 2024-05-13 23:00 UTC
    first = service.get_historical_candles("EUR/USD", "1H", start=friday, end=monday_end, limit=5000)
    assert first.candles == fake.expected_candles("EUR/USD", "1H", friday, monday_end)
    assert fake.count(SERIES) == 1
    assert (
        service.get_historical_candles("EUR/USD", "1H", start=friday, end=monday_end).cache is CacheStatus.HIT
    )
    assert fake.count(SERIES) == 1

    # A cold range with no bars at all (before the pair's history): Twelve Data says "no data" (code 400),
    # which is an empty range, answered 200 [] and remembered.
    before, after = 999_997_200, 999_997_200 + 86400  # 2001-09-09 01:00 UTC, before the EUR/USD history
    assert fake.expected_candles("EUR/USD", "1H", before, after) == []
    empty = service.get_historical_candles("EUR/USD", "1H", start=before, end=after)
    assert empty.candles == [] and empty.cache is CacheStatus.MISS and fake.count(SERIES) == 2
    again = service.get_historical_candles("EUR/USD", "1H", start=before, end=after)
    assert again.candles == [] and again.cache is CacheStatus.HIT and fake.count(SERIES) == 2
    covered = raw_conn.run(
        "SELECT count(*) FROM ohlcv_coverage WHERE start_time <= :s AND end_time >= :e", s=before, e=after
    )
    assert covered[0][0] == 1


@pytest.mark.parametrize("symbol", ["BTCUSDT", "EUR/USD"])
@pytest.mark.parametrize("interval", ALL_INTERVALS, ids=lambda i: i.value)
def test_every_interval_latest_bars_then_hit(service, fake, symbol: str, interval: Interval) -> None:
    result = service.get_historical_candles(symbol, interval.value, limit=20)
    last = last_closed_open(interval, NOW)
    truth = service_truth(fake, symbol, interval.value, add_bars(interval, last, -200), last)[-20:]
    assert len(result.candles) == 20 and result.candles == truth
    assert result.reaches_present and result.next_start is None
    requests = fake.count()
    assert requests >= 1
    again = service.get_historical_candles(symbol, interval.value, limit=20)
    assert again.candles == truth and again.cache is CacheStatus.HIT and fake.count() == requests


@pytest.mark.parametrize("symbol", ["BTCUSDT", "EUR/USD"])
def test_open_bar_is_live_and_never_stored(service, fake, raw_conn, symbol: str) -> None:
    result = service.get_historical_candles(symbol, "1H", limit=5, include_open=True)
    open_time = bar_open(H1, NOW)
    assert result.candles[-1] == Candle(*fake.open_bar(symbol, "1H"))
    assert (
        result.candles[:-1] == fake.expected_candles(symbol, "1H", add_bars(H1, LAST_H1, -48), LAST_H1)[-5:]
    )
    stored = raw_conn.run("SELECT count(*), max(open_time) FROM ohlcv_cache WHERE symbol = :s", s=symbol)
    assert stored[0][0] >= 5 and stored[0][1] == LAST_H1 < open_time
    assert (
        raw_conn.run("SELECT max(end_time) FROM ohlcv_coverage WHERE symbol = :s", s=symbol)[0][0] == LAST_H1
    )


def test_five_thousand_bars_from_a_start(service, fake) -> None:
    start = 1715000000 - 1715000000 % 60
    result = service.get_historical_candles("ETHUSDT", "1m", start=start, limit=5000)
    assert result.candles == fake.expected_candles("ETHUSDT", "1m", start, start + 4999 * 60)
    assert result.next_start == start + 5000 * 60 and fake.count(KLINES) == 5


@pytest.fixture
def fresh_process_defaults() -> Iterator[None]:
    """Forget the process-wide settings, store, providers and service before and after the test."""
    from marketdata.service import reset_service

    reset_service()
    yield
    reset_service()


def test_get_service_is_built_once_from_the_environment(
    fake, database_url, monkeypatch, fresh_process_defaults
) -> None:
    from marketdata import service as service_module

    monkeypatch.setenv("BINANCE_REST_URL", fake.url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    default = service_module.get_service()
    assert service_module.get_service() is default
    assert default.store is not None
    fake.now = None  # get_service uses the real clock: compare with the fake at real time
    result = service_module.get_historical_candles("BTCUSDT", "1D", limit=3)
    assert result.cache is CacheStatus.MISS and len(result.candles) == 3
    assert service_module.get_historical_candles("BTCUSDT", "1D", limit=3).cache is CacheStatus.HIT


def test_get_service_with_an_unreachable_database_still_answers(
    fake, monkeypatch, fresh_process_defaults
) -> None:
    from marketdata import service as service_module

    monkeypatch.setenv("BINANCE_REST_URL", fake.url)
    monkeypatch.setenv("DATABASE_URL", "postgresql://md@127.0.0.1:1/md")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "1")
    fake.now = None  # get_service uses the real clock
    default = service_module.get_service()  # constructing it does not connect
    result = default.get_historical_candles("BTCUSDT", "1D", limit=3)
    assert result.cache is CacheStatus.BYPASS and len(result.candles) == 3
    assert service_module.get_symbols("crypto").cache is CacheStatus.BYPASS


def _first_bar_time(fake, interval: Interval) -> int:
    # The fake lists BTCUSDT in August 2017; searching that month keeps the truth cheap for 1m bars.
    return fake.expected_bars("BTCUSDT", interval, 1501545600, 1504224000)[0].time


@pytest.mark.parametrize("interval", [Interval.D1, Interval.M1], ids=str)
def test_a_start_before_the_listing_finds_the_first_bars_in_one_probe(service, fake, interval) -> None:
    """start=0 asks for "the first bars": one page from the empty window finds the listing instead of
    answering empty pages whose cursor crawls through the decades before it."""
    listing = _first_bar_time(fake, interval)
    first = service.get_historical_candles("BTCUSDT", interval, start=0, limit=3)
    truth = fake.expected_candles("BTCUSDT", interval, listing, add_bars(interval, listing, 3))
    assert first.candles == truth[:3]
    assert first.next_start == truth[3].time
    assert first.cache is CacheStatus.MISS
    assert fake.count(KLINES) == 1  # one page from 1970 on: Binance answers with the first bars after it

    again = service.get_historical_candles("BTCUSDT", interval, start=0, limit=3)
    assert again.candles == first.candles and again.next_start == first.next_start
    assert again.cache is CacheStatus.HIT and fake.count(KLINES) == 1


def test_a_start_before_the_listing_without_a_database_still_finds_the_first_bars(fake) -> None:
    settings = settings_for(fake)
    svc = real_service(settings, None, fake.clock)
    listing = _first_bar_time(fake, Interval.D1)
    result = svc.get_historical_candles("BTCUSDT", "1D", start=0, limit=2)
    assert result.cache is CacheStatus.BYPASS
    assert result.candles == fake.expected_candles(
        "BTCUSDT", "1D", listing, add_bars(Interval.D1, listing, 1)
    )
    assert fake.count(KLINES) == 2
