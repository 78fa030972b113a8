"""The fake upstream's live streams: one WebSocket server speaking both providers' stream protocols.

- Binance combined kline streams at `/stream?streams=btcusdt@kline_1m/...`, live `SUBSCRIBE` /
  `UNSUBSCRIBE` requests with ids (answered `{"result": null, "id": n}`), events shaped exactly as
  Binance sends them: `{"stream": "btcusdt@kline_1m", "data": {"e": "kline", "E", "s", "k": {"t", "T",
  "s", "i", "f", "L", "o", "c", "h", "l", "v", "n", "x", "q", "V", "Q", "B"}}}`, values as strings.
  Binance's limits are enforced: more than 1024 streams, or more than 5 requests within a second,
  and the connection is closed (code 1008).
- Twelve Data's price stream at `/v1/quotes/price?apikey=KEY` (a key the FakeUpstream refuses gets
  HTTP 401 at the handshake): `subscribe` / `unsubscribe` answered with `subscribe-status` /
  `unsubscribe-status` (`success`, `fails`), `heartbeat` answered `{"event": "heartbeat", "status":
  "ok"}`, and `price` events (`symbol`, `timestamp` in Unix seconds, `price` a number).

Both stream the FakeUpstream's own model at its clock, so the streams and REST never disagree:

- Binance: every push sends each subscribed stream's forming bar, which is `FakeUpstream.open_bar`
  at the fake's clock (the same strings REST serves for it); once the clock has passed that bar's
  close, the next push first sends the bar closed (`x: true`), equal to what REST returns for its
  open time.
- Twelve Data: the ticks trace the model's hour bars, the primitive every coarser forex bar of the
  real model is built from: the open at the hour, the high at :15, the low at :30, the close at
  :45 (ticks in between stay within the prices already sent, and repeat the close after :45). So the
  ticks of a whole hour aggregate to exactly REST's 1h bar, and those of any span of whole hours to
  the service's 4H bar and to the real model's New York days, weeks and months. (Minute bars built
  from these ticks are not the fake's REST minute bars: the real model's minutes are their own.)
  A subscription first gets the current hour's ticks so far, then each tick as the fake's clock
  passes it (at most 48 hours of them when the clock jumps).

Faults: `drop_connections()` (every open connection loses its socket: the clients see a drop),
`refuse(symbol)` (Twelve Data lists it under `fails`; Binance answers its SUBSCRIBE with an error and
sends no data for it), `answer_pings = False` (pings are swallowed: the clients' keepalive must
notice), `announce_shutdown()` (Binance: a `serverShutdown` event on every open connection),
`paused = True` (no events pushed; requests still answered), `silent = True` (Twelve Data:
nothing sent at all, not even heartbeat replies), `bad_bars = n` (the next n kline events have high
< low). `reset()` clears them and the record of what was received.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import deque
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.frames import Opcode
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from devtools.fake_upstream import (
    _CURRENCY_NAMES,
    BINANCE_INTERVALS,
    BINANCE_SYMBOLS,
    SIMPLE_MODEL,
    TWELVE_DATA_SYMBOLS,
    FakeUpstream,
    Instrument,
    _current_label,
    _fmt,
    _kline_row,
    _uniform,
    _units,
)

#: The server's own log (it logs request lines, Twelve Data keys included, at DEBUG).
SERVER_LOGGER = "devtools.fake_streams"
BINANCE_PATH = "/stream"
TWELVE_DATA_PATH = "/v1/quotes/price"
#: Binance's limits per connection.
MAX_STREAMS = 1024
MAX_REQUESTS_PER_SECOND = 5
_HOUR = 3600
#: Twelve Data ticks of an hour: (offset in the hour, which price of the hour bar).
_KEY_TICKS = ((0, "open"), (900, "high"), (1800, "low"), (2700, "close"))
_MAX_CATCH_UP = 48 * _HOUR


class FakeStreams:
    """The WebSocket server of both fake streams, on `upstream`'s model and clock. Thread-safe."""

    def __init__(
        self, upstream: FakeUpstream, host: str = "127.0.0.1", port: int = 0, *, push_seconds: float = 0.05
    ) -> None:
        self.upstream = upstream
        self.push_seconds = push_seconds
        self._host, self._port = host, port
        self._server: Server | None = None
        self._lock = threading.Lock()
        self._connections: set[ServerConnection] = set()
        self.reset()

    # --- lifecycle ---

    def start(self) -> FakeStreams:
        self._server = serve(
            self._handle,
            self._host,
            self._port,
            process_request=self._check_request,
            ping_interval=None,  # the clients keep the connection alive; this side only answers
            logger=logging.getLogger(SERVER_LOGGER),  # apart from the clients' (the key tests read those)
        )
        threading.Thread(target=self._server.serve_forever, name="fake-streams", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    @property
    def url(self) -> str:
        """Base URL for both BINANCE_WS_URL and TWELVE_DATA_WS_URL."""
        if self._server is None:
            raise RuntimeError("FakeStreams is not started")
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    def reset(self) -> None:
        """Close every connection, clear the faults and the record of received messages."""
        self.drop_connections()
        with self._lock:
            self.refused: set[str] = set()
            self.answer_pings = True
            self.paused = False
            self.silent = False
            self.bad_bars = 0
            self.shutdown_notices = 0
            #: (path, parsed message) of every message the clients sent, in order.
            self.received: list[tuple[str, Any]] = []
            #: Paths of every connection accepted (query included), in order.
            self.connections: list[str] = []

    # --- faults and inspection ---

    def drop_connections(self) -> None:
        """Cut every open connection without a closing handshake (as a network failure would)."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):  # already gone
                connection.socket.shutdown(socket.SHUT_RDWR)

    def announce_shutdown(self) -> None:
        """Every open Binance connection gets a `serverShutdown` event at its next push (the
        connection stays open: a client is expected to move to a new one)."""
        with self._lock:
            self.shutdown_notices += 1

    def refuse(self, symbol: str) -> None:
        with self._lock:
            self.refused.add(symbol)

    def open_connections(self) -> int:
        with self._lock:
            return len(self._connections)

    def received_actions(self, path: str) -> list[Any]:
        with self._lock:
            return [message for p, message in self.received if p == path]

    # --- the server ---

    def _check_request(self, connection: ServerConnection, request: Request) -> Response | None:
        split = urlsplit(request.path)
        if split.path == TWELVE_DATA_PATH:
            key = dict(parse_qsl(split.query)).get("apikey", "")
            accepted = self.upstream.api_keys
            if not key or (accepted is not None and key not in accepted):
                return connection.respond(401, "**apikey** parameter is incorrect or not specified.\n")
            return None
        if split.path == BINANCE_PATH:
            return None
        return connection.respond(404, "Not found\n")

    def _handle(self, connection: ServerConnection) -> None:
        self._swallow_pings_when_asked(connection)
        assert connection.request is not None
        split = urlsplit(connection.request.path)
        with self._lock:
            self._connections.add(connection)
            self.connections.append(connection.request.path)
        try:
            if split.path == BINANCE_PATH:
                streams = dict(parse_qsl(split.query)).get("streams", "")
                _BinanceSession(self, connection, [s for s in streams.split("/") if s]).run()
            else:
                _TwelveDataSession(self, connection).run()
        except (ConnectionClosed, OSError):
            pass
        finally:
            with self._lock:
                self._connections.discard(connection)

    def _swallow_pings_when_asked(self, connection: ServerConnection) -> None:
        protocol = connection.protocol
        original = protocol.recv_frame

        def recv_frame(frame: Any) -> None:
            if frame.opcode is Opcode.PING and not self.answer_pings:
                return
            original(frame)

        protocol.recv_frame = recv_frame  # type: ignore[method-assign]

    def _record(self, path: str, message: Any) -> None:
        with self._lock:
            self.received.append((path, message))


class _Session:
    """One connection: answer what the client sends, push what is due between its messages."""

    fake: FakeStreams
    connection: ServerConnection

    def run(self) -> None:
        while True:
            try:
                message = self.connection.recv(timeout=self.fake.push_seconds)
            except TimeoutError:
                message = None
            if message is not None:
                self.on_request(message)
            if not self.fake.paused:
                self.push_all()

    def on_request(self, message: str | bytes) -> None:
        raise NotImplementedError

    def push_all(self) -> None:
        raise NotImplementedError


class _BinanceSession(_Session):
    def __init__(self, fake: FakeStreams, connection: ServerConnection, streams: list[str]) -> None:
        self.fake, self.connection = fake, connection
        self.streams: dict[str, tuple[Instrument, str] | None] = {}
        self.last_open: dict[str, int] = {}
        self.requests: deque[float] = deque()
        self.notices_seen = fake.shutdown_notices
        self.subscribe(streams)

    def subscribe(self, names: list[str]) -> list[str]:
        """Add streams; the refused ones are returned (and carry no data)."""
        refused = []
        for name in names:
            symbol, _, kind = name.partition("@kline_")
            inst = BINANCE_SYMBOLS.get(symbol.upper())
            if symbol.upper() in self.fake.refused:
                refused.append(name)
                continue
            # An unknown symbol or interval is accepted and stays silent, as a combined stream does.
            self.streams[name] = (inst, kind) if inst is not None and kind in BINANCE_INTERVALS else None
        if len(self.streams) > MAX_STREAMS:
            self.connection.close(1008, f"more than {MAX_STREAMS} streams")
        return refused

    def on_request(self, message: str | bytes) -> None:
        now = time.monotonic()
        self.requests.append(now)
        while now - self.requests[0] >= 1.0:
            self.requests.popleft()
        if len(self.requests) > MAX_REQUESTS_PER_SECOND:
            self.connection.close(1008, "Too many requests")
            return
        body = json.loads(message)
        self.fake._record(BINANCE_PATH, body)
        method, params, request_id = body.get("method"), body.get("params") or [], body.get("id")
        if method == "SUBSCRIBE":
            refused = self.subscribe(params)
            if refused:
                reply: dict[str, Any] = {
                    "error": {"code": 2, "msg": f"Invalid request: refused {', '.join(refused)}"},
                    "id": request_id,
                }
                self.connection.send(json.dumps(reply))
                return
        elif method == "UNSUBSCRIBE":
            for name in params:
                self.streams.pop(name, None)
                self.last_open.pop(name, None)
        elif method == "LIST_SUBSCRIPTIONS":
            self.connection.send(json.dumps({"result": sorted(self.streams), "id": request_id}))
            return
        self.connection.send(json.dumps({"result": None, "id": request_id}))

    def push_all(self) -> None:
        now = self.fake.upstream.now
        if self.notices_seen < self.fake.shutdown_notices:
            self.notices_seen = self.fake.shutdown_notices
            self.connection.send(json.dumps({"e": "serverShutdown", "E": int(now * 1000)}))
        for name, known in list(self.streams.items()):
            if known is None:
                continue
            inst, key = known
            current = _current_label(SIMPLE_MODEL, inst, key, int(now))
            last = self.last_open.get(name)
            if last is not None and last < current:
                closed = _units(SIMPLE_MODEL, inst, key, last, now)
                if closed is not None:
                    self.send(name, inst, key, closed, now)
            forming = _units(SIMPLE_MODEL, inst, key, current, now)
            if forming is not None:
                self.send(name, inst, key, forming, now)
            self.last_open[name] = current

    def send(self, name: str, inst: Instrument, key: str, bar: Any, now: float) -> None:
        # The REST row's strings, so stream and REST agree to the last digit.
        t, o, h, low, c, v, close_ms, q, n, taker_base, taker_quote, _ = _kline_row(inst, key, bar)
        if self.fake.bad_bars > 0:
            self.fake.bad_bars -= 1
            h, low = low, h
            if h == low:
                h = "0.00000001"
        first_trade = int(_uniform(inst.symbol, "trade-id", key, t)[0] * 10**9)
        kline = {
            "t": t,
            "T": close_ms,
            "s": inst.symbol,
            "i": key,
            "f": first_trade,
            "L": first_trade + n - 1,
            "o": o,
            "c": c,
            "h": h,
            "l": low,
            "v": v,
            "n": n,
            "x": bar.closed,
            "q": q,
            "V": taker_base,
            "Q": taker_quote,
            "B": "0",
        }
        event = {"e": "kline", "E": int(now * 1000), "s": inst.symbol, "k": kline}
        self.connection.send(json.dumps({"stream": name, "data": event}))


class _TwelveDataSession(_Session):
    def __init__(self, fake: FakeStreams, connection: ServerConnection) -> None:
        self.fake, self.connection = fake, connection
        self.last_sent: dict[str, int] = {}  # symbol -> fake instant of the newest tick sent
        self.hour_prices: dict[tuple[str, int], list[float]] = {}

    def push_all(self) -> None:
        for symbol in list(self.last_sent):
            self.push(symbol)

    def on_request(self, message: str | bytes) -> None:
        body = json.loads(message)
        self.fake._record(TWELVE_DATA_PATH, body)
        action = body.get("action")
        if action == "heartbeat":
            self.send(json.dumps({"event": "heartbeat", "status": "ok"}))
            return
        if action == "reset":
            self.last_sent.clear()
            self.send(json.dumps({"event": "reset-status", "status": "ok"}))
            return
        symbols = [s.strip() for s in (body.get("params") or {}).get("symbols", "").split(",") if s.strip()]
        if action == "subscribe":
            success, fails = [], []
            for symbol in symbols:
                if symbol in TWELVE_DATA_SYMBOLS and symbol not in self.fake.refused:
                    success.append(_td_symbol_entry(symbol))
                    # The current hour's ticks so far, then the rest as the clock gets to them.
                    now = int(self.fake.upstream.now)
                    self.last_sent.setdefault(symbol, now - now % _HOUR - 1)
                else:
                    fails.append({"symbol": symbol})
            status = {"event": "subscribe-status", "status": "error" if fails else "ok"}
            self.send(json.dumps({**status, "success": success, "fails": fails}))
        elif action == "unsubscribe":
            for symbol in symbols:
                self.last_sent.pop(symbol, None)
            reply = {"event": "unsubscribe-status", "status": "ok", "success": symbols, "fails": []}
            self.send(json.dumps(reply))

    def push(self, symbol: str) -> None:
        upstream = self.fake.upstream
        inst, now = TWELVE_DATA_SYMBOLS[symbol], int(upstream.now)
        last = max(self.last_sent[symbol], now - _MAX_CATCH_UP)
        if now <= last:
            return
        hour = (last + 1) - (last + 1) % _HOUR
        while hour <= now:
            bar = _units(upstream.forex_model, inst, "1h", hour, hour + _HOUR)  # the hour as it closes
            if bar is not None:
                for offset, field in _KEY_TICKS:
                    t = hour + offset
                    if last < t <= now:
                        price = _price(inst, getattr(bar, field))
                        self.tick(inst, t, price)
                        self.hour_prices.setdefault((symbol, hour), []).append(price)
                        last = t
                if hour <= now < hour + _HOUR and last < now:
                    # A tick between the key ones: within what the hour has shown, the close after :45.
                    sent = self.hour_prices.get((symbol, hour))
                    if sent:
                        if now - hour >= _KEY_TICKS[-1][0]:
                            price = sent[-1]
                        else:
                            low, high = min(sent), max(sent)
                            share = _uniform(symbol, "tick", now)[0]
                            price = round(low + (high - low) * share, inst.decimals)
                        self.tick(inst, now, price)
                        last = now
            hour += _HOUR
        self.last_sent[symbol] = max(last, now)
        for key in [k for k in self.hour_prices if k[0] == symbol and k[1] < now - 2 * _HOUR]:
            del self.hour_prices[key]

    def send(self, text: str) -> None:
        if not self.fake.silent:
            self.connection.send(text)

    def tick(self, inst: Instrument, t: int, price: float) -> None:
        event = {
            "event": "price",
            "symbol": inst.symbol,
            "currency_base": _CURRENCY_NAMES[inst.base_asset],
            "currency_quote": _CURRENCY_NAMES[inst.quote_asset],
            "exchange": "PHYSICAL CURRENCY",
            "type": "Physical Currency",
            "timestamp": t,
            "price": price,
            "bid": price,
            "ask": price,
        }
        self.send(json.dumps(event))


def _price(inst: Instrument, units: int) -> float:
    return float(_fmt(units, inst.decimals))


def _td_symbol_entry(symbol: str) -> dict[str, str]:
    return {
        "symbol": symbol,
        "exchange": "PHYSICAL CURRENCY",
        "mic_code": "",
        "country": "",
        "type": "Physical Currency",
    }
