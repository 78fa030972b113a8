"""Fallbacks of the cache-first service (provider failing, lock busy, database gone), symbol lists and
fill_gaps, with the provider double against the real store and Postgres."""

from __future__ import annotations

import logging

import pytest

from marketdata.config import Settings
from marketdata.errors import SymbolNotFound, UpstreamRateLimited, UpstreamUnavailable
from marketdata.intervals import Interval, add_bars, last_closed_open
from marketdata.schemas import AssetClass, CacheStatus
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.cache.service_helpers import NOW, DoubleProvider, FrozenClock, snapshot

M1 = Interval.M1
H1 = Interval.H1
START = add_bars(M1, last_closed_open(M1, NOW), -9999)


@pytest.fixture
def crypto(clock: FrozenClock) -> DoubleProvider:
    return DoubleProvider(clock)


@pytest.fixture
def forex(clock: FrozenClock) -> DoubleProvider:
    return DoubleProvider(clock, asset_class=AssetClass.FOREX, max_page_bars=5000)


def make_service(store, settings, crypto, forex, clock) -> MarketDataService:
    return MarketDataService(
        store, {AssetClass.CRYPTO: crypto, AssetClass.FOREX: forex}, settings, clock=clock
    )


@pytest.fixture
def service(store, db_settings, crypto, forex, clock) -> MarketDataService:
    return make_service(store, db_settings, crypto, forex, clock)


def coverage(raw_conn, symbol: str = "BTCUSDT", interval: Interval = M1) -> list[tuple[int, int]]:
    rows = raw_conn.run(
        "SELECT start_time, end_time FROM ohlcv_coverage WHERE symbol = :s AND interval = :i ORDER BY 1",
        s=symbol,
        i=interval.value,
    )
    return [tuple(r) for r in rows]


def row_times(raw_conn, symbol: str = "BTCUSDT", interval: Interval = M1) -> list[int]:
    rows = raw_conn.run(
        "SELECT open_time FROM ohlcv_cache WHERE symbol = :s AND interval = :i ORDER BY 1",
        s=symbol,
        i=interval.value,
    )
    return [r[0] for r in rows]


# --- provider failures ----------------------------------------------------------------------------


def test_provider_failing_after_some_pages_keeps_them_and_answers_partial(service, crypto, raw_conn) -> None:
    crypto.fail_on[2] = UpstreamRateLimited("slow down", provider="binance", retry_after=7)
    result = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=3000)
    first_page = crypto.truth("BTCUSDT", M1, START, add_bars(M1, START, 999))
    assert result.cache is CacheStatus.PARTIAL
    assert result.candles == first_page
    assert result.next_start == add_bars(M1, START, 1000)  # resume exactly after what we have
    # Pages 2 and 3 were fetched in parallel: page 3 was sent too, but only the unbroken run is stored.
    assert result.provider_calls == 3 and result.rows_written == 1000
    # Coverage claims exactly the stored page, and the rows are exactly that page.
    assert coverage(raw_conn) == [(START, add_bars(M1, START, 999))]
    assert row_times(raw_conn) == [c.time for c in first_page]

    # Nobody asks the provider until its Retry-After has passed (shared by every Lambda) ...
    crypto.fail_on.clear()
    waiting = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=3000)
    assert waiting.cache is CacheStatus.PARTIAL and waiting.candles == first_page and crypto.calls == 3
    # ... then, the provider back, only the missing pages are fetched.
    crypto.clock.now += 8
    crypto.requests.clear()
    again = service.get_historical_candles("BTCUSDT", "1m", start=START, limit=3000)
    assert again.cache is CacheStatus.MISS
    assert again.candles == crypto.truth("BTCUSDT", M1, START, add_bars(M1, START, 2999))
    assert sorted(r[2] for r in crypto.requests) == [add_bars(M1, START, 1000), add_bars(M1, START, 2000)]


