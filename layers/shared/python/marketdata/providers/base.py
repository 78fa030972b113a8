"""The interface every provider client implements, and what they share.

A provider answers for an inclusive range of bar open times by yielding `Page`s, one per upstream
request. A page says which open-time range it answers for *completely* (`start`..`end`): a bar
missing inside that range does not exist upstream (forex weekend, halt, before listing). That is
what lets the cache record coverage per page, in the same transaction as the page's bars, and
never ask again for a range that has no bars.

Closed and open bars are split: `Page.candles` holds only bars that were closed at fetch time
(safe to store forever); `Page.open_bar` is the still-open last bar when the range reached it
(never stored).

Shared implementation for the clients lives here too: `ProviderClient`, the base class both clients
extend (construction, `fetch_candles`, `close`; each overrides only `iter_pages`, its symbol list and
its error handling), `plan_range` (which bars a range can hold at the clock's now), `validate_bar`
(the checks every bar passes before it leaves a client), `assemble_page` (closed/open split, dedupe,
clamping) and `merge_pages` (fetch_candles on top of iter_pages).
"""

from __future__ import annotations

import logging
import math
import random
import time as _time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from marketdata.errors import UpstreamBadResponse
from marketdata.intervals import (
    Interval,
    bar_open,
    first_open_at_or_after,
    fixed_grid,
    is_aligned,
    last_closed_open,
)
from marketdata.schemas import AssetClass, Candle

if TYPE_CHECKING:
    import httpx

    from marketdata.config import Settings

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Page:
    """One upstream response, parsed and validated.

    start, end: the inclusive open-time range this page answers for completely. end never goes past
        the last bar that was closed at fetch time, so coverage never claims the open bar.
    candles: closed bars in [start, end], ascending, unique by open time, each validated.
    open_bar: the still-open bar, when the requested range reached it; None otherwise.
    dropped: bars that failed validation and were left out (logged). A page with dropped bars must
        not be recorded as covered: the range would otherwise hide the missing bar forever.

    A page that answered only for the still-open bar (the range held no closed bar) has end < start:
    it covers nothing, and `covers_closed_bars` is False.
    """

    start: int
    end: int
    candles: list[Candle]
    open_bar: Candle | None = None
    dropped: int = 0

    @property
    def covers_closed_bars(self) -> bool:
        return self.end >= self.start


@dataclass(frozen=True, slots=True)
class FetchResult:
    """All pages of a range fetch merged: closed candles ascending and unique, plus the open bar.

    covered: the (start, end) ranges of the pages that may be recorded as covered, in page order
        (pages with dropped bars and pages covering no closed bar are left out).
    open_bar: None when `limit` cut the closed bars (it must directly follow the candles).
    """

    candles: list[Candle]
    open_bar: Candle | None = None
    pages: int = 0
    dropped: int = 0
    covered: list[tuple[int, int]] = field(default_factory=list)


@runtime_checkable
class MarketDataProvider(Protocol):
    """What the service needs from a provider client."""

    #: "binance" or "twelve_data": stored in the cache rows and returned to API users.
    name: str
    asset_class: AssetClass
    #: Most bars one upstream request answers for (Binance 1000, Twelve Data 4999: its windows ask for
    #: one bar more, which is dropped).
    max_page_bars: int
    #: The capability table: app intervals this provider's own bars do not serve on the service's grid,
    #: each with the finer base interval they are built from (marketdata.resample). Every other app
    #: interval is native. The service asks for, caches and covers the base; the clients are only ever
    #: asked for native intervals.
    derived_intervals: Mapping[Interval, Interval]

    def iter_pages(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Page]:
        """Yield pages covering the inclusive open-time range [start, end], oldest first, one upstream
        request each, using the fewest requests the upstream allows. A page is yielded only after its
        request succeeded; an error is raised (typed, from marketdata.errors) at the page that failed,
        so the pages already yielded stay valid.
        """
        ...

    def fetch_candles(
        self, symbol: str, interval: Interval, start: int, end: int, limit: int | None = None
    ) -> FetchResult:
        """Every page of [start, end] merged; stop once `limit` closed bars are collected (None: no cap)."""
        ...

    def get_available_symbols(self) -> list[str]:
        """The provider's tradable symbols in this service's scope, sorted."""
        ...

    def close(self) -> None:
        """Release the HTTP client."""
        ...


# --- shared implementation -------------------------------------------------------------------


