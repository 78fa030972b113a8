"""The data shapes of the service: candles, asset classes, and the API's request and response models.

`Candle` is a frozen slotted dataclass rather than a pydantic model because the hot paths build
thousands of them per request (a 5000-bar cache read); pydantic still validates and serializes it
wherever it appears inside the request and response models below. Bars coming from a provider are
checked by `marketdata.providers.base.validate_bar` before they become Candles.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError

from marketdata.errors import InvalidRequest
from marketdata.intervals import Interval, parse_interval

MAX_LIMIT = 5000
DEFAULT_LIMIT = 500
#: The latest time any API accepts (year 3000, Unix seconds): keeps calendar arithmetic in range. The
#: one definition: the query models, the service, the backfill and the UDF datafeed import it.
MAX_UNIX_SECONDS = 32503680000

# Binance documents ^[A-Z0-9-_.]{1,20}$ but lists some symbols with non-ASCII letters, so letters of any
# script are allowed (never quotes, spaces or punctuation beyond - _ .). Twelve Data forex: BASE/QUOTE with
# 2-10 letters each. Anything else never reaches a provider or the database.
_CRYPTO_SYMBOL = re.compile(r"^[\w\-.]{1,20}$")
_FOREX_SYMBOL = re.compile(r"^[A-Z]{2,10}/[A-Z]{2,10}$")


@dataclass(frozen=True, slots=True)
class Candle:
    """One OHLCV bar: `time` is the open time in Unix seconds (UTC); volume is 0 where a provider has none."""

    time: int
    open: float
    high: float
    low: float
    close: float
    volume: float = 0.0


class AssetClass(StrEnum):
    CRYPTO = "crypto"
    FOREX = "forex"


def detect_asset_class(symbol: str) -> AssetClass:
    """A symbol containing '/' is forex (EUR/USD), anything else crypto (BTCUSDT)."""
    return AssetClass.FOREX if "/" in symbol else AssetClass.CRYPTO


def normalize_symbol(symbol: object) -> str:
    """The canonical form of a symbol (upper case, trimmed), or InvalidRequest naming the parameter.

    Both providers use upper-case symbols; accepting `btcusdt` and `eur/usd` costs nothing and saves
    users a round trip. The pattern check keeps quotes, SQL and control characters out of every layer.
    """
    if not isinstance(symbol, str) or not symbol.strip():
        raise InvalidRequest("symbol is required, for example BTCUSDT or EUR/USD", param="symbol")
    text = symbol.strip().upper()
    pattern = _FOREX_SYMBOL if "/" in text else _CRYPTO_SYMBOL
    if not pattern.fullmatch(text):
        shown = text if len(text) <= 32 else text[:32] + "..."
        kind = (
            "a forex pair like EUR/USD"
            if "/" in text
            else "a crypto pair like BTCUSDT (letters, digits, - _ .)"
        )
        raise InvalidRequest(f"invalid symbol {shown!r}: expected {kind}", param="symbol")
    return text


class CacheStatus(StrEnum):
    """How an answer was produced; sent as the X-Cache header.

    hit: entirely from the cache, no provider call. miss: the cache was filled from the provider first.
    partial: the provider failed, so this is what the cache had (may be incomplete). bypass: the
    database was unavailable, so the provider answered directly.
    """

    HIT = "hit"
    MISS = "miss"
    PARTIAL = "partial"
    BYPASS = "bypass"


# --- requests ----------------------------------------------------------------------------------


def _domain_check(parse: Callable[[object], Any]) -> BeforeValidator:
    """A pydantic validator running one of the domain parsers, so every model accepts and rejects
    exactly what the service does, with the same message."""

    def check(value: object) -> Any:
        try:
            return parse(value)
        except InvalidRequest as exc:
            raise ValueError(exc.message) from None

    return BeforeValidator(check)


#: A symbol, normalized by normalize_symbol (upper case, pattern-checked).
SymbolField = Annotated[str, _domain_check(normalize_symbol)]
#: An app interval, parsed by intervals.parse_interval (with its "did you mean" hints).
IntervalField = Annotated[Interval, _domain_check(parse_interval)]

UnixSeconds = Annotated[int, Field(ge=0, le=MAX_UNIX_SECONDS)]
#: How validation messages describe a UnixSeconds parameter.
UNIX_SECONDS_HELP = f"Unix seconds (an integer from 0 to {MAX_UNIX_SECONDS})"


def _true_or_false(value: object) -> object:
    # Exactly what the README documents: pydantic alone would also take yes/1/on/TRUE, and a user who
    # wrote `include_open=1` should learn the spelling rather than rely on an undocumented alias.
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise PydanticCustomError("bool_parsing", "expected true or false")


#: A query flag: `true` or `false`, nothing else.
QueryBool = Annotated[bool, BeforeValidator(_true_or_false)]


def _lower_case(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


class HistoryQuery(BaseModel):
    """GET /v1/candles query: the one definition of its parameters, their bounds and descriptions (the
    handler validates the query string with it, the OpenAPI document is generated from it, and the
    service checks direct callers with it). start/end are inclusive bounds on bar open time."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: SymbolField = Field(
        description="BTCUSDT (crypto, Binance) or EUR/USD (forex, Twelve Data); case-insensitive",
        min_length=1,
        max_length=64,
        examples=["BTCUSDT"],
    )
    interval: IntervalField = Field(
        description="1m 5m 15m 30m 1H 4H 1D 1W 1M (case matters: 1m is a minute, 1M a month)"
    )
    start: UnixSeconds | None = Field(
        default=None, description="first bar open time to include (Unix seconds, UTC)"
    )
    end: UnixSeconds | None = Field(
        default=None, description="last bar open time to include (Unix seconds, UTC)"
    )
    limit: int = Field(default=DEFAULT_LIMIT, ge=1, le=MAX_LIMIT, description="maximum number of candles")
    include_open: QueryBool = Field(
        default=False, description="append the still-open bar (fetched live, never cached)"
    )

    @model_validator(mode="after")
    def _range(self) -> HistoryQuery:
        if self.start is not None and self.end is not None and self.start > self.end:
            # Raised as the domain error (pydantic passes it through): it names the parameter to change.
            raise InvalidRequest("start must not be after end", param="start")
        return self

    @property
    def asset_class(self) -> AssetClass:
        return detect_asset_class(self.symbol)


