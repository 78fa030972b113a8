"""The cache-first rules: history and symbol lists answered from Postgres, filled from the providers once.

How one history request is answered (`MarketDataService.get_historical_candles`):

1. Validate everything first (symbol, interval, limit, bounds). Bad input raises InvalidRequest /
   InvalidInterval before the database or a provider is touched.
2. Work out the *window*: the closed bar open times the answer can come from, clamped to the newest
   closed bar at `clock()`. A request for `limit` bars needs about `limit` bar slots (more for forex,
   whose weekends hold few bars). An interval the provider serves derived (the provider's
   `derived_intervals`: forex 4H from 1H, 1W and 1M from 1D) is read as its base: coverage, gaps and
   fills below are in base bars, and the answer is built from them (marketdata.resample).
3. Read coverage for the window; the uncovered parts are the gaps. They are filled by a `_Filler` inside
   `store.fill_transaction` (a transaction-scoped advisory lock per symbol+interval = single-flight):
   re-read coverage under the lock, fetch the first page of what is still missing alone, then the rest
   in windows of one provider page, FILL_PARALLEL_PAGES at a time in a thread pool (each request checked
   against the request's limits and the shared budgets first, in this thread), store the pages' bars and
   coverage in order as they arrive, commit. N Lambdas on one cold range therefore make one provider
   call per page between them, and a repeat makes none.
4. Answer from the pages just fetched when they hold the whole window, else from the store with one read.
   When the window held fewer bars than asked for (forex weekends, outages), it is widened a bounded
   number of times; coverage remembers empty ranges, so that is cheap.
   The /v1/candles handler asks for the bars as JSON (candles_json=True): Postgres builds the candles
   array in the read statement, with the count and the next bar's time the window rules need, so no bar
   becomes a Python object; every other caller (UDF, backfill, tests) gets Candle objects as before.
5. The still-open bar is fetched live when asked for (`include_open`), never stored, never covered.

Fallbacks: the database unreachable (or not configured) -> the provider answers directly, cache=bypass.
The database failing mid-fill -> the pages already received answer without it, the rest come live. The
single-flight wait timed out -> the answer is what is stored (cache=partial, logged). The provider
failing -> pages already stored stay (their coverage is true; in a parallel round, the unbroken run of
pages before the failed one), the answer is what the cache has (cache=partial), or the typed error when
it has nothing. SymbolNotFound always propagates.

Cache status of a history answer: hit = closed bars entirely from the cache (an `include_open` live
fetch of the open bar does not change that; `provider_calls` counts it); miss = some closed bars were
fetched from the provider for this answer; partial = a provider call failed, so the answer may lack
bars; bypass = the database was not used.
"""

from __future__ import annotations

import contextvars
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Protocol, TypeVar

from marketdata.config import Settings, get_settings
from marketdata.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidRequest,
    MarketDataError,
    SingleFlightTimeout,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamError,
    UpstreamRateLimited,
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
from marketdata.limits import RequestLimitReached, RequestLimits, backfill_pages_per_minute, quota_for
from marketdata.providers.base import MarketDataProvider, Page, source_interval
from marketdata.resample import resample
from marketdata.schemas import (
    MAX_LIMIT,
    MAX_UNIX_SECONDS,
    AssetClass,
    CacheStatus,
    Candle,
    candle_json,
    detect_asset_class,
    normalize_symbol,
)

if TYPE_CHECKING:
    from concurrent.futures import Future, ThreadPoolExecutor

    from marketdata.store import CandleStore, FillTx

logger = logging.getLogger(__name__)

_MAX_TIME = MAX_UNIX_SECONDS  # the API's ceiling (year 3000): keeps calendar arithmetic in range
_T = TypeVar("_T")
# How long the symbol lists checked by /v1/candles are reused in a process before reading them again.
_LISTED_REUSE_SECONDS = 60.0
# A caller fetching the shared open bar holds its claim this long at most (others serve the old bar).
_OPEN_BAR_CLAIM_SECONDS = 5.0
# Time kept, at the end of a request's wait for the fill lock, for reading and sending the answer.
_ANSWER_RESERVE_SECONDS = 1.0
# How many times a window that held too few bars is widened before answering with what it has. Each
# widening at least doubles the window (2**8 times the first one at most): a forex weekend or a long halt
# is crossed, and the provider work stays within the request's ceiling whatever the count.
_MAX_WIDENINGS = 8
# ... and how many of them may find no bar at all before the answer is that there are none.
_MAX_EMPTY_WIDENINGS = 3
# A fill round after the first stops after this many pages per page-pool worker and commits, so the
# series' lock is never held for a whole backfill (others wait for it) and a crash loses one round.
_ROUND_PAGES_PER_WORKER = 16
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
    # Asked for with candles_json=True (the /v1/candles handler): the candles array of the body as JSON
    # text, built by Postgres from the cached rows (open bar appended), and `candles` is then empty.
    # None otherwise, and whenever the answer did not come from the cache (bypass): use `candles`.
    candles_json: str | None = None
    json_last_time: int | None = None  # with candles_json: the open time of its newest bar

    @property
    def last_time(self) -> int | None:
        """Open time of the newest bar of the answer, in whichever form it has (None: no bars)."""
        if self.candles_json is not None:
            return self.json_last_time
        return self.candles[-1].time if self.candles else None


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


@dataclass(frozen=True, slots=True)
class _Bars:
    """What one read of a source found: at most `limit` bars, as Candle objects or as the JSON array of
    the body built by Postgres (`json`, then `candles` is empty), plus a forward read's peek."""

    count: int
    last_time: int | None  # the newest bar read
    next_time: int | None  # forward reads: the bar after them in the range (exactly next_start)
    candles: list[Candle]
    json: str | None = None

    @classmethod
    def of(cls, bars: list[Candle], limit: int) -> _Bars:
        """From Candle objects read with one bar more than `limit` for a forward read."""
        if len(bars) > limit:
            return cls(limit, bars[limit - 1].time, bars[limit].time, bars[:limit])
        return cls(len(bars), bars[-1].time if bars else None, None, bars)


def _select(bars: Mapping[int, Candle], lo: int, hi: int, limit: int, newest: bool) -> list[Candle]:
    """The first (or, newest=True, the last) `limit` bars of [lo, hi], ascending."""
    selected = [bars[t] for t in sorted(bars) if lo <= t <= hi]
    return selected[-limit:] if newest else selected[:limit]


