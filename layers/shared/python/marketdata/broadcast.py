"""The broadcaster: the live bars of every subscribed pair, posted to every subscriber once per tick.

Started every minute by EventBridge Scheduler (functions/broadcaster), one run lasts until just before
the next run starts (and never past its Lambda timeout less LIVE_STOP_MARGIN_SECONDS). Each tick
(LIVE_TICK_SECONDS):

1. One read of the subscriptions (marketdata.subscriptions): every distinct (symbol, interval) with its
   connections. Each provider's `LiveStream` is told to follow exactly that provider's pairs.
2. Each stream's events are drained: a pair's bar is obtained ONCE for all its subscribers, whatever
   their number. The newest forming bar per pair is kept (older ones of the same tick are superseded),
   every closed bar is kept, and stream status changes go to the subscribers of that provider.
3. A closed bar is stored in the cache like any closed bar (one page through the store's fill
   transaction: bars and coverage, so a later /v1/candles read does not fetch it), unless its source
   read it through the cache already (the polled source) or the cache keeps that interval built from a
   finer one (forex 4H, 1W, 1M).
4. Fan-out: each message is serialized once; every connection's messages go out in order on a bounded
   thread pool through the API Gateway Management API, each post with its own timeout. A connection
   whose previous posts are still in flight is not waited for: its new messages wait in its outbox
   (forming bars superseded there too) until it is free, so one slow or dead connection never delays
   the others or the tick. A post answered 410 Gone removes the connection's rows.

A connection that has just subscribed gets the pair's latest bar at once, without waiting for it to
move. Streams: `build_streams` takes a mapping provider -> constructor of its WebSocket client
(`STREAM_FACTORIES`: Binance's kline streams, whose closed bars are stored as they come; Twelve Data's
price stream for the forming bars, its closed bars read from REST through the service,
`live_sources.RestClosedBars`); a provider without one, or whose client cannot start or reports
`error`, is followed by the polled source (marketdata.live_sources).
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from marketdata.config import Settings
from marketdata.errors import ConfigurationError, MarketDataError
from marketdata.intervals import Interval
from marketdata.live_sources import PolledOpenBarStream, RestClosedBars
from marketdata.providers.base import Page
from marketdata.providers.streams import BarUpdate, LiveStream, StreamStatus
from marketdata.schemas import AssetClass, ConnectionStatus, PriceUpdate
from marketdata.subscriptions import Pair, Subscriptions

if TYPE_CHECKING:
    from marketdata.service import MarketDataService

logger = logging.getLogger(__name__)

#: Which provider's stream serves an asset class's pairs.
PROVIDER_OF: dict[AssetClass, str] = {AssetClass.CRYPTO: "binance", AssetClass.FOREX: "twelve_data"}
#: How long storing a closed bar waits for the series' fill lock (a filler holds it for one page).
_STORE_LOCK_WAIT_SECONDS = 2.0
#: A run ends this long before the next minute's run starts (EventBridge Scheduler starts one a minute).
_HANDOVER_GAP_SECONDS = 1.0
#: A run starting this close before a minute's end belongs to the next minute.
_EARLY_START_SECONDS = 10.0

#: Builds a provider's live client for a run; given the service, so the client reads the service's clock
#: (bar times and closes agree with /v1/candles; tests move it) and, for Twelve Data, its closed bars.
StreamFactory = Callable[["MarketDataService"], LiveStream]


def binance_stream(service: MarketDataService) -> LiveStream:
    """Binance's kline streams; their closed bars (the `x` flag, validated like REST bars) are stored."""
    from marketdata.providers.binance_live import BinanceKlineStream  # loads websockets: only when used

    return BinanceKlineStream(service.settings, clock=service.clock)


def twelve_data_stream(service: MarketDataService) -> LiveStream:
    """Twelve Data's price stream for the forming bars; the closed bars are REST's (RestClosedBars)."""
    from marketdata.providers.twelve_data_live import TwelveDataPriceStream

    return RestClosedBars(service, TwelveDataPriceStream(service.settings, clock=service.clock))


#: provider -> its live client. Constructing one opens nothing: a client connects on its first follow
#: of at least one pair (a run without subscribers never connects anywhere).
STREAM_FACTORIES: dict[str, StreamFactory] = {"binance": binance_stream, "twelve_data": twelve_data_stream}


class ConnectionGone(Exception):
    """The Management API answered 410: the client is gone (its rows must go too)."""


class Poster(Protocol):
    """Posts one message to one connection; ConnectionGone on 410, any other exception on failure."""

    def post(self, connection_id: str, data: bytes) -> None: ...


