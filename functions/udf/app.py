"""GET /udf/{config,symbols,search,history,time}: a TradingView UDF datafeed (API Gateway HTTP API, 2.0).

Point TradingView's UDF adapter at `<api>/udf`. A thin handler like the others: the query models of
`marketdata.udf` validate the query, `marketdata.udf` speaks the protocol over the cache-first service,
and `marketdata.http` maps errors (rendered in UDF's `{"s": "error", "errmsg"}` shape), sets the
caching headers (history as for /v1/candles) and records metrics. The service is imported on the
first data request only, so /udf/config and /udf/time answer without loading it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from marketdata import http, snapstart, udf  # noqa: F401 (snapstart registers the SnapStart hooks)
from marketdata.resolver import APIGatewayHttpResolver, content_types
from marketdata.schemas import UNIX_SECONDS_HELP

if TYPE_CHECKING:
    from marketdata.service import MarketDataService

PARAM_HELP = {
    "resolution": f"one of {', '.join(udf.SUPPORTED_RESOLUTIONS)}",
    "from": UNIX_SECONDS_HELP,
    "to": UNIX_SECONDS_HELP,
    "countback": f"an integer from 1 to {udf.MAX_BARS} (one answer holds at most {udf.MAX_BARS} bars: "
    "ask for fewer)",
    "limit": f"an integer from 1 to {udf.MAX_SEARCH_LIMIT}",
    "query": "at most 64 characters",
    "type": "crypto, forex or nothing",
    "exchange": f"{', '.join(udf.EXCHANGES.values())} or nothing",
}
#: Config and symbol answers change rarely; the server time never may be cached.
CONFIG_CACHE_CONTROL = "public, max-age=3600"
SYMBOLS_CACHE_CONTROL = "public, max-age=300"
ERRORS = {
    400: "Invalid input: errmsg names the offending parameter",
    404: "errmsg `unknown_symbol`: the service does not list the symbol",
    503: "The answer could not be completed in this request (see Retry-After), the provider is rate "
    "limiting, or the service is not configured or temporarily unavailable",
}


def _udf_error(error: http.ApiError) -> str:
    return udf.error_body(error.status, error.message, error.param)


app = APIGatewayHttpResolver()
http.register_error_handlers(app, body=_udf_error, param_help=PARAM_HELP)


def _service() -> MarketDataService:
    from marketdata.service import get_service

    return get_service()


def _errors(*statuses: int) -> dict[int, dict]:
    return http.error_responses(*statuses, model=udf.UdfError, descriptions=ERRORS)


def _json(body: object) -> str:
    import json

    return json.dumps(body, separators=(",", ":"))


@app.get(
    "/udf/config",
    summary="UDF datafeed configuration",
    description="What the datafeed supports: the nine resolutions, search, server time; no marks, no "
    "group requests.",
    tags=["udf"],
    operation_id="udfConfig",
    responses={
        **http.ok_response(udf.UdfConfig, "The configuration", with_x_cache=False,
                           cache_control="an hour"),
        **_errors(503),
    },
)  # fmt: skip
def get_config():
    return http.json_response(_json(udf.config()), cache_control=CONFIG_CACHE_CONTROL)


@app.get(
    "/udf/symbols",
    summary="UDF symbol info",
    description="The symbol info the library charts a symbol with: BTCUSDT or BINANCE:BTCUSDT (Binance), "
    "EUR/USD or TWELVEDATA:EUR/USD (forex). pricescale follows the symbol's price step (forex: 5 "
    "decimals, 3 for JPY pairs).",
    tags=["udf"],
    operation_id="udfSymbols",
    responses={
        **http.ok_response(udf.UdfSymbolInfo, "The symbol info", with_x_cache=False,
                           cache_control="five minutes"),
        **_errors(400, 404, 502, 503),
    },
)  # fmt: skip
@http.params(app, query=udf.UdfSymbolQuery)
def get_symbol(query: udf.UdfSymbolQuery):
    return http.json_response(
        _json(udf.symbol_info(_service(), query.symbol)), cache_control=SYMBOLS_CACHE_CONTROL
    )


@app.get(
    "/udf/search",
    summary="UDF symbol search",
    description="Listed symbols matching the query (case-insensitive, `/` optional): exact matches first, "
    "then prefixes, then the rest.",
    tags=["udf"],
    operation_id="udfSearch",
    responses={
        **http.ok_response(list[udf.UdfSearchResult], "Matching symbols", with_x_cache=False,
                           cache_control="five minutes"),
        **_errors(400, 502, 503),
    },
)  # fmt: skip
@http.params(app, query=udf.UdfSearchQuery)
def get_search(query: udf.UdfSearchQuery):
    found = udf.search(_service(), query.query, query.type, query.exchange, query.limit)
    return http.json_response(_json(found), cache_control=SYMBOLS_CACHE_CONTROL)


@app.get(
    "/udf/history",
    summary="UDF bars",
    description=(
        "Bars opening in [from, to) (`to` exclusive), or with `countback` the `countback` bars before `to` "
        "(from ignored), ascending, from the same cache-first service as /v1/candles. At most "
        f"{udf.MAX_BARS} bars per answer: a wider range or a larger countback is refused, never cut. "
        "No bars: `no_data`, with `nextTime` the newest bar before the range when there is one. The "
        "still-open bar is included when the range reaches it."
    ),
    tags=["udf"],
    operation_id="udfHistory",
    responses={
        **http.ok_response(udf.UdfBars | udf.UdfNoData, "Bars, or no_data", with_x_cache=True),
        **_errors(400, 403, 404, 502, 503),
    },
)
@http.params(app, query=udf.UdfHistoryQuery)
def get_history(query: udf.UdfHistoryQuery):
    service = _service()
    answer = udf.history(
        service, query.symbol, query.resolution, query.from_, query.to, query.countback,
        timeout=http.request_timeout(app, service.settings),
    )  # fmt: skip
    http.record_answer_metrics(
        answer.cache, provider_calls=answer.provider_calls, rows_written=answer.rows_written
    )
    now = time.time()
    if answer.newest is None:
        cache_control = http.LONG_CACHE_CONTROL
    else:
        cache_control = http.history_cache_control(answer.newest, now=now)
    return http.json_response(answer.body(), cache_control=cache_control, x_cache=answer.cache)


@app.get(
    "/udf/time",
    summary="UDF server time",
    description="The server's time, Unix seconds, as text.",
    tags=["udf"],
    operation_id="udfTime",
    responses={
        **http.ok_response(None, "Unix seconds", with_x_cache=False, content_type=content_types.TEXT_PLAIN,
                           cache_control="always no-store"),
        **_errors(503),
    },
)  # fmt: skip
def get_time():
    return http.json_response(
        str(int(time.time())), cache_control=http.NO_STORE, content_type=content_types.TEXT_PLAIN
    )


lambda_handler = http.lambda_entry(app, operation="udf", body=_udf_error)