class _Counters:
    """What one answer (or one fill) has cost, and the limits on what it may still cost."""

    __slots__ = ("calls", "dropped", "limits", "pages", "rows")

    def __init__(self, limits: RequestLimits | None = None) -> None:
        self.calls = 0  # provider requests made
        self.pages = 0  # pages stored
        self.rows = 0  # bars inserted
        self.dropped = 0  # bars the provider sent that failed validation (their range stays uncovered)
        self.limits = limits or RequestLimits()


_REJECTIONS: dict[str, Callable[[str, str], MarketDataError]] = {
    "unknown": lambda symbol, provider: SymbolNotFound(symbol, provider),
    "plan": lambda symbol, provider: SymbolNotInPlan(symbol, provider),
}


class _GuardedProvider:
    """A provider as one answer (or one fill) may use it.

    Every upstream request first passes the request's limits (ceiling, deadline: RequestLimitReached),
    the symbols this deployment's providers refused (remembered for every Lambda), and the provider's
    quota shared by every Lambda (UpstreamRateLimited with retry_after when spent, before the provider
    is asked). What the provider refuses is remembered for every Lambda: a ban or a 429's Retry-After,
    an unknown or plan-gated symbol. Without a usable store only the request's own limits apply.
    """

    def __init__(self, service: MarketDataService, provider: MarketDataProvider, counters: _Counters, *,
                 interactive: bool) -> None:
        self.inner = provider
        self.name = provider.name
        self.max_page_bars = provider.max_page_bars
        self._service = service
        self._counters = counters
        self._interactive = interactive
        self._checked: set[str] = set()

    def iter_pages(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Page]:
        pages = self.inner.iter_pages(symbol, interval, start, end)
        try:
            while True:
                self._before_request(symbol)
                try:
                    page = next(pages)
                except StopIteration:
                    self._counters.limits.provider_requests -= 1  # the provider had nothing left to ask
                    return
                except MarketDataError as exc:
                    self._counters.calls += 1
                    self._remember_refusal(symbol, exc)
                    raise
                self._counters.calls += 1
                self._counters.dropped += page.dropped
                yield page
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    def first_page(self, symbol: str, interval: Interval, start: int, end: int) -> Page | None:
        """One upstream request: the first page of [start, end] (no second request is started)."""
        pages = self.iter_pages(symbol, interval, start, end)
        try:
            return next(pages, None)
        finally:
            pages.close()  # type: ignore[attr-defined]

    # The pages of a range fetched in parallel (_Filler): every check that counts, or touches the shared
    # store, runs in the calling thread (reserve before the request, settle after it); only the provider
    # request itself runs in a worker thread (fetch).

    def reserve(self, symbol: str) -> None:
        """The checks of one upstream request, counted (RequestLimitReached / typed errors)."""
        self._before_request(symbol)

    def fetch(self, symbol: str, interval: Interval, start: int, end: int) -> Page | None:
        """The one upstream request of a reserved window (thread-safe: touches nothing of this object)."""
        pages = self.inner.iter_pages(symbol, interval, start, end)
        try:
            return next(pages, None)
        finally:
            close = getattr(pages, "close", None)
            if close is not None:
                close()

    def settle(self, symbol: str, outcome: Future[Page | None]) -> Page | None:
        """What a fetch returned, with the counting and the remembered refusals of iter_pages."""
        try:
            page = outcome.result()
        except MarketDataError as exc:
            self._counters.calls += 1
            self._remember_refusal(symbol, exc)
            raise
        if page is None:
            self._counters.limits.provider_requests -= 1  # the provider had nothing to ask
            return None
        self._counters.calls += 1
        self._counters.dropped += page.dropped
        return page

    def unreserve(self) -> None:
        """A reserved request that was never sent."""
        self._counters.limits.provider_requests -= 1

    def _store(self) -> CandleStore | None:
        return self._service.shared_store()

    def _before_request(self, symbol: str) -> None:
        store, now = self._store(), self._service.clock()
        if store is not None and symbol not in self._checked:
            self._checked.add(symbol)
            reason = self._shared(lambda: store.rejected_symbol(symbol, now))
            if reason in _REJECTIONS:
                raise _REJECTIONS[reason](symbol, self.name)
        self._counters.limits.before_provider_request()
        if store is not None:
            quota = quota_for(self.name, self._service.settings)
            per_minute, per_day = quota.caps(interactive=self._interactive)
            wait = self._shared(
                lambda: store.take_provider_request(self.name, now, per_minute=per_minute, per_day=per_day)
            )
            if wait is not None:
                self._counters.limits.provider_requests -= 1  # nothing was sent
                raise UpstreamRateLimited(
                    f"the {self.name} request budget this deployment shares is used up for now"
                    f" (see TWELVE_DATA_CREDITS_PER_MINUTE/_PER_DAY); retry in {math.ceil(wait)} s",
                    provider=self.name,
                    retry_after=math.ceil(wait),
                )

    def _remember_refusal(self, symbol: str, exc: MarketDataError) -> None:
        store, now = self._store(), self._service.clock()
        if store is None:
            return
        if isinstance(exc, UpstreamRateLimited) and exc.retry_after:
            until = now + float(exc.retry_after)
            self._shared(lambda: store.block_provider(self.name, until))
        elif isinstance(exc, SymbolNotFound | SymbolNotInPlan):
            reason = "unknown" if isinstance(exc, SymbolNotFound) else "plan"
            until = now + self._service.settings.unknown_symbol_ttl_seconds
            self._shared(lambda: store.remember_rejected_symbol(symbol, reason, until))

    def _shared(self, call: Callable[[], _T]) -> _T | None:
        """A shared-state statement; the database failing only costs this request the shared view."""
        try:
            return call()
        except DatabaseUnavailable as exc:
            logger.warning("shared provider limits unavailable", extra={"error": str(exc)})
            return None


# --- what one request reads --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Series:
    """What one request reads: `interval` bars of `symbol`, built from the provider's `base` bars.

    base is the interval asked upstream, cached and covered (marketdata.resample); it equals interval
    where the provider serves the interval natively. Ranges handed to the sources are in `interval`
    open times; the sources translate them to base ranges.
    """

    provider: _GuardedProvider
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

    def read(self, base_bars: Mapping[int, Candle], lo: int, hi: int, limit: int, newest: bool) -> _Bars:
        """A source's read (see _Source.read) answered from base bars in memory."""
        return _Bars.of(self.built(base_bars, lo, hi, limit + (0 if newest else 1), newest), limit)


