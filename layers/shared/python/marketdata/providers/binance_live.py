"""Binance's combined kline streams: the forming bar of each followed pair as it moves, the closed bar once.

Facts this module relies on (docs/providers.md, "Live streams"):
- Combined streams at `<BINANCE_WS_URL>/stream?streams=<s1>/<s2>/...`, each event wrapped as
  `{"stream": "btcusdt@kline_1m", "data": {...}}`; stream names use the lower-case symbol and the
  interval as Binance spells it (`1h`, `1M`). Live changes are JSON requests with an id,
  `{"method": "SUBSCRIBE" | "UNSUBSCRIBE", "params": [...], "id": n}`, answered `{"result": null,
  "id": n}` or `{"error": {"code", "msg"}, "id": n}`.
- Limits per connection: at most 1024 streams, at most 5 incoming messages per second (pings, pongs
  and requests all count; past it the connection is dropped and repeat offenders are banned). This
  client sends at most CONTROL_MESSAGES_PER_SECOND requests per second, many streams per request.
- The server pings every 20 s and drops a connection that does not pong within a minute: the
  `websockets` library pongs by itself. A connection lives at most 24 hours: this client opens a new
  one after BINANCE_WS_MAX_CONNECTION_SECONDS and only then closes the old one. A `serverShutdown`
  event announces a disconnection: the client rolls over at once.
- The kline payload `k` carries `t` (open time, ms), `o h l c v` as strings like REST rows, and `x`,
  true on the final update of the bar. Bars pass the same parsing and validation as REST bars
  (`binance.kline_candle`); the closed bar is emitted once per pair and open time.

A bar whose closing update was missed (the connection was down at the close) is not invented: its
closed state comes from REST (the cache) like any other bar.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from marketdata.config import Settings
from marketdata.errors import UpstreamBadResponse
from marketdata.intervals import Interval
from marketdata.providers.binance import kline_candle
from marketdata.providers.streams import BarUpdate, Pair, StreamStatus, WebSocketStream, open_websocket

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

logger = logging.getLogger(__name__)

#: Binance's limit of streams on one connection.
MAX_STREAMS_PER_CONNECTION = 1024
#: Requests this client sends per second (Binance allows 5 incoming messages, pongs included).
CONTROL_MESSAGES_PER_SECOND = 3
#: Streams named in the connection URL; the rest are subscribed by requests (keeps the URL short).
URL_STREAMS = 100
#: Streams per SUBSCRIBE/UNSUBSCRIBE request.
STREAMS_PER_REQUEST = 200
# Binance's interval names back to the service's (the one mapping is Interval.binance).
_BY_BINANCE = {interval.binance: interval for interval in Interval}


def stream_name(symbol: str, interval: Interval) -> str:
    """Binance's name of a pair's kline stream: `btcusdt@kline_1h`."""
    return f"{symbol.lower()}@kline_{interval.binance}"


class BinanceKlineStream(WebSocketStream):
    """The LiveStream of crypto pairs (see marketdata.providers.streams for the interface)."""

    provider = "binance"

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(settings, clock=clock, rng=rng)
        self._subscribed: set[str] = set()  # stream names the open connection carries (or was asked for)
        self._refused: set[str] = set()  # stream names Binance refused: not asked again until unfollowed
        self._pending: dict[int, tuple[str, list[str]]] = {}  # request id -> (method, streams)
        self._next_id = 1
        self._sent: deque[float] = deque()  # monotonic send times of the last second's requests
        self._closed_sent: dict[Pair, int] = {}  # open time of the last closed bar emitted per pair
        self._over_limit_reported: frozenset[Pair] = frozenset()

    # --- connection ------------------------------------------------------------------------------

    def _max_connection_seconds(self) -> float | None:
        return self._settings.binance_ws_max_connection_seconds

    def _streams(self) -> dict[str, Pair]:
        """The streams to carry: every followed pair's, at most 1024 (reported once when cut)."""
        wanted = self._wanted()
        names = {stream_name(symbol, interval): (symbol, interval) for symbol, interval in wanted}
        if len(names) > MAX_STREAMS_PER_CONNECTION:
            if self._over_limit_reported != wanted:
                self._over_limit_reported = wanted
                self._emit(
                    StreamStatus(
                        "error",
                        f"Binance allows {MAX_STREAMS_PER_CONNECTION} streams per connection: following "
                        f"the first {MAX_STREAMS_PER_CONNECTION} of {len(names)}",
                    )
                )
            kept = sorted(names)[:MAX_STREAMS_PER_CONNECTION]
            names = {name: names[name] for name in kept}
        return names

    def _connect(self) -> ClientConnection:
        names = sorted(name for name in self._streams() if name not in self._refused)
        first = names[:URL_STREAMS]
        ws = open_websocket(
            f"{self._settings.binance_ws_url}/stream?streams={'/'.join(first)}", self._settings
        )
        self._subscribed = set(first)
        self._pending.clear()
        return ws

    def _sync(self, ws: ClientConnection) -> None:
        wanted = set(self._streams())
        self._refused &= wanted  # an unfollowed stream may be asked for again later
        add = sorted(wanted - self._subscribed - self._refused)
        remove = sorted(self._subscribed - wanted)
        for method, names in (("UNSUBSCRIBE", remove), ("SUBSCRIBE", add)):
            for i in range(0, len(names), STREAMS_PER_REQUEST):
                if not self._may_send():
                    return  # the rest at the next check
                batch = names[i : i + STREAMS_PER_REQUEST]
                request_id = self._next_id
                self._next_id += 1
                ws.send(json.dumps({"method": method, "params": batch, "id": request_id}))
                self._pending[request_id] = (method, batch)
                if method == "SUBSCRIBE":
                    self._subscribed.update(batch)
                else:
                    self._subscribed.difference_update(batch)
        followed = self._wanted()
        for pair in [p for p in self._closed_sent if p not in followed]:
            del self._closed_sent[pair]

    def _may_send(self) -> bool:
        now = time.monotonic()
        while self._sent and now - self._sent[0] >= 1.0:
            self._sent.popleft()
        if len(self._sent) >= CONTROL_MESSAGES_PER_SECOND:
            return False
        self._sent.append(now)
        return True

    def _on_disconnect(self) -> None:
        self._subscribed.clear()
        self._pending.clear()

    # --- messages --------------------------------------------------------------------------------

    def _on_message(self, ws: ClientConnection, message: str) -> None:
        try:
            body = json.loads(message)
        except ValueError:
            logger.warning("Binance stream: a message that is not JSON (%d bytes) ignored", len(message))
            return
        if not isinstance(body, dict):
            return
        if "id" in body and ("result" in body or "error" in body):
            self._on_reply(body)
            return
        data = body.get("data", body)
        if not isinstance(data, dict):
            return
        event = data.get("e")
        if event == "kline":
            self._on_kline(data)
        elif event == "serverShutdown":
            logger.info("Binance stream: server shutdown announced, rolling over")
            self._request_rollover()

    def _on_reply(self, body: dict[str, object]) -> None:
        request_id = body.get("id")
        method, names = self._pending.pop(request_id, ("", [])) if isinstance(request_id, int) else ("", [])
        error = body.get("error")
        if error is None:
            return
        detail = error.get("msg") if isinstance(error, dict) else error
        shown = ", ".join(names[:5]) + (" ..." if len(names) > 5 else "")
        if method == "SUBSCRIBE":
            self._refused.update(names)
            self._subscribed.difference_update(names)
        self._emit(StreamStatus("error", f"Binance refused {method or 'a request'} {shown}: {detail}"[:300]))

    def _on_kline(self, data: dict[str, object]) -> None:
        kline = data.get("k")
        if not isinstance(kline, dict):
            return
        symbol = data.get("s", kline.get("s"))
        interval = _BY_BINANCE.get(kline.get("i"))  # type: ignore[arg-type]
        if not isinstance(symbol, str) or interval is None:
            return
        pair = (symbol, interval)
        if pair not in self._wanted():
            return  # a stream unsubscribed a moment ago
        source = f"binance {symbol} {interval.value} stream"
        fields = [kline.get(name) for name in ("o", "h", "l", "c", "v")]
        try:
            candle = kline_candle(interval, kline.get("t"), fields, source=source, what="Binance kline event")
        except UpstreamBadResponse as exc:
            logger.warning("Binance stream: %s", exc)
            return
        if candle is None:
            return  # dropped by validation (logged), exactly as a REST bar would be
        last_closed = self._closed_sent.get(pair)
        if last_closed is not None and candle.time <= last_closed:
            return  # the closed bar again, or an update of a bar already final
        is_closed = kline.get("x") is True
        if is_closed:
            self._closed_sent[pair] = candle.time
        self._emit(BarUpdate(symbol, interval, candle, is_closed))
