"""Helpers for the service tests: a faithful in-test provider double and database snapshots.

`DoubleProvider` implements the MarketDataProvider protocol on top of the real shared helpers
(`plan_range`, `assemble_page`, `merge_pages`), so its pages look exactly like a client's: one page
per `max_page_bars` bar slots, end clamped to the last closed bar, the open bar split off. Bars are a
pure function of (symbol, interval, open time); forex doubles have no bars from Friday 22:00 to
Sunday 22:00 UTC (no Saturday/Sunday daily bars). Every upstream request is recorded
(`requests`, `calls`), and failures can be injected per request number (`fail_on`).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Callable, Iterator
from typing import Any

from marketdata.errors import SymbolNotFound, UpstreamError
from marketdata.intervals import Interval, add_bars, bar_open, first_open_at_or_after, next_open
from marketdata.providers.base import FetchResult, Page, assemble_page, merge_pages, plan_range
from marketdata.schemas import AssetClass, Candle

# A fixed "now" for deterministic tests: Wednesday 2024-05-15 10:37:20 UTC (mid-bar for every interval).
NOW = calendar.timegm((2024, 5, 15, 10, 37, 20))


def is_forex_closed(interval: Interval, t: int) -> bool:
    """Whether the forex double has no bar opening at t (weekends)."""
    if interval in (Interval.W1, Interval.MO1):
        return False
    tm = time.gmtime(t)
    if interval is Interval.D1:
        return tm.tm_wday >= 5
    if tm.tm_wday == 5:
        return True
    if tm.tm_wday == 4 and tm.tm_hour >= 22:
        return True
    return tm.tm_wday == 6 and tm.tm_hour < 22


def make_bar(symbol: str, interval: Interval, t: int, *, open_bar: bool = False) -> Candle:
    seed = (sum(map(ord, symbol)) * 31 + len(interval.value) * 7 + t // 60) % 997
    base = 100.0 + seed / 10
    close = base + (0.37 if open_bar else 0.25)
    return Candle(time=t, open=base, high=base + 1.0, low=base - 1.0, close=close, volume=float(seed))


class DoubleProvider:
    """A deterministic MarketDataProvider with request counting and injectable failures."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        asset_class: AssetClass = AssetClass.CRYPTO,
        max_page_bars: int = 1000,
        listed: int = 0,
        symbols: list[str] | None = None,
        derived_intervals: dict[Interval, Interval] | None = None,
    ) -> None:
        self.asset_class = asset_class
        #: The capability table (app interval -> base); empty: every interval native.
        self.derived_intervals = derived_intervals or {}
        self.name = "binance" if asset_class is AssetClass.CRYPTO else "twelve_data"
        self.max_page_bars = max_page_bars
        self.clock = clock
        self.listed = listed
        self.symbols = (
            symbols
            if symbols is not None
            else (["BTCUSDT", "ETHUSDT"] if asset_class is AssetClass.CRYPTO else ["EUR/USD", "GBP/USD"])
        )
        self.requests: list[tuple[str, Interval, int, int]] = []  # (symbol, interval, page start, page end)
        self.symbol_requests = 0
        #: request number (1-based, counting every candle request) -> exception to raise instead
        self.fail_on: dict[int, Exception] = {}
        self.fail_symbols: Exception | None = None

    @property
    def calls(self) -> int:
        return len(self.requests)

    def exists(self, interval: Interval, t: int) -> bool:
        if t < bar_open(interval, self.listed):
            return False
        return not (self.asset_class is AssetClass.FOREX and is_forex_closed(interval, t))

    def truth(self, symbol: str, interval: Interval, start: int, end: int) -> list[Candle]:
        """The closed bars of [start, end] at the current clock."""
        out = []
        t = first_open_at_or_after(interval, start)
        while t <= end and next_open(interval, t) <= self.clock():
            if self.exists(interval, t):
                out.append(make_bar(symbol, interval, t))
            t = next_open(interval, t)
        return out

    def iter_pages(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Page]:
        if symbol not in self.symbols:
            raise SymbolNotFound(symbol, self.name)
        now = self.clock()
        plan = plan_range(interval, start, end, now)
        if plan is None:
            return
        page_start = plan.first
        while True:
            page_end = min(plan.last, add_bars(interval, page_start, self.max_page_bars - 1))
            self.requests.append((symbol, interval, page_start, page_end))
            failure = self.fail_on.get(len(self.requests))
            if failure is not None:
                raise failure
            bars = []
            t = page_start
            while t <= page_end:
                if self.exists(interval, t):
                    bars.append(make_bar(symbol, interval, t, open_bar=t == plan.open_time))
                t = next_open(interval, t)
            yield assemble_page(plan, page_start, page_end, bars)
            if page_end >= plan.last:
                return
            page_start = next_open(interval, page_end)

    def fetch_candles(
        self, symbol: str, interval: Interval, start: int, end: int, limit: int | None = None
    ) -> FetchResult:
        return merge_pages(self.iter_pages(symbol, interval, start, end), limit)

    def get_available_symbols(self) -> list[str]:
        self.symbol_requests += 1
        if self.fail_symbols is not None:
            raise self.fail_symbols
        return sorted(self.symbols)

    def close(self) -> None:
        pass