# --- filling the cache: single-flight rounds, the pages of a round fetched in parallel ---------------


class _Filler:
    """Fills the cache of one series from its provider, under the single-flight lock: the collaborator of
    _CacheSource (an answer's fills) and of fill_gaps (the backfill).

    Work is done in rounds, each one `store.fill_transaction` (the series' advisory lock, so N Lambdas on
    one cold range make one provider call per page between them): under the lock, re-read coverage,
    fetch what is still missing, store the pages (bars and coverage), commit.

    - A fill starts with ONE page from the first gap's edge, alone (forward: up to the present, so a
      start before a listing finds the first bars in one request; backward: a whole page ending at the
      gap's end).
    - The rest of the range is laid out in windows of one provider page each, over the uncovered parts
      only (a window starts at a gap and spans a whole page, so scattered holes cost one request per
      page, never one per hole), and fetched in the service's page pool, `FILL_PARALLEL_PAGES` in
      flight; the first page and then each window are stored in order as they arrive while the next
      ones are fetched. A round stops after `_ROUND_PAGES_PER_WORKER` pages per worker and commits (the
      lock is not held for a whole backfill); the next one starts at once.

    Each request passes the request's limits and the shared provider budgets before it is sent, in this
    thread (_GuardedProvider.reserve); the worker only sends it, inside the request's deadline (the
    contextvars are copied into the worker). A page failing ends the round's unbroken run of pages: those
    before it are stored and committed, later ones are dropped (their requests counted), and the error
    propagates as it would have from a sequential fill.

    `fetched` and `spans` keep the bars of the pages stored by this filler and the ranges they answer for
    completely, so the answer is built from them instead of being read back.
    """

    def __init__(
        self,
        service: MarketDataService,
        store: CandleStore,
        provider: _GuardedProvider,
        symbol: str,
        interval: Interval,
        counters: _Counters,
        *,
        keep_bars: bool,
    ) -> None:
        self.service = service
        self._store = store
        self.provider = provider
        self.symbol = symbol
        self.interval = interval
        self.counters = counters
        # An answer keeps what it stored to answer from it; the backfill keeps nothing (a year of 1m bars
        # would not fit a Lambda's memory).
        self._keep = keep_bars
        self.fetched: dict[int, Candle] = {}
        self.spans: list[tuple[int, int]] = []  # ascending by start
        self._on_page: Callable[[Page], None] | None = None

    def fill(
        self,
        lo: int,
        hi: int,
        *,
        forward: bool = True,
        deadline: float | None = None,
        max_pages: int | None = None,
        on_page: Callable[[Page], None] | None = None,
    ) -> bool:
        """Fill the uncovered parts of [lo, hi]: the oldest gap first (forward) or the newest first
        (backward, for an answer about the latest bars).

        Returns True when [lo, hi] is covered (or the provider makes no progress), False when stopped by
        the deadline (a clock() value) or max_pages. While another request fills the same series, this
        one waits for it as long as it makes progress, up to the request's deadline (SingleFlightTimeout).
        Provider errors and RequestLimitReached propagate after the pages before them are committed.
        """
        first = True
        self._on_page = on_page
        while lo <= hi:
            if deadline is not None and self.service.clock() >= deadline:
                return False
            if max_pages is not None and self.counters.pages >= max_pages:
                return False
            budget = self._round_pages(max_pages)
            with self._store.fill_transaction(
                self.symbol,
                self.interval,
                wait_seconds=self._lock_wait(),
                stall_seconds=self.service.settings.single_flight_wait_seconds,
                watch=(lo, hi),
            ) as tx:
                stored, failure = self._round(tx, lo, hi, forward, budget, deadline, first=first)
            first = False
            if failure is not None:
                raise failure
            if not stored:
                return True
            if forward:
                new_lo = first_open_at_or_after(self.interval, max(p.end for p in stored) + 1)
                if new_lo <= lo:
                    # The provider answered for nothing we asked (its clock behind ours): stop, do not spin.
                    logger.warning(
                        "provider page made no progress",
                        extra={"symbol": self.symbol, "interval": self.interval.value,
                               "page_end": stored[-1].end},
                    )
                    return True
                lo = new_lo
            else:
                hi = bar_open(self.interval, min(p.start for p in stored) - 1)
        return True

    def answers(self, lo: int, hi: int) -> bool:
        """Whether the pages this filler received (and stored, unless the database failed, which ends
        the cache's part of the answer) answer for all of [lo, hi] (base open times)."""
        return bool(self.spans) and not _gaps(self.interval, lo, hi, self.spans)

    def _remember(self, page: Page) -> None:
        if not self._keep:
            return
        for candle in page.candles:
            self.fetched[candle.time] = candle
        if page.dropped == 0 and page.covers_closed_bars:
            self.spans.append((page.start, page.end))
            self.spans.sort()

    def _round_pages(self, max_pages: int | None) -> int:
        pages = self.service.settings.fill_parallel_pages * _ROUND_PAGES_PER_WORKER
        return pages if max_pages is None else max(1, min(pages, max_pages - self.counters.pages))

    def _lock_wait(self) -> float:
        """How long a fill may wait for the series' lock: up to the request's deadline."""
        left = self.counters.limits.seconds_left()
        if left is None:
            return self.service.settings.request_timeout_seconds
        return max(0.0, left - _ANSWER_RESERVE_SECONDS)

    def _round(
        self,
        tx: FillTx,
        lo: int,
        hi: int,
        forward: bool,
        budget: int,
        deadline: float | None,
        *,
        first: bool,
    ) -> tuple[list[Page], BaseException | None]:
        """One locked round: (the pages stored, in fill order; the error that ended it, if any)."""
        # Under the lock: another Lambda may have stored this while we waited.
        covered = tx.read_coverage(lo, hi)
        gaps = _gaps(self.interval, lo, hi, covered)
        if not gaps:
            return [], None
        page: Page | None = None
        if first:
            page = self._first_page(gaps, forward)
            if page is None:
                return [], None
            budget -= 1
            if forward and page.end >= gaps[0][0]:
                gaps = _gaps(self.interval, first_open_at_or_after(self.interval, page.end + 1), hi, covered)
            elif not forward:
                gaps = _gaps(self.interval, lo, bar_open(self.interval, page.start - 1), covered)
            else:
                gaps = []  # the page made no progress: fill() stops
            if not gaps or budget <= 0:
                self.store_page(tx, page)
                return [page], None
        last_closed = last_closed_open(self.interval, self.service.clock())
        windows = _windows(self.interval, gaps, forward, self.provider.max_page_bars, last_closed)
        # Forward pages are asked up to the present, as the first page is: the provider answers a whole
        # page from the window's start (more than the window where the provider has holes).
        return _Round(self, tx, windows, last_closed if forward else None).run(budget, deadline, page)

    def _first_page(self, gaps: list[tuple[int, int]], forward: bool) -> Page | None:
        interval, provider = self.interval, self.provider
        if forward:
            # Up to the present: the provider answers with its first page from the gap's start on,
            # whatever lies between (Binance skips the time before a listing; Twelve Data serves one window).
            last_closed = last_closed_open(interval, self.service.clock())
            return provider.first_page(self.symbol, interval, gaps[0][0], last_closed)
        end = gaps[-1][1]
        reach = provider.max_page_bars - 1
        oldest = max(first_open_at_or_after(interval, 0), add_bars(interval, end, -reach))
        return provider.first_page(self.symbol, interval, oldest, end)

    def store_page(self, tx: FillTx, page: Page) -> None:
        self._remember(page)  # first: should the database fail now, a live answer still has the page
        self.counters.pages += 1
        self.counters.rows += tx.store_page(self.provider.name, page)
        if self._on_page is not None:
            # As each page is stored (the backfill's progress, which may end the run): before the next
            # window is sent, and before the round commits.
            self._on_page(page)


