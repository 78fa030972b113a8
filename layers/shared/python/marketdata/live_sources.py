"""The polled live source: a `LiveStream` over the service's own cache-first reads.

For a provider without a WebSocket client configured (Twelve Data by default, and any provider whose
stream could not be started), the broadcaster follows its pairs by asking the service, once per poll
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
from marketdata.providers.streams import BarUpdate, LiveEvent, StreamStatus
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
