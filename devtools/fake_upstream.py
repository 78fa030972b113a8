"""A local fake of the two upstream market-data APIs, faithful enough to test the provider clients.

One HTTP server (stdlib only) answers both providers on one port, so `.url` serves as both
BINANCE_REST_URL and TWELVE_DATA_REST_URL:

- Binance spot: GET /api/v3/klines, GET /api/v3/exchangeInfo
- Twelve Data:  GET /time_series, GET /forex_pairs

The bars are a pure function of (symbol, interval, open time), of the fake's clock and of the forex
model in force, so a test computes the truth with `expected_bars(...)` / `FakeUpstream.expected_bars(...)`
and compares. The time arithmetic here (weeks from Monday 00:00 UTC, calendar months, New York forex
days) is written independently of `marketdata.intervals` on purpose: the fake is a second opinion, not
a mirror.

What it reproduces (see docs/providers.md for the real APIs):
- Binance paging: startTime only -> the oldest bars with openTime >= startTime (a startTime inside a
  bar skips that bar); endTime only -> the newest bars with openTime <= endTime; both -> the oldest
  within; limit default 500, max 1000; 12-field rows of strings; closeTime = next open - 1 ms.
  X-MBX-USED-WEIGHT-1M (2 per klines call, 20 per exchangeInfo) per minute of the fake clock, with
  429 past the limit. Errors -1100/-1102/-1104/-1120/-1121/-1128/-1130 with HTTP 400.
- Twelve Data: default order desc, default timezone = the exchange's (America/New_York here, so a
  client that forgets timezone=UTC gets shifted times), date-only datetimes for 1day/1week/1month,
  outputsize 1..5000 (default 30 without dates, 5000 with) that always keeps the NEWEST rows of the
  range, end_date inclusive except a date-only end_date for 1day/1week/1month (exclusive). The 2026
  error bodies, with HTTP 200 or (`twelve_data_real_status`) the matching HTTP status, `code` a number
  or (`twelve_data_string_codes`) a string: a window without bars is code 400 "No data is available
  on the specified dates..."; an unknown pair code 404 "**symbol** or **figi** parameter is missing
  or invalid..."; a pair in `plan_gated_symbols` code 404 "This symbol is available starting with the
  Grow or Venture plan..."; out of per-minute credits code 429 "... with the current limit of 8.".
- Forex bars, `FakeUpstream.forex_model` (reset() restores "real"; the truth functions take `model=`):
  - "real" (default), the recorded Twelve Data. Hour bars are the primitive: 1h bars are on the UTC
    clock, and every bar of 2h and longer is the aggregate of the hour bars it spans (open of the
    first existing hour, highest high, lowest low, close of the last; volume 0), so any interval can
    be checked against the hour truth. 1min..45min bars are their own, on the UTC clock, and exist
    only where their hour exists. 2h/4h/8h bars are anchored at 17:00 America/New_York with daylight
    saving (4h bars open at 17, 21, 01, 05, 09, 13 New York time = 22, 02, ... UTC in winter and
    21, 01, ... UTC in summer), boundaries computed in New York local time (a bar across a DST switch
    is an hour shorter or longer). The 1day bar dated D spans D-1 17:00 to D 17:00 New York and is
    served date-only as D (a client reads it as 00:00 UTC of D). 1week bars are dated Mondays and
    aggregate the daily bars dated Monday..Sunday of that week; 1month bars are dated the 1st and
    aggregate the daily bars dated in that calendar month. (Mondays and 1sts are what the stock
    recordings show; how Twelve Data labels and cuts forex weeks and months is unverified: this is
    the fake's choice.) The market closes Friday 17:00 and reopens Sunday 17:00 New York, but a
    weekend is not empty: a deterministic hash of the week makes about a quarter of weekends
    (WEEKEND_POPULATED_SHARE; `weekend_populated(t)`) have bars throughout (as a 2026 measurement
    saw: 96 GBP/USD 15min bars on a Saturday and on a Sunday), and on the others a few percent of the
    closed hours (WEEKEND_SPORADIC_SHARE, hashed per symbol and hour) still have a bar (as the 2022
    recording's Saturday-dated daily bar and Sunday 8h bars). So Saturday- and Sunday-dated daily
    bars exist on populated weekends and sometimes on the others.
  - "simple", for tests about something else: weekdays only (closed Friday 22:00 to Sunday 22:00
    UTC), every interval on the epoch/UTC grid (weeks from Monday, calendar months), UTC days
    Monday to Friday, each interval with its own bars.
  Closed hours and closed aggregates are cached (lru_cache), so long coarse answers stay cheap.
- Every bar exists from the symbol's listing time up to now (the fake's clock), except as above for
  forex and one real-world-style BTCUSDT outage (2018-02-08 08:00 to 2018-02-09 10:00 UTC); the bar
  containing now is open and its values change with now (an open coarse forex bar is built from its
  closed hours and the open hour).

The truth: `expected_bars(symbol, interval, start, end, *, now=None, include_open=False, model="real")`
(the provider's own bars, labelled as a client reads them), `aggregate_hours(symbol, bucket, start, end,
*, now=None, include_open=False, model="real")` (the hour truth grouped by any bucket function, say the
service's UTC 4H grid), `weekend_populated(t)` and `weekend_closure(t)`; on a FakeUpstream the same with
its clock and model (`expected_bars`, `expected_candles`, `aggregate_hours`, `open_bar`,
`last_closed_open`).

Fault injection (`fail_next`), a request log (`requests`, `count`), a settable clock (`now`), the
switches above and `reset()` make it usable per test. Standalone:
`python devtools/fake_upstream.py --port 8081 [--forex-model simple]`.
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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone, tzinfo
from functools import lru_cache
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


_U32 = struct.Struct(">8I")


def _uniform(*parts: object) -> tuple[float, ...]:
    digest = hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=32).digest()
    return tuple(x / 2**32 for x in _U32.unpack(digest))


def bar_exists(inst: Instrument, key: str, open_time: int) -> bool:
    """Whether the bar opening at open_time exists upstream in the SIMPLE model (ignoring 'now'): after
    listing, not inside an outage, and for forex not inside the weekend (intraday: the bar overlaps
    trading hours; daily: Monday-Friday). Crypto bars always follow this."""
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
    """One bar with its own values (every simple-model bar and crypto bar; real-model 1min..45min)."""
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


# --- the real forex model: New York days, hour bars as the primitive ------------------------------

REAL_MODEL, SIMPLE_MODEL = "real", "simple"
FOREX_MODELS = (REAL_MODEL, SIMPLE_MODEL)
#: Share of weekends (Friday 17:00 to Sunday 17:00 New York) with bars throughout (real model).
WEEKEND_POPULATED_SHARE = 0.25
#: On the other weekends, the share of the closed hours that still have a bar (per symbol and hour).
WEEKEND_SPORADIC_SHARE = 0.04
#: The forex day starts (and the week ends and starts) at 17:00 New York.
NY_DAY_START_HOUR = 17
#: Real model: bars of these widths (hours) are anchored at the forex day start in New York.
_NY_ANCHORED_HOURS = {"2h": 2, "4h": 4, "8h": 8}
#: Real model: bars with their own values on the UTC clock (an hour bar is the primitive of the rest).
_CLOCK_KEYS = frozenset({"1m", "5m", "15m", "30m", "45m", "1h"})
_REAL_FOREX_KEYS = _CLOCK_KEYS | frozenset(_NY_ANCHORED_HOURS) | _DATE_ONLY_KEYS
_UNIX_EPOCH = datetime(1970, 1, 1)


def _check_model(model: str) -> str:
    if model not in FOREX_MODELS:
        raise ValueError(f"unknown forex model {model!r} (one of {', '.join(FOREX_MODELS)})")
    return model


def _real(model: str, inst: Instrument, key: str) -> bool:
    """Whether the real forex model applies to this instrument and interval."""
    if model != REAL_MODEL or not inst.is_forex:
        return False
    if key not in _REAL_FOREX_KEYS:
        raise ValueError(f"Twelve Data has no {key!r} bars (real forex model)")
    return True


def _ny_wall(t: int) -> datetime:
    """The New York wall-clock time (naive) of the instant t."""
    return datetime.fromtimestamp(t, EXCHANGE_TZ).replace(tzinfo=None, fold=0)


def _ny_instant(wall: datetime) -> int:
    """The instant of a New York wall-clock time (naive; the first one when the clock repeats)."""
    return int(wall.replace(tzinfo=EXCHANGE_TZ, fold=0).timestamp())


def _utc_midnight(d: datetime) -> int:
    return int((datetime(d.year, d.month, d.day) - _UNIX_EPOCH).total_seconds())


@lru_cache(maxsize=1 << 16)
def _day_span(label: int) -> tuple[int, int]:
    """[D-1 17:00, D 17:00) New York, as instants, of the daily bar dated D (label: 00:00 UTC of D)."""
    day = _UNIX_EPOCH + timedelta(seconds=label)
    return (
        _ny_instant(day - timedelta(days=1) + timedelta(hours=NY_DAY_START_HOUR)),
        _ny_instant(day + timedelta(hours=NY_DAY_START_HOUR)),
    )


def _day_label(t: int) -> int:
    """00:00 UTC of the New York trading date of the instant t (the day from 17:00 the evening before)."""
    wall = _ny_wall(t)
    if wall.hour >= NY_DAY_START_HOUR:
        wall += timedelta(days=1)
    return _utc_midnight(wall)


def _ny_anchored_open(hours: int, t: int) -> int:
    """Open of the `hours`-wide bar containing t, bars anchored at 17:00 New York wall-clock time."""
    wall = _ny_wall(t).replace(minute=0, second=0, microsecond=0)
    back = (wall.hour - NY_DAY_START_HOUR) % 24 % hours
    return _ny_instant(wall - timedelta(hours=back))


def _ny_anchored_next(hours: int, open_time: int) -> int:
    return _ny_instant(_ny_wall(open_time) + timedelta(hours=hours))


def _floor_label(model: str, inst: Instrument, key: str, t: int) -> int:
    """The greatest bar label (the time a client reads) <= t."""
    if _real(model, inst, key) and key in _NY_ANCHORED_HOURS:
        return _ny_anchored_open(_NY_ANCHORED_HOURS[key], t)
    return bar_open(key, t)  # UTC grid; real-model days, weeks and months are labelled on it too


def _next_label(model: str, inst: Instrument, key: str, label: int) -> int:
    if _real(model, inst, key) and key in _NY_ANCHORED_HOURS:
        return _ny_anchored_next(_NY_ANCHORED_HOURS[key], label)
    return next_open(key, label)


def _prev_label(model: str, inst: Instrument, key: str, label: int) -> int:
    if _real(model, inst, key) and key in _NY_ANCHORED_HOURS:
        return _ny_anchored_open(_NY_ANCHORED_HOURS[key], label - 1)
    return prev_open(key, label)


def _span(model: str, inst: Instrument, key: str, label: int) -> tuple[int, int]:
    """[first instant, end) of the time the bar labelled `label` covers."""
    if _real(model, inst, key):
        if key == "1d":
            return _day_span(label)
        if key == "1w":
            return _day_span(label)[0], _day_span(label + 6 * _DAY)[1]
        if key == MONTH:
            return _day_span(label)[0], _day_span(next_open(MONTH, label) - _DAY)[1]
    return label, _next_label(model, inst, key, label)


def _current_label(model: str, inst: Instrument, key: str, t: int) -> int:
    """The label of the bar whose span contains the instant t (real-model days may be labelled > t)."""
    if _real(model, inst, key) and key in _DATE_ONLY_KEYS:
        day = _day_label(t)
        return day if key == "1d" else bar_open(key, day)
    return _floor_label(model, inst, key, t)


def weekend_populated(t: int) -> bool:
    """Real model: whether the weekend of the UTC week (Monday to Sunday) containing t has bars
    throughout its closed hours (about WEEKEND_POPULATED_SHARE of weekends; the same for every pair)."""
    return _weekend_populated(t - (t - _MONDAY_1970) % _WEEK)


@lru_cache(maxsize=1 << 14)
def _weekend_populated(monday: int) -> bool:
    return _uniform("weekend", monday)[0] < WEEKEND_POPULATED_SHARE


@lru_cache(maxsize=1 << 14)
def _weekend_closure(monday: int) -> tuple[int, int]:
    """[Friday 17:00, Sunday 17:00) New York of the UTC week starting `monday`, as instants."""
    week = _UNIX_EPOCH + timedelta(seconds=monday)
    return (
        _ny_instant(week + timedelta(days=4, hours=NY_DAY_START_HOUR)),
        _ny_instant(week + timedelta(days=6, hours=NY_DAY_START_HOUR)),
    )


def weekend_closure(t: int) -> tuple[int, int]:
    """[Friday 17:00, Sunday 17:00) New York, as UTC instants, of the UTC week containing t."""
    return _weekend_closure(t - (t - _MONDAY_1970) % _WEEK)


def _hour_exists(inst: Instrument, hour: int) -> bool:
    """Real model: whether the forex hour bar opening at `hour` exists (ignoring 'now')."""
    if hour + _HOUR <= inst.listed:
        return False
    closes, reopens = _weekend_closure(hour - (hour - _MONDAY_1970) % _WEEK)
    if not closes <= hour < reopens:
        return True
    return _weekend_populated(hour - (hour - _MONDAY_1970) % _WEEK) or _sporadic_hour(inst.symbol, hour)


def _sporadic_hour(symbol: str, hour: int) -> bool:
    """Real model: whether a closed hour of an unpopulated weekend still has a bar (hashed)."""
    digest = hashlib.blake2b(f"{symbol}|weekend-hour|{hour}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") < WEEKEND_SPORADIC_SHARE * 2**64


_Prices = tuple[int, int, int, int]  # (open, high, low, close) in units
_HOUR_UNITS = struct.Struct(">96I")  # 4 uniform numbers for each of the 24 hours of a day


@lru_cache(maxsize=8192)
def _closed_hours(symbol: str, day: int) -> dict[int, _Prices]:
    """Real model: the existing hour bars of the UTC day starting `day` -> their final prices, in order.

    Real-model forex hours take their values from here (one hash stream per day: long coarse answers
    aggregate 24 hours per day, so this is their hot loop). Which hours exist is _hour_exists, inlined."""
    inst = TWELVE_DATA_SYMBOLS[symbol]
    base, tick, listed = inst.base_price, inst.tick, inst.listed
    monday = day - (day - _MONDAY_1970) % _WEEK
    closes, reopens = _weekend_closure(monday)
    populated = _weekend_populated(monday)
    u = _HOUR_UNITS.unpack(hashlib.shake_128(f"{symbol}|hours|{day}".encode()).digest(_HOUR_UNITS.size))
    # Prices within +-20 % of the base price, wicks up to 2 % of it (as _bar_units).
    floor, spread, wick = base * 0.8, base * 0.4 / 2**32, base * 0.02 / 2**32
    opens = [int(floor + spread * x) // tick * tick for x in u[0::4]]
    closes_ = [int(floor + spread * x) // tick * tick for x in u[1::4]]
    ups = [int(wick * x) // tick * tick for x in u[2::4]]
    downs = [int(wick * x) // tick * tick for x in u[3::4]]
    every_hour = listed <= day and (day + _DAY <= closes or reopens <= day or populated)
    rows: dict[int, _Prices] = {}
    for i, (open_, close, up, down) in enumerate(zip(opens, closes_, ups, downs, strict=True)):
        hour = day + i * _HOUR
        if not every_hour and (
            hour + _HOUR <= listed
            or (closes <= hour < reopens and not populated and not _sporadic_hour(symbol, hour))
        ):
            continue
        if open_ >= close:
            high, low = open_ + up, close - down
        else:
            high, low = close + up, open_ - down
        rows[hour] = (open_, high, low if low > tick else tick, close)
    return rows


def _forex_hour(inst: Instrument, hour: int, now: float) -> _Units | None:
    """Real model: the forex hour bar opening at `hour` as served at now (None: no such bar). The open
    hour keeps its open; its close, high and low depend on the instant it is looked at."""
    prices = _closed_hours(inst.symbol, hour - hour % _DAY).get(hour)
    if prices is None or hour > now:
        return None
    open_, high, low, close = prices
    if hour + _HOUR <= now:
        return _Units(hour, open_, high, low, close, 0, 1, 0, True)
    base, tick = inst.base_price, inst.tick
    v = _uniform(inst.symbol, "1h", hour, int(now))
    close = max(tick, int(base * (0.8 + 0.4 * v[1])) // tick * tick)
    high = max(open_, close) + int(base * 0.02 * v[2]) // tick * tick
    low = max(tick, min(open_, close) - int(base * 0.02 * v[3]) // tick * tick)
    return _Units(hour, open_, high, low, close, 0, 1, 0, False)


def _hours_in(symbol: str, lo: int, hi: int) -> list[_Prices]:
    """Real model: the final prices of the existing hours opening in [lo, hi), oldest first."""
    out: list[_Prices] = []
    day = lo - lo % _DAY
    while day < hi:
        rows = _closed_hours(symbol, day)
        if day >= lo and day + _DAY <= hi:
            out.extend(rows.values())
        else:
            out.extend(p for h, p in rows.items() if lo <= h < hi)
        day += _DAY
    return out


def _combine(label: int, parts: Iterable[tuple[int, int, int, int]], closed: bool) -> _Units | None:
    """Aggregate (open, high, low, close) parts, oldest first: None when there are none."""
    first = last = None
    high, low = 0, 0
    for part in parts:
        if first is None:
            first, high, low = part, part[1], part[2]
        else:
            high, low = max(high, part[1]), min(low, part[2])
        last = part
    if first is None or last is None:
        return None
    return _Units(label, first[0], high, low, last[3], 0, 1, 0, closed)


@lru_cache(maxsize=1 << 16)
def _closed_aggregate(symbol: str, key: str, label: int) -> _Units | None:
    """Real model: a coarse bar whose span is over, from its hours (weeks and months: from its days)."""
    inst = TWELVE_DATA_SYMBOLS[symbol]
    if key in ("1w", MONTH):
        end = next_open(key, label)
        days = (_closed_aggregate(symbol, "1d", d) for d in range(label, end, _DAY))
        return _combine(label, ((b.open, b.high, b.low, b.close) for b in days if b is not None), True)
    lo, hi = _span(REAL_MODEL, inst, key, label)
    return _combine(label, _hours_in(symbol, lo, hi), True)


def _open_aggregate(inst: Instrument, key: str, label: int, lo: int, now: float) -> _Units | None:
    """Real model: the coarse bar containing now, from its closed hours and the open hour."""
    current = int(now) - int(now) % _HOUR
    parts = _hours_in(inst.symbol, lo, current)
    hour = _forex_hour(inst, current, now) if lo <= current else None
    if hour is not None:
        parts.append((hour.open, hour.high, hour.low, hour.close))
    return _combine(label, parts, False)


def _units(model: str, inst: Instrument, key: str, label: int, now: float) -> _Units | None:
    """The bar labelled `label` as served at `now`; None when it does not exist or has not begun."""
    if not _real(model, inst, key):
        if label > now or not bar_exists(inst, key, label):
            return None
        return _bar_units(inst, key, label, now)
    if key == "1h":
        return _forex_hour(inst, label, now)
    if key in _CLOCK_KEYS:  # minutes: their own bars, where their hour exists
        if label > now or next_open(key, label) <= inst.listed:
            return None
        if not _hour_exists(inst, label - label % _HOUR):
            return None
        return _bar_units(inst, key, label, now)
    lo, hi = _span(model, inst, key, label)
    if lo > now:
        return None
    if hi <= now:
        return _closed_aggregate(inst.symbol, key, label)
    return _open_aggregate(inst, key, label, lo, now)


def _first_label_at_or_after(model: str, inst: Instrument, key: str, t: int) -> int:
    b = _floor_label(model, inst, key, t)
    return b if b == t else _next_label(model, inst, key, b)


def _bars_forward(
    model: str, inst: Instrument, key: str, lo: int, hi: int, now: float, limit: int
) -> list[_Units]:
    """Existing bars labelled lo..hi that have begun at now, oldest first, at most limit."""
    out: list[_Units] = []
    t = _first_label_at_or_after(model, inst, key, max(lo, _floor_label(model, inst, key, inst.listed)))
    stop = min(hi, _current_label(model, inst, key, int(now)))
    while t <= stop and len(out) < limit:
        b = _units(model, inst, key, t, now)
        if b is not None:
            out.append(b)
        t = _next_label(model, inst, key, t)
    return out


def _bars_backward(
    model: str, inst: Instrument, key: str, lo: int, hi: int, now: float, limit: int
) -> list[_Units]:
    """The newest `limit` existing bars labelled lo..hi that have begun at now, returned oldest first."""
    out: list[_Units] = []
    if hi < lo:
        return out
    t = _current_label(model, inst, key, int(now))
    if hi < t:
        t = _floor_label(model, inst, key, hi)
    floor = max(lo, _floor_label(model, inst, key, inst.listed))
    while t >= floor and len(out) < limit:
        b = _units(model, inst, key, t, now)
        if b is not None:
            out.append(b)
        t = _prev_label(model, inst, key, t)
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
    model: str = REAL_MODEL,
) -> list[FakeBar]:
    """The truth: the provider's own bars of `symbol` labelled in [start, end] (inclusive, Unix seconds;
    the label is the time a client reads: a real-model forex day is 00:00 UTC of its New York date),
    ascending, as the fake serves them under the forex `model` (crypto ignores it).

    Only bars closed at `now` (default: real time) unless include_open, which appends the bar that
    contains now when it is in range. `interval` may be an app, Binance or Twelve Data name (an app
    name means the provider's interval of that width: forex "4H" is Twelve Data's own 4h bars).
    """
    inst, key = instrument(symbol), canonical_interval(interval)
    _check_model(model)
    now = time.time() if now is None else now
    bars = _bars_forward(model, inst, key, int(start), int(end), now, sys.maxsize)
    return [_as_bar(inst, b) for b in bars if b.closed or include_open]


def aggregate_hours(
    symbol: str,
    bucket: Callable[[int], int],
    start: int,
    end: int,
    *,
    now: float | None = None,
    include_open: bool = False,
    model: str = REAL_MODEL,
) -> list[FakeBar]:
    """The hour bars of a forex `symbol` opening in [start, end], grouped by `bucket(open time)` (say a
    UTC 4H grid: `lambda t: t - t % 14400`; buckets must be ascending with time): open of the first
    hour, highest high, lowest low, close of the last, volume 0. The open hour comes only with
    include_open. Real model: every coarse bar the fake serves equals this over its own span."""
    out: list[FakeBar] = []
    for bar in expected_bars(symbol, "1h", start, end, now=now, include_open=include_open, model=model):
        key = bucket(bar.time)
        if out and out[-1].time == key:
            last = out[-1]
            out[-1] = FakeBar(
                key, last.open, max(last.high, bar.high), min(last.low, bar.low), bar.close, 0.0
            )
        else:
            out.append(FakeBar(key, bar.open, bar.high, bar.low, bar.close, 0.0))
    return out


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
#: The 2026 bodies (recorded live): a window without bars is code 400 with this message.
TD_NO_DATA_MESSAGE = "No data is available on the specified dates. Try setting different start/end dates."
#: An unknown (or missing) pair: code 404.
TD_BAD_SYMBOL_MESSAGE = (
    "**symbol** or **figi** parameter is missing or invalid. Please provide a valid symbol according to "
    "API documentation: https://twelvedata.com/docs#reference-data"
)
#: A pair outside the key's plan (`FakeUpstream.plan_gated_symbols`): code 404.
TD_PLAN_GATED_MESSAGE = (
    "This symbol is available starting with the Grow or Venture plan. Consider upgrading now at "
    "https://twelvedata.com/pricing"
)
#: Out of per-minute credits: code 429, the 2026 wording.
_TD_CREDITS = (
    "You have run out of API credits for the current minute. {used} API credits were used, with the "
    "current limit of {limit}."
)
#: Listed by /forex_pairs, not among the 25 served pairs, and gated by default.
DEFAULT_PLAN_GATED = frozenset({"USD/TRY"})
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
    Twelve Data credits, `twelve_data_real_status`, `twelve_data_string_codes`, `plan_gated_symbols`,
    `forex_model`, `twelve_data_credits_per_minute`, `api_keys`.
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
            #: Send Twelve Data error codes as JSON strings ("404") instead of numbers.
            self.twelve_data_string_codes = False
            #: Pairs answered with the plan-gated 404 body (they exist, but not on "our" plan).
            self.plan_gated_symbols: set[str] = set(DEFAULT_PLAN_GATED)
            #: "real" (the recorded Twelve Data) or "simple" (weekdays, UTC grid): see the module doc.
            self.forex_model = REAL_MODEL
            #: Emulate the free tier (8): past this many /time_series calls per fake minute, a 429 body.
            self.twelve_data_credits_per_minute: int | None = None
            #: Valid Twelve Data keys; None accepts any non-empty key.
            self.api_keys: frozenset[str] | None = self._default_api_keys
            #: Binance weight per minute before 429.
            self.binance_weight_limit = 6000
            #: Seconds a "timeout" fault waits before answering (above the test clients' 2 s read timeout).
            self.timeout_seconds = 3.5

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
        """Closed bars in [start, end] as of the fake's clock and forex model (see expected_bars)."""
        return expected_bars(
            symbol, interval, start, end, now=self.now, include_open=include_open, model=self.forex_model
        )

    def expected_candles(
        self, symbol: str, interval: object, start: int, end: int, *, include_open: bool = False
    ) -> list[Any]:
        """expected_bars as marketdata.schemas.Candle objects (imported lazily: standalone use needs none)."""
        from marketdata.schemas import Candle

        return [
            Candle(*b) for b in self.expected_bars(symbol, interval, start, end, include_open=include_open)
        ]

    def aggregate_hours(
        self,
        symbol: str,
        bucket: Callable[[int], int],
        start: int,
        end: int,
        *,
        include_open: bool = False,
    ) -> list[FakeBar]:
        """The hour truth of `symbol` in [start, end] grouped by `bucket` (see aggregate_hours)."""
        return aggregate_hours(
            symbol, bucket, start, end, now=self.now, include_open=include_open, model=self.forex_model
        )

    def open_bar(self, symbol: str, interval: object) -> FakeBar | None:
        """The still-open bar at the fake's clock (None when the bar containing now does not exist)."""
        inst, key, now, model = instrument(symbol), canonical_interval(interval), self.now, self.forex_model
        b = _units(model, inst, key, _current_label(model, inst, key, int(now)), now)
        return None if b is None or b.closed else _as_bar(inst, b)

    def last_closed_open(self, symbol: str, interval: object) -> int | None:
        """Open time (label) of the newest closed, existing bar at the fake's clock."""
        inst, key, now, model = instrument(symbol), canonical_interval(interval), self.now, self.forex_model
        bars = _bars_backward(model, inst, key, 0, sys.maxsize, now, 2)
        closed = [b.time for b in bars if b.closed]
        return closed[-1] if closed else None

    # --- the request log ---

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received since the last reset, in order (faulted ones included)."""
        with self._lock:
            return list(self._requests)

    def forget_requests(self) -> None:
        """Empty the request log (after a test's set-up, so its counts start at zero)."""
        with self._lock:
            self._requests.clear()

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
            bars = _bars_forward(SIMPLE_MODEL, inst, key, lo, sys.maxsize if hi is None else hi, now, limit)
        else:
            bars = _bars_backward(SIMPLE_MODEL, inst, key, 0, int(now) if hi is None else hi, now, limit)
        return _Response(200, [_kline_row(inst, key, b) for b in bars])

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

    def _td_body(self, code: int, message: str) -> dict[str, Any]:
        """A Twelve Data error body; `code` as a string when twelve_data_string_codes is set."""
        shown: int | str = str(code) if self.twelve_data_string_codes else code
        return {"code": shown, "message": message, "status": "error"}

    def _td_error(self, code: int, message: str, meta: dict[str, Any] | None = None) -> _Response:
        """An error body with HTTP 200 (the API's habit) or, with twelve_data_real_status, HTTP `code`."""
        body = self._td_body(code, message)
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
            return self._td_error(404, TD_BAD_SYMBOL_MESSAGE)
        if interval not in TWELVE_DATA_INTERVALS:
            return self._td_error(
                400,
                f"Invalid **interval** provided: {interval}. "
                f"Supported intervals: {', '.join(TWELVE_DATA_INTERVALS)}",
                meta={"symbol": symbol, "interval": interval, "exchange": ""},
            )
        if symbol in self.plan_gated_symbols:
            return self._td_error(404, TD_PLAN_GATED_MESSAGE)
        inst = TWELVE_DATA_SYMBOLS.get(symbol)
        if inst is None:
            return self._td_error(404, TD_BAD_SYMBOL_MESSAGE)
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
            hi = sys.maxsize  # up to the newest bar (a real-model day may be labelled after now)
        if bounds["start_date"] and bounds["end_date"] and lo > hi:
            return self._td_error(400, "**end_date** should be later than **start_date**.")
        # The newest `size` rows of the range, whatever the order: start_date + outputsize gives the latest.
        bars = _bars_backward(self.forex_model, inst, key, lo, hi, now, size)
        if not bars:
            return self._td_error(400, TD_NO_DATA_MESSAGE)
        if order == "desc":
            bars.reverse()
        values = [_td_row(inst, b, tz, date_only) for b in bars]
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
            return _Response(status, self._td_body(code, f"fake error {code}"))
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
            return _Response(429, self._td_body(429, _TD_CREDITS.format(used=9, limit=8)), headers=headers)
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
        return _Response(status, self._td_body(status, f"fake error {status}"), headers=headers)


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
    disable_nagle_algorithm = True  # TCP_NODELAY: no delayed-ACK stall on small keep-alive answers
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
    parser.add_argument("--forex-model", choices=FOREX_MODELS, default=REAL_MODEL, help="see the module doc")
    args = parser.parse_args(argv)
    fake = FakeUpstream(args.host, args.port, api_keys=args.api_keys).start()
    fake.forex_model = args.forex_model
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
