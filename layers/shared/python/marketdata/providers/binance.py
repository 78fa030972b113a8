"""Binance spot market data: klines (candles) and the list of tradable symbols.

No API key is needed. Facts this module relies on (see docs/providers.md):
- `GET /api/v3/klines` takes startTime/endTime in milliseconds and returns at most `limit` (<= 1000)
  rows, oldest first, with openTime in [startTime, endTime]. A startTime inside a bar skips that bar.
  Paging therefore advances by the last returned open time (+1 ms), never by fixed widths (months).
- Limits are per IP (6000 request weight per minute); every response carries X-MBX-USED-WEIGHT-1M.
  Ignoring 429s earns an IP ban (418), so after a 429/418 this client refuses to call Binance again
  until the advertised time has passed, and it stops itself before a configurable share of the
  minute's weight is used.

Error mapping: -1121 -> SymbolNotFound; other -11xx (bad parameters) -> InvalidRequest;
429 -> waits Retry-After when it fits the retry budget, else UpstreamRateLimited; 418 ->
UpstreamRateLimited at once; 403 (Binance's web application firewall blocked the request) and
451 (restricted location) -> UpstreamUnavailable with a message saying so: neither is the API
user's fault, and neither goes away by retrying; 5xx, timeouts and connection errors -> retried with
backoff, then UpstreamUnavailable; any other 4xx -> UpstreamUnavailable, not retried.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import httpx

from marketdata.config import Settings
from marketdata.errors import (
    InvalidRequest,
    MarketDataError,
    SymbolNotFound,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from marketdata.intervals import Interval, next_open, parse_interval
from marketdata.providers.base import (
    Page,
    ProviderClient,
    assemble_page,
    plan_range,
    upstream_number,
    validate_bar,
    validate_bars,
)
from marketdata.providers.http import (
    Budget,
    Retry,
    WeightCounter,
    read_json,
    retry_after_seconds,
    seconds_to_next_minute,
)
from marketdata.schemas import AssetClass, Candle, normalize_symbol

logger = logging.getLogger(__name__)

KLINES_PATH = "/api/v3/klines"
EXCHANGE_INFO_PATH = "/api/v3/exchangeInfo"
KLINES_WEIGHT = 2
EXCHANGE_INFO_WEIGHT = 20
WEIGHT_HEADER = "x-mbx-used-weight-1m"
# Bans last 2 minutes to 3 days; when neither Retry-After nor the message says how long, assume the minimum.
DEFAULT_BAN_SECONDS = 120.0
SYMBOL_NOT_FOUND_CODE = -1121
INVALID_INTERVAL_CODE = -1120
# Binance's own parameter names -> this API's names, for InvalidRequest.param.
_PARAM_NAMES = {
    "symbol": "symbol",
    "interval": "interval",
    "startTime": "start",
    "endTime": "end",
    "limit": "limit",
}
_PARAM_IN_MESSAGE = re.compile(r"parameter '?([A-Za-z]+)'?", re.IGNORECASE)
_BANNED_UNTIL = re.compile(r"banned until (\d{12,14})")


class BinanceClient(ProviderClient):
    """Binance spot REST client. One instance per process (see marketdata.providers.get_provider)."""

    name = "binance"
    display_name = "Binance"
    asset_class = AssetClass.CRYPTO
    max_page_bars = 1000
    # Binance cuts every app interval on the service's grid (UTC days, Monday weeks, calendar months).
    derived_intervals: Mapping[Interval, Interval] = MappingProxyType({})
    base_url_field = "binance_rest_url"
    base_url_setting = "BINANCE_REST_URL"

    def __init__(self, settings: Settings, **options: Any) -> None:
        """`options`: ProviderClient's (http, clock, sleep, monotonic, rng)."""
        super().__init__(settings, **options)
        self._decimals: dict[str, tuple[int, int]] = {}  # price_decimals, per symbol
        # This minute's request weight: the last X-MBX-USED-WEIGHT-1M seen plus the requests in flight
        # (pages are fetched by several threads at once: see WeightCounter).
        self._weight = WeightCounter(settings.binance_weight_safety_share * settings.binance_weight_limit)
        # After a 429 we did not wait out, or a 418 ban: no request before this instant (clock seconds).
        self._blocked_until = 0.0

    # --- public interface ----------------------------------------------------------------------

    def iter_pages(self, symbol: str, interval: Interval | str, start: int, end: int) -> Iterator[Page]:
        """Pages of at most 1000 bars covering [start, end], one request each (see the Page docstring).

        A page shorter than 1000 rows, or one whose last open time reaches the range end, is the last.
        """
        interval = parse_interval(interval)
        # A bar within BINANCE_CLOSE_GRACE_SECONDS of its close may still be a draft: treated as open.
        plan = plan_range(interval, start, end, self._clock() - self._settings.binance_close_grace_seconds)
        if plan is None:
            return
        page_start = plan.first
        cursor_ms = plan.first * 1000
        end_ms = plan.last * 1000  # a bar whose openTime equals endTime is included
        while True:
            rows = self._get(
                KLINES_PATH,
                {
                    "symbol": symbol,
                    "interval": interval.binance,
                    "startTime": cursor_ms,
                    "endTime": end_ms,
                    "limit": self.max_page_bars,
                },
                weight=KLINES_WEIGHT,
                symbol=symbol,
            )
            row_count, bars, dropped, last_open_ms = self._parse_klines(rows, interval, symbol)
            full = row_count >= self.max_page_bars
            done = not full or last_open_ms >= end_ms
            if not done and last_open_ms < cursor_ms:
                # A full page that does not move forward would make us loop forever.
                raise UpstreamBadResponse(
                    "Binance returned a full page of klines older than the requested startTime",
                    provider=self.name,
                )
            page_end = plan.last if done else last_open_ms // 1000
            yield assemble_page(plan, page_start, page_end, bars, dropped=dropped)
            if done:
                return
            cursor_ms = last_open_ms + 1
            page_start = next_open(interval, last_open_ms // 1000)

    fetch_klines = ProviderClient.fetch_candles  # the name Binance gives them

    def get_available_symbols(self) -> list[str]:
        """Symbols with status TRADING whose quote asset is in BINANCE_QUOTE_ASSETS, sorted."""
        body = self._get(EXCHANGE_INFO_PATH, {}, weight=EXCHANGE_INFO_WEIGHT, symbol="")
        entries = body.get("symbols") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            raise UpstreamBadResponse("Binance exchangeInfo has no 'symbols' list", provider=self.name)
        quotes = set(self._settings.binance_quote_assets)
        found: set[str] = set()
        for entry in entries:
            if not isinstance(entry, dict):
                continue
            symbol = entry.get("symbol")
            if (
                not isinstance(symbol, str)
                or entry.get("status") != "TRADING"
                or entry.get("quoteAsset") not in quotes
            ):
                continue
            if _requestable(symbol):
                found.add(symbol)
            else:
                logger.info("Binance symbol %r skipped: this API cannot accept it as a symbol", symbol)
        return sorted(found)

    def price_decimals(self, symbol: str) -> tuple[int, int] | None:
        """(price decimals, quantity decimals) of `symbol`: the decimals of its exchangeInfo tickSize
        (PRICE_FILTER) and stepSize (LOT_SIZE; 8 when absent). None when Binance does not list it.
        One exchangeInfo request per symbol per process: they change about never."""
        if symbol in self._decimals:
            return self._decimals[symbol]
        body = self._get(EXCHANGE_INFO_PATH, {"symbol": symbol}, weight=EXCHANGE_INFO_WEIGHT, symbol=symbol)
        entries = body.get("symbols") if isinstance(body, dict) else None
        entry = next((e for e in entries or [] if isinstance(e, dict) and e.get("symbol") == symbol), None)
        if entry is None:
            return None
        filters = {f.get("filterType"): f for f in entry.get("filters") or [] if isinstance(f, dict)}
        tick = _step_decimals(filters.get("PRICE_FILTER", {}).get("tickSize"))
        step = _step_decimals(filters.get("LOT_SIZE", {}).get("stepSize"))
        found = (8 if tick is None else tick, 8 if step is None else step)
        self._decimals[symbol] = found
        return found

    # --- requests ------------------------------------------------------------------------------

    def _get(self, path: str, params: dict[str, str | int], *, weight: int, symbol: str) -> object:
        logger.debug("Binance GET %s %s", path, params)
        try:
            return self._http.get(
                path,
                params,
                interpret=lambda response: self._interpret(response, symbol),
                before_attempt=lambda budget: self._before_request(weight, budget),
            )
        except UpstreamRateLimited as exc:
            # Calling Binance again before the advertised time turns a 429 into a ban, and a ban
            # into a longer one: every later call in this process fails fast instead.
            if exc.retry_after:
                self._blocked_until = max(self._blocked_until, self._clock() + exc.retry_after)
            raise

    def _before_request(self, weight: int, budget: Budget) -> None:
        now = self._clock()
        if now < self._blocked_until:
            wait = self._blocked_until - now
            raise UpstreamRateLimited(
                f"Binance asked us to pause; retry in {math.ceil(wait)}s",
                provider=self.name,
                retry_after=math.ceil(wait),
            )
        wait = self._weight.reserve(weight, now)
        if not wait:
            return
        used = self._weight.used
        if budget.fits(wait):
            logger.warning(
                "Binance request weight %d of %d used this minute: waiting %.1fs for the next minute",
                used,
                self._settings.binance_weight_limit,
                wait,
            )
            budget.sleep(wait)
            self._weight.restart(weight, self._clock())
            return
        raise UpstreamRateLimited(
            f"Binance request weight nearly used up for this minute ({used} of "
            f"{self._settings.binance_weight_limit}); retry in {math.ceil(wait)}s",
            provider=self.name,
            retry_after=math.ceil(wait),
        )

    def _note_weight(self, response: httpx.Response) -> None:
        value = response.headers.get(WEIGHT_HEADER)
        if value is None:
            return
        try:
            used = int(value)
        except ValueError:
            return
        self._weight.note(used, self._clock())

    def _interpret(self, response: httpx.Response, symbol: str) -> object | Retry:
        self._note_weight(response)
        status = response.status_code
        if status == 200:
            return read_json(response, provider=self.name, display_name=self.display_name)
        if status == 429:
            header = retry_after_seconds(response.headers)
            wait = header if header is not None else seconds_to_next_minute(self._clock())
            return Retry(
                UpstreamRateLimited(
                    f"Binance rate limit reached (HTTP 429); retry in {math.ceil(wait)}s",
                    provider=self.name,
                    retry_after=math.ceil(wait),
                ),
                delay=wait,
            )
        if status == 418:
            wait = self._ban_seconds(response)
            raise UpstreamRateLimited(
                f"Binance has banned this IP address for too many requests (HTTP 418); "
                f"retry in {math.ceil(wait)}s",
                provider=self.name,
                retry_after=math.ceil(wait),
            )
        if status >= 500:
            return Retry(UpstreamUnavailable(f"Binance answered HTTP {status}", provider=self.name))
        if status == 403:
            raise UpstreamUnavailable(
                "Binance refused the request (HTTP 403: blocked by its web application firewall)",
                provider=self.name,
            )
        if status == 451:
            raise UpstreamUnavailable(
                "Binance refuses requests from this location (HTTP 451); deploy in another region or set "
                "BINANCE_REST_URL to an endpoint that serves it",
                provider=self.name,
            )
        if 400 <= status < 500:
            raise self._client_error(response, symbol)
        raise UpstreamBadResponse(f"Binance answered with unexpected HTTP {status}", provider=self.name)

    def _ban_seconds(self, response: httpx.Response) -> float:
        header = retry_after_seconds(response.headers)
        if header is not None:
            return header
        _, message = _error_body(response)
        match = _BANNED_UNTIL.search(message)
        if match:
            remaining = int(match.group(1)) / 1000 - self._clock()
            if remaining > 0:
                return remaining
        return DEFAULT_BAN_SECONDS

    def _client_error(self, response: httpx.Response, symbol: str) -> MarketDataError:
        code, message = _error_body(response)
        status = response.status_code
        if code == SYMBOL_NOT_FOUND_CODE:
            return SymbolNotFound(symbol, self.name)
        if code is not None and -1199 <= code <= -1100:
            param = "interval" if code == INVALID_INTERVAL_CODE else _param_from_message(message)
            return InvalidRequest(f"Binance rejected the request: {message or f'code {code}'}", param=param)
        detail = f" (code {code}: {message})" if code is not None else ""
        return UpstreamUnavailable(f"Binance answered HTTP {status}{detail}", provider=self.name)

    # --- parsing -------------------------------------------------------------------------------

    def _parse_klines(
        self, rows: object, interval: Interval, symbol: str
    ) -> tuple[int, list[Candle], int, int]:
        """The row count, the validated candles, how many were dropped, and the newest raw open time in
        ms (-1 without rows)."""
        if not isinstance(rows, list):
            raise UpstreamBadResponse(
                f"Binance klines: expected a list of rows, got {type(rows).__name__}", provider=self.name
            )
        numbers: list[tuple[float, float, float, float, float, float]] = []
        last_open_ms = -1
        for index, row in enumerate(rows):
            if not isinstance(row, list) or len(row) < 6:
                shape = f"{len(row)} fields" if isinstance(row, list) else type(row).__name__
                raise UpstreamBadResponse(
                    f"Binance kline row {index}: expected 12 fields, got {shape}", provider=self.name
                )
            open_ms = row[0]
            numbers.append(kline_numbers(open_ms, row[1:6], what=f"Binance kline row {index}"))
            last_open_ms = max(last_open_ms, open_ms)
        bars, dropped = validate_bars(interval, numbers, source=f"binance {symbol} {interval.value}")
        return len(rows), bars, dropped, last_open_ms


def kline_numbers(
    open_ms: object, ohlcv: Sequence[object], *, what: str
) -> tuple[float, float, float, float, float, float]:
    """(open time in s, open, high, low, close, volume) of one Binance kline, from its open time in ms
    and its five numbers (strings, as REST rows and the kline stream carry them). A value that is not a
    number at all is UpstreamBadResponse; the bar's sanity is validate_bar's (or validate_bars')."""
    if isinstance(open_ms, bool) or not isinstance(open_ms, int):
        raise UpstreamBadResponse(f"{what}: open time is not an integer", provider=BinanceClient.name)
    if len(ohlcv) != 5:
        raise UpstreamBadResponse(f"{what}: expected 5 prices and volume", provider=BinanceClient.name)
    try:
        # Numeric strings, as Binance sends them, in one step (bools go the careful way below).
        if True in ohlcv or False in ohlcv:
            raise TypeError
        o, h, low, c, v = map(float, ohlcv)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        o, h, low, c, v = (upstream_number(x, provider=BinanceClient.name, what=what) for x in ohlcv)
    open_time = open_ms // 1000 if open_ms % 1000 == 0 else open_ms / 1000
    return (open_time, o, h, low, c, v)


def kline_candle(
    interval: Interval, open_ms: object, ohlcv: Sequence[object], *, source: str, what: str
) -> Candle | None:
    """One Binance kline (see kline_numbers) as a validated Candle; None: dropped by validate_bar, logged."""
    return validate_bar(interval, *kline_numbers(open_ms, ohlcv, what=what), source=source)


def _error_body(response: httpx.Response) -> tuple[int | None, str]:
    """Binance's {"code": -1121, "msg": "..."} when the body has that shape, else (None, "")."""
    try:
        body = response.json()
    except (ValueError, UnicodeDecodeError):
        return None, ""
    if not isinstance(body, dict):
        return None, ""
    code = body.get("code")
    message = body.get("msg")
    return (
        code if isinstance(code, int) and not isinstance(code, bool) else None,
        message[:300] if isinstance(message, str) else "",
    )


def _param_from_message(message: str) -> str | None:
    match = _PARAM_IN_MESSAGE.search(message)
    return _PARAM_NAMES.get(match.group(1)) if match else None


def _step_decimals(step: object) -> int | None:
    """Decimals of an exchangeInfo step ("0.01000000" -> 2, "1.00000000" -> 0), None if unreadable."""
    if not isinstance(step, str):
        return None
    try:
        value = float(step)
    except ValueError:
        return None
    if not value > 0:
        return None
    frac = step.partition(".")[2].rstrip("0")
    return len(frac)


def _requestable(symbol: str) -> bool:
    """Whether the service accepts this symbol as it is (Binance lists a few names it could not)."""
    try:
        return normalize_symbol(symbol) == symbol
    except MarketDataError:
        return False
