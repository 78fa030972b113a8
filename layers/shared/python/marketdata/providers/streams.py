"""The interface of the providers' live (WebSocket) clients, and what they share.

A `LiveStream` follows a set of (symbol, interval) pairs and turns what the provider pushes into
`BarUpdate`s (the forming bar as it moves; the closed bar, once, with `is_closed=True`) and
`StreamStatus` changes (`connected`, `reconnecting` on a drop, `error` with a message). The
broadcaster (issue 12) drains `events()` once per tick and fans the newest state of each pair out to
its subscribers; it never needs to know which provider or transport produced it.

Every implementation is thread-safe: `follow` and `close` may be called from the thread that drains
`events` while the client's own thread holds the connection.

The implementations, both built from `marketdata.config.Settings` plus an injectable wall clock (bar
times, closedness and connection age are read from it, so tests can move time) and random source
(the reconnect jitter):

- `marketdata.providers.binance_live.BinanceKlineStream(settings, *, clock=time.time,
  rng=random.random)`: Binance's combined kline streams, crypto symbols (`BTCUSDT`), every interval.
- `marketdata.providers.twelve_data_live.TwelveDataPriceStream(settings, *, clock=time.time,
  rng=random.random)`: Twelve Data's price stream, forex pairs (`EUR/USD`), ticks aggregated into
  bars on the service's grid. Its closed bars are only those it saw whole (see that module).

Import them where they are used: they load the `websockets` library, which the HTTP handlers never
need. Nothing connects before the first `follow` with at least one pair; following nothing closes
the connection. What they share lives below: the connection thread (`WebSocketStream`), reconnecting
with capped exponential back-off and jitter (`backoff_seconds`), status reporting and the event queue
(`EventQueue`). Facts about the two upstream streams: docs/providers.md.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from marketdata.intervals import Interval
from marketdata.schemas import Candle

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

    from marketdata.config import Settings

logger = logging.getLogger(__name__)

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


# --- shared implementation -------------------------------------------------------------------

Pair = tuple[str, Interval]


def backoff_seconds(attempt: int, base: float, cap: float, rng: Callable[[], float]) -> float:
    """The wait before reconnect attempt `attempt` (0 for the first): base * 2**attempt, capped, with
    equal jitter (half of the step fixed, half random), so many clients dropped at once do not come
    back in lockstep and a failing upstream is asked at most once per cap."""
    step = min(cap, base * 2.0 ** min(attempt, 30))
    return step / 2 + rng() * step / 2


class EventQueue:
    """The events a client's thread produced, until the consumer drains them (thread-safe)."""

    def __init__(self) -> None:
        self._ready = threading.Condition()
        self._items: deque[LiveEvent] = deque()

    def put(self, event: LiveEvent) -> None:
        with self._ready:
            self._items.append(event)
            self._ready.notify_all()

    def drain(self, timeout: float) -> list[LiveEvent]:
        with self._ready:
            if not self._items and timeout > 0:
                self._ready.wait(timeout)
            items = list(self._items)
            self._items.clear()
            return items


class StreamDead(Exception):
    """Raised by a client's hooks when its connection is alive on paper but useless (nothing received
    for too long): the connection is dropped and opened again, like any other drop."""