class ProviderClient:
    """What both REST clients share: construction (settings, clock, one retrying HTTP client on the
    provider's base URL), `fetch_candles` on top of `iter_pages`, and `close`.

    A client sets the class attributes below and implements `iter_pages` and `get_available_symbols`
    (see MarketDataProvider); its requests go through `self._http` (providers/http.RetryingHttp). One
    instance per process (see marketdata.providers.get_provider).
    """

    name: str
    display_name: str
    asset_class: AssetClass
    max_page_bars: int
    derived_intervals: Mapping[Interval, Interval]
    #: The Settings field holding the REST base URL, and its environment variable (named in errors).
    base_url_field: str
    base_url_setting: str

    def __init__(
        self,
        settings: Settings,
        *,
        http: httpx.Client | None = None,
        clock: Callable[[], float] = _time.time,
        sleep: Callable[[float], None] = _time.sleep,
        monotonic: Callable[[], float] = _time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        # Imported here: httpx is only paid for by a process that builds a client.
        from marketdata.providers.http import RetryingHttp, build_http_client

        self._settings = settings
        self._clock = clock
        self._owns_http = http is None
        base_url = str(getattr(settings, self.base_url_field))
        self._http = RetryingHttp(
            http if http is not None else build_http_client(settings, base_url),
            settings,
            base_url=base_url,
            base_url_setting=self.base_url_setting,
            provider=self.name,
            display_name=self.display_name,
            sleep=sleep,
            monotonic=monotonic,
            rng=rng,
        )

    def iter_pages(self, symbol: str, interval: Interval | str, start: int, end: int) -> Iterator[Page]:
        raise NotImplementedError

    def get_available_symbols(self) -> list[str]:
        raise NotImplementedError

    def fetch_candles(
        self, symbol: str, interval: Interval | str, start: int, end: int, limit: int | None = None
    ) -> FetchResult:
        return merge_pages(self.iter_pages(symbol, interval, start, end), limit)

    def close(self) -> None:
        if self._owns_http:
            self._http.client.close()


def source_interval(provider: MarketDataProvider, interval: Interval) -> Interval:
    """The interval asked from `provider`, and stored in the cache, to serve `interval`."""
    return provider.derived_intervals.get(interval, interval)


@dataclass(frozen=True, slots=True)
class RangePlan:
    """What a request for [start, end] can hold at the instant now.

    first: the first bar open time at or after start (a mid-bar start skips to the next bar).
    last: the last bar open time to fetch: the bar containing end, but never past the open bar.
    last_closed: the newest bar closed at now; page coverage never goes past it.
    open_time: the open time of the still-open bar at now.
    interval, now: what the plan was made for.
    """

    first: int
    last: int
    last_closed: int
    open_time: int
    interval: Interval
    now: float


def plan_range(interval: Interval, start: int, end: int, now: float) -> RangePlan | None:
    """The bars to ask for, or None when [start, end] holds no bar that exists at now."""
    first = first_open_at_or_after(interval, max(0, int(start)))
    open_time = bar_open(interval, int(now))
    last = min(bar_open(interval, int(end)), open_time)
    if int(end) < 0 or first > last:
        return None
    return RangePlan(
        first=first,
        last=last,
        last_closed=last_closed_open(interval, now),
        open_time=open_time,
        interval=interval,
        now=now,
    )


def validate_bar(
    interval: Interval,
    time: float,
    open: float,
    high: float,
    low: float,
    close: float,
    volume: float = 0.0,
    *,
    source: str = "",
) -> Candle | None:
    """A Candle when the bar is sane, else None (with a warning naming the bar and the reason).

    Numbers must be finite, 0 <= low <= min(open, close), max(open, close) <= high, volume >= 0, and the
    open time a whole second aligned to the interval. Callers convert upstream strings to numbers
    first (a value that is not a number at all is a malformed response, not a bad bar).
    """
    reason = _bar_problem(interval, time, open, high, low, close, volume)
    if reason is not None:
        logger.warning(
            "dropping bad bar from %s: %s (time=%r open=%r high=%r low=%r close=%r volume=%r)",
            source or "provider",
            reason,
            time,
            open,
            high,
            low,
            close,
            volume,
        )
        return None
    return Candle(
        time=int(time),
        open=float(open),
        high=float(high),
        low=float(low),
        close=float(close),
        volume=float(volume),
    )


def validate_bars(
    interval: Interval, rows: Iterable[tuple[float, float, float, float, float, float]], *, source: str = ""
) -> tuple[list[Candle], int]:
    """validate_bar for a page of (time, open, high, low, close, volume) rows: (the Candles, how many
    were dropped). The checks of _bar_problem in one expression per row, with no call per bar (a
    profile of a cold 5000-bar answer showed validate_bar's calls costing 15 times the JSON decoding);
    a row failing them goes through validate_bar, which says why and drops it."""
    grid = fixed_grid(interval)
    width, offset = grid if grid is not None else (0, 0)
    isfinite = math.isfinite
    bars: list[Candle] = []
    dropped = 0
    for row in rows:
        t, o, h, low, c, v = row
        if (
            width
            and isfinite(t + o + h + low + c + v)
            and t >= 0
            and (t - offset) % width == 0
            and 0 <= low <= o
            and low <= c
            and o <= h
            and c <= h
            and v >= 0
        ):
            bars.append(Candle(int(t), o, h, low, c, v))
            continue
        candle = validate_bar(interval, *row, source=source)  # calendar months, and every bad bar
        if candle is None:
            dropped += 1
        else:
            bars.append(candle)
    return bars, dropped


def _bar_problem(
    interval: Interval, time: float, open: float, high: float, low: float, close: float, volume: float
) -> str | None:
    # One check for all six: a sum is finite only if every term is (inf or nan anywhere poisons it).
    if not math.isfinite(time + open + high + low + close + volume):
        return "non-finite number"
    if time != int(time) or time < 0:
        return "open time is not a whole non-negative second"
    if not is_aligned(interval, int(time)):
        return f"open time not aligned to {interval.value}"
    if low < 0:
        # Prices are never negative; the cache's CHECK constraint would refuse the whole page otherwise.
        return "negative price"
    if low > min(open, close):
        return "low above open or close"
    if high < max(open, close):
        return "high below open or close"
    if volume < 0:
        return "negative volume"
    return None


def assemble_page(
    plan: RangePlan,
    page_start: int,
    page_end: int,
    bars: Iterable[Candle],
    *,
    dropped: int = 0,
    settle_seconds: float = 0.0,
) -> Page:
    """A Page answering for [page_start, page_end] (the end is clamped to the last closed bar).

    Closed bars inside the page range become `candles` (ascending, first of any duplicate kept); the
    bar opening at `plan.open_time` becomes `open_bar` when the request reached it; anything else
    (outside the range, a bar from the future because of clock skew) is left out.

    settle_seconds: a provider that publishes a bar some time after it closes (Twelve Data) may
    simply not have the newest bars yet. Missing bars that closed less than this long ago are not
    claimed as covered (the page ends before them), so the cache asks again instead of recording a
    hole forever. Missing bars older than that are real gaps (weekends, no trades) and are covered.
    """
    end = min(page_end, plan.last_closed)
    unique: dict[int, Candle] = {}
    open_bar: Candle | None = None
    for bar in bars:
        if page_start <= bar.time <= end:
            unique.setdefault(bar.time, bar)
        elif bar.time == plan.open_time and page_start <= bar.time <= plan.last:
            open_bar = open_bar or bar
    candles = [unique[t] for t in sorted(unique)]
    newest = candles[-1].time if candles else None
    if settle_seconds > 0 and (newest is None or newest < end):
        settled = last_closed_open(plan.interval, plan.now - settle_seconds)
        if end > settled:
            end = max(settled, newest) if newest is not None else settled  # may fall below page_start
    return Page(start=page_start, end=end, candles=candles, open_bar=open_bar, dropped=dropped)


def merge_pages(pages: Iterable[Page], limit: int | None = None) -> FetchResult:
    """fetch_candles on top of iter_pages: merge, dedupe, stop once `limit` closed bars are collected.

    The page iterator is closed as soon as the limit is reached, so no further request is made.
    """
    by_time: dict[int, Candle] = {}
    covered: list[tuple[int, int]] = []
    open_bar: Candle | None = None
    count = 0
    dropped = 0
    iterator = iter(pages)
    try:
        for page in iterator:
            count += 1
            dropped += page.dropped
            for candle in page.candles:
                by_time.setdefault(candle.time, candle)
            if page.open_bar is not None:
                open_bar = page.open_bar
            if page.covers_closed_bars and page.dropped == 0:
                covered.append((page.start, page.end))
            if limit is not None and len(by_time) >= limit:
                break
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
    candles = [by_time[t] for t in sorted(by_time)]
    if limit is not None and len(candles) > limit:
        # Cut closed bars: the open bar (which only the last page carries) no longer follows them.
        candles = candles[:limit]
        open_bar = None
    return FetchResult(
        candles=candles,
        open_bar=open_bar,
        pages=count,
        dropped=dropped,
        covered=covered,
    )


def upstream_number(value: object, *, provider: str, what: str) -> float:
    """A numeric field of an upstream row (a JSON number or a numeric string), else UpstreamBadResponse.

    "NaN" and "Infinity" parse here on purpose: they are numbers, and validate_bar drops such a bar
    instead of failing the whole response.
    """
    kind = type(value)  # exact types: bool is an int subclass and must not pass as a number
    if kind is not str and kind is not float and kind is not int:
        raise UpstreamBadResponse(f"{what}: expected a number, got {kind.__name__}", provider=provider)
    try:
        return float(value)  # type: ignore[arg-type]
    except ValueError:
        text = str(value)
        shown = text if len(text) <= 20 else text[:20] + "..."
        raise UpstreamBadResponse(f"{what}: {shown!r} is not a number", provider=provider) from None
