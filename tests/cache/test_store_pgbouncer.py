"""The store through PgBouncer in transaction pooling mode (the local stand-in for RDS Proxy)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from marketdata.config import Settings
from marketdata.errors import SingleFlightTimeout
from marketdata.intervals import Interval
from marketdata.providers.base import Page
from marketdata.schemas import Candle
from marketdata.store import CandleStore
from tests.cache.store_helpers import coverage_seen_by_a_waiter

pytestmark = pytest.mark.pgbouncer

T0 = 1_699_999_200
M = 60


def bars(n: int, start: int = T0) -> list[Candle]:
    return [Candle(start + i * M, 10.0 + i, 11.0 + i, 9.0 + i, 10.5 + i, float(i)) for i in range(n)]


@pytest.fixture
def pooled(pgbouncer_url: str) -> Iterator[CandleStore]:
    store = CandleStore(Settings.from_env({"DATABASE_URL": pgbouncer_url}))
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def pooled2(pgbouncer_url: str) -> Iterator[CandleStore]:
    store = CandleStore(Settings.from_env({"DATABASE_URL": pgbouncer_url}))
    try:
        yield store
    finally:
        store.close()


def test_round_trip_through_pgbouncer(pooled: CandleStore, store: CandleStore) -> None:
    with pooled.fill_transaction("BTCUSDT", Interval.M1, wait_seconds=2) as tx:
        assert tx.read_coverage(T0, T0 + 99 * M) == []
        assert tx.store_page("binance", Page(T0, T0 + 49 * M, bars(50))) == 50
        assert tx.store_page("binance", Page(T0 + 50 * M, T0 + 99 * M, bars(50, T0 + 50 * M))) == 50
        assert tx.read_coverage(T0, T0 + 99 * M) == [(T0, T0 + 99 * M)]
    expected = bars(50) + bars(50, T0 + 50 * M)
    assert pooled.read_candles("BTCUSDT", "1m", T0, T0 + 99 * M) == expected
    assert pooled.read_candles("BTCUSDT", "1m", T0, T0 + 99 * M, limit=10, newest=True) == expected[-10:]
    assert pooled.store_candles("binance", "BTCUSDT", "1m", bars(100)) == 0
    pooled.put_symbols("crypto", ["BTCUSDT", "it's"], 42.0)
    assert pooled.get_symbols("crypto") == (["BTCUSDT", "it's"], 42.0)
    # the same rows, seen directly (not through the pooler)
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0, T0 + 99 * M)]
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 100


def test_fill_lock_holds_across_two_pooled_connections(pooled: CandleStore, pooled2: CandleStore) -> None:
    with pooled.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0 + 9 * M, bars(10)))
        with pytest.raises(SingleFlightTimeout), pooled2.fill_transaction("BTCUSDT", "1m", wait_seconds=0.3):
            pass
        with pooled2.fill_transaction("ETHUSDT", "1m", wait_seconds=0):
            pass
        # uncommitted rows are invisible to the other connection
        assert pooled2.read_coverage("BTCUSDT", "1m", 0, 10**10) == []
    with pooled2.fill_transaction("BTCUSDT", "1m", wait_seconds=0) as tx2:
        assert tx2.read_coverage(0, 10**10) == [(T0, T0 + 9 * M)]


def test_waiter_through_pgbouncer_sees_the_holders_rows(pooled: CandleStore, pooled2: CandleStore) -> None:
    seen = coverage_seen_by_a_waiter(pooled, pooled2, Page(T0, T0 + 9 * M, bars(10)))
    assert seen == [[(T0, T0 + 9 * M)]]


def test_many_clients_multiplex_over_fewer_server_connections(pgbouncer_url: str, store: CandleStore) -> None:
    """16 clients, 8 server connections: every parameterized statement is one unit for the pooler,
    so statements from one client may run on different server connections and still be right."""
    store.store_candles("binance", "BTCUSDT", "1m", bars(200))
    clients = 16
    backends: set[int] = set()
    failures: list[BaseException] = []
    wrong: list[tuple[int, int]] = []
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def client(index: int) -> None:
        pooled = CandleStore(Settings.from_env({"DATABASE_URL": pgbouncer_url}))
        try:
            barrier.wait()
            for i in range(25):
                first = (index * 7 + i) % 150
                got = pooled.read_candles("BTCUSDT", "1m", T0 + first * M, T0 + 199 * M, limit=5)
                if [c.time for c in got] != [T0 + (first + k) * M for k in range(5)]:
                    wrong.append((index, i))
                rows, _ = pooled._run("SELECT pg_backend_pid() + 0 * CAST(:n AS int)", {"n": i})
                with lock:
                    backends.add(int(rows[0][0]))
        except BaseException as exc:
            failures.append(exc)
        finally:
            pooled.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    assert wrong == []
    assert 1 <= len(backends) <= 8  # default_pool_size of the test PgBouncer