class WebSocketStream:
    """The connection thread both live clients share: connect, hand every message to the subclass,
    reconnect with back-off after a drop, roll a connection over before the provider's maximum age.

    Subclasses implement `_connect` (open a connection for the pairs followed now and subscribe them),
    `_sync` (bring the upstream subscriptions in line with `_wanted()` on the open connection),
    `_on_message`, and optionally `_on_idle` (called at least every `poll_seconds`),
    `_on_disconnect` and `_describe_failure`. All hooks run on the client's own thread.

    Status: `connected` after each successful connect, `reconnecting` (with the reason) after each
    drop, `error` from the subclass (a refused symbol, a refused key). A planned rollover reports
    nothing: the new connection is open before the old one is closed.
    """

    #: Seconds between checks of follow changes, the clock and the connection's age.
    poll_seconds = 0.2
    provider = "provider"

    def __init__(self, settings: Settings, *, clock: Callable[[], float], rng: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        self._rng = rng
        self._max_age = self._max_connection_seconds()
        self._queue = EventQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._pairs: frozenset[Pair] = frozenset()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._ws: ClientConnection | None = None
        self._rollover = False
        self._received = False

    # --- the LiveStream interface ----------------------------------------------------------------

    def follow(self, pairs: Collection[tuple[str, Interval]]) -> None:
        wanted = frozenset((symbol, Interval(interval)) for symbol, interval in pairs)
        with self._changed:
            if self._closing.is_set():
                return
            self._pairs = wanted
            self._changed.notify_all()
            if self._thread is None and wanted:
                self._thread = threading.Thread(target=self._run, name=f"{self.provider}-live", daemon=True)
                self._thread.start()

    def events(self, timeout: float) -> list[LiveEvent]:
        return self._queue.drain(timeout)

    def close(self) -> None:
        with self._changed:
            self._closing.set()
            self._changed.notify_all()
            thread, ws = self._thread, self._ws
        if ws is not None:
            ws.close()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    # --- for subclasses -------------------------------------------------------------------------

    def _wanted(self) -> frozenset[Pair]:
        with self._lock:
            return self._pairs

    def _emit(self, event: LiveEvent) -> None:
        self._queue.put(event)

    def _request_rollover(self) -> None:
        """Open a new connection (and then close this one) at the next check."""
        self._rollover = True

    def _max_connection_seconds(self) -> float | None:
        """The age at which a connection is rolled over (None: never)."""
        return None

    def _connect(self) -> ClientConnection:
        raise NotImplementedError

    def _sync(self, ws: ClientConnection) -> None:
        raise NotImplementedError

    def _on_message(self, ws: ClientConnection, message: str) -> None:
        raise NotImplementedError

    def _on_idle(self, ws: ClientConnection) -> None:
        pass

    def _on_disconnect(self) -> None:
        pass

    def _describe_failure(self, exc: BaseException) -> StreamStatus:
        """The status a failed connect or a drop reports (subclasses scrub secrets, spot refusals)."""
        return StreamStatus("reconnecting", f"{self.provider} stream: {_reason(exc)}")

    # --- the thread -----------------------------------------------------------------------------

    def _wait_for_pairs(self) -> bool:
        """Block until some pair is followed (True) or the client closes (False)."""
        with self._changed:
            while not self._closing.is_set() and not self._pairs:
                self._changed.wait()
            return not self._closing.is_set()

    def _backoff(self, attempt: int) -> float:
        settings = self._settings
        return backoff_seconds(
            attempt, settings.live_reconnect_base_seconds, settings.live_reconnect_max_seconds, self._rng
        )

    def _run(self) -> None:
        attempt = 0
        while self._wait_for_pairs():
            try:
                ws = self._connect()
            except Exception as exc:  # every connect failure is retried; the status says why
                if self._closing.is_set():
                    return
                self._emit(self._describe_failure(exc))
                self._closing.wait(self._backoff(attempt))
                attempt += 1
                continue
            with self._lock:
                self._ws = ws
            self._emit(StreamStatus("connected"))
            try:
                self._serve(ws)
                attempt = 0
            except Exception as exc:  # a drop: ConnectionClosed, OSError, StreamDead, a protocol error
                self._on_disconnect()
                if self._closing.is_set():
                    return
                if self._received:
                    attempt = 0  # the connection worked: back-off starts over
                status = self._describe_failure(exc)  # scrubbed of secrets, unlike the exception
                logger.info("%s stream dropped: %s", self.provider, status.message)
                self._emit(status)
                self._closing.wait(self._backoff(attempt))
                attempt += 1
            finally:
                with self._lock:
                    current, self._ws = self._ws, None
                if current is not None:
                    current.close()

    def _serve(self, ws: ClientConnection) -> None:
        """Read the connection until nothing is followed or the client closes; raise on a drop.

        Rolls over to a new connection when the current one reaches the maximum age (or the subclass
        asks): the new one is connected and subscribed first, then the old one closed.
        """
        opened = self._clock()
        self._rollover = False
        self._received = False
        while not self._closing.is_set():
            if self._rollover or (self._max_age is not None and self._clock() - opened >= self._max_age):
                fresh = self._connect()
                with self._lock:
                    old, self._ws = self._ws, fresh
                if old is not None:
                    old.close()
                ws, opened, self._rollover = fresh, self._clock(), False
                logger.info("%s stream: rolled over to a new connection", self.provider)
            if not self._wanted():
                self._on_disconnect()
                return
            self._sync(ws)
            try:
                message = ws.recv(timeout=self.poll_seconds)
            except TimeoutError:
                message = None
            if message is not None:
                self._received = True
                text = message if isinstance(message, str) else message.decode("utf-8", "replace")
                self._on_message(ws, text)
            self._on_idle(ws)


def open_websocket(
    url: str, settings: Settings, *, log: logging.Logger | logging.LoggerAdapter[Any] | None = None
) -> ClientConnection:
    """A connection from the `websockets` library's sync client (imported here, so only the live
    clients pay for it), with the keepalive and timeouts of the settings. It is entered as the context
    manager websockets 17 asks for; the connection thread closes it itself (a rollover outlives any
    `with` block)."""
    from websockets.sync.client import connect

    connection = connect(
        url,
        open_timeout=settings.http_connect_timeout,
        ping_interval=settings.live_ping_interval_seconds,
        ping_timeout=settings.live_ping_timeout_seconds,
        close_timeout=1,  # closing never holds the thread (or the broadcaster) for long
        logger=log,
    )
    return connection.__enter__()


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."
