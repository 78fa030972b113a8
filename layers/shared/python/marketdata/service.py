"""The cache-first rules: history and symbol lists answered from Postgres, filled from the providers once.

How one history request is answered (`MarketDataService.get_historical_candles`):

1. Validate everything first (symbol, interval, limit, bounds). Bad input raises InvalidRequest /
   InvalidInterval before the database or a provider is touched.
2. Work out the *window*: the closed bar open times the answer can come from, clamped to the newest
   closed bar at `clock()`. A request for `limit` bars needs about `limit` bar slots (more for forex,
   whose weekends hold few bars). An interval the provider serves derived (the provider's
   `derived_intervals`: forex 4H from 1H, 1W and 1M from 1D) is read as its base: coverage, gaps and
   fills below are in base bars, and the answer is built from them (marketdata.resample).
3. Read coverage for the window; the uncovered parts are the gaps. Each gap is filled one provider
   page at a time, each page inside `store.fill_transaction` (a transaction-scoped advisory lock per
   symbol+interval = single-flight): re-read coverage under the lock, fetch ONE page of what is still
   missing, store its bars and coverage, commit. N Lambdas on one cold range therefore make one
   provider call per page between them, and a repeat makes none.
4. Answer from the store with one read. When the window held fewer bars than asked for (forex weekends,
   outages), it is widened a bounded number of times; coverage remembers empty ranges, so that is cheap.
5. The still-open bar is fetched live when asked for (`include_open`), never stored, never covered.

Fallbacks: the database unreachable (or not configured) -> the provider answers directly, cache=bypass.
The single-flight wait timed out -> the rest is fetched live without storing (cache=miss, logged). The
provider failing -> pages already stored stay (their coverage is true), the answer is what the cache
has (cache=partial), or the typed error when it has nothing. SymbolNotFound always propagates.

Cache status of a history answer: hit = closed bars entirely from the cache (an `include_open` live
fetch of the open bar does not change that; `provider_calls` counts it); miss = some closed bars were
fetched from the provider for this answer; partial = a provider call failed, so the answer may lack
bars; bypass = the database was not used.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol

from marketdata.config import Settings, get_settings
from marketdata.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidRequest,
    MarketDataError,
    SingleFlightTimeout,
    UpstreamError,
)
from marketdata.intervals import (
    Interval,
    add_bars,
    bar_open,
    base_span,
    count_bars,
    first_open_at_or_after,
    last_closed_open,
    next_open,
    parse_interval,
    whole_bars_through,
)
from marketdata.providers.base import MarketDataProvider, Page, source_interval
from marketdata.resample import resample
from marketdata.schemas import (
    MAX_LIMIT,
    AssetClass,
    CacheStatus,
    Candle,
    detect_asset_class,
    normalize_symbol,
)

if TYPE_CHECKING:
    from marketdata.store import CandleStore, FillTx

logger = logging.getLogger(__name__)

# Same ceiling as schemas.UnixSeconds (year 3000): keeps calendar arithmetic in range.
_MAX_TIME = 32503680000
# How many times a window that held too few bars is widened before answering with what it has.
_MAX_WIDENINGS = 3
# Forex has few bars from Friday 17:00 to Sunday 17:00 New York (about 2 days of 7; some weekends have
# bars, most do not) plus a few holidays: start with 1.5 slots per wanted bar so that one window usually
# suffices. Only an estimate: every bar the provider serves is kept, whatever the day.
_FOREX_SLOTS_PER_BAR = 1.5


# --- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HistoryResult:
    symbol: str  # normalized (upper case)
    interval: Interval
    asset_class: AssetClass
    provider: str  # "binance" | "twelve_data"
    candles: list[Candle]  # ascending; the open bar last only when include_open and it exists
    next_start: int | None  # cursor for the next page, else None
    cache: CacheStatus  # hit | miss | partial | bypass
    reaches_present: (
        bool  # the answer runs up to the newest closed bar (or the open bar): short Cache-Control
    )
    provider_calls: int = 0  # upstream requests made for this answer (for metrics)
    rows_written: int = 0  # candles stored for this answer (for metrics)


@dataclass(frozen=True, slots=True)
class SymbolsResult:
    asset_class: AssetClass
    symbols: list[str]  # sorted
    cache: CacheStatus  # hit (fresh from db) | miss (refreshed) | partial (stale, provider failed) | bypass
    stale: bool


@dataclass(frozen=True, slots=True)
class FillReport:
    """What fill_gaps did, for the backfill."""

    pages: int
    rows_written: int
    complete: (
        bool  # False when stopped (deadline, max_pages, single-flight busy) before the range was covered
    )
    # End of the covered run that starts at the range start (None when the start is not covered): the
    # backfill resumes after it.
    covered_until: int | None


# --- small helpers -----------------------------------------------------------------------------------


def _check_int(value: object, param: str, low: int, high: int) -> int:
    # bool is an int subclass; True as a limit is a bug in the caller, not a request for one bar.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"{param} must be an integer", param=param)
    if not low <= value <= high:
        raise InvalidRequest(f"{param} must be between {low} and {high}", param=param)
    return value


def _gaps(interval: Interval, lo: int, hi: int, covered: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """[lo, hi] minus the covered ranges, as inclusive open-time ranges, ascending."""
    gaps: list[tuple[int, int]] = []
    cursor = lo
    for cov_start, cov_end in covered:
        if cov_end < cursor:
            continue
        if cov_start > hi:
            break
        if cov_start > cursor:
            gaps.append((cursor, bar_open(interval, cov_start - 1)))
        cursor = first_open_at_or_after(interval, cov_end + 1)
        if cursor > hi:
            return gaps
    if cursor <= hi:
        gaps.append((cursor, hi))
    return gaps


def _covered_run_end(covered: list[tuple[int, int]], start: int) -> int | None:
    """End of the covered range containing `start` (ranges merged by the store), else None."""
    for cov_start, cov_end in covered:
        if cov_start <= start <= cov_end:
            return cov_end
    return None


def _select(bars: Mapping[int, Candle], lo: int, hi: int, limit: int, newest: bool) -> list[Candle]:
    """The first (or, newest=True, the last) `limit` bars of [lo, hi], ascending."""
    selected = [bars[t] for t in sorted(bars) if lo <= t <= hi]
    return selected[-limit:] if newest else selected[:limit]


class _Counters:
    """Provider calls and rows written for one answer (or one fill)."""

    __slots__ = ("calls", "pages", "rows")

    def __init__(self) -> None:
        self.calls = 0
        self.pages = 0
        self.rows = 0


def _first_page(
    provider: MarketDataProvider, symbol: str, interval: Interval, start: int, end: int, counters: _Counters
) -> Page | None:
    """One upstream request: the first page of [start, end]; the generator is closed so no second
    request starts."""
    pages: Iterator[Page] = provider.iter_pages(symbol, interval, start, end)
    counters.calls += 1
    try:
        return next(pages, None)
    finally:
        close = getattr(pages, "close", None)
        if close is not None:
            close()


@dataclass(frozen=True, slots=True)
class _Series:
    """What one request reads: `interval` bars of `symbol`, built from the provider's `base` bars.

    base is the interval asked upstream, cached and covered (marketdata.resample); it equals interval
    where the provider serves the interval natively. Ranges handed to the sources are in `interval`
    open times; the sources translate them to base ranges.
    """

    provider: MarketDataProvider
    symbol: str
    interval: Interval
    base: Interval

    @property
    def derived(self) -> bool:
        return self.base is not self.interval

    def base_span(self, lo: int, hi: int) -> tuple[int, int]:
        return base_span(self.interval, self.base, lo, hi)

    def known_through(self, base_end: int) -> int:
        """The newest `interval` bar known once the base is covered through base_end."""
        return whole_bars_through(self.interval, self.base, base_end)

    def built(
        self, base_bars: Mapping[int, Candle], lo: int, hi: int, limit: int, newest: bool
    ) -> list[Candle]:
        """The `interval` bars of [lo, hi] from base bars (selected as _select does)."""
        if not self.derived:
            return _select(base_bars, lo, hi, limit, newest)
        first, last = self.base_span(lo, hi)
        built = resample(self.interval, [base_bars[t] for t in sorted(base_bars) if first <= t <= last])
        return _select({c.time: c for c in built}, lo, hi, limit, newest)


# --- where bars come from: the cache (filled single-flight) or the provider directly -----------------


class _Source(Protocol):
    counters: _Counters
    failure: MarketDataError | None

    def ensure(self, lo: int, hi: int) -> None: ...

    def probe(self, lo: int, hi: int) -> int | None: ...

    def read(self, lo: int, hi: int, limit: int, newest: bool) -> list[Candle]: ...


class _LiveSource:
    """The provider answers directly (database down or not configured): nothing is stored."""

    def __init__(self, series: _Series, counters: _Counters) -> None:
        self.series = series
        self.counters = counters
        self.failure: MarketDataError | None = None
        self.bars: dict[int, Candle] = {}  # base bars

    def ensure(self, lo: int, hi: int) -> None:
        self.ensure_base(*self.series.base_span(lo, hi))

    def ensure_base(self, lo: int, hi: int) -> None:
        if self.failure is not None:
            return
        series = self.series
        try:
            result = series.provider.fetch_candles(series.symbol, series.base, lo, hi)
        except UpstreamError as exc:
            self.counters.calls += 1
            self.failure = exc
            return
        self.counters.calls += max(result.pages, 1)
        for candle in result.candles:
            self.bars[candle.time] = candle

    def read(self, lo: int, hi: int, limit: int, newest: bool) -> list[Candle]:
        return self.series.built(self.bars, lo, hi, limit, newest)

    def probe(self, lo: int, hi: int) -> int | None:
        """One provider page from lo; the open time up to which [lo, ...] is now known, else None."""
        if self.failure is not None:
            return None
        series = self.series
        try:
            page = _first_page(series.provider, series.symbol, series.base, *series.base_span(lo, hi),
                               self.counters)
        except UpstreamError as exc:
            self.failure = exc
            return None
        if page is None:
            return None
        for candle in page.candles:
            self.bars[candle.time] = candle
        return series.known_through(page.end)


class _CacheSource:
    """The store, filled from the provider page by page under the single-flight lock."""

    def __init__(
        self, service: MarketDataService, store: CandleStore, series: _Series, counters: _Counters
    ) -> None:
        self.service = service
        self.store = store
        self.series = series
        self.counters = counters
        self.failure: MarketDataError | None = None
        # Bars fetched live because the single-flight wait timed out: served, not stored.
        self.overlay = _LiveSource(series, counters)
        self.lock_busy = False

    def _coverage(self, lo: int, hi: int) -> list[tuple[int, int]]:
        return self.store.read_coverage(self.series.symbol, self.series.base, lo, hi)

    def _fill(self, lo: int, hi: int, max_pages: int | None = None) -> None:
        series = self.series
        self.service._fill_range(
            self.store, series.provider, series.symbol, series.base, lo, hi, self.counters,
            max_pages=max_pages,
        )

    def ensure(self, lo: int, hi: int) -> None:
        if self.failure is not None:
            return  # the provider is failing: serve what the cache has, do not hammer it
        base = self.series.base
        base_lo, base_hi = self.series.base_span(lo, hi)
        for gap_start, gap_end in _gaps(base, base_lo, base_hi, self._coverage(base_lo, base_hi)):
            if self.lock_busy:
                self._fetch_live(gap_start, gap_end)
                continue
            try:
                self._fill(gap_start, gap_end)
            except UpstreamError as exc:
                logger.warning(
                    "provider failed while filling the cache; serving what it has",
                    extra={
                        "symbol": self.series.symbol,
                        "interval": base.value,
                        "error": type(exc).__name__,
                    },
                )
                self.failure = exc
                return
            except SingleFlightTimeout:
                # Another Lambda holds the lock for too long: answer live rather than fail, without
                # storing (that Lambda is storing this range), and do not wait again in this request.
                logger.warning(
                    "single-flight wait timed out; fetching live without storing",
                    extra={"symbol": self.series.symbol, "interval": base.value},
                )
                self.lock_busy = True
                # Pages this request stored before the timeout stay: fetch only what is still missing.
                still = self._coverage(gap_start, gap_end)
                for lo_missing, hi_missing in _gaps(base, gap_start, gap_end, still):
                    self._fetch_live(lo_missing, hi_missing)

    def probe(self, lo: int, hi: int) -> int | None:
        """Make [lo, ...] known with at most one provider page (none when coverage already starts at lo).

        Returns the end of the covered run starting at lo, or None when nothing became known.
        """
        if self.failure is not None:
            return None
        if not self.lock_busy:
            base_lo, base_hi = self.series.base_span(lo, hi)
            known = _covered_run_end(self._coverage(base_lo, base_hi), base_lo)
            if known is None:
                try:
                    self._fill(base_lo, base_hi, max_pages=self.counters.pages + 1)
                except UpstreamError as exc:
                    self.failure = exc
                    return None
                except SingleFlightTimeout:
                    self.lock_busy = True
                else:
                    known = _covered_run_end(self._coverage(base_lo, base_hi), base_lo)
            if not self.lock_busy:
                return None if known is None else self.series.known_through(known)
        known_live = self.overlay.probe(lo, hi)
        self.failure = self.overlay.failure
        return known_live

    def _fetch_live(self, lo: int, hi: int) -> None:
        """Base bars [lo, hi] from the provider into the overlay."""
        if self.failure is not None:
            return
        self.overlay.ensure_base(lo, hi)
        self.failure = self.overlay.failure

    def read(self, lo: int, hi: int, limit: int, newest: bool) -> list[Candle]:
        series = self.series
        if not self.overlay.bars:
            return self.store.read_candles(
                series.symbol, series.interval, lo, hi, limit=limit, newest=newest,
                base=series.base if series.derived else None,
            )
        base_lo, base_hi = series.base_span(lo, hi)
        merged = {c.time: c for c in self.store.read_candles(series.symbol, series.base, base_lo, base_hi)}
        for t, candle in self.overlay.bars.items():
            merged.setdefault(t, candle)
        return series.built(merged, lo, hi, limit, newest)


# --- the service -------------------------------------------------------------------------------------


class MarketDataService:
    """Cache-first history and symbol lists. One instance per process (see get_service)."""

    def __init__(
        self,
        store: CandleStore | None,
        providers: Mapping[AssetClass, MarketDataProvider],
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.providers = providers
        self.settings = settings
        self.clock = clock

    def _provider(self, asset_class: AssetClass) -> MarketDataProvider:
        try:
            return self.providers[asset_class]
        except KeyError:
            raise ConfigurationError(f"no provider configured for {asset_class.value}") from None

    def storage_interval(self, symbol: str, interval: str | Interval) -> Interval:
        """The interval whose bars and coverage the cache keeps to serve `interval` of `symbol`: the
        interval itself, or the base it is built from where the provider's own bars lie off our grid."""
        provider = self._provider(detect_asset_class(normalize_symbol(symbol)))
        return source_interval(provider, parse_interval(interval))

    # --- history -------------------------------------------------------------------------------------

    def get_historical_candles(
        self,
        symbol: str,
        interval: str | Interval,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
        include_open: bool = False,
    ) -> HistoryResult:
        # Validate everything before any I/O: bad input never reaches the database or a provider.
        symbol = normalize_symbol(symbol)
        interval = parse_interval(interval)
        limit = _check_int(limit, "limit", 1, MAX_LIMIT)
        if start is not None:
            start = _check_int(start, "start", 0, _MAX_TIME)
        if end is not None:
            end = _check_int(end, "end", 0, _MAX_TIME)
        if start is not None and end is not None and start > end:
            raise InvalidRequest("start must not be after end", param="start")
        if not isinstance(include_open, bool):
            raise InvalidRequest("include_open must be true or false", param="include_open")
        asset_class = detect_asset_class(symbol)
        provider = self._provider(asset_class)
        series = _Series(provider, symbol, interval, source_interval(provider, interval))

        # The closed bars the request may draw from (never past the newest closed bar).
        now = self.clock()
        last_closed = last_closed_open(interval, now)
        open_time = next_open(interval, last_closed)
        oldest = first_open_at_or_after(interval, 0)
        lo_bound = max(oldest, first_open_at_or_after(interval, start)) if start is not None else oldest
        hi_bound = min(last_closed, bar_open(interval, end)) if end is not None else last_closed
        forward = start is not None  # first `limit` bars from start; otherwise the last `limit` bars

        counters = _Counters()
        candles: list[Candle] = []
        next_start: int | None = None
        status = CacheStatus.HIT
        failure: MarketDataError | None = None

        if lo_bound <= hi_bound:
            source: _Source
            bypass = self.store is None
            if not bypass:
                assert self.store is not None
                source = _CacheSource(self, self.store, series, counters)
                try:
                    candles, next_start = self._collect(
                        source, interval, asset_class, lo_bound, hi_bound, limit, forward
                    )
                except DatabaseUnavailable as exc:
                    logger.warning(
                        "cache database unavailable; answering straight from the provider",
                        extra={"symbol": symbol, "interval": interval.value, "error": str(exc)},
                    )
                    bypass = True
            else:
                logger.warning(
                    "no cache database configured; answering straight from the provider",
                    extra={"symbol": symbol, "interval": interval.value},
                )
            if bypass:
                source = _LiveSource(series, counters)
                candles, next_start = self._collect(
                    source, interval, asset_class, lo_bound, hi_bound, limit, forward
                )
                status = CacheStatus.BYPASS
            failure = source.failure
            if failure is not None:
                if not candles:
                    raise failure
                status = CacheStatus.PARTIAL
            elif status is not CacheStatus.BYPASS and counters.calls:
                status = CacheStatus.MISS

        reaches_present = next_start is None and hi_bound >= last_closed

        # The open bar: fetched live, never stored, never covered.
        wants_open = (
            include_open
            and next_start is None
            and (start is None or start <= open_time)
            and (end is None or end >= open_time)
        )
        if wants_open:
            try:
                open_bar = self._fetch_open_bar(series, open_time, counters)
            except UpstreamError as exc:
                logger.warning(
                    "could not fetch the open bar", extra={"symbol": symbol, "error": type(exc).__name__}
                )
                open_bar = None
                if status is not CacheStatus.BYPASS:
                    status = CacheStatus.PARTIAL
            if open_bar is not None and (not candles or candles[-1].time < open_bar.time):
                candles.append(open_bar)
                reaches_present = True

        return HistoryResult(
            symbol=symbol,
            interval=interval,
            asset_class=asset_class,
            provider=provider.name,
            candles=candles,
            next_start=next_start,
            cache=status,
            reaches_present=reaches_present,
            provider_calls=counters.calls,
            rows_written=counters.rows,
        )

    def _collect(
        self,
        source: _Source,
        interval: Interval,
        asset_class: AssetClass,
        lo_bound: int,
        hi_bound: int,
        limit: int,
        forward: bool,
    ) -> tuple[list[Candle], int | None]:
        """The answer's closed bars from `source`, widening the window while it holds too few bars."""
        slots_per_bar = 1.0
        if asset_class is AssetClass.FOREX and interval not in (Interval.W1, Interval.MO1):
            slots_per_bar = _FOREX_SLOTS_PER_BAR
        slots = math.ceil(limit * slots_per_bar)
        if forward:
            lo, hi = lo_bound, min(hi_bound, add_bars(interval, lo_bound, slots - 1))
        else:
            lo, hi = max(lo_bound, add_bars(interval, hi_bound, -(slots - 1))), hi_bound
        # Forward reads one bar more than asked: if it exists, it is exactly next_start.
        want = limit + 1 if forward else limit
        source.ensure(lo, hi)
        bars = source.read(lo, hi, want, not forward)
        for _ in range(_MAX_WIDENINGS):
            if len(bars) >= limit or source.failure is not None:
                break
            window = count_bars(interval, lo, hi)
            # Scale by the density seen so far; with nothing yet (a weekend, before a listing) look
            # twice as far. Either way a bounded number of times.
            extra = math.ceil((limit - len(bars)) * window / len(bars) * 1.1) + 1 if bars else 2 * window
            extra = min(extra, 4 * slots)
            if forward:
                if hi >= hi_bound:
                    break
                if not bars:
                    # Nothing yet (a start before the listing, a long halt): one provider page from here
                    # finds where the data starts (Binance answers with the oldest bars at or after
                    # startTime), instead of crawling window by window.
                    known = source.probe(next_open(interval, hi), hi_bound)
                    if known is None or known <= hi:
                        break
                    hi = min(hi_bound, known)
                else:
                    new_hi = min(hi_bound, add_bars(interval, hi, extra))
                    source.ensure(next_open(interval, hi), new_hi)
                    hi = new_hi
            else:
                if lo <= lo_bound:
                    break
                new_lo = max(lo_bound, add_bars(interval, lo, -extra))
                source.ensure(new_lo, bar_open(interval, lo - 1))
                lo = new_lo
            bars = source.read(lo, hi, want, not forward)
        if not forward:
            return bars, None
        if len(bars) > limit:
            return bars[:limit], bars[limit].time
        if source.failure is not None:
            # Part of the window may be missing: resume right after what we have, so nothing is skipped.
            resume = next_open(interval, bars[-1].time) if bars else lo
            return bars, resume if resume <= hi_bound else None
        if hi < hi_bound:
            return bars, next_open(interval, hi)
        return bars, None

    def _fetch_open_bar(self, series: _Series, open_time: int, counters: _Counters) -> Candle | None:
        """The still-open bar, live, in one provider request: a native bar as the provider has it; a
        derived bar built from its closed base bars plus the open base bar."""
        counters.calls += 1
        base_open = bar_open(series.base, int(self.clock())) if series.derived else open_time
        result = series.provider.fetch_candles(
            series.symbol, series.base, open_time, max(open_time, base_open)
        )
        counters.calls += max(result.pages, 1) - 1
        bars = [c for c in result.candles if c.time >= open_time]
        if result.open_bar is not None and result.open_bar.time >= open_time:
            bars.append(result.open_bar)
        # The bar may have closed between our clock and the provider's: still the newest bar, still not
        # stored.
        return next((c for c in resample(series.interval, bars) if c.time == open_time), None)

    def _fill_range(
        self,
        store: CandleStore,
        provider: MarketDataProvider,
        symbol: str,
        interval: Interval,
        start: int,
        end: int,
        counters: _Counters,
        *,
        deadline: float | None = None,
        max_pages: int | None = None,
        on_page: Callable[[Page], None] | None = None,
    ) -> bool:
        """Fill the uncovered parts of [start, end] one page per locked transaction. Returns True when it
        stopped because [start, end] is covered (or the provider cannot make progress), False when stopped
        by the deadline or max_pages."""
        cursor = start
        while cursor <= end:
            if deadline is not None and self.clock() >= deadline:
                return False
            if max_pages is not None and counters.pages >= max_pages:
                return False
            with store.fill_transaction(
                symbol, interval, wait_seconds=self.settings.single_flight_wait_seconds
            ) as tx:
                page, missing_start = self._fill_one_page(
                    tx, provider, symbol, interval, cursor, end, counters
                )
            if page is None:
                return True
            if on_page is not None:
                on_page(page)
            if page.end < missing_start:
                # The provider answered for nothing we asked (its clock behind ours): stop, do not spin.
                logger.warning(
                    "provider page made no progress",
                    extra={"symbol": symbol, "interval": interval.value, "page_end": page.end},
                )
                return True
            cursor = first_open_at_or_after(interval, page.end + 1)
        return True

    def _fill_one_page(
        self,
        tx: FillTx,
        provider: MarketDataProvider,
        symbol: str,
        interval: Interval,
        cursor: int,
        end: int,
        counters: _Counters,
    ) -> tuple[Page | None, int]:
        # Under the lock: another Lambda may have stored this while we waited.
        gaps = _gaps(interval, cursor, end, tx.read_coverage(cursor, end))
        if not gaps:
            return None, end
        missing_start, missing_end = gaps[0]
        page = _first_page(provider, symbol, interval, missing_start, missing_end, counters)
        if page is None:
            return None, missing_start
        counters.pages += 1
        counters.rows += tx.store_page(provider.name, page)
        return page, missing_start

    # --- backfill ------------------------------------------------------------------------------------

    def fill_gaps(
        self,
        symbol: str,
        interval: str | Interval,
        start: int,
        end: int | None = None,
        *,
        deadline: float | None = None,
        max_pages: int | None = None,
        on_page: Callable[[Page], None] | None = None,
    ) -> FillReport:
        """Fill the cache for closed bars in [start, min(end, last closed)] where coverage is missing,
        oldest first, one page per transaction. Provider and database errors propagate (typed); pages
        stored before them stay stored and covered.

        An interval the provider serves derived is filled as its base (what the cache stores for it;
        `storage_interval`): the report's pages and covered_until are in base bars."""
        symbol = normalize_symbol(symbol)
        interval = parse_interval(interval)
        start = _check_int(start, "start", 0, _MAX_TIME)
        if end is not None:
            end = _check_int(end, "end", 0, _MAX_TIME)
            if start > end:
                raise InvalidRequest("start must not be after end", param="start")
        if max_pages is not None:
            max_pages = _check_int(max_pages, "max_pages", 1, 1_000_000)
        if self.store is None:
            raise DatabaseUnavailable("no cache database configured: nothing to fill")
        provider = self._provider(detect_asset_class(symbol))
        interval = source_interval(provider, interval)
        last_closed = last_closed_open(interval, self.clock())
        lo = first_open_at_or_after(interval, start)
        hi = last_closed if end is None else min(last_closed, bar_open(interval, end))
        counters = _Counters()
        if lo > hi:
            return FillReport(pages=0, rows_written=0, complete=True, covered_until=None)
        stopped_early = False
        for gap_start, gap_end in _gaps(interval, lo, hi, self.store.read_coverage(symbol, interval, lo, hi)):
            try:
                done = self._fill_range(
                    self.store,
                    provider,
                    symbol,
                    interval,
                    gap_start,
                    gap_end,
                    counters,
                    deadline=deadline,
                    max_pages=max_pages,
                    on_page=on_page,
                )
            except SingleFlightTimeout:
                logger.warning(
                    "another filler holds this symbol and interval; stopping",
                    extra={"symbol": symbol, "interval": interval.value},
                )
                done = False
            if not done:
                stopped_early = True
                break
        covered = self.store.read_coverage(symbol, interval, lo, hi)
        complete = not stopped_early and not _gaps(interval, lo, hi, covered)
        return FillReport(
            pages=counters.pages,
            rows_written=counters.rows,
            complete=complete,
            covered_until=_covered_run_end(covered, lo),
        )

    # --- symbol lists --------------------------------------------------------------------------------

    def get_symbols(self, asset_class: str | AssetClass) -> SymbolsResult:
        try:
            asset_class = AssetClass(asset_class)
        except ValueError:
            accepted = ", ".join(a.value for a in AssetClass)
            raise InvalidRequest(f"asset_class must be one of {accepted}", param="asset_class") from None
        provider = self._provider(asset_class)
        now = self.clock()
        cached: tuple[list[str], float] | None = None
        db_up = self.store is not None
        if self.store is not None:
            try:
                cached = self.store.get_symbols(asset_class)
            except DatabaseUnavailable as exc:
                logger.warning(
                    "cache database unavailable; symbols straight from the provider",
                    extra={"asset_class": asset_class.value, "error": str(exc)},
                )
                db_up = False
        if cached is not None and now - cached[1] < self.settings.symbols_ttl_seconds:
            return SymbolsResult(asset_class, sorted(cached[0]), CacheStatus.HIT, stale=False)
        try:
            fresh = sorted(provider.get_available_symbols())
        except UpstreamError as exc:
            if cached is None:
                raise
            logger.warning(
                "provider failed; serving the stale symbol list",
                extra={
                    "asset_class": asset_class.value,
                    "error": type(exc).__name__,
                    "age_seconds": round(now - cached[1]),
                },
            )
            return SymbolsResult(asset_class, sorted(cached[0]), CacheStatus.PARTIAL, stale=True)
        if not db_up:
            return SymbolsResult(asset_class, fresh, CacheStatus.BYPASS, stale=False)
        assert self.store is not None
        try:
            self.store.put_symbols(asset_class, fresh, now)
        except DatabaseUnavailable as exc:
            logger.warning("could not store the symbol list", extra={"error": str(exc)})
            return SymbolsResult(asset_class, fresh, CacheStatus.BYPASS, stale=False)
        return SymbolsResult(asset_class, fresh, CacheStatus.MISS, stale=False)


