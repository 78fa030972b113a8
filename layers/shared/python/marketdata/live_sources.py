"""The polled live source: a `LiveStream` over the service's own cache-first reads.

Also `RestClosedBars` (below): Twelve Data's tick-built stream with its closed bars read from REST.

For a provider without a WebSocket client configured (or whose client could not start or reports
`error`), the broadcaster follows its pairs by asking the service, once per poll
and pair, for the newest closed bar and the forming bar (`get_historical_candles(limit=1,
include_open=True)`). A pair is read at most once per its provider's open-bar TTL (Binance 2 s, Twelve
Data 60 s: the shared open bar does not move sooner) and right after its bar closes, whatever the tick,
so polling Twelve Data costs about one credit a minute per pair for the open bar, plus its closed bars.
That is the cost issue's path: the forming bar comes from the open-bar cache shared by every Lambda
(fetched at most once per BINANCE/TWELVE_DATA_OPEN_BAR_TTL_SECONDS per pair, whoever asks), the closed
bar from the cache, filled and covered like any closed bar, and every provider request counts against
the shared quotas (Twelve Data's credits): when they are spent the
stream reports `reconnecting` and goes on with what the cache has.

Closed bars are announced when a newer one than the last announced appears: on the first poll of a pair
only if it closed within HANDOVER_SECONDS (the previous broadcaster run may have stopped just before it
closed), so a subscriber's chart, loaded from /v1/candles, is not sent history it already has.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from dataclasses import dataclass

from marketdata.errors import MarketDataError, UpstreamError
from marketdata.intervals import Interval, last_closed_open, next_open
from marketdata.limits import quota_for
from marketdata.providers.streams import BarUpdate, LiveEvent, LiveStream, Pair, StreamStatus
from marketdata.schemas import CacheStatus, Candle
from marketdata.service import MarketDataService

logger = logging.getLogger(__name__)

#: A bar that closed this recently is announced on a pair's first poll (run handover, see above).
HANDOVER_SECONDS = 10.0
#: Each poll's reads give up after this long (partial answers), so a tick stays a tick.
POLL_TIMEOUT_SECONDS = 5.0
#: A pair is read this long after its bar closes (plus Binance's close grace), for the final bar.
_AFTER_CLOSE_SECONDS = 0.5


@dataclass
class _PairState:
    forming: Candle | None = None  # the forming bar last reported
    closed_time: int | None = None  # the newest closed bar announced (or the baseline)
    next_poll: float = 0.0  # the service clock's instant before which this pair is not read again


class PolledOpenBarStream:
    """A LiveStream polling the service for one provider's pairs at each `events` call (the broadcaster's
    tick, every `every` seconds)."""

    #: The closed bars it reports were stored by the service's read already (the broadcaster skips them).
    stores_closed_bars = True

    def __init__(
        self, service: MarketDataService, provider: str, *, every: float = 1.0,
        timeout: float = POLL_TIMEOUT_SECONDS,
    ) -> None:
        self.service = service
        self.provider = provider
        self.every = every
        self.timeout = timeout
        self.polls = 0  # pairs read so far (one read per pair per poll)
        self._lock = threading.Lock()
        self._pairs: dict[tuple[str, Interval], _PairState] = {}
        # A Binance bar is final (storable) only this long after its close.
        grace = service.settings.binance_close_grace_seconds if provider == "binance" else 0.0
        self._close_delay = grace + _AFTER_CLOSE_SECONDS
        self._failing: str | None = None  # why the last poll failed, while it does
        self._closed = False

    def follow(self, pairs: Collection[tuple[str, Interval]]) -> None:
        with self._lock:
            self._pairs = {pair: self._pairs.get(pair) or _PairState() for pair in pairs}

    def events(self, timeout: float) -> list[LiveEvent]:
        """One poll of every followed pair, now: the broadcaster calls this once per tick, which is the
        pace (so `timeout` is never waited)."""
        with self._lock:
            pairs = sorted(self._pairs.items(), key=lambda item: (item[0][0], item[0][1].value))
        if self._closed:
            return []
        out: list[LiveEvent] = []
        failures: list[str] = []
        for (symbol, interval), state in pairs:
            if self.service.clock() < state.next_poll:
                continue
            try:
                out.extend(self._poll(symbol, interval, state))
            except MarketDataError as exc:
                failures.append(exc.message)
        out.extend(self._status(failures))
        return out

    def close(self) -> None:
        self._closed = True

    def _poll(self, symbol: str, interval: Interval, state: _PairState) -> list[LiveEvent]:
        self.polls += 1
        result = self.service.get_historical_candles(
            symbol, interval, limit=1, include_open=True, timeout=self.timeout
        )
        now = self.service.clock()
        last_closed = last_closed_open(interval, now)
        open_time = next_open(interval, last_closed)
        # Read again once the shared open bar may have moved (its TTL: nobody fetches it sooner anyway),
        # and right after the forming bar closes (its final bar): never more often, whatever the tick.
        ttl = quota_for(self.provider, self.service.settings).open_bar_ttl
        state.next_poll = min(now + ttl, next_open(interval, open_time) + self._close_delay)
        events: list[LiveEvent] = []
        closed = [c for c in result.candles if c.time <= last_closed]
        if closed:
            bar = closed[-1]
            if state.closed_time is None:
                state.closed_time = bar.time
                if now - next_open(interval, bar.time) <= HANDOVER_SECONDS:
                    events.append(BarUpdate(symbol, interval, bar, is_closed=True))
            elif bar.time > state.closed_time:
                state.closed_time = bar.time
                events.append(BarUpdate(symbol, interval, bar, is_closed=True))
        forming = next((c for c in result.candles if c.time == open_time), None)
        if forming is not None and forming != state.forming:
            state.forming = forming
            events.append(BarUpdate(symbol, interval, forming, is_closed=False))
        if result.cache is CacheStatus.PARTIAL and not events:
            # The provider failed or the shared budget is spent: say so (the cache's bars stand).
            raise UpstreamError(f"{self.provider}: no fresh bar for {symbol} {interval.value}",
                                provider=self.provider)  # fmt: skip
        return events

    def _status(self, failures: list[str]) -> list[LiveEvent]:
        """`reconnecting` when a poll starts failing, `connected` when it stops (changes only)."""
        if failures and self._failing is None:
            self._failing = failures[0]
            logger.warning("live poll failing", extra={"provider": self.provider, "error": failures[0]})
            return [StreamStatus("reconnecting", f"{failures[0]}; retrying every {self.every:g} s")]
        if not failures and self._failing is not None:
            self._failing = None
            return [StreamStatus("connected", f"{self.provider}: bars flowing again")]
        return []


#: A REST read of a closed tick-built bar is tried this many times, this far apart, before giving up
#: (a bar Twelve Data does not serve: a quiet minute; a spent credit budget waits for the next minute).
_CLOSE_READS = 4
_CLOSE_RETRY_SECONDS = 15.0


@dataclass
class _Closing:
    tries: int = 0
    next_try: float = 0.0


class RestClosedBars:
    """A tick-built LiveStream (Twelve Data's price stream) whose closed bars come from REST.

    Bars aggregated from the price stream's ticks may differ from Twelve Data's REST bars (which come
    from their own feed), and the stream only sees part of the first bar after a follow and of a bar
    across a reconnect. So the bar subscribers get with `is_closed=True` (and the one stored) is always
    REST's, read through the service's cache-first path (`get_historical_candles` of that one bar: the
    cache when it holds it, else one request within the shared credit budget, stored like any closed
    bar); the stream's own closed bars are dropped, its forming bars pass.

    Bars are dated and closed on the service's grid, as /v1/candles serves them: the stream's forex
    1D bar closes at 17:00 New York, but the service counts the day dated D as open until D+1 00:00
    UTC (its 1W and 1M likewise). A forming bar dated after the service's open bar (the next trading
    day's, between 17:00 New York and midnight UTC) is held until the service's grid reaches it, and a
    bar is read from REST once the grid has closed it (`_AFTER_CLOSE_SECONDS` later). A bar that got no
    forming update (no tick, or the stream was down throughout) is not announced: /v1/candles has it.
    """

    #: The closed bars it reports were stored by the service's read already (the broadcaster skips them).
    stores_closed_bars = True

    def __init__(
        self, service: MarketDataService, stream: LiveStream, *, timeout: float = POLL_TIMEOUT_SECONDS
    ) -> None:
        self.service = service
        self.stream = stream
        self.timeout = timeout
        self.reads = 0  # REST (cache-first) reads of closed bars so far
        self._lock = threading.Lock()
        self._held: dict[Pair, Candle] = {}  # forming bars dated past the service's open bar
        self._closing: dict[tuple[Pair, int], _Closing] = {}  # (pair, bar time) -> its REST read
        self._announced: dict[Pair, int] = {}  # the newest closed bar announced per pair

    def follow(self, pairs: Collection[tuple[str, Interval]]) -> None:
        wanted = {(symbol, Interval(interval)) for symbol, interval in pairs}
        with self._lock:
            for table in (self._held, self._announced):
                for pair in [p for p in table if p not in wanted]:
                    del table[pair]
            for key in [k for k in self._closing if k[0] not in wanted]:
                del self._closing[key]
        self.stream.follow(wanted)

    def events(self, timeout: float) -> list[LiveEvent]:
        inner = self.stream.events(timeout)
        now = self.service.clock()
        out: list[LiveEvent] = []
        fresh: list[LiveEvent] = []
        with self._lock:
            for event in inner:
                if isinstance(event, StreamStatus):
                    out.append(event)
                elif not event.is_closed:  # a tick aggregate's close is never what subscribers get
                    self._forming(event, now, fresh)
            out.extend(self._due(now))  # a closed bar goes before the forming bar that follows it
        return out + fresh

    def close(self) -> None:
        self.stream.close()

    def _forming(self, event: BarUpdate, now: float, out: list[LiveEvent]) -> None:
        pair = (event.symbol, event.interval)
        open_time = next_open(event.interval, last_closed_open(event.interval, now))
        bar_time = event.candle.time
        if bar_time < open_time:
            # Closed on the grid already: a late tick, or the catch-up of ticks a new subscription
            # gets (history /v1/candles serves). A bar followed while open is closed by `_due`.
            return
        self._closing.setdefault((pair, bar_time), _Closing())
        if bar_time > open_time:
            self._held[pair] = event.candle  # the next trading day's: not on the service's grid yet
        else:
            out.append(event)

    def _due(self, now: float) -> list[LiveEvent]:
        """REST's copy of every bar the service's grid has closed, then held bars now on the grid."""
        out: list[LiveEvent] = []
        for key in sorted(self._closing, key=lambda k: k[1]):
            pair, bar_time = key
            symbol, interval = pair
            state = self._closing[key]
            if now < next_open(interval, bar_time) + _AFTER_CLOSE_SECONDS or now < state.next_try:
                continue
            candle = self._read(symbol, interval, bar_time)
            state.tries += 1
            state.next_try = now + _CLOSE_RETRY_SECONDS
            if candle is not None:
                del self._closing[key]
                if bar_time > self._announced.get(pair, -1):
                    self._announced[pair] = bar_time
                    out.append(BarUpdate(symbol, interval, candle, is_closed=True))
            elif state.tries >= _CLOSE_READS:
                del self._closing[key]
                where = {"symbol": symbol, "interval": interval.value, "time": bar_time}
                logger.warning("live forex bar not served by REST; not announced", extra=where)
        for pair, candle in list(self._held.items()):
            if candle.time <= next_open(pair[1], last_closed_open(pair[1], now)):
                del self._held[pair]
                out.append(BarUpdate(pair[0], pair[1], candle, is_closed=False))
        return out

    def _read(self, symbol: str, interval: Interval, bar_time: int) -> Candle | None:
        self.reads += 1
        try:
            result = self.service.get_historical_candles(
                symbol, interval, bar_time, bar_time, limit=1, timeout=self.timeout
            )
        except MarketDataError as exc:
            where = {"symbol": symbol, "interval": interval.value, "error": exc.message}
            logger.warning("live forex closed bar: REST read failed", extra=where)
            return None
        return next((c for c in result.candles if c.time == bar_time), None)
