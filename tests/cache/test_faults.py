"""Faults around the cache: the database dying mid-request, the provider failing after some pages, and bad
input. Real clients against the fake upstream, real store on Postgres."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import pytest

from marketdata.errors import InvalidInterval, InvalidRequest, UpstreamRateLimited
from marketdata.intervals import Interval, add_bars, last_closed_open
from marketdata.schemas import AssetClass, CacheStatus
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.cache.service_helpers import NOW, Tripwire, connect, real_service, snapshot
from tests.support.upstream_fixtures import settings_for

KLINES = "/api/v3/klines"
M1 = Interval.M1
START = add_bars(M1, last_closed_open(M1, NOW), -9999)


@pytest.fixture
def stack(service) -> tuple[MarketDataService, CandleStore]:
    return service, service.store


def trip(service: MarketDataService, actions: dict) -> Tripwire:
    """Put a Tripwire around the crypto client of `service`."""
    wire = Tripwire(service.providers[AssetClass.CRYPTO], actions)
    service.providers = {**service.providers, AssetClass.CRYPTO: wire}
    return wire


def rows_and_coverage(raw_conn) -> tuple[list[int], list[tuple[int, int]]]:
    rows = [r[0] for r in raw_conn.run("SELECT open_time FROM ohlcv_cache ORDER BY 1")]
    coverage = [tuple(r) for r in raw_conn.run("SELECT start_time, end_time FROM ohlcv_coverage ORDER BY 1")]
    return rows, coverage


def fresh_rows_and_coverage(database_url: str) -> tuple[list[int], list[tuple[int, int]]]:
    conn = connect(database_url)
    try:
        return rows_and_coverage(conn)
    finally:
        conn.close()


# --- the database ------------------------------------------------------------------------------------


def test_database_unreachable_answers_from_the_provider(fake) -> None:
    settings = settings_for(fake, DATABASE_URL="postgresql://md@127.0.0.1:1/md", DB_CONNECT_TIMEOUT=1)
    service = real_service(settings, CandleStore(settings), fake.clock)
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=1500)
    assert result.cache is CacheStatus.BYPASS
    assert result.candles == fake.expected_candles("BTCUSDT", "1m", START, add_bars(M1, START, 1499))
    assert result.next_start == add_bars(M1, START, 1500)
    assert fake.count(KLINES) == 2 and result.rows_written == 0


def test_database_killed_between_pages_bypasses_and_leaves_nothing_half_written(
    stack, fake, pg_server, database_url
) -> None:
    service, _store = stack
    database = urlsplit(database_url).path.lstrip("/")
    # Before the second upstream request (in the transaction of the first page, which the second and
    # third are fetched beside), kill every connection of the service's database: that transaction can
    # neither store its pages nor commit.
    trip(service, {2: lambda: pg_server.terminate_connections(database)})
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=2500)

    # Answered without the cache from the three pages already received: none is asked for again.
    truth = fake.expected_candles("BTCUSDT", "1m", START, add_bars(M1, START, 2499))
    assert result.cache is CacheStatus.BYPASS and result.provider_calls == 3
    assert result.candles == truth and result.next_start == add_bars(M1, START, 2500)
    assert fresh_rows_and_coverage(database_url) == ([], [])  # nothing half written

    # The next request (the store reconnects) fills the cache, in as many pages as a cold one.
    before = fake.count(KLINES)
    again = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=2500)
    assert again.cache is CacheStatus.MISS and again.candles == truth
    assert fake.count(KLINES) - before == 3
    rows, coverage = fresh_rows_and_coverage(database_url)
    assert len(rows) == 3000 and coverage == [(START, add_bars(M1, START, 2999))]  # whole pages


# --- the provider ------------------------------------------------------------------------------------


def test_provider_failing_after_some_pages_serves_partial_and_covers_only_stored_pages(
    stack, fake, raw_conn
) -> None:
    service, _store = stack
    trip(service, {2: lambda: fake.fail_next(10, 429, KLINES, retry_after=30)})
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=3000)
    assert result.cache is CacheStatus.PARTIAL
    assert result.candles == fake.expected_candles("BTCUSDT", "1m", START, add_bars(M1, START, 999))
    assert result.next_start == add_bars(M1, START, 1000)
    rows, coverage = rows_and_coverage(raw_conn)
    assert rows == [c.time for c in result.candles]
    assert coverage == [(START, add_bars(M1, START, 999))]


def test_page_with_a_bad_bar_is_stored_but_never_covered(stack, fake, raw_conn) -> None:
    service, _store = stack
    fake.fail_next(1, "bad_bar", KLINES)  # the first bar of the next answer is inconsistent (high < low)
    end = add_bars(M1, START, 99)
    first = service.get_historical_candles("BTCUSDT", "1m", start=START, end=end)
    truth = fake.expected_candles("BTCUSDT", "1m", START, end)
    assert first.candles == truth[1:]  # the bad bar was dropped, the others kept
    assert first.cache is CacheStatus.PARTIAL  # the answer has a hole: it says so, and is not cached long
    page = fake.expected_candles("BTCUSDT", "1m", START, add_bars(M1, START, 999))  # one whole page
    rows, coverage = rows_and_coverage(raw_conn)
    assert rows == [c.time for c in page[1:]] and coverage == []  # a hole is never claimed as covered

    again = service.get_historical_candles("BTCUSDT", "1m", start=START, end=end)
    assert again.candles == truth and again.cache is CacheStatus.MISS and fake.count(KLINES) == 2
    rows, coverage = rows_and_coverage(raw_conn)
    assert rows == [c.time for c in page] and coverage == [(START, page[-1].time)]


def test_provider_failing_with_nothing_cached_raises_with_retry_after(stack, fake, raw_conn) -> None:
    service, _store = stack
    service.get_symbols("crypto")  # the symbol list /v1/candles checks against is not what is tested here
    before = snapshot(raw_conn)
    fake.fail_next(10, 429, KLINES, retry_after=30)
    with pytest.raises(UpstreamRateLimited) as info:
        service.get_historical_candles("BTCUSDT", "1m", start=START, limit=3000)
    assert info.value.retry_after == pytest.approx(30, abs=1)
    assert snapshot(raw_conn) == before


# --- bad input ---------------------------------------------------------------------------------------

BAD_INPUT = [
    ({"interval": "2h"}, "interval"),
    ({"interval": "1h"}, "interval"),
    ({"interval": ""}, "interval"),
    ({"interval": None}, "interval"),
    ({"start": 1_700_000_000, "end": 1_600_000_000}, "start"),
    ({"limit": 0}, "limit"),
    ({"limit": 5001}, "limit"),
    ({"limit": -1}, "limit"),
    ({"limit": True}, "limit"),
    ({"limit": "10"}, "limit"),
    ({"start": -1}, "start"),
    ({"end": -60}, "end"),
    ({"start": "yesterday"}, "start"),
    ({"end": 10**15}, "end"),
    ({"symbol": "BTC'; DROP TABLE ohlcv_cache;--"}, "symbol"),
    ({"symbol": "EUR/USD'--"}, "symbol"),
    ({"symbol": "BTCUSDT' OR '1'='1"}, "symbol"),
    ({"symbol": "BTC\x00USDT"}, "symbol"),
    ({"symbol": ""}, "symbol"),
    ({"symbol": "   "}, "symbol"),
    ({"symbol": "A" * 21}, "symbol"),
    ({"symbol": None}, "symbol"),
    ({"include_open": "yes"}, "include_open"),
]


@pytest.mark.parametrize(
    ("override", "param"), BAD_INPUT, ids=[f"{p}-{i}" for i, (_, p) in enumerate(BAD_INPUT)]
)
def test_bad_input_is_a_typed_error_and_changes_nothing(
    stack, fake, raw_conn, override: dict, param: str
) -> None:
    service, _store = stack
    service.get_historical_candles("BTCUSDT", "1H", limit=10)  # something in the cache to protect
    service.get_symbols("crypto")
    before = snapshot(raw_conn)
    requests = fake.count()
    request: dict[str, Any] = {"symbol": "BTCUSDT", "interval": "1H", "limit": 10, **override}
    with pytest.raises(InvalidRequest) as info:
        service.get_historical_candles(**request)
    assert info.value.param == param
    if param == "interval":
        assert isinstance(info.value, InvalidInterval)
    assert snapshot(raw_conn) == before
    assert fake.count() == requests
    # The table is still there, with the one whole page stored before.
    assert raw_conn.run("SELECT count(*) FROM ohlcv_cache")[0][0] == 1000


def test_unknown_asset_class_is_a_typed_error(stack, fake) -> None:
    service, _store = stack
    with pytest.raises(InvalidRequest) as info:
        service.get_symbols("stocks'; DROP TABLE symbol_lists;--")
    assert info.value.param == "asset_class" and fake.count() == 0
