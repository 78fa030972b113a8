"""A local fake of the two upstream market-data APIs, faithful enough to test the provider clients.

One HTTP server (stdlib only) answers both providers on one port, so `.url` serves as both
BINANCE_REST_URL and TWELVE_DATA_REST_URL:

- Binance spot: GET /api/v3/klines, GET /api/v3/exchangeInfo
- Twelve Data:  GET /time_series, GET /forex_pairs

The bars are a pure function of (symbol, interval, open time) and of the fake's clock, so a test
computes the truth with `expected_bars(...)` / `FakeUpstream.expected_bars(...)` and compares.
The time arithmetic here (weeks from Monday 00:00 UTC, calendar months, forex weekends) is written
independently of `marketdata.intervals` on purpose: the fake is a second opinion, not a mirror.

What it reproduces (see /work/shared/PROVIDERS.md for the real APIs):
- Binance paging: startTime only -> the oldest bars with openTime >= startTime (a startTime inside a
  bar skips that bar); endTime only -> the newest bars with openTime <= endTime; both -> the oldest
  within; limit default 500, max 1000; 12-field rows of strings; closeTime = next open - 1 ms.
  X-MBX-USED-WEIGHT-1M (2 per klines call, 20 per exchangeInfo) per minute of the fake clock, with
  429 past the limit. Errors -1100/-1102/-1104/-1120/-1121/-1128/-1130 with HTTP 400.
- Twelve Data: default order desc, default timezone = the exchange's (America/New_York here, so a
  client that forgets timezone=UTC gets shifted times), date-only datetimes for 1day/1week/1month,
  outputsize 1..5000 (default 30 without dates, 5000 with) that always keeps the NEWEST rows of the
  range, end_date inclusive except a date-only end_date for 1day/1week/1month (exclusive),
  forex weekends without bars, 404 "no data" for an empty range, errors with HTTP 200 (switchable).
- Every bar exists from the symbol's listing time up to now (the fake's clock), except inside forex
  weekends and one real-world-style BTCUSDT outage (2018-02-08 08:00 to 2018-02-09 10:00 UTC); the
  bar containing now is open and its values change with now.

Fault injection (`fail_next`), a request log (`requests`, `count`), a settable clock (`now`) and
`reset()` make it usable per test. Standalone: `python tests/support/fake_upstream.py --port 8081`.
"""

from __future__ import annotations

import argparse
import calendar
import hashlib
import json
import re
import socket
import struct
import sys
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qsl, urlsplit

try:  # the system tz database; a fixed UTC-5 stands in when it is missing (still "not UTC")
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    EXCHANGE_TZ: tzinfo = ZoneInfo("America/New_York")
except Exception:  # pragma: no cover - depends on the machine
    ZoneInfo = None  # type: ignore[assignment,misc]
    ZoneInfoNotFoundError = KeyError  # type: ignore[assignment,misc]
    EXCHANGE_TZ = timezone(timedelta(hours=-5), "America/New_York")

EXCHANGE_TZ_NAME = "America/New_York"

# --- time arithmetic (independent of marketdata.intervals) ---------------------------------------

_MIN, _HOUR, _DAY = 60, 3600, 86400
_WEEK = 7 * _DAY
_MONDAY_1970 = 4 * _DAY  # 1970-01-05 00:00 UTC, the first Monday after the epoch
MONTH = "1M"

#: Canonical interval keys (Binance spelling, plus 45m which only Twelve Data has) -> fixed width.
_WIDTHS: dict[str, int] = {
    "1s": 1,
    "1m": _MIN,
    "3m": 3 * _MIN,
    "5m": 5 * _MIN,
    "15m": 15 * _MIN,
    "30m": 30 * _MIN,
    "45m": 45 * _MIN,
    "1h": _HOUR,
    "2h": 2 * _HOUR,
    "4h": 4 * _HOUR,
    "6h": 6 * _HOUR,
    "8h": 8 * _HOUR,
    "12h": 12 * _HOUR,
    "1d": _DAY,
    "3d": 3 * _DAY,
    "1w": _WEEK,
}
BINANCE_INTERVALS = (
    "1s",
    "1m",
    "3m",
    "5m",
    "15m",
    "30m",
    "1h",
    "2h",
    "4h",
    "6h",
    "8h",
    "12h",
    "1d",
    "3d",
    "1w",
    "1M",
)
TWELVE_DATA_INTERVALS: dict[str, str] = {
    "1min": "1m",
    "5min": "5m",
    "15min": "15m",
    "30min": "30m",
    "45min": "45m",
    "1h": "1h",
    "2h": "2h",
    "4h": "4h",
    "8h": "8h",
    "1day": "1d",
    "1week": "1w",
    "1month": MONTH,
}
_APP_INTERVALS = {
    "1m": "1m",
    "5m": "5m",
    "15m": "15m",
    "30m": "30m",
    "1H": "1h",
    "4H": "4h",
    "1D": "1d",
    "1W": "1w",
    "1M": MONTH,
}
_DATE_ONLY_KEYS = frozenset({"1d", "1w", MONTH})


def canonical_interval(interval: object) -> str:
    """The canonical key for an app ('1H'), Binance ('1h') or Twelve Data ('1hour' no, '1h', '1day') name.

    Accepts marketdata.intervals.Interval members too (they are str enums).
    """
    name = getattr(interval, "value", interval)
    if not isinstance(name, str):
        raise ValueError(f"not an interval: {interval!r}")
    if name in _APP_INTERVALS:
        return _APP_INTERVALS[name]
    if name in TWELVE_DATA_INTERVALS:
        return TWELVE_DATA_INTERVALS[name]
    if name in _WIDTHS or name == MONTH:
        return name
    raise ValueError(f"unknown interval {name!r}")


def _month_index(t: int) -> int:
    tm = time.gmtime(t)
    return (tm.tm_year - 1970) * 12 + tm.tm_mon - 1


def _month_start(index: int) -> int:
    year, month0 = divmod(index, 12)
    return calendar.timegm((1970 + year, month0 + 1, 1, 0, 0, 0))


def bar_open(key: str, t: int) -> int:
    """Open time of the bar (canonical interval key) that contains the instant t."""
    t = int(t)
    if key == MONTH:
        return _month_start(_month_index(t))
    width = _WIDTHS[key]
    if key == "1w":
        return t - (t - _MONDAY_1970) % width
    return t - t % width