class ManagementApiPoster:
    """The API Gateway Management API (`post_to_connection`), through boto3, at `endpoint`.

    No retries (the next tick sends a newer bar) and connect/read timeouts of `timeout` seconds, so a
    connection that does not take its message costs one pool thread that long at most."""

    def __init__(
        self, endpoint: str, *, timeout: float, pool: int, region: str | None = None, unsigned: bool = False
    ) -> None:
        self.endpoint = endpoint
        self._unsigned = unsigned  # the local stand-in checks no signature: no credentials needed
        self._timeout = timeout
        self._pool = pool
        self._region = region
        self._client: Any = None
        self._lock = threading.Lock()

    def _get_client(self) -> Any:
        # Built on the first post: boto3 costs ~100 ms of import, and a run without subscribers never posts.
        with self._lock:
            if self._client is None:
                import os

                import boto3
                from botocore import UNSIGNED
                from botocore.config import Config

                region = (self._region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
                          or "us-east-1")  # fmt: skip
                self._client = boto3.client(
                    "apigatewaymanagementapi",
                    endpoint_url=self.endpoint,
                    region_name=region,
                    config=Config(
                        connect_timeout=self._timeout, read_timeout=self._timeout,
                        retries={"max_attempts": 1, "mode": "standard"}, max_pool_connections=self._pool,
                        **({"signature_version": UNSIGNED} if self._unsigned else {}),
                    ),
                )  # fmt: skip
            return self._client

    def post(self, connection_id: str, data: bytes) -> None:
        client = self._get_client()
        try:
            client.post_to_connection(ConnectionId=connection_id, Data=data)
        except client.exceptions.GoneException:
            raise ConnectionGone(connection_id) from None


def build_streams(
    service: MarketDataService, factories: Mapping[str, StreamFactory] | None = None
) -> dict[str, LiveStream]:
    """provider -> its LiveStream: the WebSocket client from `factories` (STREAM_FACTORIES by default),
    else, or when it cannot start, the polled source."""
    factories = STREAM_FACTORIES if factories is None else factories
    streams: dict[str, LiveStream] = {}
    for provider in PROVIDER_OF.values():
        factory = factories.get(provider)
        if factory is not None:
            try:
                streams[provider] = factory(service)
                continue
            except Exception as exc:  # a client that cannot start: poll instead of serving nothing
                logger.warning("live stream could not start; polling instead",
                               extra={"provider": provider, "error": repr(exc)})  # fmt: skip
        streams[provider] = polled_stream(service, provider)
    return streams


def polled_stream(service: MarketDataService, provider: str) -> PolledOpenBarStream:
    return PolledOpenBarStream(service, provider, every=service.settings.live_tick_seconds)


@dataclass
class Stats:
    """What a broadcaster did (the run's log line, metrics, tests and the benchmark)."""

    ticks: int = 0
    posts: int = 0  # messages delivered
    failed: int = 0  # messages not delivered (timeouts, errors other than 410)
    gone: int = 0  # connections removed after a 410
    closed_stored: int = 0  # closed bars stored in the cache
    pairs: int = 0  # distinct pairs at the last tick
    connections: int = 0  # distinct connections at the last tick


@dataclass
class _Outbox:
    """A connection's messages not yet posted, by key: a pair's forming bar (superseded by a newer one),
    a closed bar and a status change (each kept)."""

    messages: dict[tuple[Any, ...], bytes] = field(default_factory=dict)

    def put(self, key: tuple[Any, ...], data: bytes) -> None:
        self.messages.pop(key, None)  # a newer state goes last, after what it follows
        self.messages[key] = data