def test_provider_failing_with_nothing_cached_raises_the_typed_error(service, crypto, raw_conn) -> None:
    service.get_symbols("crypto")  # the list /v1/candles checks symbols against
    before = snapshot(raw_conn)
    crypto.fail_on[1] = UpstreamRateLimited("slow down", provider="binance", retry_after=7)
    with pytest.raises(UpstreamRateLimited) as info:
        service.get_historical_candles("BTCUSDT", "1m", start=START, limit=100)
    assert info.value.retry_after == 7
    assert snapshot(raw_conn) == before
    # The back-off is shared: until it ends, nobody asks the provider (refused before any request).
    calls = crypto.calls
    with pytest.raises(UpstreamRateLimited) as again:
        service.get_historical_candles("ETHUSDT", "1m", start=START, limit=100)
    assert crypto.calls == calls and again.value.retry_after == 7


def test_partial_latest_bars_when_the_newest_page_fails(service, crypto) -> None:
    service.get_historical_candles("BTCUSDT", "1H", limit=100)
    crypto.clock.now += 3 * 3600  # three new bars closed
    crypto.fail_on[crypto.calls + 1] = UpstreamUnavailable("down", provider="binance")
    result = service.get_historical_candles("BTCUSDT", "1H", limit=100)
    assert result.cache is CacheStatus.PARTIAL
    assert [c.time for c in result.candles] == [
        c.time
        for c in crypto.truth(
            "BTCUSDT", H1, add_bars(H1, last_closed_open(H1, NOW), -99), last_closed_open(H1, NOW)
        )
    ][3:]


def test_unknown_symbol_propagates_and_stores_nothing(service, crypto, raw_conn) -> None:
    service.get_symbols("crypto")
    service.get_symbols("forex")
    before = snapshot(raw_conn)
    with pytest.raises(SymbolNotFound):
        service.get_historical_candles("NOPEUSDT", "1H", limit=10)
    assert snapshot(raw_conn) == before
    assert crypto.calls == 0  # not in the symbol list: refused without asking the provider


# --- single-flight wait timed out ------------------------------------------------------------------


def test_a_holder_making_no_progress_is_not_fetched_around(
    db_settings, crypto, forex, clock, raw_conn, caplog
) -> None:
    """Another request holds the series' fill lock and stores nothing: after SINGLE_FLIGHT_WAIT_SECONDS
    without progress the waiter answers from what is stored (here: nothing yet), partial, and never
    fetches the same pages itself (that is what multiplied provider calls under load)."""
    impatient = db_settings.model_copy(update={"single_flight_wait_seconds": 0.6})
    service = make_service(CandleStore(impatient), impatient, crypto, forex, clock)
    holder = CandleStore(db_settings)
    try:
        with holder.fill_transaction("BTCUSDT", H1, wait_seconds=1), caplog.at_level(logging.WARNING):
            result = service.get_historical_candles("BTCUSDT", "1H", limit=50)
    finally:
        holder.close()
        service.store.close()
    assert result.candles == [] and result.cache is CacheStatus.PARTIAL
    assert crypto.calls == 0 and result.rows_written == 0
    assert row_times(raw_conn, interval=H1) == [] and coverage(raw_conn, interval=H1) == []
    assert "single-flight wait ended" in caplog.text


# --- database unavailable --------------------------------------------------------------------------