class SymbolsQuery(BaseModel):
    """GET /v1/symbols query."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Case-insensitive like symbols: `FOREX` is as clear as `forex`.
    asset_class: Annotated[AssetClass, BeforeValidator(_lower_case)] = Field(
        description="crypto (Binance pairs) or forex (Twelve Data pairs)"
    )


# --- responses ---------------------------------------------------------------------------------


_CANDLE_JSON: TypeAdapter[Candle] | None = None


def candle_json(candle: Candle) -> str:
    """One candle as it appears in a HistoryResponse body (the same serializer, built on first use)."""
    global _CANDLE_JSON
    if _CANDLE_JSON is None:
        _CANDLE_JSON = TypeAdapter(Candle)
    return _CANDLE_JSON.dump_json(candle).decode()


class HistoryResponse(BaseModel):
    """200 body of GET /v1/candles. Candles ascending by time."""

    symbol: str
    interval: Interval
    asset_class: AssetClass
    provider: Literal["binance", "twelve_data"]
    candles: list[Candle]
    next_start: int | None = Field(
        description="pass as start to get the next page; null when nothing remains"
    )


class SymbolsResponse(BaseModel):
    """200 body of GET /v1/symbols."""

    asset_class: AssetClass
    symbols: list[str]


class ErrorResponse(BaseModel):
    """Body of every error answer."""

    message: str
    param: str | None = None


# --- live messages: the WebSocket API (marketdata.live, marketdata.broadcast; issue 12) ---------------
# Every message is one JSON object. The client sends SubscribeMessage; the service sends the others, told
# apart by `type`. docs/live-messages.schema.json is generated from these models (scripts/gen_live_schema.py).


class SubscribeMessage(BaseModel):
    """Client -> service: follow (or stop following) the bars of one symbol and interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    action: Literal["subscribe", "unsubscribe"] = Field(description="what to do with the pair")
    symbol: SymbolField = Field(
        description="a listed symbol, as /v1/candles takes it: BTCUSDT or EUR/USD", examples=["BTCUSDT"]
    )
    interval: IntervalField = Field(description="1m 5m 15m 30m 1H 4H 1D 1W 1M (case matters)")


class SubscriptionReply(BaseModel):
    """Service -> client, the answer to a SubscribeMessage that was accepted."""

    type: Literal["subscribed", "unsubscribed"]
    symbol: str
    interval: Interval
    subscriptions: int = Field(description="how many pairs this connection follows now")


class PriceUpdate(BaseModel):
    """Service -> client: the newest state of a followed pair's bar. The forming bar as it moves
    (`is_closed` false, at most once per broadcaster tick), then the final bar once (`is_closed` true)."""

    type: Literal["price"] = "price"
    symbol: str
    interval: Interval
    candle: Candle = Field(description="the bar, in the shape of /v1/candles' candles")
    is_closed: bool


class ConnectionStatus(BaseModel):
    """Service -> client: the health of the provider stream behind the client's subscriptions
    (`reconnecting` while the service reconnects to the provider, `connected` once it is back)."""

    type: Literal["status"] = "status"
    status: Literal["connected", "reconnecting", "error"]
    message: str = ""
    provider: Literal["binance", "twelve_data"] | None = None


class LiveError(BaseModel):
    """Service -> client: a message that was refused (bad JSON, unknown action, unknown symbol, bad
    interval, too many subscriptions). `status` is the HTTP status /v1/candles would answer with."""

    type: Literal["error"] = "error"
    message: str
    param: str | None = Field(default=None, description="the offending field of the message")
    status: int = Field(description="400 bad input, 403 plan, 404 unknown symbol, 5xx service side")