def _windows(
    interval: Interval, gaps: list[tuple[int, int]], forward: bool, width: int, last_closed: int
) -> Iterator[tuple[int, int]]:
    """One provider page per window over the gaps (ascending when forward, else descending). A window
    spans a whole page from the gap edge it starts at, holes and stored bars inside it alike."""
    if forward:
        cursor = gaps[0][0]
        for gap_start, gap_end in gaps:
            start = max(cursor, gap_start)
            while start <= gap_end:
                end = min(last_closed, add_bars(interval, start, width - 1))
                yield start, end
                start = cursor = next_open(interval, end)
        return
    oldest = first_open_at_or_after(interval, 0)
    cursor = gaps[-1][1]
    for gap_start, gap_end in reversed(gaps):
        end = min(cursor, gap_end)
        while end >= gap_start:
            start = max(oldest, add_bars(interval, end, -(width - 1)))
            yield start, end
            if start <= oldest:
                return
            end = cursor = bar_open(interval, start - 1)


class _Round:
    """The windows of one locked round fetched in the page pool, stored in order as they arrive."""

    def __init__(
        self, filler: _Filler, tx: FillTx, windows: Iterator[tuple[int, int]], until: int | None
    ) -> None:
        self.filler = filler
        self.tx = tx
        self.windows = windows
        self.until = until  # forward: every request asks up to here; backward (None): its window
        self.in_flight: deque[tuple[tuple[int, int], Future[Page | None]]] = deque()
        self.stored: list[Page] = []
        self.failure: BaseException | None = None
        self.broken = False  # the unbroken run has ended: whatever arrives later is dropped
        self._sent = 0
        self._more = True  # windows left to send
        self._budget = 0
        self._deadline: float | None = None
        self._width = 1
        self._pool: ThreadPoolExecutor | None = None

    def run(
        self, budget: int, deadline: float | None, first: Page | None = None
    ) -> tuple[list[Page], BaseException | None]:
        """Send up to `budget` windows, FILL_PARALLEL_PAGES at a time, and store what arrives, in order.
        `first`, the round's first page already fetched, is stored while the next windows are in flight
        (with one page at a time, before the next is sent: FILL_PARALLEL_PAGES=1 is one page after
        another)."""
        filler = self.filler
        self._pool = filler.service.page_pool()
        self._width = filler.service.settings.fill_parallel_pages
        self._budget, self._deadline = budget, deadline
        try:
            if first is not None and self._width == 1:
                self._store(first)
            self._fill_pipe()
            if first is not None and self._width > 1:
                self._store(first)
            while self.in_flight:
                self._take(*self.in_flight.popleft())
                self._fill_pipe()
            return self.stored, self.failure
        finally:
            for _, outcome in self.in_flight:  # only when storing raised (the database failed)
                if outcome.cancel():
                    filler.provider.unreserve()

    def _fill_pipe(self) -> None:
        while (
            self._more and not self.broken and self.failure is None and len(self.in_flight) < self._width
        ):
            self._more = self._sent < self._budget and self._send(self._pool, self._deadline)
            if self._more:
                self._sent += 1

    def _store(self, page: Page) -> None:
        self.filler.store_page(self.tx, page)
        self.stored.append(page)

    def _send(self, pool: ThreadPoolExecutor | None, deadline: float | None) -> bool:
        """Reserve and send the next window; False when there is none or none may be sent."""
        filler = self.filler
        window = next(self.windows, None)
        if window is None or (deadline is not None and filler.service.clock() >= deadline):
            return False
        try:
            filler.provider.reserve(filler.symbol)
        except (RequestLimitReached, MarketDataError) as exc:
            self.failure = exc  # nothing more is sent; what is in flight is still stored
            return False
        # Each request runs in a copy of this context: the request's deadline (marketdata.limits) caps
        # the worker's timeouts and retries as it would in this thread.
        context = contextvars.copy_context()
        start, end = window[0], window[1] if self.until is None else self.until
        assert pool is not None
        outcome = pool.submit(context.run, filler.provider.fetch, filler.symbol, filler.interval, start, end)
        self.in_flight.append((window, outcome))
        return True

    def _take(self, window: tuple[int, int], outcome: Future[Page | None]) -> None:
        filler = self.filler
        if self.broken and outcome.cancel():
            filler.provider.unreserve()  # never sent
            return
        try:
            page = filler.provider.settle(filler.symbol, outcome)
        except MarketDataError as exc:
            if not self.broken:
                self.broken, self.failure = True, exc
            return
        if self.broken:
            return
        if page is None:
            self.broken = True
            return
        self._store(page)
        whole = page.start <= window[0] if self.until is None else page.end >= window[1]
        if not whole:
            self.broken = True  # the page stopped short (bars not settled yet): the run ends with it