def test_database_unreachable_answers_from_the_provider(crypto, forex, clock, caplog) -> None:
    dead = Settings.model_validate(
        {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DB_CONNECT_TIMEOUT": 1}
    )
    service = make_service(CandleStore(dead), dead, crypto, forex, clock)
    with caplog.at_level(logging.WARNING):
        result = service.get_historical_candles("BTCUSDT", "1H", limit=20, include_open=True)
    last = last_closed_open(H1, NOW)
    assert result.cache is CacheStatus.BYPASS
    assert result.candles[:20] == crypto.truth("BTCUSDT", H1, add_bars(H1, last, -19), last)
    assert len(result.candles) == 21 and result.candles[-1].time == add_bars(H1, last, 1)
    assert result.rows_written == 0 and result.provider_calls == 2
    assert "answering straight from the provider" in caplog.text


def test_no_database_configured_bypasses(crypto, forex, clock, db_settings) -> None:
    service = make_service(None, db_settings, crypto, forex, clock)
    result = service.get_historical_candles("EUR/USD", "1H", limit=300)
    assert result.cache is CacheStatus.BYPASS and len(result.candles) == 300
    assert result.candles == forex.truth("EUR/USD", H1, 0, NOW)[-300:]


# --- symbol lists ----------------------------------------------------------------------------------


def test_symbols_ttl_refresh_and_stale(service, crypto, clock, db_settings) -> None:
    first = service.get_symbols("crypto")
    assert first.symbols == ["BTCUSDT", "ETHUSDT"] and first.cache is CacheStatus.MISS and not first.stale
    assert crypto.symbol_requests == 1

    hit = service.get_symbols(AssetClass.CRYPTO)
    assert hit.symbols == first.symbols and hit.cache is CacheStatus.HIT and crypto.symbol_requests == 1

    clock.now += db_settings.symbols_ttl_seconds + 1
    crypto.symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
    refreshed = service.get_symbols("crypto")
    assert refreshed.symbols == ["BTCUSDT", "ETHUSDT", "SOLUSDT"] and refreshed.cache is CacheStatus.MISS
    assert crypto.symbol_requests == 2

    clock.now += db_settings.symbols_ttl_seconds + 1
    crypto.fail_symbols = UpstreamUnavailable("down", provider="binance")
    stale = service.get_symbols("crypto")
    assert stale.symbols == refreshed.symbols and stale.cache is CacheStatus.PARTIAL and stale.stale


def test_symbols_without_cache_raise_when_the_provider_fails(service, forex) -> None:
    forex.fail_symbols = UpstreamRateLimited("credits", provider="twelve_data", retry_after=30)
    with pytest.raises(UpstreamRateLimited):
        service.get_symbols("forex")


def test_symbols_bypass_when_the_database_is_down(crypto, forex, clock) -> None:
    dead = Settings.model_validate(
        {"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DB_CONNECT_TIMEOUT": 1}
    )
    service = make_service(CandleStore(dead), dead, crypto, forex, clock)
    result = service.get_symbols("forex")
    assert result.symbols == ["EUR/USD", "GBP/USD"] and result.cache is CacheStatus.BYPASS


# --- fill_gaps (the backfill's entry point) ----------------------------------------------------------


def test_fill_gaps_pages_deadline_and_resume(service, crypto, clock, raw_conn) -> None:
    end = add_bars(M1, START, 2499)
    seen = []
    report = service.fill_gaps("BTCUSDT", "1m", START, end, max_pages=1, on_page=seen.append)
    assert report.pages == 1 and report.rows_written == 1000 and not report.complete
    assert report.covered_until == add_bars(M1, START, 999)
    assert [(p.start, p.end) for p in seen] == [(START, add_bars(M1, START, 999))]

    stopped = service.fill_gaps("BTCUSDT", "1m", START, end, deadline=clock.now)
    assert stopped.pages == 0 and not stopped.complete and crypto.calls == 1

    rest = service.fill_gaps("BTCUSDT", "1m", START, end)
    page_end = add_bars(M1, START, 2999)  # whole pages: the last one reaches past the range
    assert rest.pages == 2 and rest.rows_written == 2000 and rest.complete
    assert rest.covered_until == page_end
    assert coverage(raw_conn) == [(START, page_end)]
    assert row_times(raw_conn) == [c.time for c in crypto.truth("BTCUSDT", M1, START, page_end)]

    nothing = service.fill_gaps("BTCUSDT", "1m", START, end)
    assert nothing.pages == 0 and nothing.complete and crypto.calls == 3