def next_open(key: str, open_time: int) -> int:
    if key == MONTH:
        return _month_start(_month_index(open_time) + 1)
    return bar_open(key, open_time) + _WIDTHS[key]


def prev_open(key: str, open_time: int) -> int:
    if key == MONTH:
        return _month_start(_month_index(open_time) - 1)
    return bar_open(key, open_time) - _WIDTHS[key]


def _first_open_at_or_after(key: str, t: int) -> int:
    b = bar_open(key, t)
    return b if b == t else next_open(key, b)


# --- the instruments -----------------------------------------------------------------------------

# Forex is closed from Friday 22:00 UTC to Sunday 22:00 UTC, in seconds since Monday 00:00 UTC.
FOREX_CLOSE_IN_WEEK = 4 * _DAY + 22 * _HOUR
FOREX_OPEN_IN_WEEK = 6 * _DAY + 22 * _HOUR


@dataclass(frozen=True, slots=True)
class Instrument:
    """A symbol the fake knows. Prices are integers in units of 10**-decimals."""

    symbol: str
    provider: str  # "binance" | "twelve_data"
    listed: int  # listing instant (Unix seconds): the first bar is the one containing it
    base_price: int  # in units
    tick: int  # price step in units
    decimals: int  # decimals in the wire format (Binance 8, Twelve Data 5)
    status: str = "TRADING"  # Binance exchangeInfo status
    base_asset: str = ""
    quote_asset: str = ""
    group: str = "Major"  # Twelve Data currency_group
    #: [from, to) instants without trading (exchange maintenance): bars entirely inside do not exist.
    outages: tuple[tuple[int, int], ...] = ()

    @property
    def is_forex(self) -> bool:
        return self.provider == "twelve_data"


def _ts(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%d"))


#: The BTCUSDT outage: no bar lies entirely inside [from, to).
_BTC_HOLE_FROM = calendar.timegm((2018, 2, 8, 8, 0, 0))
_BTC_HOLE_TO = calendar.timegm((2018, 2, 9, 10, 0, 0))


def _crypto(
    symbol: str,
    base: str,
    quote: str,
    listed: str,
    price: str,
    tick: str,
    status: str = "TRADING",
    outages: tuple[tuple[int, int], ...] = (),
) -> Instrument:
    def units(s: str) -> int:
        whole, _, frac = s.partition(".")
        return int(whole) * 10**8 + int((frac + "0" * 8)[:8])

    return Instrument(
        symbol, "binance", _ts(listed), units(price), units(tick), 8, status, base, quote, outages=outages
    )


#: Binance symbols, with varied status and quote assets (the client filters TRADING + its quote set).
BINANCE_SYMBOLS: dict[str, Instrument] = {
    i.symbol: i
    for i in (
        # Binance's 2018-02-08 maintenance left a real hole in the klines; the fake keeps one there.
        _crypto(
            "BTCUSDT", "BTC", "USDT", "2017-08-17", "30000", "0.01", outages=((_BTC_HOLE_FROM, _BTC_HOLE_TO),)
        ),
        _crypto("ETHUSDT", "ETH", "USDT", "2017-08-17", "2000", "0.01"),
        _crypto("BNBUSDT", "BNB", "USDT", "2017-11-06", "300", "0.01"),
        _crypto("SOLUSDT", "SOL", "USDT", "2020-08-11", "100", "0.01"),
        _crypto("DOGEUSDT", "DOGE", "USDT", "2019-07-05", "0.1", "0.00001"),
        _crypto("ETHBTC", "ETH", "BTC", "2017-07-14", "0.05", "0.00001"),
        _crypto("BNBBTC", "BNB", "BTC", "2017-07-14", "0.005", "0.0000001"),
        _crypto("BNBBUSD", "BNB", "BUSD", "2019-09-18", "300", "0.1"),
        _crypto("BTCBUSD", "BTC", "BUSD", "2019-09-18", "30000", "0.01", status="BREAK"),
        _crypto("BTCEUR", "BTC", "EUR", "2020-01-03", "28000", "0.01"),
        _crypto("LUNAUSDT", "LUNA", "USDT", "2020-08-21", "1", "0.001", status="HALT"),
        _crypto("XRPBTC", "XRP", "BTC", "2018-05-04", "0.00001", "0.00000001", status="END_OF_DAY"),
        # Binance lists symbols with non-ASCII names (a real one); klines serve them like any other.
        _crypto(
            "\u5e01\u5b89\u4eba\u751fUSDT", "\u5e01\u5b89\u4eba\u751f", "USDT", "2025-10-08", "0.2", "0.0001"
        ),
    )
}

_CURRENCY_NAMES = {
    "EUR": "Euro",
    "USD": "US Dollar",
    "GBP": "British Pound",
    "JPY": "Japanese Yen",
    "CHF": "Swiss Franc",
    "AUD": "Australian Dollar",
    "NZD": "New Zealand Dollar",
    "CAD": "Canadian Dollar",
    "TRY": "Turkish Lira",
    "ZAR": "South African Rand",
}

#: The 25 pairs of issue 2, then two exotics that /forex_pairs also lists (the client must not add them).
FOREX_PAIRS = (
    "EUR/USD",
    "GBP/USD",
    "USD/JPY",
    "USD/CHF",
    "AUD/USD",
    "NZD/USD",
    "USD/CAD",
    "EUR/GBP",
    "EUR/JPY",
    "GBP/JPY",
    "AUD/JPY",
    "EUR/AUD",
    "GBP/AUD",
    "EUR/CAD",
    "GBP/CAD",
    "AUD/NZD",
    "EUR/NZD",
    "CHF/JPY",
    "CAD/JPY",
    "NZD/JPY",
    "EUR/CHF",
    "GBP/CHF",
    "AUD/CAD",
    "NZD/CAD",
    "GBP/NZD",
)
_EXOTIC_PAIRS = ("USD/TRY", "USD/ZAR")
_RATES = {
    "USD": 1.0,
    "EUR": 1.1,
    "GBP": 1.27,
    "JPY": 1 / 150,
    "CHF": 1.12,
    "AUD": 0.66,
    "NZD": 0.61,
    "CAD": 0.74,
    "TRY": 1 / 32,
    "ZAR": 1 / 18.5,
}


def _forex(pair: str, group: str) -> Instrument:
    base, quote = pair.split("/")
    price = _RATES[base] / _RATES[quote]
    tick = 100 if quote == "JPY" else 1  # 0.001 for yen crosses, 0.00001 otherwise
    listed = _ts("2005-01-03") if group == "Major" else _ts("2010-01-04")
    return Instrument(
        pair,
        "twelve_data",
        listed,
        int(price * 10**5) // tick * tick,
        tick,
        5,
        base_asset=base,
        quote_asset=quote,
        group=group,
    )


_MAJORS = {"EUR/USD", "GBP/USD", "USD/JPY", "USD/CHF", "AUD/USD", "NZD/USD", "USD/CAD"}
TWELVE_DATA_SYMBOLS: dict[str, Instrument] = {
    p: _forex(p, "Major" if p in _MAJORS else "Minor") for p in FOREX_PAIRS
} | {p: _forex(p, "Exotic") for p in _EXOTIC_PAIRS}


def instrument(symbol: str) -> Instrument:
    """The instrument named `symbol` (a Binance or a Twelve Data symbol), or KeyError."""
    found = BINANCE_SYMBOLS.get(symbol) or TWELVE_DATA_SYMBOLS.get(symbol)
    if found is None:
        raise KeyError(symbol)
    return found


# --- the bars ------------------------------------------------------------------------------------


class FakeBar(NamedTuple):
    """A bar as a client should parse it: same field order as marketdata.schemas.Candle."""

    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float  # 0.0 for forex (Twelve Data sends no volume key)


@dataclass(frozen=True, slots=True)
class _Units:
    """One bar in integer units (exact; the wire strings and the truth both derive from these)."""

    time: int
    open: int
    high: int
    low: int
    close: int
    volume: int  # crypto: units of 1e-8; forex: 0
    trades: int
    taker_base: int
    closed: bool


def _fmt(units: int, decimals: int) -> str:
    sign = "-" if units < 0 else ""
    units = abs(units)
    return f"{sign}{units // 10**decimals}.{units % 10**decimals:0{decimals}d}"


def _uniform(*parts: object) -> list[float]:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=32).digest()
    return [int.from_bytes(digest[i : i + 4], "big") / 2**32 for i in range(0, 32, 4)]