def upstream_error(kind: type[UpstreamError] = UpstreamError, **kw: Any) -> UpstreamError:
    return kind("injected failure", provider="binance", **kw)


class FrozenClock:
    """A settable clock for the service and the double."""

    def __init__(self, now: float = NOW) -> None:
        self.now = float(now)

    def __call__(self) -> float:
        return self.now


def connect(database_url: str) -> Any:
    """A plain autocommit pg8000 connection to database_url (for checks behind the store's back)."""
    import pg8000.native

    from marketdata.store import parse_database_url

    kwargs = parse_database_url(database_url)
    kwargs.pop("_sslmode", None)
    kwargs.pop("_sslrootcert", None)
    return pg8000.native.Connection(**kwargs, ssl_context=False, timeout=30)


def snapshot(database_url_or_conn: Any) -> dict[str, list[tuple]]:
    """Every row of the cache tables, sorted: compare before/after to prove nothing changed."""
    conn = database_url_or_conn
    tables = {
        "ohlcv_cache": "SELECT * FROM ohlcv_cache",
        "ohlcv_coverage": "SELECT * FROM ohlcv_coverage",
        "symbol_lists": "SELECT asset_class, symbols::text, fetched_at::text FROM symbol_lists",
    }
    return {name: sorted(tuple(r) for r in conn.run(sql)) for name, sql in tables.items()}


# --- the real stack: real clients against the fake upstream, real store -----------------------------


def real_service(settings: Any, store: Any, clock: Callable[[], float]) -> Any:
    """A MarketDataService with the real Binance and Twelve Data clients (aimed by `settings`)."""
    from marketdata.providers.binance import BinanceClient
    from marketdata.providers.twelve_data import TwelveDataClient
    from marketdata.service import MarketDataService

    providers = {
        AssetClass.CRYPTO: BinanceClient(settings, clock=clock),
        AssetClass.FOREX: TwelveDataClient(settings, clock=clock),
    }
    return MarketDataService(store, providers, settings, clock=clock)


class Tripwire:
    """Wraps a provider: before upstream request number k (1-based, candle requests only) runs
    `actions[k]()` - to kill the database or break the upstream between two pages."""

    def __init__(self, inner: Any, actions: dict[int, Callable[[], None]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.asset_class = inner.asset_class
        self.max_page_bars = inner.max_page_bars
        self.derived_intervals = inner.derived_intervals
        self.actions = actions
        self.calls = 0

    def iter_pages(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Page]:
        pages = self.inner.iter_pages(symbol, interval, start, end)
        try:
            while True:
                self.calls += 1
                action = self.actions.get(self.calls)
                if action is not None:
                    action()
                try:
                    page = next(pages)
                except StopIteration:
                    return
                yield page
        finally:
            pages.close()

    def fetch_candles(self, symbol: str, interval: Interval, start: int, end: int, limit: int | None = None):
        return merge_pages(self.iter_pages(symbol, interval, start, end), limit)

    def get_available_symbols(self) -> list[str]:
        return self.inner.get_available_symbols()

    def close(self) -> None:
        self.inner.close()


def concurrent_request(
    database_url: str, upstream_url: str, now: float, request: dict, barrier: Any, results: Any
) -> None:
    """One "Lambda" of the concurrency tests (runs in a spawned process): build the real stack, wait for
    every sibling at the barrier, ask, report what came back."""
    from marketdata.config import Settings
    from marketdata.store import CandleStore

    settings = Settings.model_validate(
        {
            "BINANCE_REST_URL": upstream_url,
            "TWELVE_DATA_REST_URL": upstream_url,
            "TWELVE_DATA_API_KEY": "test-td-key-0123456789",
            "DATABASE_URL": database_url,
            # Generous: 20 processes on 2 busy cores queue for the lock one page at a time.
            "SINGLE_FLIGHT_WAIT_SECONDS": 120,
            "DB_STATEMENT_TIMEOUT_MS": 120_000,
        }
    )
    store = CandleStore(settings)
    try:
        service = real_service(settings, store, lambda: now)
        store.ping()  # connect before the start line, so the race is about the fill, not connecting
        barrier.wait(60)
        result = service.get_historical_candles(**request)
        results.put(
            (
                "ok",
                result.cache.value,
                result.provider_calls,
                result.rows_written,
                [(c.time, c.open, c.high, c.low, c.close, c.volume) for c in result.candles],
            )
        )
    except BaseException as exc:  # reported, not swallowed: the parent asserts on it
        results.put(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        store.close()
