"""Bounded cost under any caller: the abuse cases that were measured, each within its ceiling now.

Real clients against the fake upstream, the real store on Postgres; provider requests are counted where
they arrive (the fake), rows and coverage in the tables.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from marketdata.errors import SymbolNotFound, UpstreamRateLimited, UpstreamUnavailable
from marketdata.intervals import Interval, add_bars, last_closed_open
from marketdata.schemas import CacheStatus
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.cache.service_helpers import NOW, real_service
from tests.support.upstream_fixtures import settings_for

KLINES = "/api/v3/klines"
SERIES = "/time_series"
M1, H1 = Interval.M1, Interval.H1


@pytest.fixture
def make(make_service) -> Callable[..., MarketDataService]:
    return make_service


# --- the ceiling on provider work per request -------------------------------------------------------


def test_a_start_at_zero_with_the_largest_limit_costs_at_most_the_ceiling(make, fake) -> None:
    service = make()
    result = service.get_historical_candles("SOLUSDT", "1m", start=0, limit=5000)
    assert fake.count(KLINES) <= 5  # measured before: 22
    assert len(result.candles) == 5000  # one page finds the listing, then whole pages from there
    first, last = result.candles[0].time, result.candles[-1].time
    assert result.candles == fake.expected_candles("SOLUSDT", "1m", first, last)


def test_a_forex_range_before_the_history_costs_at_most_two_credits(make, fake) -> None:
    service = make()
    result = service.get_historical_candles("AUD/CAD", "1m", end=1262600000, limit=5000)
    assert fake.count(SERIES) <= 2  # measured before: 23 (the free tier's whole minute)
    assert result.cache in (CacheStatus.PARTIAL, CacheStatus.MISS)
    # The ceiling leaves the plan's minute for the next caller: a real forex request still gets through.
    again = service.get_historical_candles("EUR/USD", "1H", limit=10)
    assert again.cache is CacheStatus.MISS and len(again.candles) == 10


def test_past_the_ceiling_the_answer_is_partial_and_next_start_continues(make, fake) -> None:
    service = make(BINANCE_MAX_REQUESTS_PER_CALL="2")
    start = add_bars(M1, last_closed_open(M1, NOW), -20_000)
    first = service.get_historical_candles("BTCUSDT", "1m", start=start, limit=5000)
    truth = fake.expected_candles("BTCUSDT", "1m", start, add_bars(M1, start, 4999))
    assert fake.count(KLINES) == 2 and first.cache is CacheStatus.PARTIAL
    assert first.candles == truth[:2000] and first.next_start == truth[2000].time
    collected, cursor = list(first.candles), first.next_start
    while cursor is not None and len(collected) < 5000:
        page = service.get_historical_candles("BTCUSDT", "1m", start=cursor, limit=5000 - len(collected))
        collected += page.candles
        cursor = page.next_start
    assert collected == truth and fake.count(KLINES) == 5  # nothing fetched twice


def test_unknown_symbols_cost_nothing(make, fake) -> None:
    service = make()
    for _ in range(5):
        with pytest.raises(SymbolNotFound):
            service.get_historical_candles("NOPEUSDT", "1H", limit=10)
        with pytest.raises(SymbolNotFound):
            service.get_historical_candles("ABC/XYZ", "1H", limit=10)
    assert fake.count(KLINES) == 0 and fake.count(SERIES) == 0  # measured before: 5 calls for 5 requests
    assert fake.count("/api/v3/exchangeInfo") == 1  # the symbol list, read once and cached


def test_a_fragmented_range_is_refilled_in_whole_pages(make, fake, raw_conn) -> None:
    service = make()
    start = add_bars(M1, last_closed_open(M1, NOW), -10_000)
    # What the first release left after 300 one-bar requests on alternating bars: 300 fragments.
    truth = fake.expected_candles("BTCUSDT", "1m", start, add_bars(M1, start, 599))
    service.store.store_candles("binance", "BTCUSDT", M1, truth[::2])
    for bar in truth[::2]:
        raw_conn.run(
            "INSERT INTO coverage SELECT id, :t, :t FROM series WHERE symbol = 'BTCUSDT' AND interval = '1m'",
            t=bar.time,
        )
    result = service.get_historical_candles("BTCUSDT", "1m", start=start, limit=600)
    assert result.candles == truth
    assert fake.count(KLINES) == 1  # measured before: 300
    assert raw_conn.run("SELECT count(*) FROM ohlcv_coverage")[0][0] == 1


def test_paging_with_a_small_limit_costs_one_request_per_provider_page(make, fake) -> None:
    service = make()
    cursor: int | None = add_bars(M1, last_closed_open(M1, NOW), -3000)
    pages = 0
    while cursor is not None and pages < 300:
        page = service.get_historical_candles("ETHUSDT", "1m", start=cursor, limit=7)
        cursor, pages = page.next_start, pages + 1
    assert pages == 300 and fake.count(KLINES) == 3  # 2100 bars in 300 pages of 7: 3 provider pages


def test_the_open_bar_is_fetched_once_per_ttl_for_every_caller(make, fake) -> None:
    first, second = make(), make()
    make().get_historical_candles("BTCUSDT", "1m", limit=5)  # closed bars cached first
    before = fake.count(KLINES)
    answers = [svc.get_historical_candles("BTCUSDT", "1m", limit=5, include_open=True)
               for svc in (first, second, first, second)]
    assert fake.count(KLINES) - before == 1  # four callers, two "Lambdas", one request
    assert all(a.candles[-1] == answers[0].candles[-1] for a in answers)
    fake.advance(3)  # past BINANCE_OPEN_BAR_TTL_SECONDS (2)
    second.get_historical_candles("BTCUSDT", "1m", limit=5, include_open=True)
    assert fake.count(KLINES) - before == 2


# --- budgets shared by every Lambda ------------------------------------------------------------------


def test_twelve_data_credits_spent_by_one_lambda_are_honoured_by_another(make, fake) -> None:
    one = make(TWELVE_DATA_CREDITS_PER_MINUTE="3")
    other = make(TWELVE_DATA_CREDITS_PER_MINUTE="3")
    for pair in ("EUR/USD", "GBP/USD", "USD/JPY"):
        assert one.get_historical_candles(pair, "1H", limit=5).cache is CacheStatus.MISS
    assert fake.count(SERIES) == 3
    with pytest.raises(UpstreamRateLimited) as info:
        other.get_historical_candles("AUD/USD", "1H", limit=5)
    assert fake.count(SERIES) == 3  # refused before the provider's own 429
    assert 1 <= info.value.retry_after <= 60  # to the next minute
    # Cached answers are still served meanwhile.
    assert other.get_historical_candles("EUR/USD", "1H", limit=5).cache is CacheStatus.HIT
    fake.advance(60)
    assert other.get_historical_candles("AUD/USD", "1H", limit=5).cache is CacheStatus.MISS


def test_the_backfill_leaves_the_reserved_share_to_api_requests(make, fake) -> None:
    service = make(TWELVE_DATA_CREDITS_PER_MINUTE="4", TWELVE_DATA_RESERVED_CREDITS_PER_MINUTE="2")
    since = int(NOW) - 400 * 86400
    with pytest.raises(UpstreamRateLimited):
        service.fill_gaps("EUR/USD", "1m", since)  # a long range: many credits wanted
    assert fake.count(SERIES) == 2  # 4 - 2 reserved
    assert service.get_historical_candles("GBP/USD", "1H", limit=5).cache is CacheStatus.MISS
    assert fake.count(SERIES) == 3


def test_a_binance_ban_seen_by_one_lambda_stops_every_lambda(make, fake) -> None:
    one, other = make(), make()
    fake.fail_next(1, 418, KLINES, retry_after=120)
    with pytest.raises(UpstreamRateLimited):
        one.get_historical_candles("BTCUSDT", "1H", limit=5)
    requests = fake.count(KLINES)
    with pytest.raises(UpstreamRateLimited) as info:
        other.get_historical_candles("ETHUSDT", "1H", limit=5)
    assert fake.count(KLINES) == requests and info.value.retry_after >= 100  # nobody extends the ban
    fake.advance(121)
    assert other.get_historical_candles("ETHUSDT", "1H", limit=5).cache is CacheStatus.MISS


# --- time and the fill lock ---------------------------------------------------------------------------


def _concurrent(build: Callable[[], MarketDataService], n: int, request: dict[str, Any]) -> list[Any]:
    """n "Lambdas" (threads, each with its own service and connections) asking at the same instant."""
    services = [build() for _ in range(n)]
    barrier = threading.Barrier(n)
    outcomes: list[Any] = [None] * n

    def run(i: int) -> None:
        services[i].store.ping()
        barrier.wait(30)
        try:
            outcomes[i] = services[i].get_historical_candles(**request)
        except Exception as exc:  # reported, the test asserts on it
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes


@pytest.mark.slow
@pytest.mark.parametrize("through_pgbouncer", [False, True], ids=["direct", "pgbouncer"])
def test_fifty_cold_requests_against_a_slow_provider_make_the_minimum_calls(
    request, make, fake, database_url, through_pgbouncer: bool
) -> None:
    url = request.getfixturevalue("pgbouncer_url") if through_pgbouncer else database_url
    fake.fail_next(3, "timeout", KLINES, delay=4)  # every page the minimum needs takes 4 s
    start = add_bars(M1, last_closed_open(M1, NOW), -20_000)
    outcomes = _concurrent(
        lambda: make(url, HTTP_READ_TIMEOUT="6"), 50, {"symbol": "BTCUSDT", "interval": "1m", "start": start,
                                                        "limit": 2500}
    )
    errors = [o for o in outcomes if isinstance(o, Exception)]
    assert errors == []
    assert fake.count(KLINES) == 3  # measured before: 51
    truth = fake.expected_candles("BTCUSDT", "1m", start, add_bars(M1, start, 2499))
    complete = [o for o in outcomes if o.cache is not CacheStatus.PARTIAL]
    assert all(o.candles == truth for o in complete)
    # Whoever gave up waiting answered from what was stored: a true prefix, never made-up or doubled bars.
    assert all(o.candles == truth[: len(o.candles)] for o in outcomes)
    assert len(complete) >= 45


def test_a_request_answers_partial_before_its_deadline(make, fake) -> None:
    service = make(HTTP_READ_TIMEOUT="6")
    fake.fail_next(5, "timeout", KLINES, delay=2)
    start = add_bars(M1, last_closed_open(M1, NOW), -20_000)
    t0 = time.monotonic()
    result = service.get_historical_candles("BTCUSDT", "1m", start=start, limit=5000, timeout=3.5)
    elapsed = time.monotonic() - t0
    # The first page took 2 s; the others, fetched in parallel, were sent at once (those that still had
    # a request's minimum of time left), each cut to the time left, and timed out; none was started
    # after the deadline.
    assert result.cache is CacheStatus.PARTIAL and 1 <= fake.count(KLINES) <= 5
    truth = fake.expected_candles("BTCUSDT", "1m", start, add_bars(M1, start, 999))
    assert result.candles == truth and result.next_start == add_bars(M1, start, 1000)
    assert elapsed < 3.5 + 2.0  # generous: the point is that no request was started past the deadline


def test_without_a_database_answers_bypass_at_once_after_the_first_failure(fake, caplog) -> None:
    settings = settings_for(
        fake, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", DB_CONNECT_TIMEOUT="1",
        DB_RETRY_AFTER_SECONDS="60",
    )
    attempts = []
    real_connect = CandleStore._connect

    def counting(self: CandleStore) -> Any:
        attempts.append(1)
        return real_connect(self)

    service = real_service(settings, CandleStore(settings), fake.clock)
    try:
        CandleStore._connect = counting  # type: ignore[method-assign]
        for _ in range(3):
            assert service.get_historical_candles("BTCUSDT", "1H", limit=5).cache is CacheStatus.BYPASS
    finally:
        CandleStore._connect = real_connect  # type: ignore[method-assign]
        service.close()
    # One attempt per store (the cache's and the shared limits'), not one per request.
    assert len(attempts) <= 2


def test_provider_waits_are_cut_to_the_request_deadline(make, fake) -> None:
    # The provider hangs: with a 10 s read timeout and retries, one page would take far longer than the
    # request may. The deadline (3 s) cuts the attempt's timeout and the retry budget.
    service = make(HTTP_READ_TIMEOUT="10", UPSTREAM_RETRY_BUDGET_SECONDS="20")
    fake.fail_next(5, "timeout", KLINES, delay=8)
    t0 = time.monotonic()
    with pytest.raises(UpstreamUnavailable):  # nothing cached to answer with
        service.get_historical_candles("BTCUSDT", "1H", limit=10, timeout=3)
    assert time.monotonic() - t0 < 3 + 2.0  # generous; without the cut this takes 8 s or more