# --- which bars answer a request: the window, widened while it holds too few --------------------------


@dataclass(frozen=True, slots=True)
class _Query:
    """One history request, validated (InvalidRequest / InvalidInterval before any I/O)."""

    symbol: str
    interval: Interval
    start: int | None
    end: int | None
    limit: int
    include_open: bool

    @classmethod
    def of(
        cls, symbol: str, interval: str | Interval, start: int | None, end: int | None, limit: int,
        include_open: bool,
    ) -> _Query:
        limit = _check_int(limit, "limit", 1, MAX_LIMIT)
        if start is not None:
            start = _check_int(start, "start", 0, _MAX_TIME)
        if end is not None:
            end = _check_int(end, "end", 0, _MAX_TIME)
        if start is not None and end is not None and start > end:
            raise InvalidRequest("start must not be after end", param="start")
        if not isinstance(include_open, bool):
            raise InvalidRequest("include_open must be true or false", param="include_open")
        return cls(normalize_symbol(symbol), parse_interval(interval), start, end, limit, include_open)

    def wants_open(self, open_time: int, next_start: int | None) -> bool:
        """Whether the still-open bar belongs to the answer: asked for, inside the bounds, and the closed
        bars reach it (no next page)."""
        return (
            self.include_open
            and next_start is None
            and (self.start is None or self.start <= open_time)
            and (self.end is None or self.end >= open_time)
        )


@dataclass(frozen=True, slots=True)
class _Window:
    """The closed bar open times a request may draw from, [lo, hi], clamped to the newest closed bar at
    `now`; forward: the first `limit` bars from lo (a start was given), else the last ones up to hi."""

    lo: int
    hi: int
    last_closed: int
    open_time: int  # the still-open bar's
    forward: bool

    @classmethod
    def of(cls, query: _Query, now: float) -> _Window:
        interval = query.interval
        last_closed = last_closed_open(interval, now)
        oldest = first_open_at_or_after(interval, 0)
        lo = oldest if query.start is None else max(oldest, first_open_at_or_after(interval, query.start))
        hi = last_closed if query.end is None else min(last_closed, bar_open(interval, query.end))
        return cls(lo, hi, last_closed, next_open(interval, last_closed), forward=query.start is not None)


def _collect(
    source: _Source, interval: Interval, asset_class: AssetClass, window: _Window, limit: int
) -> tuple[_Bars, int | None]:
    """The answer's closed bars from `source` and its next_start, widening the first window while it
    holds too few bars (forex weekends, halts, a start before a listing)."""
    slots_per_bar = 1.0
    if asset_class is AssetClass.FOREX and interval not in (Interval.W1, Interval.MO1):
        slots_per_bar = _FOREX_SLOTS_PER_BAR
    slots = math.ceil(limit * slots_per_bar)
    if window.forward:
        lo, hi = window.lo, min(window.hi, add_bars(interval, window.lo, slots - 1))
    else:
        lo, hi = max(window.lo, add_bars(interval, window.hi, -(slots - 1))), window.hi
    # Forward reads peek at the bar after the answer: if it exists, it is exactly next_start.
    source.ensure(lo, hi)
    bars = source.read(lo, hi, limit, not window.forward)
    lo, hi, bars = _widen(source, interval, window, limit, slots, lo, hi, bars)
    return bars, _next_start(source, interval, window, lo, hi, bars)


def _widen(
    source: _Source, interval: Interval, window: _Window, limit: int, slots: int, lo: int, hi: int,
    bars: _Bars,
) -> tuple[int, int, _Bars]:
    """Widen [lo, hi] within the window, a bounded number of times, until it holds `limit` bars."""
    forward = window.forward
    empty_widenings = 0
    for _ in range(_MAX_WIDENINGS):
        if bars.count >= limit or source.failure is not None or source.stopped is not None:
            break
        span = count_bars(interval, lo, hi)
        # Some bars but too few (a weekend, a halt inside the window): scale by the density seen so
        # far, at least doubling the window. Nothing at all (before a listing): look twice as far, a
        # few times, as cheaply as before (the provider work stays within the ceiling either way).
        found = bars.count
        if found:
            extra = max(math.ceil((limit - found) * span / found * 1.1) + 1, span)
        else:
            empty_widenings += 1
            if empty_widenings > _MAX_EMPTY_WIDENINGS:
                break
            extra = min(2 * span, 4 * slots)
        if forward:
            if hi >= window.hi:
                break
            if not found:
                # Nothing yet (a start before the listing, a long halt): one provider page from here
                # finds where the data starts (Binance answers with the oldest bars at or after
                # startTime), instead of crawling window by window.
                known = source.probe(next_open(interval, hi), window.hi)
                if known is None or known <= hi:
                    break
                hi = min(window.hi, known)
            else:
                new_hi = min(window.hi, add_bars(interval, hi, extra))
                source.ensure(next_open(interval, hi), new_hi)
                hi = new_hi
        else:
            if lo <= window.lo:
                break
            new_lo = max(window.lo, add_bars(interval, lo, -extra))
            source.ensure(new_lo, bar_open(interval, lo - 1))
            lo = new_lo
        bars = source.read(lo, hi, limit, not forward)
    return lo, hi, bars


def _next_start(
    source: _Source, interval: Interval, window: _Window, lo: int, hi: int, bars: _Bars
) -> int | None:
    """The cursor for the next page of a forward answer read from [lo, hi] (None: nothing after it)."""
    if not window.forward:
        return None
    if bars.next_time is not None:
        return bars.next_time
    if source.failure is not None or source.stopped is not None:
        # Part of the window may be missing: resume right after what we have, so nothing is skipped.
        resume = next_open(interval, bars.last_time) if bars.last_time is not None else lo
        return resume if resume <= window.hi else None
    if hi < window.hi:
        return next_open(interval, hi)
    return None


# --- where bars come from: the cache (filled single-flight) or the provider directly -----------------


