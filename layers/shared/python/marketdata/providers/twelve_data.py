"""Twelve Data forex time series and the fixed list of supported pairs.

Facts this module relies on (see docs/providers.md):
- `GET /time_series` with start_date/end_date returns at most `outputsize` (<= 5000) rows; without an
  end_date it returns the NEWEST rows, so every request names an explicit window. Whether end_date is
  inclusive is unverified (a date-only end_date was exclusive for 1day), so each window asks for one
  bar past its last wanted bar and the rows are filtered here: 4999 wanted bars + 1 = 5000 at most.
- Datetimes come back without an offset in the requested timezone (timezone=UTC); daily and longer
  intervals are date-only and read as 00:00 UTC. Forex rows carry no volume (stored as 0).
- Errors come as a body {"code", "message", "status": "error"}, with HTTP 200 or with the matching
  HTTP status; `code` may be a number or a numeric string. They are told apart by code AND message:
  only the "no bars here" messages are an empty, covered page (code 400 "No data is available on the
  specified dates" since 2026; code 404 "Data not found" and "nothing found ..." before). Code 404
  "**symbol** or **figi** parameter is missing or invalid" (formerly 400 "**symbol** not found") is
  SymbolNotFound; "... is available starting with the <X> plan" (code 404) is SymbolNotInPlan. Any
  other error is an error (an unrecognised 404 is UpstreamBadResponse), never an empty range, and the
  client raises before yielding the page, so nothing is stored or covered for it. Out of per-minute
  credits (429, either wording) waits for the next minute, out of daily credits for 00:00 UTC.

The API key goes in the `Authorization: apikey KEY` header, never in the URL: httpx logs request URLs
at INFO, and errors name only the path. Upstream messages are scrubbed of the key before they are
put into an error, in case one ever echoes it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator, Mapping
from datetime import datetime
from types import MappingProxyType

import httpx

from marketdata.errors import (
    InvalidRequest,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from marketdata.intervals import Interval, add_bars, next_open, parse_interval
from marketdata.providers.base import (
    Page,
    ProviderClient,
    assemble_page,
    plan_range,
    upstream_number,
    validate_bar,
)
from marketdata.providers.http import (
    Budget,
    Retry,
    read_json,
    retry_after_seconds,
    seconds_to_next_minute,
)
from marketdata.schemas import AssetClass, Candle

logger = logging.getLogger(__name__)

TIME_SERIES_PATH = "/time_series"
MAX_OUTPUTSIZE = 5000
# Twelve Data may publish a bar a little after it closes: a missing bar younger than this is "not yet
# there", not "does not exist", and is left out of the page's coverage (see assemble_page).
SETTLE_SECONDS = 120.0


# Error bodies are told apart by code AND message together (the same code means different things):
# (code, message prefix), case-insensitive, anything may follow the prefix. See docs/providers.md.
_NO_DATA_MESSAGES: tuple[tuple[int, re.Pattern[str]], ...] = (
    # A window without bars (a weekend, before the history starts): the 2026 wording.
    (400, re.compile(r"no data is available on the specified dates", re.IGNORECASE)),
    # Older wordings of the same (twelvedata-python issue 58; a client library's fixture).
    (404, re.compile(r"data not found", re.IGNORECASE)),
    (404, re.compile(r"nothing found", re.IGNORECASE)),
)
_UNKNOWN_SYMBOL_MESSAGES: tuple[tuple[int, re.Pattern[str]], ...] = (
    (404, re.compile(r"\*\*symbol\*\* or \*\*figi\*\* parameter is missing or invalid", re.IGNORECASE)),
    (400, re.compile(r"\*\*symbol\*\*\s+not found", re.IGNORECASE)),  # the older wording
)
# "This symbol is available starting with the Grow or Venture plan. Consider upgrading ..." (code 404;
# a 403 with the same words means the same).
_PLAN_GATED = re.compile(r"available starting with the\s+(.+?)\s+plan", re.IGNORECASE)
_PLAN_GATED_CODES = frozenset({403, 404})
_DAILY_QUOTA = re.compile(r"for the day|daily", re.IGNORECASE)
# "... for the current minute. 10 API credits were used, with the current limit of 8." (2026) and
# "... with the current limit being 8. Wait for the next minute ..." (older).
_MINUTE_QUOTA = re.compile(r"current minute|next minute|per minute", re.IGNORECASE)
# "**interval**", "**start_date**" ... in a 400 message name the offending parameter.
_PARAM_IN_MESSAGE = re.compile(r"\*\*(\w+)\*\*")
_PARAM_NAMES = {
    "symbol": "symbol",
    "interval": "interval",
    "start_date": "start",
    "end_date": "end",
    "outputsize": "limit",
}
_NO_DATA = object()
_EPOCH = datetime(1970, 1, 1)


class TwelveDataClient(ProviderClient):
    """Twelve Data REST client for forex. One instance per process (see marketdata.providers.get_provider)."""

    name = "twelve_data"
    display_name = "Twelve Data"
    asset_class = AssetClass.FOREX
    # Bars one request answers for: each window asks for one bar past its last wanted bar (see above).
    max_page_bars = MAX_OUTPUTSIZE - 1
    settle_seconds = SETTLE_SECONDS
    # Twelve Data anchors bars of 2h and longer at 17:00 New York, so its 4h bars lie off the UTC 4H
    # grid: 4H is built from 1h bars (on the UTC clock). 1D is Twelve Data's own trading-day bar, dated
    # by its New York trading date and served at 00:00 UTC of that date; weeks and months are built from
    # those days (how Twelve Data labels forex weeks and months is unverified; days nest in both).
    derived_intervals: Mapping[Interval, Interval] = MappingProxyType(
        {Interval.H4: Interval.H1, Interval.W1: Interval.D1, Interval.MO1: Interval.D1}
    )

    base_url_field = "twelve_data_rest_url"
    base_url_setting = "TWELVE_DATA_REST_URL"

    # After a 429 that was not waited out: no request before this instant (clock seconds). Set per
    # instance when that happens; the construction itself is ProviderClient's.
    _paused_until = 0.0

    # --- public interface ----------------------------------------------------------------------

    def iter_pages(self, symbol: str, interval: Interval | str, start: int, end: int) -> Iterator[Page]:
        """One page per window of at most 4999 bars covering [start, end] (see the Page docstring)."""
        interval = parse_interval(interval)
        api_key = self._settings.require_twelve_data_api_key()
        plan = plan_range(interval, start, end, self._clock())
        if plan is None:
            return
        window_start = plan.first
        while window_start <= plan.last:
            # 4999 wanted bars plus the one past them that we ask for and drop: 5000 rows at most.
            window_last = min(add_bars(interval, window_start, self.max_page_bars - 1), plan.last)
            request_end = next_open(interval, window_last)
            body = self._get(symbol, interval, window_start, request_end, api_key)
            if body is _NO_DATA:
                bars: list[Candle] = []
                dropped = 0
            else:
                bars, dropped = self._parse_values(body, interval, symbol, window_start, window_last)
            yield assemble_page(
                plan, window_start, window_last, bars, dropped=dropped, settle_seconds=self.settle_seconds
            )
            window_start = next_open(interval, window_last)

    fetch_timeseries = ProviderClient.fetch_candles  # the name Twelve Data gives them

    def get_available_symbols(self) -> list[str]:
        """The configured pairs (FOREX_PAIRS, default 25 majors and crosses), sorted. No request: the
        service's forex scope is this list."""
        return sorted(self._settings.forex_pairs)

    # --- requests ------------------------------------------------------------------------------

    def _get(
        self, symbol: str, interval: Interval, window_start: int, request_end: int, api_key: str
    ) -> object:
        params: dict[str, str | int] = {
            "symbol": symbol,
            "interval": interval.twelve_data,
            "start_date": _format_utc(window_start),
            "end_date": _format_utc(request_end),
            "timezone": "UTC",
            "order": "asc",
            "outputsize": MAX_OUTPUTSIZE,
        }
        logger.debug("Twelve Data GET %s %s", TIME_SERIES_PATH, params)
        try:
            return self._http.get(
                TIME_SERIES_PATH,
                params,
                headers={"Authorization": f"apikey {api_key}"},
                interpret=lambda response: self._interpret(response, symbol, api_key),
                before_attempt=self._check_not_paused,
            )
        except UpstreamRateLimited as exc:
            # Out of credits until retry_after: asking again before then only wastes a round trip.
            if exc.retry_after:
                self._paused_until = max(self._paused_until, self._clock() + exc.retry_after)
            raise

    def _check_not_paused(self, budget: Budget) -> None:
        wait = self._paused_until - self._clock()
        if wait > 0:
            raise UpstreamRateLimited(
                f"Twelve Data credits exhausted; retry in {math.ceil(wait)}s",
                provider=self.name,
                retry_after=math.ceil(wait),
            )

    def _interpret(self, response: httpx.Response, symbol: str, api_key: str) -> object:
        status = response.status_code
        left = response.headers.get("api-credits-left")
        if left is not None:
            logger.debug("Twelve Data credits left: %s", left)
        try:
            body = read_json(response, provider=self.name, display_name=self.display_name)
        except UpstreamBadResponse:
            # Not JSON (an HTML page from a proxy, say): the HTTP status is all there is to go on.
            if status >= 500:
                return Retry(UpstreamUnavailable(f"Twelve Data answered HTTP {status}", provider=self.name))
            if status in (401, 403):
                raise UpstreamAuthError(
                    f"Twelve Data rejected the API key (HTTP {status})", provider=self.name
                ) from None
            if status == 429:
                return self._rate_limited(response, "")
            raise
        if isinstance(body, dict) and body.get("status") == "error":
            return self._error_outcome(body, response, symbol, api_key)
        if status == 200:
            return body
        # A non-200 status with a body that is not a Twelve Data error body.
        if status >= 500:
            return Retry(UpstreamUnavailable(f"Twelve Data answered HTTP {status}", provider=self.name))
        if status == 429:
            return self._rate_limited(response, "")
        if status in (401, 403):
            raise UpstreamAuthError(f"Twelve Data rejected the API key (HTTP {status})", provider=self.name)
        raise UpstreamBadResponse(f"Twelve Data answered with unexpected HTTP {status}", provider=self.name)

    def _error_outcome(
        self, body: dict[str, object], response: httpx.Response, symbol: str, api_key: str
    ) -> object:
        code = _error_code(body.get("code"), response.status_code)
        raw_message = body.get("message")
        message = _scrub(raw_message if isinstance(raw_message, str) else "", api_key)
        if _known(_NO_DATA_MESSAGES, code, message):
            logger.info("Twelve Data has no bars for %s in this window: %s", symbol, message)
            return _NO_DATA
        if _known(_UNKNOWN_SYMBOL_MESSAGES, code, message):
            raise SymbolNotFound(symbol, self.name)
        gated = _PLAN_GATED.search(message) if code in _PLAN_GATED_CODES else None
        if gated is not None:
            raise SymbolNotInPlan(symbol, self.name, display_name=self.display_name, plan=gated.group(1)[:60])
        if code == 400:
            raise InvalidRequest(
                f"Twelve Data rejected the request: {message}", param=_param_from_message(message)
            )
        if code == 414:
            raise InvalidRequest(f"Twelve Data rejected the request: {message}")
        if code in (401, 403):
            raise UpstreamAuthError(
                f"Twelve Data refused the request (code {code}): {message}", provider=self.name
            )
        if code == 404:
            # Not one of the "no bars" messages: never read an unknown 404 as an empty range.
            raise UpstreamBadResponse(f"Twelve Data error 404: {message}", provider=self.name)
        if code == 429:
            return self._rate_limited(response, message)
        if code >= 500:
            return Retry(UpstreamUnavailable(f"Twelve Data error {code}: {message}", provider=self.name))
        raise UpstreamUnavailable(f"Twelve Data error {code}: {message}", provider=self.name)

    def _rate_limited(self, response: httpx.Response, message: str) -> Retry:
        header = retry_after_seconds(response.headers)
        now = self._clock()
        if header is not None:
            wait = header
        elif _DAILY_QUOTA.search(message) and not _MINUTE_QUOTA.search(message):
            wait = 86400 - now % 86400  # daily credits reset at 00:00 UTC
        else:
            # The per-minute credits (either wording), or a 429 that does not say: the next minute.
            wait = seconds_to_next_minute(now)
        detail = f": {message}" if message else ""
        return Retry(
            UpstreamRateLimited(
                f"Twelve Data credits exhausted (429){detail}",
                provider=self.name,
                retry_after=math.ceil(wait),
            ),
            delay=wait,
        )

    # --- parsing -------------------------------------------------------------------------------

    def _parse_values(
        self, body: object, interval: Interval, symbol: str, window_start: int, window_last: int
    ) -> tuple[list[Candle], int]:
        """Validated candles of the rows inside [window_start, window_last], and how many were dropped."""
        values = body.get("values") if isinstance(body, dict) else None
        if not isinstance(values, list):
            raise UpstreamBadResponse(
                "Twelve Data time_series: no 'values' list in the body", provider=self.name
            )
        bars: list[Candle] = []
        dropped = 0
        source = f"twelve_data {symbol} {interval.value}"
        for index, row in enumerate(values):
            what = f"Twelve Data row {index}"
            if not isinstance(row, dict):
                raise UpstreamBadResponse(
                    f"{what}: expected an object, got {type(row).__name__}", provider=self.name
                )
            open_time = self._parse_datetime(row.get("datetime"), what)
            if not window_start <= open_time <= window_last:
                continue  # the bar past the window that we asked for, or anything else outside it
            volume = row.get("volume")
            candle = validate_bar(
                interval,
                open_time,
                upstream_number(row.get("open"), provider=self.name, what=what),
                upstream_number(row.get("high"), provider=self.name, what=what),
                upstream_number(row.get("low"), provider=self.name, what=what),
                upstream_number(row.get("close"), provider=self.name, what=what),
                0.0
                if volume is None or volume == ""
                else upstream_number(volume, provider=self.name, what=what),
                source=source,
            )
            if candle is None:
                dropped += 1
            else:
                bars.append(candle)
        return bars, dropped

    def _parse_datetime(self, value: object, what: str) -> float:
        """'YYYY-MM-DD HH:MM:SS' (UTC, as requested) or 'YYYY-MM-DD' (00:00 UTC) -> Unix seconds."""
        if not isinstance(value, str):
            raise UpstreamBadResponse(f"{what}: datetime missing", provider=self.name)
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            shown = value if len(value) <= 30 else value[:30] + "..."
            raise UpstreamBadResponse(f"{what}: unreadable datetime {shown!r}", provider=self.name) from None
        if parsed.tzinfo is None:
            return (parsed - _EPOCH).total_seconds()  # naive values are UTC (timezone=UTC was asked for)
        return parsed.timestamp()


def _format_utc(t: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _scrub(message: str, api_key: str) -> str:
    """The upstream message, without the key (replaced before truncating, so no piece of it survives)."""
    if api_key:
        message = message.replace(api_key, "***")
    return message[:300]


def _error_code(raw: object, http_status: int) -> int:
    """The body's `code` (a JSON number or a numeric string), else the HTTP status."""
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, float) and raw.is_integer():
        return int(raw)
    if isinstance(raw, str) and raw.strip().isdigit():
        return int(raw.strip())
    return http_status


def _known(messages: tuple[tuple[int, re.Pattern[str]], ...], code: int, message: str) -> bool:
    """Whether (code, message) is one of `messages`: same code, message starting with the pattern."""
    text = message.strip()
    return any(code == known and pattern.match(text) for known, pattern in messages)


def _param_from_message(message: str) -> str | None:
    match = _PARAM_IN_MESSAGE.search(message)
    return _PARAM_NAMES.get(match.group(1)) if match else None
