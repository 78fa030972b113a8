"""Twelve Data's price stream: forex ticks aggregated into the forming bar of each followed interval.

Facts this module relies on (docs/providers.md, "Live streams"; what is marked unverified there is
handled either way):
- `<TWELVE_DATA_WS_URL>/v1/quotes/price?apikey=KEY`; requests `{"action": "subscribe" |
  "unsubscribe", "params": {"symbols": "EUR/USD,USD/JPY"}}` and `{"action": "heartbeat"}`, which
  Twelve Data wants every 10 seconds (TWELVE_DATA_WS_HEARTBEAT_SECONDS).
- A subscribe is answered by `{"event": "subscribe-status", "status": "ok" | "error", "success":
  [...], "fails": [...]}`, each entry an object with `symbol` (or, unverified, a bare string). A
  refused pair becomes `StreamStatus("error", ...)` naming it, and is not asked for again until it is
  followed anew.
- Ticks: `{"event": "price", "symbol", "timestamp", "price", ...}`; `timestamp` in Unix seconds (a
  value in milliseconds, unverified, is read as such), `price` a number or a numeric string. Forex
  has no volume: bars carry 0, as the REST client's do.

Bars are on the service's grid, as the REST client serves them: 1m..4H on the UTC clock
(`intervals.bar_open`); 1D the New York trading day dated D (17:00 to 17:00 New York), at D
00:00 UTC; 1W and 1M the days dated in the week (Monday to Sunday) and in the calendar month. A bar
closes when a tick arrives in a later bar, or when the clock is TWELVE_DATA_WS_CLOSE_GRACE_SECONDS
past its end without one (a tick of a closed bar that arrives later is dropped).

A closed bar is emitted (`is_closed=True`) only when the client saw it whole: it was subscribed
before the bar opened and stayed connected until it closed. A bar followed part way (the first one
after `follow`, one across a reconnect) is only ever emitted forming; its closed state comes from
REST (the cache). Whether ticks aggregate to exactly the bars Twelve Data's REST API serves is
unverified (their bars come from their own feed).

The key is in the URL, as Twelve Data asks. It never reaches a log line, a status or an exception
text: the `websockets` library logs through a logger that scrubs it, and every message built from an
exception is scrubbed too.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from marketdata.config import Settings
from marketdata.errors import MarketDataError, UpstreamBadResponse
from marketdata.intervals import Interval, bar_open, forex_day, forex_day_end, next_open
from marketdata.providers.base import upstream_number, validate_bar
from marketdata.providers.streams import (
    BarUpdate,
    Pair,
    StreamDead,
    StreamStatus,
    WebSocketStream,
    open_websocket,
)

if TYPE_CHECKING:
    from websockets.sync.client import ClientConnection

logger = logging.getLogger(__name__)

PRICE_PATH = "/v1/quotes/price"
#: Heartbeats that may pass without any message before the connection is taken as dead.
SILENT_HEARTBEATS = 3
# Timestamps above this are milliseconds (10**11 seconds is the year 5138).
_MILLISECONDS_FROM = 10**11


def forex_bar_open(interval: Interval, t: int) -> int:
    """Open time (label) of the service's forex bar containing the instant t."""
    if interval is Interval.D1:
        return forex_day(t)
    if interval in (Interval.W1, Interval.MO1):
        return bar_open(interval, forex_day(t))
    return bar_open(interval, t)


def forex_bar_start(interval: Interval, open_time: int) -> int:
    """The instant the forex bar labelled open_time begins (its first day begins at 17:00 New York
    the evening before its date)."""
    if interval in (Interval.D1, Interval.W1, Interval.MO1):
        return forex_day_end(open_time - 86400)
    return open_time


def forex_bar_end(interval: Interval, open_time: int) -> int:
    """The instant the forex bar labelled open_time ends (its days end at 17:00 New York)."""
    if interval is Interval.D1:
        return forex_day_end(open_time)
    if interval in (Interval.W1, Interval.MO1):
        last_day = next_open(interval, open_time) - 86400
        return forex_day_end(last_day)
    return next_open(interval, open_time)


@dataclass(slots=True)
class _Bar:
    open_time: int
    end: int
    open: float
    high: float
    low: float
    close: float
    whole: bool  # seen from its open, without a gap: may be emitted closed

    def add(self, price: float) -> None:
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.close = price


if TYPE_CHECKING:
    _Adapter = logging.LoggerAdapter[logging.Logger]
else:
    _Adapter = logging.LoggerAdapter


