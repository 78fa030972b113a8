"""The interface every provider client implements, and what they share.

A provider answers for an inclusive range of bar open times by yielding `Page`s, one per upstream
request. A page says which open-time range it answers for *completely* (`start`..`end`): a bar
missing inside that range does not exist upstream (forex weekend, halt, before listing). That is
what lets the cache record coverage per page, in the same transaction as the page's bars, and
never ask again for a range that has no bars.

Closed and open bars are split: `Page.candles` holds only bars that were closed at fetch time
(safe to store forever); `Page.open_bar` is the still-open last bar when the range reached it
(never stored).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from marketdata.intervals import Interval
from marketdata.schemas import AssetClass, Candle


@dataclass(frozen=True, slots=True)
class Page:
    """One upstream response, parsed and validated.

    start, end: the inclusive open-time range this page answers for completely. end never goes past
        the last bar that was closed at fetch time, so coverage never claims the open bar.
    candles: closed bars in [start, end], ascending, unique by open time, each validated.
    open_bar: the still-open bar, when the requested range reached it; None otherwise.
    dropped: bars that failed validation and were left out (logged). A page with dropped bars must
        not be recorded as covered: the range would otherwise hide the missing bar forever.
    """

    start: int
    end: int
    candles: list[Candle]
    open_bar: Candle | None = None
    dropped: int = 0


@dataclass(frozen=True, slots=True)
class FetchResult:
    """All pages of a range fetch merged: closed candles ascending and unique, plus the open bar."""

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
    #: Most bars one upstream request returns (Binance 1000, Twelve Data 5000).
    max_page_bars: int

    def iter_pages(self, symbol: str, interval: Interval, start: int, end: int) -> Iterator[Page]:
        """Yield pages covering the inclusive open-time range [start, end], oldest first, one upstream
        request each, using the fewest requests the upstream allows. A page is yielded only after its
        request succeeded; an error is raised (typed, from marketdata.errors) at the page that failed,
        so the pages already yielded stay valid.
        """
        ...

    def fetch_candles(self, symbol: str, interval: Interval, start: int, end: int, limit: int | None = None) -> FetchResult:
        """Every page of [start, end] merged; stop once `limit` closed bars are collected (None: no cap)."""
        ...

    def get_available_symbols(self) -> list[str]:
        """The provider's tradable symbols in this service's scope, sorted."""
        ...

    def close(self) -> None:
        """Release the HTTP client."""
        ...