def bar_exists(inst: Instrument, key: str, open_time: int) -> bool:
    """Whether the bar opening at open_time exists upstream (ignoring 'now'): after listing, not inside
    an outage, and for forex not inside the weekend (intraday: the bar overlaps trading hours; daily:
    Monday-Friday)."""
    if next_open(key, open_time) <= inst.listed:
        return False
    for hole_from, hole_to in inst.outages:
        if hole_from <= open_time and next_open(key, open_time) <= hole_to:
            return False
    if not inst.is_forex or key in ("1w", MONTH):
        return True
    if key in ("1d", "3d"):
        return time.gmtime(open_time).tm_wday < 5
    in_week = (open_time - _MONDAY_1970) % _WEEK
    return not (in_week >= FOREX_CLOSE_IN_WEEK and in_week + _WIDTHS[key] <= FOREX_OPEN_IN_WEEK)


def _bar_units(inst: Instrument, key: str, open_time: int, now: float) -> _Units:
    u = _uniform(inst.symbol, key, open_time)
    base, tick = inst.base_price, inst.tick

    def price(x: float, spread: float) -> int:
        return max(tick, int(base * (1 - spread + 2 * spread * x)) // tick * tick)

    def wick(x: float) -> int:
        return int(base * 0.02 * x) // tick * tick

    open_, close = price(u[0], 0.2), price(u[1], 0.2)
    high_x, low_x = u[2], u[3]
    volume = 10**8 + int(u[4] * 1000 * 10**8) if not inst.is_forex else 0
    trades = 1 + int(u[5] * 5000)
    taker_x = u[6]
    closes_at = next_open(key, open_time)
    closed = closes_at <= now
    if not closed:
        # The open bar: same open, but close/high/low/volume depend on the instant it is looked at.
        v = _uniform(inst.symbol, key, open_time, int(now))
        close, high_x, low_x, taker_x = price(v[1], 0.2), v[2], v[3], v[6]
        share = min(1.0, max(0.001, (now - open_time) / (closes_at - open_time)))
        volume = max(1, int(volume * share)) if volume else 0
        trades = max(1, int(trades * share))
    high = max(open_, close) + wick(high_x)
    low = max(tick, min(open_, close) - wick(low_x))
    return _Units(open_time, open_, high, low, close, volume, trades, int(volume * taker_x), closed)


def _as_bar(inst: Instrument, b: _Units) -> FakeBar:
    d = inst.decimals
    # float(the wire string) is exactly what a client computes from the payload.
    return FakeBar(
        b.time,
        float(_fmt(b.open, d)),
        float(_fmt(b.high, d)),
        float(_fmt(b.low, d)),
        float(_fmt(b.close, d)),
        float(_fmt(b.volume, 8)) if b.volume else 0.0,
    )


def _listed_first_open(inst: Instrument, key: str) -> int:
    return bar_open(key, inst.listed)


def _opens_forward(inst: Instrument, key: str, lo: int, hi: int, now: float, limit: int) -> list[int]:
    """Open times of existing bars with lo <= open <= hi (and open <= now), oldest first, at most limit."""
    out: list[int] = []
    t = _first_open_at_or_after(key, max(lo, _listed_first_open(inst, key)))
    stop = min(hi, int(now))
    while t <= stop and len(out) < limit:
        if bar_exists(inst, key, t):
            out.append(t)
        t = next_open(key, t)
    return out


def _opens_backward(inst: Instrument, key: str, lo: int, hi: int, now: float, limit: int) -> list[int]:
    """The newest `limit` existing bars with lo <= open <= hi (and open <= now), returned oldest first."""
    out: list[int] = []
    if hi < lo:
        return out
    t = bar_open(key, min(hi, int(now)))
    floor = max(lo, _listed_first_open(inst, key))
    while t >= floor and len(out) < limit:
        if bar_exists(inst, key, t):
            out.append(t)
        t = prev_open(key, t)
    out.reverse()
    return out


def expected_bars(
    symbol: str,
    interval: object,
    start: int,
    end: int,
    *,
    now: float | None = None,
    include_open: bool = False,
) -> list[FakeBar]:
    """The truth: bars of `symbol` with open time in [start, end] (inclusive, Unix seconds), ascending.

    Only bars closed at `now` (default: real time) unless include_open, which appends the bar that
    contains now when it is in range. `interval` may be an app, Binance or Twelve Data name.
    """
    inst, key = instrument(symbol), canonical_interval(interval)
    now = time.time() if now is None else now
    opens = _opens_forward(inst, key, int(start), int(end), now, sys.maxsize)
    bars = [_bar_units(inst, key, t, now) for t in opens]
    return [_as_bar(inst, b) for b in bars if b.closed or include_open]


# --- requests, responses and faults --------------------------------------------------------------


class RecordedRequest(tuple):
    """(path, query) of one request the fake received; `.headers` holds its headers (lower-case keys)."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]

    def __new__(cls, path: str, query: dict[str, str], headers: dict[str, str]) -> RecordedRequest:
        obj = super().__new__(cls, (path, query))
        obj.headers = headers  # type: ignore[misc]
        return obj

    path = property(lambda self: self[0])  # type: ignore[assignment]
    query = property(lambda self: self[1])  # type: ignore[assignment]


@dataclass(slots=True)
class _Response:
    status: int
    payload: Any = None  # JSON-serialisable, or bytes sent as-is
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] | None = None


FAULT_KINDS = frozenset(
    {
        "timeout",
        "reset",
        "malformed",
        "html",
        "truncated",
        "truncated_transport",
        "error_body",
        "wrong_shape",
        "bad_bar",
        "duplicate",
        "td_credits",
    }
)


@dataclass(slots=True)
class _Fault:
    kind: str
    remaining: int
    path_prefix: str | None
    retry_after: float | None
    status: int | None
    code: int | None
    delay: float | None


_BINANCE_PATHS = ("/api/",)
_TD_401 = (
    "**apikey** parameter is incorrect or not specified. You can get your free API Key instantly "
    "following this link: https://twelvedata.com/apikey. If you believe that everything is correct, "
    "you can email us at apikey@twelvedata.com"
)
TD_NO_DATA_MESSAGE = "No data is available on the specified dates. Try setting different start/end dates."
_TD_CREDITS = (
    "You have run out of API credits for the current minute. {used} API credits were used, with the "
    "current limit being {limit}. Wait for the next minute or consider switching to a higher tier "
    "plan at https://twelvedata.com/pricing"
)
_BINANCE_418 = (
    "Way too much request weight used; IP banned until {until}. Please use the websocket for live "
    "updates to avoid bans."
)
_BINANCE_429 = (
    "Too many requests; current limit of IP(127.0.0.1) request weight per minute is {limit}. Please "
    "use WebSocket Streams for live updates to avoid polling the API."
)
_HTML_PAGE = (
    b"<!DOCTYPE html><html><head><title>{status} Error</title></head><body><h1>{status} Error</h1>"
    b"<p>The server encountered a temporary error and could not complete your request.</p>"
    b"<hr><address>cloudfront</address></body></html>"
)
# The documented pattern is ^[A-Z0-9-_.]{1,20}$, yet Binance lists symbols with non-ASCII letters:
# those pass, lower-case ASCII and punctuation do not (-1100).
_SYMBOL_RE = re.compile(r"^(?:[A-Z0-9\-_.]|(?![\x00-\x7f])\w){1,20}$")
_DIGITS_RE = re.compile(r"^[0-9]{1,20}$")
_KLINES_PARAMS = frozenset({"symbol", "interval", "startTime", "endTime", "limit", "timeZone"})


def _binance_error(code: int, msg: str, status: int = 400) -> _Response:
    return _Response(status, {"code": code, "msg": msg})


class FakeUpstream:
    """The fake Binance + Twelve Data server. Thread-safe; start() binds a loopback port.

    Per-test state (cleared by reset()): the request log, queued faults, the clock, Binance weight,
    Twelve Data credits, `twelve_data_real_status`, `twelve_data_credits_per_minute`, `api_keys`.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, api_keys: Iterable[str] | None = None
    ) -> None:
        self._host, self._port = host, port
        self._default_api_keys = frozenset(api_keys) if api_keys is not None else None
        self._lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.reset()

    # --- lifecycle ---

    def start(self) -> FakeUpstream:
        server = ThreadingHTTPServer((self._host, self._port), _Handler)
        server.daemon_threads = True
        server.fake = self  # type: ignore[attr-defined]
        server.handle_error = _quiet_handle_error  # type: ignore[method-assign]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="fake-upstream", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> FakeUpstream:
        return self.start() if self._server is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL for both BINANCE_REST_URL and TWELVE_DATA_REST_URL (no trailing slash)."""
        if self._server is None:
            raise RuntimeError("FakeUpstream is not started")
        host, port = self._server.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        return f"http://{host}:{port}"

    def reset(self) -> None:
        """Forget requests and faults, go back to real time, zero the weight and credit counters."""
        with self._lock:
            self._requests: list[RecordedRequest] = []
            self._faults: list[_Fault] = []
            self._now: float | None = None
            self._weight_minute = -1
            self._weight_used = 0
            self._credit_minute = -1
            self._credits_used = 0
            #: Send Twelve Data errors with their real HTTP status instead of 200 (the API's default).
            self.twelve_data_real_status = False
            #: Emulate the free tier (8): past this many /time_series calls per fake minute, a 429 body.
            self.twelve_data_credits_per_minute: int | None = None
            #: Valid Twelve Data keys; None accepts any non-empty key.
            self.api_keys: frozenset[str] | None = self._default_api_keys
            #: Binance weight per minute before 429.
            self.binance_weight_limit = 6000
            #: Seconds a "timeout" fault waits before answering (above the test clients' 1 s read timeout).
            self.timeout_seconds = 2.5

    # --- the clock ---

    @property
    def now(self) -> float:
        """The fake's current instant (Unix seconds): real time unless set."""
        with self._lock:
            return time.time() if self._now is None else self._now

    @now.setter
    def now(self, value: float | None) -> None:
        with self._lock:
            self._now = None if value is None else float(value)

    def advance(self, seconds: float) -> None:
        """Move a frozen clock forward (freezes it at real time first if it was running)."""
        with self._lock:
            self._now = self.now + seconds

    def clock(self) -> float:
        """Same as `now`, as a callable to pass to the clients' `clock=`."""
        return self.now

    # --- the truth ---

    def expected_bars(
        self, symbol: str, interval: object, start: int, end: int, *, include_open: bool = False
    ) -> list[FakeBar]:
        """Closed bars in [start, end] as of the fake's clock (see module-level expected_bars)."""
        return expected_bars(symbol, interval, start, end, now=self.now, include_open=include_open)

    def expected_candles(
        self, symbol: str, interval: object, start: int, end: int, *, include_open: bool = False
    ) -> list[Any]:
        """expected_bars as marketdata.schemas.Candle objects (imported lazily: standalone use needs none)."""
        from marketdata.schemas import Candle

        return [
            Candle(*b) for b in self.expected_bars(symbol, interval, start, end, include_open=include_open)
        ]

    def open_bar(self, symbol: str, interval: object) -> FakeBar | None:
        """The still-open bar at the fake's clock (None when the bar containing now does not exist)."""
        inst, key, now = instrument(symbol), canonical_interval(interval), self.now
        t = bar_open(key, int(now))
        if not bar_exists(inst, key, t):
            return None
        return _as_bar(inst, _bar_units(inst, key, t, now))

    def last_closed_open(self, symbol: str, interval: object) -> int | None:
        """Open time of the newest closed, existing bar at the fake's clock."""
        inst, key, now = instrument(symbol), canonical_interval(interval), self.now
        opens = _opens_backward(inst, key, 0, int(now), now, 2)
        closed = [t for t in opens if next_open(key, t) <= now]
        return closed[-1] if closed else None

    # --- the request log ---

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since the last reset, in order (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    def count(self, path: str | None = None) -> int:
        """Requests received for exactly `path` (all paths when None)."""
        with self._lock:
            return sum(1 for r in self._requests if path is None or r.path == path)

    @property
    def binance_used_weight(self) -> int:
        with self._lock:
            self._roll_weight_minute()
            return self._weight_used

    @binance_used_weight.setter
    def binance_used_weight(self, value: int) -> None:
        """Pretend other traffic already used this much weight in the current fake minute."""
        with self._lock:
            self._roll_weight_minute()
            self._weight_used = int(value)

    # --- fault injection ---

    def fail_next(
        self,
        n: int = 1,
        kind: str | int = 500,
        path_prefix: str | None = None,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        code: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Make the next `n` requests whose path starts with path_prefix (any path when None) fail.

        kind: an HTTP status (429, 418, 403, 500, 502, 503, 504, ...: a provider-shaped error body;
        502-504 as an HTML gateway page; 429/418 carry Retry-After = retry_after, default 1 s / 120 s),
        or one of
          "timeout"   sleep `delay` (default timeout_seconds) before answering normally
          "reset"     reset the TCP connection without answering
          "malformed" HTTP 200, JSON content type, invalid JSON
          "html"      an HTML page with text/html (status default 200)
          "truncated" HTTP 200 with a correct Content-Length but the JSON cut in half
          "truncated_transport" Content-Length of the full body, half of it sent, connection closed
          "error_body" a provider error body (`code`, default 500 for Twelve Data, -1001 for Binance)
                      with HTTP `status` (default 200: Twelve Data's habit)
          "wrong_shape" valid JSON of the wrong shape
          "bad_bar"   the normal answer with the first bar made inconsistent (high < low)
          "duplicate" the normal answer with the first bar repeated after itself, with another close
          "td_credits" Twelve Data's out-of-minute-credits 429 body (HTTP 200 unless twelve_data_real_status)
        """
        kind = str(kind)
        if not (kind.isdigit() or kind in FAULT_KINDS):
            raise ValueError(f"unknown fault kind {kind!r}")
        with self._lock:
            self._faults.append(_Fault(kind, n, path_prefix, retry_after, status, code, delay))

    def pending_faults(self) -> int:
        """How many injected failures have not been served yet."""
        with self._lock:
            return sum(f.remaining for f in self._faults)

    def _take_fault(self, path: str) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.remaining > 0 and (fault.path_prefix is None or path.startswith(fault.path_prefix)):
                    fault.remaining -= 1
                    return fault
            return None

    # --- request handling ---

    def _record(self, path: str, query: dict[str, str], headers: dict[str, str]) -> None:
        with self._lock:
            self._requests.append(RecordedRequest(path, query, headers))

    def _roll_weight_minute(self) -> None:
        minute = int(self.now // 60)
        if minute != self._weight_minute:
            self._weight_minute, self._weight_used = minute, 0

    def _spend_weight(self, weight: int) -> tuple[bool, int]:
        """Add weight; (allowed, used). Past the limit the request is refused with 429, as Binance does."""
        with self._lock:
            self._roll_weight_minute()
            self._weight_used += weight
            return self._weight_used <= self.binance_weight_limit, self._weight_used

    def _spend_credit(self) -> tuple[bool, int]:
        with self._lock:
            minute = int(self.now // 60)
            if minute != self._credit_minute:
                self._credit_minute, self._credits_used = minute, 0
            self._credits_used += 1
            limit = self.twelve_data_credits_per_minute
            return limit is None or self._credits_used <= limit, self._credits_used

    def handle(self, path: str, query: dict[str, str], headers: Mapping[str, str]) -> _Response:
        """Answer one request without faults (the server adds them around this)."""
        if path == "/api/v3/klines":
            return self._binance(2, lambda: self._klines(query))
        if path == "/api/v3/exchangeInfo":
            return self._binance(20, lambda: self._exchange_info(query))
        if path == "/time_series":
            return self._twelve_data(query, headers, self._time_series, costs_credit=True)
        if path == "/forex_pairs":
            return self._twelve_data(query, headers, self._forex_pairs, costs_credit=False)
        if path.startswith("/api/"):
            return _binance_error(-1000, "Unknown endpoint.", 404)
        return _Response(404, {"code": 404, "message": f"endpoint {path} not found", "status": "error"})

    # --- Binance ---

    def _binance(self, weight: int, answer: Any) -> _Response:
        allowed, used = self._spend_weight(weight)
        if not allowed:
            retry = 60 - int(self.now) % 60
            resp = _binance_error(-1003, _BINANCE_429.format(limit=self.binance_weight_limit), 429)
            resp.headers = {"Retry-After": str(retry)}
        else:
            resp = answer()
        resp.headers = {**(resp.headers or {}), "X-MBX-USED-WEIGHT-1M": str(used)}
        return resp

    def _klines(self, q: dict[str, str]) -> _Response:
        unknown = set(q) - _KLINES_PARAMS
        if unknown:
            return _binance_error(
                -1104,
                f"Not all sent parameters were read; read '{len(q) - len(unknown)}' "
                f"parameter(s) but was sent '{len(q)}'.",
            )
        for name in ("symbol", "interval"):
            if not q.get(name):
                return _binance_error(
                    -1102, f"Mandatory parameter '{name}' was not sent, was empty/null, or malformed."
                )
        symbol = q["symbol"]
        if not _SYMBOL_RE.fullmatch(symbol):
            return _binance_error(
                -1100, "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'."
            )
        if q["interval"] not in BINANCE_INTERVALS:
            return _binance_error(-1120, "Invalid interval.")
        times: dict[str, int | None] = {}
        for name in ("startTime", "endTime", "limit"):
            raw = q.get(name)
            if raw is not None and not _DIGITS_RE.fullmatch(raw):
                return _binance_error(
                    -1100,
                    f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.",
                )
            times[name] = int(raw) if raw is not None else None
        limit = 500 if times["limit"] is None else times["limit"]
        if not 1 <= limit <= 1000:
            return _binance_error(-1130, "Data sent for parameter 'limit' is not valid.")
        if q.get("timeZone") not in (None, "0", "+00:00", "UTC"):
            return _binance_error(-1130, "Data sent for parameter 'timeZone' is not valid.")
        start_ms, end_ms = times["startTime"], times["endTime"]
        if start_ms is not None and end_ms is not None and start_ms > end_ms:
            return _binance_error(-1128, "Combination of optional parameters invalid.")
        inst = BINANCE_SYMBOLS.get(symbol)
        if inst is None:
            return _binance_error(-1121, "Invalid symbol.")
        key, now = q["interval"], self.now
        # Millisecond bounds to second bounds: a start inside a second rounds up, an end rounds down.
        lo = -(-start_ms // 1000) if start_ms is not None else None
        hi = end_ms // 1000 if end_ms is not None else None
        if lo is not None:
            opens = _opens_forward(inst, key, lo, sys.maxsize if hi is None else hi, now, limit)
        else:
            opens = _opens_backward(inst, key, 0, int(now) if hi is None else hi, now, limit)
        return _Response(200, [_kline_row(inst, key, _bar_units(inst, key, t, now)) for t in opens])

    def _exchange_info(self, q: dict[str, str]) -> _Response:
        chosen = list(BINANCE_SYMBOLS.values())
        wanted: list[str] | None = None
        if "symbol" in q:
            wanted = [q["symbol"]]
        elif "symbols" in q:
            try:
                wanted = json.loads(q["symbols"])
            except ValueError:
                return _binance_error(-1100, "Illegal characters found in parameter 'symbols'.")
        if wanted is not None:
            missing = [s for s in wanted if s not in BINANCE_SYMBOLS]
            if missing:
                return _binance_error(-1121, "Invalid symbol.")
            chosen = [BINANCE_SYMBOLS[s] for s in wanted]
        if "symbolStatus" in q:
            chosen = [i for i in chosen if i.status == q["symbolStatus"]]
        body = {
            "timezone": "UTC",
            "serverTime": int(self.now * 1000),
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 50},
                {"rateLimitType": "RAW_REQUESTS", "interval": "MINUTE", "intervalNum": 5, "limit": 300000},
            ],
            "exchangeFilters": [],
            "symbols": [_symbol_info(i) for i in chosen],
        }
        return _Response(200, body)

    # --- Twelve Data ---

    def _td_error(self, code: int, message: str, meta: dict[str, Any] | None = None) -> _Response:
        body: dict[str, Any] = {"code": code, "message": message, "status": "error"}
        if meta is not None:
            body["meta"] = meta
        return _Response(code if self.twelve_data_real_status else 200, body)

    def _twelve_data(self, q: dict[str, str], headers: Mapping[str, str], answer: Any, *, costs_credit: bool):
        key = q.get("apikey")
        auth = headers.get("authorization", "")
        if key is None and auth.lower().startswith("apikey "):
            key = auth[len("apikey ") :].strip()
        required = costs_credit or key is not None
        if required and (not key or (self.api_keys is not None and key not in self.api_keys)):
            return self._td_error(401, _TD_401)
        extra: dict[str, str] = {}
        if costs_credit:
            allowed, used = self._spend_credit()
            limit = self.twelve_data_credits_per_minute
            if not allowed:
                return self._td_error(429, _TD_CREDITS.format(used=used, limit=limit))
            extra = {"api-credits-used": str(used), "api-credits-left": str(max(0, (limit or 800) - used))}
        resp: _Response = answer(q)
        resp.headers = {**(resp.headers or {}), **extra}
        return resp

    def _time_series(self, q: dict[str, str]) -> _Response:
        interval = q.get("interval", "")
        symbol = q.get("symbol", "")
        if not symbol:
            return self._td_error(
                400,
                "**symbol** parameter is missing or invalid. Please provide a valid "
                "symbol according to API documentation: https://api.twelvedata.com/symbols",
            )
        if interval not in TWELVE_DATA_INTERVALS:
            return self._td_error(
                400,
                f"Invalid **interval** provided: {interval}. "
                f"Supported intervals: {', '.join(TWELVE_DATA_INTERVALS)}",
                meta={"symbol": symbol, "interval": interval, "exchange": ""},
            )
        inst = TWELVE_DATA_SYMBOLS.get(symbol)
        if inst is None:
            return self._td_error(
                400,
                f"**symbol** not found: {symbol}. "
                "Please specify it correctly according to API Documentation.",
            )
        key = TWELVE_DATA_INTERVALS[interval]
        date_only = key in _DATE_ONLY_KEYS
        tz_name = q.get("timezone", "Exchange")
        tz = _resolve_tz(tz_name)
        if tz is None:
            return self._td_error(400, f"**timezone** parameter is incorrect: {tz_name}.")
        if date_only:
            tz = UTC  # daily and longer bars are dates: the parameter is ignored
        order = q.get("order", "desc").lower()
        if order not in ("asc", "desc"):
            return self._td_error(400, "**order** parameter is incorrect. Supported values: asc, desc.")
        bounds: dict[str, tuple[int, bool] | None] = {}
        for name in ("start_date", "end_date"):
            raw = q.get(name)
            if raw is None:
                bounds[name] = None
                continue
            parsed = _parse_td_date(raw, tz)
            if parsed is None:
                return self._td_error(
                    400,
                    f"**{name}** parameter is incorrect. Supported formats: "
                    "2006-01-02 or 2006-01-02 15:04:05.",
                )
            bounds[name] = parsed
        has_dates = bounds["start_date"] is not None or bounds["end_date"] is not None
        raw_size = q.get("outputsize")
        if raw_size is None:
            size = 5000 if has_dates else 30
        elif not raw_size.isdigit() or not 1 <= int(raw_size) <= 5000:
            return self._td_error(
                400, "**outputsize** parameter is incorrect. It should be an integer from 1 to 5000."
            )
        else:
            size = int(raw_size)
        if q.get("format", "JSON").upper() != "JSON":
            return self._td_error(400, "**format** parameter is incorrect. Only JSON is supported here.")
        now = self.now
        lo = bounds["start_date"][0] if bounds["start_date"] else 0
        if bounds["end_date"]:
            end, end_has_time = bounds["end_date"]
            # A date-only end_date for daily and longer bars is exclusive (as observed); otherwise inclusive.
            hi = end - 1 if date_only and not end_has_time else end
        else:
            hi = int(now)
        if bounds["start_date"] and bounds["end_date"] and lo > hi:
            return self._td_error(400, "**end_date** should be later than **start_date**.")
        # The newest `size` rows of the range, whatever the order: start_date + outputsize gives the latest.
        opens = _opens_backward(inst, key, lo, hi, now, size)
        if not opens:
            return self._td_error(404, TD_NO_DATA_MESSAGE)
        if order == "desc":
            opens.reverse()
        values = [_td_row(inst, _bar_units(inst, key, t, now), tz, date_only) for t in opens]
        meta = {
            "symbol": symbol,
            "interval": interval,
            "currency_base": _CURRENCY_NAMES[inst.base_asset],
            "currency_quote": _CURRENCY_NAMES[inst.quote_asset],
            "type": "Physical Currency",
        }
        return _Response(200, {"meta": meta, "values": values, "status": "ok"})

    def _forex_pairs(self, q: dict[str, str]) -> _Response:
        rows = []
        for inst in TWELVE_DATA_SYMBOLS.values():
            if "symbol" in q and inst.symbol != q["symbol"]:
                continue
            if "currency_base" in q and q["currency_base"] not in (
                inst.base_asset,
                _CURRENCY_NAMES[inst.base_asset],
            ):
                continue
            if "currency_quote" in q and q["currency_quote"] not in (
                inst.quote_asset,
                _CURRENCY_NAMES[inst.quote_asset],
            ):
                continue
            rows.append(
                {
                    "symbol": inst.symbol,
                    "currency_group": inst.group,
                    # Full names, as the real API often gives: clients must split `symbol` instead.
                    "currency_base": _CURRENCY_NAMES[inst.base_asset],
                    "currency_quote": _CURRENCY_NAMES[inst.quote_asset],
                }
            )
        return _Response(200, {"data": rows, "status": "ok"})

    # --- faults ---

    def _fault_response(self, fault: _Fault, path: str) -> _Response | None:
        """The response a fault replaces the answer with (None: the fault acts on transport or content)."""
        binance = path.startswith(_BINANCE_PATHS)
        kind = fault.kind
        if kind == "td_credits":
            return self._td_error(429, _TD_CREDITS.format(used=9, limit=8))
        if kind == "html":
            status = fault.status or 200
            return _Response(status, _HTML_PAGE.replace(b"{status}", str(status).encode()), "text/html")
        if kind == "malformed":
            return _Response(fault.status or 200, b'{"code": 0, "values": [{"datetime": "2024-01-0')
        if kind == "wrong_shape":
            return _Response(200, {"symbols": "none"} if binance else {"status": "ok", "values": {"a": 1}})
        if kind == "error_body":
            status = fault.status or 200
            if binance:
                return _binance_error(
                    fault.code or -1001, "Internal error; unable to process your request.", status
                )
            code = fault.code or 500
            return _Response(status, {"code": code, "message": f"fake error {code}", "status": "error"})
        if not kind.isdigit():
            return None
        status = int(kind)
        headers: dict[str, str] = {}
        if status == 418:
            retry = 120 if fault.retry_after is None else fault.retry_after
            headers["Retry-After"] = _retry_header(retry)
            until = int((self.now + retry) * 1000)
            return _Response(418, {"code": -1003, "msg": _BINANCE_418.format(until=until)}, headers=headers)
        if status == 429:
            headers["Retry-After"] = _retry_header(1 if fault.retry_after is None else fault.retry_after)
            if binance:
                return _Response(
                    429, {"code": -1003, "msg": _BINANCE_429.format(limit=6000)}, headers=headers
                )
            return _Response(
                429,
                {"code": 429, "message": _TD_CREDITS.format(used=9, limit=8), "status": "error"},
                headers=headers,
            )
        if status in (502, 503, 504):
            return _Response(status, _HTML_PAGE.replace(b"{status}", kind.encode()), "text/html")
        if fault.retry_after is not None:
            headers["Retry-After"] = _retry_header(fault.retry_after)
        if binance:
            return _Response(
                status,
                {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."},
                headers=headers,
            )
        return _Response(
            status, {"code": status, "message": f"fake error {status}", "status": "error"}, headers=headers
        )


def _retry_header(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def _resolve_tz(name: str) -> tzinfo | None:
    if name in ("Exchange", ""):
        return EXCHANGE_TZ
    if name.upper() == "UTC":
        return UTC
    if ZoneInfo is None:
        return None
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


def _parse_td_date(raw: str, tz: tzinfo) -> tuple[int, bool] | None:
    """(Unix seconds, has a time part) of a Twelve Data date in the request's timezone, or None."""
    for fmt, has_time in (("%Y-%m-%d %H:%M:%S", True), ("%Y-%m-%d", False)):
        try:
            naive = datetime.strptime(raw, fmt)
        except ValueError:
            continue
        return int(naive.replace(tzinfo=tz).timestamp()), has_time
    return None


def _kline_row(inst: Instrument, key: str, b: _Units) -> list[Any]:
    quote_volume = b.volume * b.close // 10**8
    taker_quote = b.taker_base * b.close // 10**8
    close_ms = next_open(key, b.time) * 1000 - 1
    return [
        b.time * 1000,
        _fmt(b.open, 8),
        _fmt(b.high, 8),
        _fmt(b.low, 8),
        _fmt(b.close, 8),
        _fmt(b.volume, 8),
        close_ms,
        _fmt(quote_volume, 8),
        b.trades,
        _fmt(b.taker_base, 8),
        _fmt(taker_quote, 8),
        "0",
    ]


def _td_row(inst: Instrument, b: _Units, tz: tzinfo, date_only: bool) -> dict[str, str]:
    moment = datetime.fromtimestamp(b.time, tz)
    text = moment.strftime("%Y-%m-%d") if date_only else moment.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "datetime": text,
        "open": _fmt(b.open, 5),
        "high": _fmt(b.high, 5),
        "low": _fmt(b.low, 5),
        "close": _fmt(b.close, 5),
    }


def _symbol_info(inst: Instrument) -> dict[str, Any]:
    return {
        "symbol": inst.symbol,
        "status": inst.status,
        "baseAsset": inst.base_asset,
        "baseAssetPrecision": 8,
        "quoteAsset": inst.quote_asset,
        "quotePrecision": 8,
        "quoteAssetPrecision": 8,
        "orderTypes": ["LIMIT", "LIMIT_MAKER", "MARKET", "STOP_LOSS_LIMIT", "TAKE_PROFIT_LIMIT"],
        "icebergAllowed": True,
        "ocoAllowed": True,
        "isSpotTradingAllowed": True,
        "isMarginTradingAllowed": False,
        "filters": [
            {
                "filterType": "PRICE_FILTER",
                "minPrice": _fmt(inst.tick, 8),
                "maxPrice": "1000000.00000000",
                "tickSize": _fmt(inst.tick, 8),
            }
        ],
        "permissions": [],
        "permissionSets": [["SPOT", "MARGIN"]] if inst.quote_asset == "USDT" else [["SPOT"]],
        "defaultSelfTradePreventionMode": "EXPIRE_MAKER",
        "allowedSelfTradePreventionModes": ["NONE", "EXPIRE_TAKER", "EXPIRE_MAKER", "EXPIRE_BOTH"],
    }


# --- the HTTP layer --------------------------------------------------------------------------------


def _quiet_handle_error(request: Any, client_address: Any) -> None:
    """Clients hang up on purpose (timeouts, resets): do not print tracebacks for that."""
    exc = sys.exc_info()[1]
    if isinstance(exc, OSError):
        return
    import traceback

    traceback.print_exc()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, so the clients' connection reuse is exercised
    server_version = "fake-upstream/1.0"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: no line per request
        pass

    def do_GET(self) -> None:
        fake: FakeUpstream = self.server.fake  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        headers = {k.lower(): v for k, v in self.headers.items()}
        fake._record(split.path, query, headers)
        fault = fake._take_fault(split.path)
        try:
            self._serve(fake, fault, split.path, query, headers)
        except OSError:  # the client went away (after its timeout, typically)
            self.close_connection = True

    def _method_not_allowed(self) -> None:
        self._send(_Response(405, {"code": 405, "message": "method not allowed", "status": "error"}))

    do_POST = do_PUT = do_DELETE = _method_not_allowed

    def _serve(
        self,
        fake: FakeUpstream,
        fault: _Fault | None,
        path: str,
        query: dict[str, str],
        headers: dict[str, str],
    ) -> None:
        if fault is not None and fault.kind == "reset":
            # SO_LINGER 0 then close: the peer sees a TCP RST instead of an answer.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.close_connection = True
            return
        response = fake._fault_response(fault, path) if fault is not None else None
        if response is None:
            # Answer now, so weight and credits are spent while the requesting test is still running.
            response = fake.handle(path, query, headers)
            if fault is not None and fault.kind == "bad_bar":
                _corrupt_first_bar(response.payload)
            if fault is not None and fault.kind == "duplicate":
                _duplicate_first_bar(response.payload)
        if fault is not None and fault.kind == "timeout":
            time.sleep(fault.delay if fault.delay is not None else fake.timeout_seconds)
        body = (
            response.payload if isinstance(response.payload, bytes) else json.dumps(response.payload).encode()
        )
        if fault is not None and fault.kind == "truncated":
            body = body[: max(1, len(body) // 2)]
        if fault is not None and fault.kind == "truncated_transport":
            self._send(response, body, declared_length=len(body), send=body[: max(1, len(body) // 2)])
            self.close_connection = True
            return
        self._send(response, body)

    def _send(
        self,
        response: _Response,
        body: bytes | None = None,
        *,
        declared_length: int | None = None,
        send: bytes | None = None,
    ) -> None:
        if body is None:
            body = json.dumps(response.payload).encode()
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(declared_length if declared_length is not None else len(body)))
        for name, value in (response.headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body if send is None else send)
        self.wfile.flush()


def _corrupt_first_bar(payload: Any) -> None:
    """Make the first bar of a klines or time_series answer inconsistent: high below low."""
    if isinstance(payload, list) and payload:
        row = payload[0]
        row[2], row[3] = row[3], row[2]
        if row[2] == row[3]:
            row[2] = "0.00000001"
    elif isinstance(payload, dict) and payload.get("values"):
        row = payload["values"][0]
        row["high"], row["low"] = row["low"], row["high"]
        if row["high"] == row["low"]:
            row["high"] = "0.00001"


def _duplicate_first_bar(payload: Any) -> None:
    """Repeat the first bar right after itself with another close (still a consistent bar), as Twelve
    Data sometimes does; the first copy is the true one."""
    if isinstance(payload, list) and payload:
        row = list(payload[0])
        row[4] = row[1]  # close = open: within [low, high]
        payload.insert(1, row)
    elif isinstance(payload, dict) and payload.get("values"):
        value = dict(payload["values"][0])
        value["close"] = value["open"]
        payload["values"].insert(1, value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Fake Binance + Twelve Data server for local runs and tests."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument(
        "--api-key",
        action="append",
        dest="api_keys",
        help="accepted Twelve Data key (repeatable; default: any non-empty key)",
    )
    args = parser.parse_args(argv)
    fake = FakeUpstream(args.host, args.port, api_keys=args.api_keys).start()
    print(fake.url, flush=True)
    print(f"  BINANCE_REST_URL={fake.url} TWELVE_DATA_REST_URL={fake.url}", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