class _Source(Protocol):
    counters: _Counters
    #: Why the answer may lack bars: a provider error, or "ceiling" / "deadline" / "busy"; None: complete.
    failure: MarketDataError | None
    stopped: str | None

    def ensure(self, lo: int, hi: int) -> None: ...

    def probe(self, lo: int, hi: int) -> int | None: ...

    def read(self, lo: int, hi: int, limit: int, newest: bool) -> _Bars:
        """At most `limit` bars of [lo, hi] (the last ones when newest), ascending; a forward read
        (not newest) also peeks at the bar after them."""
        ...


class _LiveSource:
    """The provider answers directly (database down or not configured): nothing is stored."""

    def __init__(self, series: _Series, counters: _Counters, known: _Filler | None = None) -> None:
        self.series = series
        self.counters = counters
        self.failure: MarketDataError | None = None
        self.stopped: str | None = None
        # Base bars, and the ranges they answer for completely: what a cache attempt that failed with the
        # database already received is not asked for again.
        self.bars: dict[int, Candle] = dict(known.fetched) if known is not None else {}
        self.spans: list[tuple[int, int]] = list(known.spans) if known is not None else []

    def _pages(self, lo: int, hi: int, max_pages: int | None = None) -> Page | None:
        """Base pages of [lo, hi] into self.bars; the last page, None when none was fetched."""
        if self.failure is not None or self.stopped is not None:
            return None
        series, last = self.series, None
        try:
            for count, page in enumerate(series.provider.iter_pages(series.symbol, series.base, lo, hi), 1):
                for candle in page.candles:
                    self.bars[candle.time] = candle
                if page.dropped == 0 and page.covers_closed_bars:
                    self.spans.append((page.start, page.end))
                    self.spans.sort()
                last = page
                if page.end >= hi or (max_pages is not None and count >= max_pages):
                    break  # nothing more to ask: do not let the ceiling count a request never needed
        except UpstreamError as exc:
            self.failure = exc
        except RequestLimitReached as exc:
            self.stopped = exc.reason
        return last

    def ensure(self, lo: int, hi: int) -> None:
        lo, hi = self.series.base_span(lo, hi)
        gaps = _gaps(self.series.base, lo, hi, self.spans)
        if gaps:
            self._pages(gaps[0][0], hi)

    def read(self, lo: int, hi: int, limit: int, newest: bool) -> _Bars:
        return self.series.read(self.bars, lo, hi, limit, newest)

    def probe(self, lo: int, hi: int) -> int | None:
        """One provider page from lo; the open time up to which [lo, ...] is now known, else None."""
        page = self._pages(*self.series.base_span(lo, hi), max_pages=1)
        return None if page is None else self.series.known_through(page.end)


