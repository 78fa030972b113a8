"""Single-flight: 20 processes (stand-ins for 20 Lambdas) ask for the same cold range at the same instant.

Each process builds the real stack (Binance/Twelve Data clients aimed at the fake upstream, its own
CandleStore connection), waits at a barrier, then asks. The upstream must see exactly one request per page
between them all, every process must get exactly the right bars, and the table must hold each bar once.
Run directly against Postgres and through PgBouncer in transaction pooling mode (the RDS Proxy stand-in).
"""

from __future__ import annotations

import multiprocessing
from typing import Any

import pytest

from marketdata.intervals import Interval, add_bars, last_closed_open
from tests.cache.service_helpers import NOW, concurrent_request, connect

PROCESSES = 20
KLINES = "/api/v3/klines"
SERIES = "/time_series"


def run_concurrently(database_url: str, fake: Any, request: dict[str, Any]) -> list[tuple]:
    # spawn, not fork: the parent runs the fake upstream's threads and holds open sockets.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=concurrent_request, args=(database_url, fake.url, NOW, request, barrier, results))
        for _ in range(PROCESSES)
    ]
    for process in processes:
        process.start()
    try:
        outcomes = [results.get(timeout=300) for _ in processes]
    finally:
        for process in processes:
            process.join(60)
            if process.is_alive():
                process.kill()
    return outcomes


def check_outcomes(outcomes: list[tuple], expected: list[Any], pages: int, stored: int) -> None:
    errors = [o for o in outcomes if o[0] != "ok"]
    assert errors == []
    truth = [tuple(c) for c in expected]
    for _, _cache, _calls, _rows, candles in outcomes:
        assert candles == truth
    assert sum(o[2] for o in outcomes) == pages  # provider calls, as the processes saw them
    assert sum(o[3] for o in outcomes) == stored  # each bar written by exactly one process
    # Only processes that fetched a page call their answer a miss; everyone else was served by the others.
    assert 1 <= sum(1 for o in outcomes if o[1] == "miss") <= pages
    assert {o[1] for o in outcomes} <= {"hit", "miss"}


def check_table(database_url: str, fake: Any, symbol: str, interval: Interval, expected: list[Any]) -> int:
    """The table holds whole provider pages around the answer, each bar once, equal to the truth, under
    one coverage row; returns how many bars it holds."""
    conn = connect(database_url)
    try:
        rows = conn.run(
            "SELECT open_time, open, high, low, close, volume FROM ohlcv_cache"
            " WHERE symbol = :s AND interval = :i ORDER BY open_time",
            s=symbol,
            i=interval.value,
        )
        stored = [tuple(r) for r in rows]
        assert stored == [tuple(c) for c in fake.expected_bars(symbol, interval, stored[0][0], stored[-1][0])]
        assert set(stored) >= {tuple(c) for c in expected}
        total, distinct = conn.run(
            "SELECT count(*), count(DISTINCT (symbol, interval, open_time)) FROM ohlcv_cache"
        )[0]
        assert total == distinct == len(stored)
        coverage = conn.run("SELECT start_time, end_time FROM ohlcv_coverage WHERE symbol = :s", s=symbol)
        assert len(coverage) == 1
        return len(stored)
    finally:
        conn.close()


def test_twenty_processes_one_cold_range_one_request_per_page(database_url, fake) -> None:
    m1 = Interval.M1
    start = add_bars(m1, last_closed_open(m1, NOW), -20_000)
    request = {"symbol": "BTCUSDT", "interval": "1m", "start": start, "limit": 3500}
    outcomes = run_concurrently(database_url, fake, request)
    expected = fake.expected_bars("BTCUSDT", "1m", start, add_bars(m1, start, 3499))
    assert len(expected) == 3500
    assert fake.count(KLINES) == 4  # ceil(3500 / 1000): one request per page, not per process
    stored = check_table(database_url, fake, "BTCUSDT", m1, expected)
    assert stored == 4000  # whole pages: the last one reaches ahead of the answer
    check_outcomes(outcomes, expected, pages=4, stored=stored)


@pytest.mark.pgbouncer
def test_twenty_processes_through_pgbouncer(pgbouncer_url, database_url, fake) -> None:
    m5 = Interval.M5
    end = last_closed_open(m5, NOW)
    request = {"symbol": "ETHUSDT", "interval": "5m", "end": end, "limit": 2500}
    outcomes = run_concurrently(pgbouncer_url, fake, request)
    expected = fake.expected_bars("ETHUSDT", "5m", add_bars(m5, end, -2499), end)
    assert len(expected) == 2500
    assert fake.count(KLINES) == 3
    stored = check_table(database_url, fake, "ETHUSDT", m5, expected)
    assert stored == 3000  # whole pages back from the newest bar
    check_outcomes(outcomes, expected, pages=3, stored=stored)


@pytest.mark.pgbouncer
def test_twenty_processes_forex_through_pgbouncer(pgbouncer_url, database_url, fake) -> None:
    h1 = Interval.H1
    last = last_closed_open(h1, NOW)
    request = {"symbol": "EUR/USD", "interval": "1H", "limit": 500}
    outcomes = run_concurrently(pgbouncer_url, fake, request)
    expected = fake.expected_bars("EUR/USD", "1H", add_bars(h1, last, -1000), last)[-500:]
    assert fake.count(SERIES) == 1  # 750 hourly slots (weekends included) fit one Twelve Data request
    errors = [o for o in outcomes if o[0] != "ok"]
    assert errors == []
    assert all(o[4] == [tuple(c) for c in expected] for o in outcomes)
    conn = connect(database_url)
    try:
        total, distinct = conn.run("SELECT count(*), count(DISTINCT open_time) FROM ohlcv_cache")[0]
    finally:
        conn.close()
    assert total == distinct >= 500