class Broadcaster:
    """One broadcaster run's state: the streams, what each pair looks like now, the fan-out pool."""

    def __init__(
        self,
        service: MarketDataService,
        poster: Poster,
        streams: Mapping[str, LiveStream],
        *,
        subscriptions: Subscriptions | None = None,
        threads: int | None = None,
    ) -> None:
        if service.store is None:
            raise ConfigurationError("the broadcaster needs the cache database (subscriptions live there)")
        self.service = service
        self.settings = service.settings
        self.poster = poster
        self.streams: dict[str, LiveStream] = dict(streams)
        self.subscriptions = subscriptions or Subscriptions(service.store)
        self.stats = Stats()
        self._pool = ThreadPoolExecutor(
            max_workers=threads or self.settings.live_fanout_threads, thread_name_prefix="live-post"
        )
        self._stats_lock = threading.Lock()
        self._latest: dict[tuple[str, Interval], bytes] = {}  # each pair's newest message
        self._served: set[tuple[str, tuple[str, Interval]]] = set()  # (connection, pair) already sent to
        self._followed: dict[str, frozenset[tuple[str, Interval]]] = {}
        self._outboxes: dict[str, _Outbox] = {}
        self._in_flight: dict[str, Future[None]] = {}
        self._gone: set[str] = set()
        self._status_seq = 0

    # --- one tick ---

    def tick(self, wait: float = 0.0) -> None:
        """Read the subscriptions, drain the streams (the first one waiting up to `wait` s), store closed
        bars, queue the messages and post what can go now."""
        self._reap()
        pairs = self.subscriptions.pairs()
        by_provider: dict[str, list[Pair]] = {provider: [] for provider in self.streams}
        for pair in pairs:
            by_provider.setdefault(PROVIDER_OF[pair.asset_class], []).append(pair)
        for provider, its_pairs in by_provider.items():
            if provider in self.streams:  # a provider without a stream: its pairs wait (none is built so)
                self._follow(provider, its_pairs)
        subscribers = {pair.key: pair.connections for pair in pairs}
        for provider, stream in list(self.streams.items()):
            try:
                events = stream.events(wait)
            except Exception as exc:
                logger.warning("live stream failed", extra={"provider": provider, "error": repr(exc)})
                events = [StreamStatus("error", f"{provider}: the stream failed")]
            wait = 0.0
            self._dispatch(provider, stream, events, subscribers, by_provider.get(provider, []))
        # Newly subscribed connections get the pair's newest bar now, whether or not it moved.
        for pair in pairs:
            latest = self._latest.get(pair.key)
            for connection in pair.connections:
                seen = (connection, pair.key)
                if seen not in self._served:
                    self._served.add(seen)
                    if latest is not None:
                        self._queue(connection, ("bar", *pair.key), latest, mark=False)
        live = {(c, pair.key) for pair in pairs for c in pair.connections}
        self._served &= live
        self._latest = {key: data for key, data in self._latest.items() if key in subscribers}
        self.stats.ticks += 1
        self.stats.pairs = len(pairs)
        self.stats.connections = len({c for pair in pairs for c in pair.connections})
        self._send()

    def _follow(self, provider: str, pairs: list[Pair]) -> None:
        wanted = frozenset(pair.key for pair in pairs)
        if self._followed.get(provider) != wanted:
            self.streams[provider].follow(wanted)
            self._followed[provider] = wanted

    def _dispatch(
        self,
        provider: str,
        stream: LiveStream,
        events: Iterable[BarUpdate | StreamStatus],
        subscribers: Mapping[tuple[str, Interval], tuple[str, ...]],
        pairs: list[Pair],
    ) -> None:
        for event in events:
            if isinstance(event, StreamStatus):
                data = ConnectionStatus(
                    status=event.status, message=event.message, provider=provider  # type: ignore[arg-type]
                ).model_dump_json().encode()
                # Every change is its own message (a reconnecting is never hidden by the recovery).
                self._status_seq += 1
                for connection in {c for pair in pairs for c in pair.connections}:
                    self._queue(connection, ("status", provider, self._status_seq), data)
                if event.status == "error" and not isinstance(stream, PolledOpenBarStream):
                    self._fall_back(provider, stream)
                continue
            key = (event.symbol, event.interval)
            data = PriceUpdate(
                symbol=event.symbol, interval=event.interval, candle=event.candle, is_closed=event.is_closed
            ).model_dump_json().encode()
            if event.is_closed:
                if not getattr(stream, "stores_closed_bars", False):
                    self._store_closed(provider, event)
                message_key: tuple[Any, ...] = ("closed", *key, event.candle.time)
            else:
                message_key = ("bar", *key)
            self._latest[key] = data
            for connection in subscribers.get(key, ()):
                self._queue(connection, message_key, data)

    def _fall_back(self, provider: str, stream: LiveStream) -> None:
        """A WebSocket client in `error`: its pairs are polled for the rest of the run."""
        logger.warning("live stream in error; polling instead", extra={"provider": provider})
        try:
            stream.close()
        finally:
            self.streams[provider] = polled_stream(self.service, provider)
            self._followed.pop(provider, None)

    def _store_closed(self, provider: str, event: BarUpdate) -> None:
        """A closed bar from a stream, stored as a one-bar page: the bar and its coverage."""
        store = self.service.store
        assert store is not None
        try:
            if self.service.storage_interval(event.symbol, event.interval) is not event.interval:
                return  # built from a finer interval on every read (forex 4H/1W/1M): nothing to store
            wait = _STORE_LOCK_WAIT_SECONDS
            with store.fill_transaction(event.symbol, event.interval, wait_seconds=wait) as tx:
                t = event.candle.time
                tx.store_page(provider, Page(start=t, end=t, candles=[event.candle]))
            self.stats.closed_stored += 1
        except MarketDataError as exc:
            # Not stored: the next /v1/candles read fetches it like any missing bar.
            logger.warning(
                "could not store a closed live bar",
                extra={"symbol": event.symbol, "interval": event.interval.value, "error": str(exc)},
            )

    # --- fan-out ---

    def _queue(self, connection: str, key: tuple[Any, ...], data: bytes, *, mark: bool = True) -> None:
        if connection in self._gone:
            return
        self._outboxes.setdefault(connection, _Outbox()).put(key, data)
        if mark and key[0] in ("bar", "closed"):  # this connection has the pair's newest bar now
            self._served.add((connection, (key[1], key[2])))

    def _send(self) -> None:
        """Post every outbox whose connection has nothing in flight (the others wait for a later tick)."""
        for connection in list(self._outboxes):
            if connection in self._in_flight:
                continue
            messages = list(self._outboxes.pop(connection).messages.values())
            if messages:
                self._in_flight[connection] = self._pool.submit(self._post_all, connection, messages)

    def _post_all(self, connection: str, messages: list[bytes]) -> None:
        for number, data in enumerate(messages):
            try:
                self.poster.post(connection, data)
            except ConnectionGone:
                with self._stats_lock:
                    self._gone.add(connection)
                return
            except Exception as exc:  # a timeout, a 5xx: this connection's messages are lost, nobody else's
                with self._stats_lock:
                    self.stats.failed += len(messages) - number
                logger.info("live post failed", extra={"connection": connection, "error": repr(exc)})
                return
            with self._stats_lock:
                self.stats.posts += 1

    def _reap(self) -> None:
        """Forget finished posts; remove the connections a post found gone (their rows, their outbox)."""
        for connection, future in list(self._in_flight.items()):
            if future.done():
                del self._in_flight[connection]
        with self._stats_lock:
            gone, self._gone = self._gone, set()
        if gone:
            try:
                self.subscriptions.disconnect(*sorted(gone))
            except MarketDataError as exc:
                logger.warning("could not remove gone connections", extra={"error": str(exc)})
                with self._stats_lock:
                    self._gone |= gone  # try again next tick
                return
            for connection in gone:
                self._outboxes.pop(connection, None)
            self.stats.gone += len(gone)

    def flush(self, timeout: float | None = None) -> None:
        """Post everything queued and wait for it (at most `timeout` s), then remove the connections the
        posts found gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self._send()
            for future in list(self._in_flight.values()):
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                # A post's own failure is counted where it happened.
                with contextlib.suppress(Exception):
                    future.result(timeout=left)
            self._reap()
            waiting = any(box.messages for c, box in self._outboxes.items() if c not in self._gone)
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                return

    # --- a run ---

    def run(self, seconds_left: Callable[[], float], *, stop: threading.Event | None = None) -> Stats:
        """Tick every LIVE_TICK_SECONDS while more than a tick is left (`seconds_left`, see run_window);
        then wait for the last posts (at most the stop margin) and close the streams."""
        tick = self.settings.live_tick_seconds
        try:
            while seconds_left() > tick and not (stop is not None and stop.is_set()):
                started = time.monotonic()
                try:
                    self.tick()
                except MarketDataError as exc:  # the database failing for a moment: the next tick retries
                    logger.warning("broadcaster tick failed", extra={"error": str(exc)})
                pause = tick - (time.monotonic() - started)
                if pause > 0:
                    if stop is not None:
                        stop.wait(pause)
                    else:
                        time.sleep(pause)
            self.flush(timeout=self.settings.live_stop_margin_seconds)
        finally:
            self.close()
        return self.stats

    def close(self) -> None:
        for stream in self.streams.values():
            try:
                stream.close()
            except Exception as exc:
                logger.warning("live stream did not close cleanly", extra={"error": repr(exc)})
        self._pool.shutdown(wait=False, cancel_futures=True)


def run_window(remaining_seconds: Callable[[], float], settings: Settings, *, started: float
               ) -> Callable[[], float]:
    """seconds_left for a run the every-minute schedule started at `started` (Unix seconds): it ends just
    before the next run starts, and LIVE_STOP_MARGIN_SECONDS before its Lambda's timeout at the latest.
    A run started in a minute's last seconds (the schedule fires within seconds of :00) is the next
    minute's run."""
    next_start = math.floor((started + _EARLY_START_SECONDS) / 60) * 60 + 60

    def left() -> float:
        return min(
            remaining_seconds() - settings.live_stop_margin_seconds,
            next_start - _HANDOVER_GAP_SECONDS - time.time(),
        )

    return left