class _KeyScrubbingLogger(_Adapter):
    """The logger the `websockets` library gets: it logs the request line, which holds the key, at
    DEBUG. Every message (and traceback) is formatted here and passed on without the key."""

    def __init__(self, logger: logging.Logger, secret: Callable[[], str]) -> None:
        super().__init__(logger, {})
        self._secret = secret

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        if not self.isEnabledFor(level):
            return
        text = str(msg) % args if args else str(msg)
        exc_info = kwargs.pop("exc_info", None)
        if exc_info:
            if isinstance(exc_info, BaseException):
                exc_info = (type(exc_info), exc_info, exc_info.__traceback__)
            elif not isinstance(exc_info, tuple):
                exc_info = sys.exc_info()
            if exc_info[0] is not None:
                text += "\n" + "".join(traceback.format_exception(*exc_info)).rstrip()
        kwargs.pop("stack_info", None)
        self.logger.log(level, "%s", _scrub(text, self._secret()), **kwargs)


class TwelveDataPriceStream(WebSocketStream):
    """The LiveStream of forex pairs (see marketdata.providers.streams for the interface)."""

    provider = "twelve_data"

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] = time.time,
        rng: Callable[[], float] = random.random,
    ) -> None:
        super().__init__(settings, clock=clock, rng=rng)  # no maximum age: Twelve Data documents none
        self._key = ""
        self._ws_logger = _KeyScrubbingLogger(logging.getLogger(f"{__name__}.websocket"), lambda: self._key)
        self._asked: set[str] = set()  # symbols subscribed (or asked for) on the open connection
        self._since: dict[str, float] = {}  # symbol -> clock instant Twelve Data confirmed it
        self._followed_since: dict[Pair, float] = {}  # pair -> clock instant this client began to follow it
        self._refused: set[str] = set()
        self._bars: dict[Pair, _Bar] = {}
        self._closed_labels: dict[Pair, int] = {}  # the newest bar closed per pair: its ticks come too late
        self._last_heartbeat = 0.0
        self._last_message = 0.0

    # --- connection ------------------------------------------------------------------------------

    def _connect(self) -> ClientConnection:
        self._key = self._settings.require_twelve_data_api_key()
        url = f"{self._settings.twelve_data_ws_url}{PRICE_PATH}?apikey={quote(self._key, safe='')}"
        ws = open_websocket(url, self._settings, log=self._ws_logger)
        self._asked.clear()
        self._since.clear()
        self._last_heartbeat = self._last_message = time.monotonic()
        return ws

    def _symbols(self) -> set[str]:
        return {symbol for symbol, _ in self._wanted()}

    def _sync(self, ws: ClientConnection) -> None:
        wanted = self._symbols()
        self._refused &= wanted
        add = sorted(wanted - self._asked - self._refused)
        remove = sorted(self._asked - wanted)
        if remove:
            self._send(ws, "unsubscribe", remove)
            self._asked.difference_update(remove)
            for symbol in remove:
                self._since.pop(symbol, None)
        if add:
            self._send(ws, "subscribe", add)
            self._asked.update(add)
        followed = self._wanted()
        now = self._clock()
        for pair in followed:
            self._followed_since.setdefault(pair, now)
        for table in (self._bars, self._closed_labels, self._followed_since):
            for pair in [p for p in table if p not in followed]:
                del table[pair]

    def _send(self, ws: ClientConnection, action: str, symbols: Iterable[str]) -> None:
        ws.send(json.dumps({"action": action, "params": {"symbols": ",".join(symbols)}}))

    def _on_idle(self, ws: ClientConnection) -> None:
        now = time.monotonic()
        heartbeat = self._settings.twelve_data_ws_heartbeat_seconds
        if now - self._last_message > SILENT_HEARTBEATS * heartbeat:
            raise StreamDead(f"no message from Twelve Data for {now - self._last_message:.0f}s")
        if now - self._last_heartbeat >= heartbeat:
            ws.send(json.dumps({"action": "heartbeat"}))
            self._last_heartbeat = now
        self._close_by_clock()

    def _on_disconnect(self) -> None:
        self._asked.clear()
        self._since.clear()
        for bar in self._bars.values():
            bar.whole = False  # ticks may be missing from the gap

    def _describe_failure(self, exc: BaseException) -> StreamStatus:
        text = _scrub(str(exc) or type(exc).__name__, self._key)[:200]
        if isinstance(exc, MarketDataError):  # the key is missing or unreadable: say so, keep trying
            return StreamStatus("error", f"Twelve Data stream: {text}")
        status = getattr(getattr(exc, "response", None), "status_code", None)
        if status in (401, 403):
            return StreamStatus(
                "error",
                f"Twelve Data refused the stream connection (HTTP {status}): check the API key and that "
                "the plan includes WebSocket access",
            )
        return StreamStatus("reconnecting", f"Twelve Data stream: {text}")

    # --- messages --------------------------------------------------------------------------------

    def _on_message(self, ws: ClientConnection, message: str) -> None:
        self._last_message = time.monotonic()
        try:
            body = json.loads(message)
        except ValueError:
            logger.warning("Twelve Data stream: a message that is not JSON (%d bytes) ignored", len(message))
            return
        if not isinstance(body, dict):
            return
        event = body.get("event")
        if event == "price":
            self._on_price(body)
        elif event == "subscribe-status":
            self._on_subscribe_status(body)

    def _on_subscribe_status(self, body: dict[str, object]) -> None:
        now = self._clock()
        for symbol in _symbols_of(body.get("success")):
            if symbol in self._asked:
                self._since.setdefault(symbol, now)
        failed = sorted(_symbols_of(body.get("fails")))
        if not failed:
            if body.get("status") == "error":
                message = body.get("message")
                detail = _scrub(message, self._key)[:200] if isinstance(message, str) else "no detail"
                self._emit(StreamStatus("error", f"Twelve Data refused a subscription: {detail}"))
            return
        self._refused.update(failed)
        self._asked.difference_update(failed)
        self._emit(StreamStatus("error", f"Twelve Data refused {', '.join(failed)}"[:300]))

    def _on_price(self, body: dict[str, object]) -> None:
        symbol = body.get("symbol")
        if not isinstance(symbol, str):
            return
        intervals = [interval for s, interval in self._wanted() if s == symbol]
        if not intervals:
            return
        try:
            price = upstream_number(body.get("price"), provider=self.provider, what="Twelve Data price event")
            stamp = upstream_number(
                body.get("timestamp"), provider=self.provider, what="Twelve Data price event"
            )
        except UpstreamBadResponse as exc:
            logger.warning("Twelve Data stream: %s", exc)
            return
        if not (math.isfinite(price) and price > 0 and math.isfinite(stamp) and stamp >= 0):
            logger.warning(
                "Twelve Data stream: dropping tick of %s (price=%r timestamp=%r)", symbol, price, stamp
            )
            return
        t = int(stamp // 1000 if stamp >= _MILLISECONDS_FROM else stamp)
        for interval in intervals:
            self._tick((symbol, interval), t, price)

    def _tick(self, pair: Pair, t: int, price: float) -> None:
        interval = pair[1]
        label = forex_bar_open(interval, t)
        bar = self._bars.get(pair)
        if bar is not None and label < bar.open_time:
            logger.debug("Twelve Data stream: late tick for %s %s dropped", *pair)
            return
        if bar is not None and label > bar.open_time:
            self._finish(pair, bar)
            bar = None
        if bar is None:
            if pair in self._closed_labels and label <= self._closed_labels[pair]:
                logger.debug("Twelve Data stream: tick for closed bar of %s %s dropped", *pair)
                return
            # Whole only if every tick of it reached this pair: the symbol was subscribed and the pair
            # followed before the bar began (a bar that began earlier missed some).
            subscribed, followed = self._since.get(pair[0]), self._followed_since.get(pair)
            start = forex_bar_start(interval, label)
            whole = subscribed is not None and followed is not None and max(subscribed, followed) <= start
            bar = _Bar(label, forex_bar_end(interval, label), price, price, price, price, whole)
            self._bars[pair] = bar
        else:
            bar.add(price)
        self._publish(pair, bar, is_closed=False)

    def _close_by_clock(self) -> None:
        now = self._clock()
        grace = self._settings.twelve_data_ws_close_grace_seconds
        for pair, bar in list(self._bars.items()):
            if now >= bar.end + grace:
                self._finish(pair, bar)

    def _finish(self, pair: Pair, bar: _Bar) -> None:
        del self._bars[pair]
        self._closed_labels[pair] = bar.open_time
        if bar.whole:
            self._publish(pair, bar, is_closed=True)

    def _publish(self, pair: Pair, bar: _Bar, *, is_closed: bool) -> None:
        symbol, interval = pair
        candle = validate_bar(
            interval,
            bar.open_time,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            0.0,
            source=f"twelve_data {symbol} {interval.value} stream",
        )
        if candle is not None:
            self._emit(BarUpdate(symbol, interval, candle, is_closed))


def _symbols_of(entries: object) -> set[str]:
    """The symbols of a subscribe-status list: objects with `symbol`, or bare strings."""
    found: set[str] = set()
    if isinstance(entries, list):
        for entry in entries:
            symbol = entry.get("symbol") if isinstance(entry, dict) else entry
            if isinstance(symbol, str):
                found.add(symbol)
    return found


def _scrub(text: str, secret: str) -> str:
    """`text` without the key, raw or URL-encoded."""
    if secret:
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text