class _CacheSource:
    """The store, filled from the provider under the single-flight lock (by its _Filler). Bars of the
    pages the filler just stored are answered from memory; everything else is read from the store."""

    def __init__(
        self,
        service: MarketDataService,
        store: CandleStore,
        series: _Series,
        counters: _Counters,
        *,
        forward: bool,
        as_json: bool = False,
    ) -> None:
        self.store = store
        self.series = series
        self.counters = counters
        self.forward = forward
        self.as_json = as_json  # read the bars as the body's JSON array, built by Postgres
        self.filler = _Filler(service, store, series.provider, series.symbol, series.base, counters,
                              keep_bars=True)
        self.failure: MarketDataError | None = None
        self.stopped: str | None = None

    def _coverage(self, lo: int, hi: int) -> list[tuple[int, int]]:
        return self.store.read_coverage(self.series.symbol, self.series.base, lo, hi)

    def _fill(self, lo: int, hi: int, *, forward: bool, max_pages: int | None = None) -> None:
        if self.failure is not None or self.stopped is not None:
            return  # the provider is failing or the budget is spent: serve what the cache has
        series = self.series
        if not _gaps(series.base, lo, hi, self._coverage(lo, hi)):
            return  # a cache hit: one coverage read, no transaction, no lock
        try:
            self.filler.fill(lo, hi, forward=forward, max_pages=max_pages)
        except UpstreamError as exc:
            logger.warning(
                "provider failed while filling the cache; serving what it has",
                extra={"symbol": series.symbol, "interval": series.base.value, "error": type(exc).__name__},
            )
            self.failure = exc
        except RequestLimitReached as exc:
            self.stopped = exc.reason
        except SingleFlightTimeout:
            # Another request holds the series and made no progress for a while, or our deadline came:
            # answer from what is stored. Never fetch the same pages live: that is what multiplies calls.
            logger.warning(
                "single-flight wait ended; answering from what is stored",
                extra={"symbol": series.symbol, "interval": series.base.value},
            )
            self.stopped = "busy"

    def ensure(self, lo: int, hi: int) -> None:
        self._fill(*self.series.base_span(lo, hi), forward=self.forward)

    def probe(self, lo: int, hi: int) -> int | None:
        """Make [lo, ...] known with at most one provider page (none when coverage already starts at lo).

        Returns the `interval` bar up to which [lo, ...] is known, or None when nothing became known.
        """
        base_lo, base_hi = self.series.base_span(lo, hi)
        known = _covered_run_end(self._coverage(base_lo, base_hi), base_lo)
        if known is None:
            self._fill(base_lo, base_hi, forward=True, max_pages=self.counters.pages + 1)
            known = _covered_run_end(self._coverage(base_lo, base_hi), base_lo)
        return None if known is None else self.series.known_through(known)

    def read(self, lo: int, hi: int, limit: int, newest: bool) -> _Bars:
        series = self.series
        if self.filler.answers(*series.base_span(lo, hi)):
            # Every bar of the window came with pages this answer has just stored: no read back.
            return series.read(self.filler.fetched, lo, hi, limit, newest)
        base = series.base if series.derived else None
        if self.as_json:
            found = self.store.read_candles_json(
                series.symbol, series.interval, lo, hi, limit=limit, newest=newest, peek=not newest,
                base=base,
            )
            if found is not None:
                return _Bars(found.count, found.last_time, found.next_time, [], found.text)
            self.as_json = False  # the server's float text would not round-trip: objects from now on
        bars = self.store.read_candles(
            series.symbol, series.interval, lo, hi, limit=limit + (0 if newest else 1), newest=newest,
            base=base,
        )
        return _Bars.of(bars, limit)


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
        # The symbol lists /v1/candles checks symbols against, with when they were read (see _check_listed).
        self._listed: dict[AssetClass, tuple[frozenset[str], float]] = {}
        self._shared_store: CandleStore | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def page_pool(self) -> ThreadPoolExecutor:
        """The threads that fetch the pages of a range in parallel (FILL_PARALLEL_PAGES), started on
        first use and kept for the process (warm invocations reuse them)."""
        with self._pool_lock:
            if self._pool is None:
                from concurrent.futures import ThreadPoolExecutor

                self._pool = ThreadPoolExecutor(
                    max_workers=self.settings.fill_parallel_pages, thread_name_prefix="marketdata-page"
                )
            return self._pool

    def shared_store(self) -> CandleStore | None:
        """The store for the limits every Lambda shares: the cache's database on a connection of its own,
        so those statements commit at once, outside any fill transaction (None without a database)."""
        if self._shared_store is None and self.store is not None:
            self._shared_store = self.store.sibling()
        return self._shared_store

    def close(self) -> None:
        """Close the database connections (the providers' clients stay: they are shared per process)."""
        for store in (self.store, self._shared_store):
            if store is not None:
                store.close()
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None

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

    def backfill_pace(self, symbol: str) -> tuple[int, float | None]:
        """(bar slots per provider page, provider pages per minute the backfill may use, None when no
        budget bounds it) for `symbol`'s provider: what the backfill's ETA needs to include the
        rate-limit pauses ahead."""
        provider = self._provider(detect_asset_class(normalize_symbol(symbol)))
        return provider.max_page_bars, backfill_pages_per_minute(provider.name, self.settings)

    # --- history -------------------------------------------------------------------------------------

    def get_historical_candles(
        self,
        symbol: str,
        interval: str | Interval,
        start: int | None = None,
        end: int | None = None,
        limit: int = 500,
        include_open: bool = False,
        *,
        timeout: float | None = None,
        candles_json: bool = False,
    ) -> HistoryResult:
        """The answer to one /v1/candles request (see the module docstring).

        timeout: seconds this request may take (a Lambda's remaining time less a margin); default
        REQUEST_TIMEOUT_SECONDS. Past it, or past the provider-request ceiling, the answer is what was
        filled, marked partial.
        candles_json: answer from the cache with the candles array already serialized by Postgres
        (HistoryResult.candles_json; its `candles` then empty), for a caller that only sends the body on.
        Answers that do not come from the cache (bypass), or that come from pages fetched for this very
        answer (a cold range), carry `candles` as always.
        """
        # Validate everything before any I/O: bad input never reaches the database or a provider.
        query = _Query.of(symbol, interval, start, end, limit, include_open)
        asset_class = detect_asset_class(query.symbol)
        provider = self._provider(asset_class)
        self._check_listed(query.symbol, asset_class)
        quota = quota_for(provider.name, self.settings)
        limits = RequestLimits.for_request(
            quota.max_per_request, self.settings.request_timeout_seconds if timeout is None else timeout
        )
        counters = _Counters(limits)
        guarded = _GuardedProvider(self, provider, counters, interactive=True)
        series = _Series(guarded, query.symbol, query.interval, source_interval(provider, query.interval))
        with limits.active():
            return self._answer(series, asset_class, query, counters, candles_json)

    def _answer(
        self, series: _Series, asset_class: AssetClass, query: _Query, counters: _Counters, as_json: bool
    ) -> HistoryResult:
        window = _Window.of(query, self.clock())
        got, next_start, status = _Bars(0, None, None, []), None, CacheStatus.HIT
        if window.lo <= window.hi:
            got, next_start, status = self._closed_bars(series, asset_class, window, query.limit, counters,
                                                        as_json)
        reaches_present = next_start is None and window.hi >= window.last_closed
        candles, text, last_time = got.candles, got.json, got.last_time
        if query.wants_open(window.open_time, next_start):
            # The open bar: never stored in the cache, never covered; shared briefly by every caller.
            open_bar, complete = self._open_bar(series, window.open_time, counters)
            if not complete and status is not CacheStatus.BYPASS:
                status = CacheStatus.PARTIAL
            if open_bar is not None and (last_time is None or last_time < open_bar.time):
                if text is not None:
                    text = f"{text[:-1]}{',' if got.count else ''}{candle_json(open_bar)}]"
                else:
                    candles.append(open_bar)
                last_time = open_bar.time
                reaches_present = True
        return HistoryResult(
            symbol=series.symbol,
            interval=series.interval,
            asset_class=asset_class,
            provider=series.provider.name,
            candles=candles,
            next_start=next_start,
            cache=status,
            reaches_present=reaches_present,
            provider_calls=counters.calls,
            rows_written=counters.rows,
            candles_json=text,
            json_last_time=last_time if text is not None else None,
        )

    def _closed_bars(
        self,
        series: _Series,
        asset_class: AssetClass,
        window: _Window,
        limit: int,
        counters: _Counters,
        as_json: bool,
    ) -> tuple[_Bars, int | None, CacheStatus]:
        """The answer's closed bars, its next_start and its cache status: from the cache, or straight from
        the provider when the database is not configured or fails (bypass)."""
        source: _Source | None = None
        received: _Filler | None = None
        if self.store is None:
            logger.warning(
                "no cache database configured; answering straight from the provider",
                extra={"symbol": series.symbol, "interval": series.interval.value},
            )
        else:
            cached = _CacheSource(self, self.store, series, counters, forward=window.forward, as_json=as_json)
            source = cached
            try:
                got, next_start = _collect(source, series.interval, asset_class, window, limit)
            except DatabaseUnavailable as exc:
                logger.warning(
                    "cache database unavailable; answering straight from the provider",
                    extra={"symbol": series.symbol, "interval": series.interval.value, "error": str(exc)},
                )
                source, received = None, cached.filler
        status = CacheStatus.HIT
        if source is None:
            source = _LiveSource(series, counters, received)
            got, next_start = _collect(source, series.interval, asset_class, window, limit)
            status = CacheStatus.BYPASS
        if source.failure is not None and not got.count:
            raise source.failure
        if source.failure is not None or source.stopped is not None or counters.dropped:
            # The answer may lack bars (a failed page, a spent budget, a bar the provider sent broken):
            # it says so, and is never cached as final by anyone.
            status = CacheStatus.PARTIAL
        elif status is not CacheStatus.BYPASS and counters.calls:
            status = CacheStatus.MISS
        return got, next_start, status

    def check_listed(self, symbol: str) -> AssetClass:
        """The asset class of a symbol the service lists, else SymbolNotFound with /v1/candles' hints (the
        check live subscriptions get too: the same lists, the same messages)."""
        symbol = normalize_symbol(symbol)
        asset_class = detect_asset_class(symbol)
        self._provider(asset_class)
        self._check_listed(symbol, asset_class)
        return asset_class

    def _check_listed(self, symbol: str, asset_class: AssetClass) -> None:
        """SymbolNotFound at once for a symbol the service does not list (/v1/symbols), so no caller can
        make the providers look up made-up symbols. The lists come from the cache, reread once a minute."""
        listed = self._listed.get(asset_class)
        now = self.clock()
        if listed is None or now - listed[1] >= min(_LISTED_REUSE_SECONDS, self.settings.symbols_ttl_seconds):
            try:
                symbols = frozenset(self.get_symbols(asset_class).symbols)
            except MarketDataError as exc:
                # No list to check against (the provider down and nothing cached): let the provider judge.
                logger.warning(
                    "symbol list unavailable; not checking the symbol",
                    extra={"asset_class": asset_class.value, "error": type(exc).__name__},
                )
                return
            listed = (symbols, now)
            self._listed[asset_class] = listed
        if symbol not in listed[0]:
            raise SymbolNotFound(
                symbol, self._provider(asset_class).name, hint=self._symbol_hint(symbol, asset_class)
            )

    def _symbol_hint(self, symbol: str, asset_class: AssetClass) -> str:
        if asset_class is not AssetClass.CRYPTO:
            return ""
        try:
            pairs = self.get_symbols(AssetClass.FOREX).symbols
        except MarketDataError:
            return ""
        match = next((pair for pair in pairs if pair.replace("/", "") == symbol), None)
        return f" (forex pairs are written with a slash: {match})" if match else ""

    def _open_bar(self, series: _Series, open_time: int, counters: _Counters) -> tuple[Candle | None, bool]:
        """(the still-open bar or None, whether the answer about it is complete).

        Fetched at most once per series per the provider's open-bar TTL for every caller together: the
        first caller after the TTL claims it in Postgres, fetches and shares it; the others serve the
        shared bar meanwhile. Without a usable store every caller fetches its own.
        """
        store, now = self.shared_store(), self.clock()
        ttl = quota_for(series.provider.name, self.settings).open_bar_ttl
        claimed = True
        if store is not None and ttl > 0:
            try:
                claimed, shared = store.claim_open_bar(
                    series.symbol, series.interval, open_time, now, ttl=ttl, hold=_OPEN_BAR_CLAIM_SECONDS
                )
            except DatabaseUnavailable as exc:
                logger.warning("shared open bar unavailable", extra={"error": str(exc)})
                store = None
            else:
                if not claimed:
                    # Fresh, or another caller is fetching it right now: serve what is shared.
                    return shared, shared is not None
        try:
            bar = self._fetch_open_bar(series, open_time)
        except (UpstreamError, RequestLimitReached) as exc:
            logger.warning(
                "could not fetch the open bar", extra={"symbol": series.symbol, "error": type(exc).__name__}
            )
            bar, complete = None, False
        else:
            complete = True
        if store is not None and claimed and ttl > 0:
            try:
                store.put_open_bar(series.symbol, series.interval, bar, now)
            except DatabaseUnavailable as exc:
                logger.warning("could not share the open bar", extra={"error": str(exc)})
        return bar, complete

    def _fetch_open_bar(self, series: _Series, open_time: int) -> Candle | None:
        """The still-open bar, live, in one provider request: a native bar as the provider has it; a
        derived bar built from its closed base bars plus the open base bar."""
        base_open = bar_open(series.base, int(self.clock())) if series.derived else open_time
        page = series.provider.first_page(series.symbol, series.base, open_time, max(open_time, base_open))
        if page is None:
            return None
        bars = [c for c in page.candles if c.time >= open_time]
        if page.open_bar is not None and page.open_bar.time >= open_time:
            bars.append(page.open_bar)
        # The bar may have closed between our clock and the provider's: still the newest bar, still not
        # stored.
        return next((c for c in resample(series.interval, bars) if c.time == open_time), None)

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
        oldest first, FILL_PARALLEL_PAGES pages in flight (_Filler); `on_page` sees each page as it is
        stored, in order. Provider and database errors propagate (typed); pages
        stored before them stay stored and covered. The backfill's provider requests count against the
        shared quotas like any request's, minus the share kept for interactive requests.

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
        asset_class = detect_asset_class(symbol)
        provider = self._provider(asset_class)
        self._check_listed(symbol, asset_class)
        interval = source_interval(provider, interval)
        last_closed = last_closed_open(interval, self.clock())
        lo = first_open_at_or_after(interval, start)
        hi = last_closed if end is None else min(last_closed, bar_open(interval, end))
        counters = _Counters()
        guarded = _GuardedProvider(self, provider, counters, interactive=False)
        if lo > hi:
            return FillReport(pages=0, rows_written=0, complete=True, covered_until=None)
        filler = _Filler(self, self.store, guarded, symbol, interval, counters, keep_bars=False)
        try:
            done = filler.fill(lo, hi, deadline=deadline, max_pages=max_pages, on_page=on_page)
        except SingleFlightTimeout:
            logger.warning(
                "another filler holds this symbol and interval; stopping",
                extra={"symbol": symbol, "interval": interval.value},
            )
            done = False
        covered = self.store.read_coverage(symbol, interval, lo, hi)
        complete = done and not _gaps(interval, lo, hi, covered)
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


def lazy_providers(settings: Settings) -> Mapping[AssetClass, MarketDataProvider]:
    """The process-wide provider clients for these settings, each created on first use."""
    return _LazyProviders(settings)


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
    return MarketDataService(store, lazy_providers(settings), settings)


def reset_service() -> None:
    """Close and forget every process-wide object: the service, its store connection, the provider
    clients and the settings. What a new Lambda execution environment starts from (tests, local tools)."""
    from marketdata.providers import reset_providers
    from marketdata.store import reset_default_store

    if get_service.cache_info().currsize:
        get_service().close()
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
