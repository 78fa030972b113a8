"""The interface of the providers' live (WebSocket) clients, and what they share.

A `LiveStream` follows a set of (symbol, interval) pairs and turns what the provider pushes into
`BarUpdate`s (the forming bar as it moves; the closed bar, once, with `is_closed=True`) and
`StreamStatus` changes (`connected`, `reconnecting` on a drop, `error` with a message). The
broadcaster (issue 12) drains `events()` once per tick and fans the newest state of each pair out to
its subscribers; it never needs to know which provider or transport produced it.

Every implementation is thread-safe: `follow` and `close` may be called from the thread that drains
`events` while the client's own thread holds the connection.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from marketdata.intervals import Interval
from marketdata.schemas import Candle

StatusName = Literal["connected", "reconnecting", "error"]


@dataclass(frozen=True, slots=True)
class BarUpdate:
    """The newest state of one pair's bar: forming (`is_closed=False`) or final (`is_closed=True`)."""

    symbol: str
    interval: Interval
    candle: Candle
    is_closed: bool


@dataclass(frozen=True, slots=True)
class StreamStatus:
    """A change in the health of a stream; `message` says why (never carries an API key)."""

    status: StatusName
    message: str = ""


LiveEvent = BarUpdate | StreamStatus


@runtime_checkable
class LiveStream(Protocol):
    """A provider's live client: follows pairs, yields their bar updates and its own status changes."""

    def follow(self, pairs: Collection[tuple[str, Interval]]) -> None:
        """Follow exactly these (symbol, interval) pairs from now on (subscribing and unsubscribing
        upstream as needed). Symbols are in the service's spelling (`BTCUSDT`, `EUR/USD`)."""
        ...

    def events(self, timeout: float) -> list[LiveEvent]:
        """Everything that arrived since the last call, oldest first, waiting up to `timeout` seconds
        for the first event when none is queued (an empty list after the timeout)."""
        ...

    def close(self) -> None:
        """Stop the client's thread and close its connection; idempotent."""
        ...
