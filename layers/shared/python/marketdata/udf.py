"""The TradingView UDF datafeed protocol over the cache-first service (functions/udf).

UDF is the HTTP protocol of TradingView's Charting Library UDF adapter (`/config`, `/symbols`,
`/search`, `/history`, `/time`). This module is the protocol; the function only parses the query and
shapes the answer. Every bar comes from `MarketDataService.get_historical_candles`, the same
cache-first reads as `/v1/candles`, so a UDF answer holds exactly the bars `/v1/candles` gives.

Rules
- Resolutions map one to one onto the nine app intervals: 1 5 15 30 60 240 1D 1W 1M (D, W and M,
  which older library versions send, are accepted for 1D, 1W and 1M).
- Symbols: `BTCUSDT`, `EUR/USD`, or prefixed with their exchange: `BINANCE:BTCUSDT`,
  `TWELVEDATA:EUR/USD`. Unknown (not in /v1/symbols' lists, or the wrong prefix): `unknown_symbol`.
- History: bars with open time in [from, to) (`to` exclusive), or with `countback` the `countback`
  bars before `to` (from ignored; across gaps of any length, as far back as bars exist). At most
  MAX_BARS bars per answer: a range spanning more bar periods, or a larger countback, is refused with
  a message to narrow it, never cut. The still-open bar is included when the range reaches it
  (fetched live, shared briefly by every caller, as with include_open). No bars: `no_data`, with
  `nextTime` = the open time of the newest bar before `from` when one exists, so the library jumps
  over the gap; without it when none does, and the library stops scrolling back.
- An answer the service could only give in part (a provider failure, the request's provider budget or
  time spent part way: cache=partial) is an error asking to retry (IncompleteAnswer), never a part of
  the range presented as the whole of it; what was fetched stays cached, so the retry goes further.

Finding nextTime across a gap of any length without reading the gap bar by bar: the newest bar before
t is located on a coarser interval first (intraday -> 1D -> 1M, weeks and days -> 1M), then read in
the window that coarse bar can hold (`_LOCATE`), so a weekend, an exchange outage or the time before
a listing costs a few reads, not one per bar.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from marketdata.errors import IncompleteAnswer, InvalidRequest, MarketDataError, SymbolNotFound
from marketdata.intervals import Interval, count_bars, is_closed
from marketdata.schemas import (
    MAX_LIMIT,
    AssetClass,
    CacheStatus,
    Candle,
    UnixSeconds,
    detect_asset_class,
    normalize_symbol,
)

if TYPE_CHECKING:
    from marketdata.service import HistoryResult, MarketDataService

logger = logging.getLogger(__name__)


class Resolution(StrEnum):
    """A UDF resolution: the nine the datafeed offers, and D, W, M (older library versions' 1D, 1W, 1M)."""

    MIN1 = "1"
    MIN5 = "5"
    MIN15 = "15"
    MIN30 = "30"
    MIN60 = "60"
    MIN240 = "240"
    DAY = "1D"
    WEEK = "1W"
    MONTH = "1M"
    DAY_OLD = "D"
    WEEK_OLD = "W"
    MONTH_OLD = "M"


#: UDF resolution -> app interval (one to one), in the order the library lists them.
RESOLUTIONS: dict[str, Interval] = {
    "1": Interval.M1,
    "5": Interval.M5,
    "15": Interval.M15,
    "30": Interval.M30,
    "60": Interval.H1,
    "240": Interval.H4,
    "1D": Interval.D1,
    "1W": Interval.W1,
    "1M": Interval.MO1,
}
SUPPORTED_RESOLUTIONS = tuple(RESOLUTIONS)
#: Spellings of older library versions.
_ALIASES = {"D": "1D", "W": "1W", "M": "1M"}
INTRADAY_MULTIPLIERS = ("1", "5", "15", "30", "60", "240")
#: The most bars one history answer holds (a range spanning more bar periods is refused).
MAX_BARS = 20_000
#: The default and largest number of search results.
DEFAULT_SEARCH_LIMIT = 30
MAX_SEARCH_LIMIT = 100
#: The exchange each asset class's symbols are listed under (the prefix of their full names).
EXCHANGES: dict[AssetClass, str] = {AssetClass.CRYPTO: "BINANCE", AssetClass.FOREX: "TWELVEDATA"}
_EXCHANGE_DESCRIPTIONS = {
    AssetClass.CRYPTO: "Binance spot",
    AssetClass.FOREX: "Forex pairs (Twelve Data)",
}
# Binance prices and quantities have at most 8 decimals.
_MAX_DECIMALS = 8
# How many 1H bars show a crypto symbol's price and volume steps (see _crypto_precision).
_PRECISION_SAMPLE = 200

_HOUR = 3600
_DAY = 86400


def resolution_interval(value: str) -> Interval:
    """The app interval of a UDF resolution, or InvalidRequest naming `resolution`."""
    text = str(value.value if isinstance(value, Resolution) else value or "").strip()
    interval = RESOLUTIONS.get(_ALIASES.get(text, text))
    if interval is None:
        raise InvalidRequest(
            f"unsupported resolution {text[:20]!r}: use one of {', '.join(SUPPORTED_RESOLUTIONS)}",
            param="resolution",
        )
    return interval


@dataclass(frozen=True, slots=True)
class UdfSymbol:
    symbol: str  # the service's symbol: BTCUSDT, EUR/USD
    asset_class: AssetClass

    @property
    def exchange(self) -> str:
        return EXCHANGES[self.asset_class]

    @property
    def ticker(self) -> str:
        return f"{self.exchange}:{self.symbol}"


def parse_symbol(value: str) -> UdfSymbol:
    """A UDF symbol (`BTCUSDT`, `BINANCE:BTCUSDT`, `EUR/USD`, `TWELVEDATA:EUR/USD`, any case).

    Malformed: InvalidRequest naming `symbol`. Prefixed with another exchange: SymbolNotFound.
    """
    text = (value or "").strip()
    prefix, sep, rest = text.partition(":")
    symbol = normalize_symbol(rest if sep else text)
    asset_class = detect_asset_class(symbol)
    if sep and prefix.strip().upper() != EXCHANGES[asset_class]:
        raise SymbolNotFound(text)
    return UdfSymbol(symbol, asset_class)


# --- answers ---------------------------------------------------------------------------------------


# --- the queries: the one definition of each endpoint's parameters (validated by the handler with
# marketdata.http.params, documented in openapi.json from these models) ------------------------------------

_SYMBOL_PARAM = Field(
    description="BTCUSDT, BINANCE:BTCUSDT, EUR/USD or TWELVEDATA:EUR/USD",
    min_length=1,
    max_length=80,
    examples=["BINANCE:BTCUSDT"],
)


class UdfSymbolQuery(BaseModel):
    """GET /udf/symbols query."""

    model_config = ConfigDict(frozen=True)

    symbol: str = _SYMBOL_PARAM


class UdfSearchQuery(BaseModel):
    """GET /udf/search query."""

    model_config = ConfigDict(frozen=True)

    query: str = Field(default="", description="part of a symbol, e.g. btc or eurusd", max_length=64)
    type: str = Field(default="", description="crypto, forex, or empty for both", max_length=16)
    exchange: str = Field(default="", description="BINANCE, TWELVEDATA, or empty for both", max_length=16)
    limit: int = Field(
        default=DEFAULT_SEARCH_LIMIT, description="maximum number of results", ge=1, le=MAX_SEARCH_LIMIT
    )


class UdfHistoryQuery(BaseModel):
    """GET /udf/history query (`from` is a Python keyword: the field is `from_`)."""

    model_config = ConfigDict(frozen=True)

    symbol: str = _SYMBOL_PARAM
    resolution: Resolution = Field(description="1 5 15 30 60 240 1D 1W 1M")
    to: UnixSeconds = Field(description="end of the range, exclusive (Unix seconds, UTC)")
    from_: UnixSeconds | None = Field(
        default=None,
        alias="from",
        description="start of the range, inclusive (Unix seconds, UTC); ignored with countback",
    )
    countback: int | None = Field(
        default=None, description="the number of bars before `to` wanted", ge=1, le=MAX_BARS
    )


class UdfError(BaseModel):
    """Every UDF error answer."""

    s: Literal["error"] = "error"
    errmsg: str = Field(description="what is wrong; `unknown_symbol` for a symbol the service does not list")


class UdfExchange(BaseModel):
    value: str
    name: str
    desc: str


class UdfSymbolType(BaseModel):
    name: str
    value: str


class UdfConfig(BaseModel):
    """GET /udf/config."""

    supported_resolutions: list[str]
    supports_search: bool
    supports_group_request: bool
    supports_marks: bool
    supports_timescale_marks: bool
    supports_time: bool
    exchanges: list[UdfExchange]
    symbols_types: list[UdfSymbolType]


class UdfSymbolInfo(BaseModel):
    """GET /udf/symbols: what the library needs to chart a symbol."""

    name: str
    ticker: str
    full_name: str
    description: str
    type: Literal["crypto", "forex"]
    exchange: str
    listed_exchange: str
    session: str
    timezone: str
    minmov: int
    pricescale: int
    has_intraday: bool
    has_daily: bool
    has_weekly_and_monthly: bool
    has_empty_bars: bool
    intraday_multipliers: list[str]
    supported_resolutions: list[str]
    volume_precision: int
    visible_plots_set: Literal["ohlcv", "ohlc"]
    data_status: Literal["streaming", "delayed_streaming"]


class UdfSearchResult(BaseModel):
    symbol: str
    full_name: str
    description: str
    exchange: str
    ticker: str
    type: Literal["crypto", "forex"]


class UdfBars(BaseModel):
    """GET /udf/history with bars: parallel arrays, ascending by open time (Unix seconds, UTC)."""

    s: Literal["ok"]
    t: list[int]
    o: list[float]
    h: list[float]
    l: list[float]  # noqa: E741 - the protocol's name
    c: list[float]
    v: list[float]


class UdfNoData(BaseModel):
    """GET /udf/history without bars in the range."""

    s: Literal["no_data"]
    nextTime: int | None = Field(  # the protocol's name
        default=None,
        description="open time of the newest bar before the range; absent when there is none",
    )


def config() -> dict[str, Any]:
    return UdfConfig(
        supported_resolutions=list(SUPPORTED_RESOLUTIONS),
        supports_search=True,
        supports_group_request=False,
        supports_marks=False,
        supports_timescale_marks=False,
        supports_time=True,
        exchanges=[
            UdfExchange(value="", name="All exchanges", desc=""),
            *(
                UdfExchange(value=EXCHANGES[a], name=EXCHANGES[a], desc=_EXCHANGE_DESCRIPTIONS[a])
                for a in AssetClass
            ),
        ],
        symbols_types=[
            UdfSymbolType(name="All types", value=""),
            *(UdfSymbolType(name=a.value, value=a.value) for a in AssetClass),
        ],
    ).model_dump()


def error_body(status: int, message: str, param: str | None) -> str:
    """A UDF error body; an unknown symbol is `unknown_symbol`, as the UDF adapter expects."""
    unknown = status == 404 and param == "symbol"
    return UdfError(errmsg="unknown_symbol" if unknown else message).model_dump_json()


# --- symbols and search ----------------------------------------------------------------------------


def _listed(service: MarketDataService, asset_class: AssetClass) -> list[str]:
    return service.get_symbols(asset_class).symbols


def _description(symbol: UdfSymbol, quote_assets: Iterable[str]) -> str:
    if symbol.asset_class is AssetClass.FOREX:
        base, _, quote = symbol.symbol.partition("/")
        return f"{base} / {quote}"
    for quote in sorted(quote_assets, key=len, reverse=True):
        if symbol.symbol.endswith(quote) and len(symbol.symbol) > len(quote):
            return f"{symbol.symbol[: -len(quote)]} / {quote}"
    return symbol.symbol


def symbol_info(service: MarketDataService, value: str) -> dict[str, Any]:
    """GET /udf/symbols: SymbolNotFound unless the service lists the symbol."""
    symbol = parse_symbol(value)
    if symbol.symbol not in _listed(service, symbol.asset_class):
        raise SymbolNotFound(symbol.symbol)
    crypto = symbol.asset_class is AssetClass.CRYPTO
    if crypto:
        price_decimals, volume_decimals = _crypto_precision(service, symbol.symbol)
    else:
        price_decimals, volume_decimals = forex_price_decimals(symbol.symbol), 0
    return UdfSymbolInfo(
        name=symbol.symbol,
        ticker=symbol.ticker,
        full_name=symbol.ticker,
        description=_description(symbol, service.settings.binance_quote_assets),
        type=symbol.asset_class.value,
        exchange=symbol.exchange,
        listed_exchange=symbol.exchange,
        session="24x7",
        timezone="Etc/UTC",
        minmov=1,
        pricescale=10**price_decimals,
        has_intraday=True,
        has_daily=True,
        has_weekly_and_monthly=True,
        has_empty_bars=False,
        intraday_multipliers=list(INTRADAY_MULTIPLIERS),
        supported_resolutions=list(SUPPORTED_RESOLUTIONS),
        volume_precision=volume_decimals,
        visible_plots_set="ohlcv" if crypto else "ohlc",
        # Crypto's forming bar is refreshed every few seconds; forex's at most once a minute (Twelve
        # Data credits), so it is marked delayed.
        data_status="streaming" if crypto else "delayed_streaming",
    ).model_dump()


def forex_price_decimals(pair: str) -> int:
    """5 decimals, 3 for JPY pairs (a pip is 0.0001, 0.01 for yen)."""
    return 3 if "JPY" in pair.split("/") else 5


def decimals(value: float) -> int:
    """Decimal places of a float as parsed from a provider's decimal string (shortest repr)."""
    text = repr(float(value))
    if "e" in text or "E" in text:
        text = f"{value:.{_MAX_DECIMALS}f}".rstrip("0")
    frac = text.partition(".")[2]
    return len(frac.rstrip("0"))


def _crypto_precision(service: MarketDataService, symbol: str) -> tuple[int, int]:
    """(price decimals, volume decimals) of a Binance symbol.

    From the symbol's tickSize and stepSize in exchangeInfo (the Binance client remembers them per
    process). When Binance cannot be asked, read off the symbol's recent bars, which are multiples of
    the tick: over a few hundred prices the finest one shows the tick's decimals. Without either (a
    listing this hour, the provider down with nothing cached) Binance's 8 decimals, not remembered: the
    symbol info never fails for want of them.
    """
    cached = _precision_cache.get(symbol)
    if cached is not None:
        return cached
    from_exchange = getattr(service.providers[AssetClass.CRYPTO], "price_decimals", None)
    if from_exchange is not None:
        try:
            found_there = from_exchange(symbol)
        except MarketDataError as exc:
            logger.warning("exchangeInfo unavailable for the price step", extra={"error": type(exc).__name__})
        else:
            if found_there is not None:
                _precision_cache[symbol] = found_there
                return found_there
    try:
        candles = service.get_historical_candles(symbol, Interval.H1, limit=_PRECISION_SAMPLE).candles
    except MarketDataError as exc:
        logger.warning("no bars to read the price step from", extra={"error": type(exc).__name__})
        candles = []
    if not candles:
        return _MAX_DECIMALS, _MAX_DECIMALS
    prices = (p for c in candles for p in (c.open, c.high, c.low, c.close))
    found = (
        min(_MAX_DECIMALS, max(decimals(p) for p in prices)),
        min(_MAX_DECIMALS, max(decimals(c.volume) for c in candles)),
    )
    _precision_cache[symbol] = found
    return found


_precision_cache: dict[str, tuple[int, int]] = {}


def reset_precision_cache() -> None:
    """Forget the price steps read so far (a new execution environment; tests)."""
    _precision_cache.clear()


def search(
    service: MarketDataService,
    query: str = "",
    type_: str = "",
    exchange: str = "",
    limit: int = DEFAULT_SEARCH_LIMIT,
) -> list[dict[str, Any]]:
    """GET /udf/search: the listed symbols matching `query` (case-insensitive, ignoring `/` and an
    exchange prefix): exact matches first, then prefixes, then the rest, alphabetically within each."""
    if not 1 <= limit <= MAX_SEARCH_LIMIT:
        raise InvalidRequest(f"limit must be from 1 to {MAX_SEARCH_LIMIT}", param="limit")
    classes = list(AssetClass)
    if type_:
        classes = [a for a in classes if a.value == type_.strip().lower()]
        if not classes:
            raise InvalidRequest(f"unknown type {type_[:20]!r}: use crypto, forex or nothing", param="type")
    if exchange:
        wanted = exchange.strip().upper()
        known = {EXCHANGES[a] for a in AssetClass}
        if wanted not in known:
            raise InvalidRequest(
                f"unknown exchange {exchange[:20]!r}: use {', '.join(sorted(known))} or nothing",
                param="exchange",
            )
        classes = [a for a in classes if EXCHANGES[a] == wanted]
    text = query.strip().upper()
    if ":" in text:
        text = text.split(":", 1)[1]
    needle = text.replace("/", "")
    found: list[tuple[int, str, AssetClass]] = []
    failure: MarketDataError | None = None
    for asset_class in classes:
        try:
            listed = _listed(service, asset_class)
        except MarketDataError as exc:  # one list unavailable: search the others
            logger.warning("symbol list unavailable for search", extra={"asset_class": asset_class.value})
            failure = failure or exc
            continue
        for name in listed:
            flat = name.replace("/", "")
            if needle and needle not in flat:
                continue
            rank = 0 if flat == needle or name == text else 1 if flat.startswith(needle) else 2
            found.append((rank, name, asset_class))
    if failure is not None and not found:  # nothing to search in, or nothing found where we could
        raise failure
    found.sort(key=lambda item: (item[0], item[1]))
    quotes = service.settings.binance_quote_assets
    results = []
    for _, name, asset_class in found[:limit]:
        symbol = UdfSymbol(name, asset_class)
        results.append(
            UdfSearchResult(
                symbol=name,
                full_name=symbol.ticker,
                description=_description(symbol, quotes),
                exchange=symbol.exchange,
                ticker=symbol.ticker,
                type=asset_class.value,
            ).model_dump()
        )
    return results


# --- history ---------------------------------------------------------------------------------------


@dataclass
class HistoryAnswer:
    candles: list[Candle]  # ascending
    next_time: int | None  # with no candles: the newest bar before the range, if any
    parts: list[HistoryResult] = field(default_factory=list)  # every service answer it was built from
    # The service answer reaching furthest towards the present: what Cache-Control follows.
    newest: HistoryResult | None = None

    @property
    def cache(self) -> CacheStatus:
        """hit when every part came from the cache; bypass or miss when any part did not."""
        states = {part.cache for part in self.parts}
        for status in (CacheStatus.BYPASS, CacheStatus.MISS):
            if status in states:
                return status
        return CacheStatus.HIT

    @property
    def provider_calls(self) -> int:
        return sum(part.provider_calls for part in self.parts)

    @property
    def rows_written(self) -> int:
        return sum(part.rows_written for part in self.parts)

    def body(self) -> str:
        """The UDF JSON answer."""
        if not self.candles:
            no_data: dict[str, Any] = {"s": "no_data"}
            if self.next_time is not None:
                no_data["nextTime"] = self.next_time
            return json.dumps(no_data)
        c = self.candles
        return json.dumps(
            {
                "s": "ok",
                "t": [b.time for b in c],
                "o": [b.open for b in c],
                "h": [b.high for b in c],
                "l": [b.low for b in c],
                "c": [b.close for b in c],
                "v": [b.volume for b in c],
            },
            separators=(",", ":"),
        )


#: (coarse interval, a, b) per fine interval and asset class: a fine bar opening at x has its content
#: in coarse bars whose open times lie within [x - a, x + b]; so the fine bars of the coarse bar opening
#: at c lie within [c - b, c + a]. Crypto: every interval is Binance's, on one UTC grid. Forex: the
#: intraday bars are on the UTC clock while a day is the New York trading day D (17:00 to 17:00 New
#: York, 21:00 or 22:00 UTC) served at D 00:00 UTC, so an hour's day may open up to 3 hours after it
#: (6 are allowed); weeks and months are built from the days dated in them.
_LOCATE: dict[tuple[AssetClass, Interval], tuple[Interval, int, int]] = {
    **{
        (asset_class, fine): (Interval.D1, _DAY, 0 if asset_class is AssetClass.CRYPTO else 6 * _HOUR)
        for asset_class in AssetClass
        for fine in (Interval.M1, Interval.M5, Interval.M15, Interval.M30, Interval.H1, Interval.H4)
    },
    **{(asset_class, Interval.D1): (Interval.MO1, 31 * _DAY, 0) for asset_class in AssetClass},
    **{(asset_class, Interval.W1): (Interval.MO1, 31 * _DAY, 7 * _DAY) for asset_class in AssetClass},
}
#: The monthly bars one look-up for the newest month before t asks for (the service looks back about
#: ten times as far before it says there are none: years, well past any listing gap).
_MONTHS_PROBE = 12
#: Service reads one countback answer may make: MAX_BARS in reads of 4000, plus jumps over a few gaps.
_COUNTBACK_READS = 12
#: Tries per level when a coarse bar's fine bars all lie at or after t (at most once in a row in
#: consistent data; bounded in case a provider's coarse and fine series disagree).
_LOCATE_TRIES = 3


class _History:
    """One UDF history request: service reads under one deadline, checked for completeness."""

    def __init__(self, service: MarketDataService, symbol: UdfSymbol, interval: Interval, deadline: float):
        self.service = service
        self.symbol = symbol
        self.interval = interval
        self.deadline = deadline  # time.monotonic()
        self.parts: list[HistoryResult] = []
        self.chunk = self._chunk()

    def _chunk(self) -> int:
        """The most bars one service read asks for: what one request's provider budget can fill whole
        (Binance: 4 pages of 1000 by default; Twelve Data: 5000), so a long answer costs what the same
        bars cost through /v1/candles, and a cold one is not cut by the budget of its first read."""
        from marketdata.limits import quota_for

        provider = self.service.providers[self.symbol.asset_class]
        ceiling = quota_for(provider.name, self.service.settings).max_per_request
        return max(1, min(MAX_LIMIT, provider.max_page_bars * ceiling))

    def read(
        self,
        interval: Interval,
        start: int | None,
        end: int,
        limit: int,
        *,
        include_open: bool = False,
    ) -> HistoryResult:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise IncompleteAnswer("the answer took longer than one request may")
        result = self.service.get_historical_candles(
            self.symbol.symbol, interval, start, max(0, end), limit, include_open, timeout=left
        )
        self.parts.append(result)
        if result.cache is CacheStatus.PARTIAL:
            raise IncompleteAnswer(
                f"the data provider could not supply every {self.interval.value} bar asked for in this "
                "request (what it did supply is cached)"
            )
        return result

    def newest_before(self, interval: Interval, t: int) -> int | None:
        """Open time of the newest closed `interval` bar opening before t, None when there is none."""
        if t <= 0:
            return None
        locate = _LOCATE.get((self.symbol.asset_class, interval))
        if locate is None:  # months: the top of the ladder
            candles = self.read(interval, None, t - 1, _MONTHS_PROBE).candles
            return candles[-1].time if candles else None
        coarse, a, b = locate
        bound = t + b  # every fine bar before t lies in a coarse bar opening before this
        for _ in range(_LOCATE_TRIES):
            c = self.newest_before(coarse, bound)
            if c is None:
                return None
            lo, hi = max(0, c - b), min(t - 1, c + a)
            if lo <= hi:
                # At most a day and a quarter of minutes, or five weeks of days: one read.
                candles = self.read(interval, lo, hi, MAX_LIMIT).candles
                if candles:
                    return candles[-1].time
            bound = c  # that coarse bar's fine bars all lie at or after t: look before it
        return None


def history(
    service: MarketDataService,
    symbol_value: str,
    resolution: str,
    from_: int | None,
    to: int,
    countback: int | None,
    *,
    timeout: float,
) -> HistoryAnswer:
    """GET /udf/history (see the module docstring). `timeout`: seconds the whole answer may take."""
    interval = resolution_interval(resolution)
    symbol = parse_symbol(symbol_value)
    if countback is not None and not 1 <= countback <= MAX_BARS:
        raise InvalidRequest(
            f"countback must be from 1 to {MAX_BARS}: one answer holds at most {MAX_BARS} bars, "
            "ask for fewer",
            param="countback",
        )
    if countback is None:
        if from_ is None:
            raise InvalidRequest("from is required without countback (Unix seconds)", param="from")
        if from_ >= to:
            raise InvalidRequest("from must be before to (to is exclusive)", param="from")
        span = count_bars(interval, from_, to - 1)
        if span > MAX_BARS:
            raise InvalidRequest(
                f"from..to spans {span} {interval.value} bars; one answer holds at most {MAX_BARS}: "
                "narrow the range (or use countback)",
                param="from",
            )
    run = _History(service, symbol, interval, time.monotonic() + timeout)
    if to <= 0:  # nothing opens before the epoch
        return HistoryAnswer([], None)
    if countback is not None:
        candles, newest = _countback(run, to, countback)
    else:
        assert from_ is not None
        candles, newest = _range(run, from_, to)
    next_time = None
    if not candles:
        next_time = run.newest_before(interval, to if countback is not None else from_ or 0)
    return HistoryAnswer(candles, next_time, run.parts, newest)


def _countback(run: _History, to: int, countback: int) -> tuple[list[Candle], HistoryResult]:
    """The `countback` bars before `to`, newest first, in service reads of at most `run.chunk`.

    A read that comes back short met a gap longer than the service looks across (a forex weekend for
    a few bars, an outage): the newest bar before the gap is located (`newest_before`) and the reads go
    on from there, so the answer holds `countback` bars whenever that many exist before `to`.
    """
    interval, now = run.interval, time.time()
    candles: list[Candle] = []
    newest: HistoryResult | None = None
    end = to - 1
    for _ in range(_COUNTBACK_READS):
        want = min(run.chunk, countback - len(candles))
        result = run.read(interval, None, end, want, include_open=newest is None)
        newest = newest or result
        chunk = result.candles
        candles = chunk + candles
        if len(candles) >= countback:
            break
        closed = sum(1 for c in chunk if is_closed(interval, c.time, now))
        if closed >= want and chunk:
            end = chunk[0].time - 1
            continue
        older = run.newest_before(interval, chunk[0].time if chunk else end + 1)
        if older is None:
            break  # nothing older exists
        end = older
    assert newest is not None
    return candles[-countback:], newest


def _range(run: _History, from_: int, to: int) -> tuple[list[Candle], HistoryResult]:
    """The bars opening in [from, to), in forward service reads of at most `run.chunk`, each continuing
    at the previous one's next_start."""
    candles: list[Candle] = []
    start: int | None = from_
    result: HistoryResult | None = None
    while start is not None:
        result = run.read(run.interval, start, to - 1, run.chunk, include_open=True)
        candles.extend(result.candles)
        start = result.next_start
    assert result is not None
    return candles, result