# --- the process-wide default ------------------------------------------------------------------------


class _LazyProviders(Mapping[AssetClass, MarketDataProvider]):
    """Providers created on first use per asset class (a crypto-only Lambda never needs a Twelve Data key)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __getitem__(self, asset_class: AssetClass) -> MarketDataProvider:
        from marketdata.providers import get_provider

        return get_provider(asset_class, self._settings)

    def __iter__(self) -> Iterator[AssetClass]:
        return iter(AssetClass)

    def __len__(self) -> int:
        return len(AssetClass)


@lru_cache(maxsize=1)
def get_service() -> MarketDataService:
    """The process-wide service, reused across Lambda invocations (connection and HTTP pool included).
    A database that cannot be configured leaves the service without a store (every answer bypasses)."""
    settings = get_settings()
    store: CandleStore | None = None
    try:
        from marketdata.store import get_store

        # The store shared by the whole process (one connection), opened lazily on first use.
        store = get_store(settings)
    except MarketDataError as exc:
        logger.error(
            "cache database not usable; every answer will come from the providers", extra={"error": str(exc)}
        )
    return MarketDataService(store, _LazyProviders(settings), settings)


def reset_service() -> None:
    """Close and forget every process-wide object: the service, its store connection, the provider
    clients and the settings. What a new Lambda execution environment starts from (tests, local tools)."""
    from marketdata.providers import reset_providers
    from marketdata.store import reset_default_store

    get_service.cache_clear()
    reset_default_store()
    reset_providers()
    get_settings.cache_clear()


def get_historical_candles(
    symbol: str,
    interval: str | Interval,
    start: int | None = None,
    end: int | None = None,
    limit: int = 500,
    include_open: bool = False,
) -> HistoryResult:
    """get_service().get_historical_candles(...)."""
    return get_service().get_historical_candles(symbol, interval, start, end, limit, include_open)


def get_symbols(asset_class: str | AssetClass) -> SymbolsResult:
    """get_service().get_symbols(...)."""
    return get_service().get_symbols(asset_class)
