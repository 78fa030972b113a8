"""The pages of a cold range fetched in parallel (issue 9): one call per page between concurrent requests,
a failing page, the request's ceiling and deadline inside the worker threads, and the Binance weight
counter under threads. The provider double against the real store and Postgres."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from marketdata import limits
from marketdata.config import Settings
from marketdata.errors import UpstreamUnavailable
from marketdata.intervals import Interval, add_bars, last_closed_open
from marketdata.providers.base import Page
from marketdata.providers.http import WeightCounter
from marketdata.schemas import AssetClass, CacheStatus
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.cache.service_helpers import NOW, DoubleProvider, FrozenClock

M1 = Interval.M1
START = add_bars(M1, last_closed_open(M1, NOW), -19_999)
PAGE = 1000


class SlowDouble(DoubleProvider):
    """The double with a round trip: every page request takes `delay` seconds, so requests overlap. It
    records, per request, the thread it ran in and the deadline the HTTP layer would see there, and fails
    the request for a page starting at a time in `fail_at`."""

    def __init__(self, clock: FrozenClock, delay: float = 0.05) -> None:
        super().__init__(clock)
        self.delay = delay
        self.fail_at: dict[int, Exception] = {}
        self.seen: list[tuple[int, str, float | None]] = []  # (page start, thread name, seconds left)
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def iter_pages(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Page]:
        pages = super().iter_pages(symbol, interval, start, end)
        while True:
            with self._lock:
                self.in_flight += 1
                self.most_in_flight = max(self.most_in_flight, self.in_flight)
                self.seen.append((start, threading.current_thread().name, limits.seconds_left()))
            try:
                time.sleep(self.delay)
                failure = self.fail_at.get(start)
                if failure is not None:
                    raise failure
                page = next(pages, None)
            finally:
                with self._lock:
                    self.in_flight -= 1
            if page is None:
                return
            yield page
            start = page.end + 60


def service_for(database_url: str, provider: SlowDouble, clock: FrozenClock, **env: Any) -> MarketDataService:
    settings = Settings.from_env({"DATABASE_URL": database_url, **env})
    return MarketDataService(CandleStore(settings), {AssetClass.CRYPTO: provider}, settings, clock=clock)


@pytest.fixture
def slow(clock: FrozenClock) -> SlowDouble:
    return SlowDouble(clock)


@pytest.fixture
def make(database_url: str, slow: SlowDouble, clock: FrozenClock) -> Iterator[Any]:
    made: list[MarketDataService] = []

    def build(**env: Any) -> MarketDataService:
        service = service_for(database_url, slow, clock, **env)
        made.append(service)
        return service

    yield build
    for service in made:
        service.close()


def page_starts(n: int, first: int = START) -> list[int]:
    return [add_bars(M1, first, PAGE * k) for k in range(n)]


def test_a_cold_range_fetches_its_pages_in_parallel_and_answers_from_them(make, slow) -> None:
    service = make()
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000)
    assert result.cache is CacheStatus.MISS
    assert result.candles == slow.truth("BTCUSDT", M1, START, add_bars(M1, START, 4999))
    assert result.provider_calls == 5 and result.rows_written == 5000
    assert result.candles_json is None  # from the pages just fetched, not read back
    # The first page alone (it finds where the data starts), then the other four at once, in the pool.
    assert sorted(start for start, _, _ in slow.seen) == page_starts(5)
    assert slow.seen[0][0] == START and slow.most_in_flight == 4
    assert {name for start, name, _ in slow.seen[1:]} <= {f"marketdata-page_{k}" for k in range(4)}
    # A repeat is a hit from Postgres.
    again = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000, candles_json=True)
    assert again.cache is CacheStatus.HIT and again.provider_calls == 0 and again.candles_json is not None


def test_concurrent_cold_requests_make_one_call_per_page_between_them(make, slow) -> None:
    services = [make() for _ in range(4)]
    for service in services:
        service.get_symbols("crypto")  # the symbol lists, outside the race
    barrier = threading.Barrier(len(services))
    results: list[Any] = [None] * len(services)

    def ask(k: int) -> None:
        barrier.wait(10)
        results[k] = services[k].get_historical_candles("BTCUSDT", "1m", start=START, limit=5000)

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(len(services))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    truth = slow.truth("BTCUSDT", M1, START, add_bars(M1, START, 4999))
    assert all(r is not None and r.candles == truth for r in results)
    # Five pages between the four of them, each asked once; one answer filled, the others were hits.
    assert slow.calls == 5 and sorted(start for start, _, _ in slow.seen) == page_starts(5)
    assert sum(r.provider_calls for r in results) == 5
    assert sorted(r.cache.value for r in results) == ["hit", "hit", "hit", "miss"]


def test_a_failing_parallel_page_keeps_the_unbroken_run_before_it(make, slow, raw_conn) -> None:
    service = make()
    failing = page_starts(5)[3]  # the fourth page fails; the second and third arrive
    slow.fail_at[failing] = UpstreamUnavailable("down", provider="binance")
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000)
    stored_to = add_bars(M1, START, 3 * PAGE - 1)
    assert result.cache is CacheStatus.PARTIAL
    assert result.candles == slow.truth("BTCUSDT", M1, START, stored_to)
    assert result.next_start == failing  # resume exactly after what we have
    # Every page was asked (all were in flight together); the fifth arrived but lies after the failure:
    # dropped, so coverage stays one unbroken run.
    assert result.provider_calls == 5 and result.rows_written == 3 * PAGE
    rows = raw_conn.run("SELECT start_time, end_time FROM ohlcv_coverage ORDER BY 1")
    assert [tuple(r) for r in rows] == [(START, stored_to)]
    assert raw_conn.run("SELECT count(*), max(open_time) FROM ohlcv_cache")[0] == [3 * PAGE, stored_to]

    # The provider back: only the missing pages are asked for.
    slow.fail_at.clear()
    slow.seen.clear()
    again = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000)
    assert again.cache is CacheStatus.MISS and again.provider_calls == 2
    assert again.candles == slow.truth("BTCUSDT", M1, START, add_bars(M1, START, 4999))
    assert sorted(start for start, _, _ in slow.seen) == page_starts(5)[3:]


def test_a_failing_first_page_raises_with_nothing_cached(make, slow, raw_conn) -> None:
    service = make()
    slow.fail_at[START] = UpstreamUnavailable("down", provider="binance")
    with pytest.raises(UpstreamUnavailable):
        service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000)
    assert raw_conn.run("SELECT count(*) FROM ohlcv_cache")[0] == [0]
    assert len(slow.seen) == 1  # nothing was sent after the first page failed


def test_the_ceiling_holds_for_parallel_pages(make, slow) -> None:
    service = make(BINANCE_MAX_REQUESTS_PER_CALL=3)
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000)
    assert result.provider_calls == 3 and slow.calls == 3
    assert result.cache is CacheStatus.PARTIAL
    assert result.candles == slow.truth("BTCUSDT", M1, START, add_bars(M1, START, 2999))
    assert result.next_start == add_bars(M1, START, 3000)


def test_worker_threads_see_the_request_deadline(make, slow) -> None:
    service = make()
    service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000, timeout=20)
    workers = [(name, left) for _, name, left in slow.seen[1:]]
    assert len(workers) == 4 and all(name.startswith("marketdata-page") for name, _ in workers)
    # The deadline contextvar was copied into each worker: the HTTP layer there caps its waits by it.
    assert all(left is not None and 0 < left <= 20 for _, left in workers)
    assert limits.seconds_left() is None  # and it does not leak out of the request


def test_no_page_is_sent_once_the_deadline_is_too_close(make, slow) -> None:
    # The first page takes 1.2 s of a 2.5 s budget: less than a request's minimum (1 s) plus the answer's
    # reserve is left, so no other page is sent, in any thread.
    slow.delay = 1.6
    service = make()
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=5000, timeout=2.5)
    assert slow.calls == 1 and result.provider_calls == 1
    assert result.cache is CacheStatus.PARTIAL and result.next_start == add_bars(M1, START, PAGE)


def test_the_backfill_keeps_several_pages_in_flight(make, slow, raw_conn) -> None:
    service = make(FILL_PARALLEL_PAGES=3)
    stored: list[int] = []
    report = service.fill_gaps("BTCUSDT", "1m", START, on_page=lambda page: stored.append(page.start))
    assert report.complete and report.pages == 20 and report.rows_written == 20_000
    assert stored == page_starts(20)  # stored in order, whatever order the pages arrived in
    assert slow.most_in_flight == 3 and slow.calls == 20
    rows = raw_conn.run("SELECT start_time, end_time FROM ohlcv_coverage ORDER BY 1")
    assert [tuple(r) for r in rows] == [(START, last_closed_open(M1, NOW))]


# --- the Binance weight counter ------------------------------------------------------------------------


def test_the_weight_counter_never_lets_threads_cross_the_threshold_together() -> None:
    counter = WeightCounter(threshold=100)
    now = 1_700_000_010.0  # 30 s before a minute ends
    granted: list[int] = []
    refused: list[float] = []
    barrier = threading.Barrier(16)

    def take() -> None:
        barrier.wait(10)
        for _ in range(20):
            wait = counter.reserve(2, now)
            (granted if wait == 0 else refused).append(2 if wait == 0 else wait)

    threads = [threading.Thread(target=take) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sum(granted) == 100 and counter.used == 100  # exactly the threshold, never more
    assert len(refused) == 16 * 20 - 50 and all(w == pytest.approx(30.0) for w in refused)
    # The server's figure never lowers the count of requests in flight; a new minute resets it.
    counter.note(40, now)
    assert counter.used == 100
    counter.note(120, now)
    assert counter.used == 120
    assert counter.reserve(2, now + 60) == 0 and counter.used == 2
