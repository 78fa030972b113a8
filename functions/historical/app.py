"""GET /v1/candles: historical OHLCV candles, cache-first (API Gateway HTTP API, payload format 2.0).

A thin handler: Powertools validates the query against the declared types and bounds, the service
does the work (`marketdata.service`), and `marketdata.http` maps errors, sets the caching headers and
records metrics. On a cache hit Postgres builds the candles array as JSON in the read statement and the
handler splices it into the envelope (no bar becomes a Python object); otherwise the body is serialized
once, by pydantic-core. Either way it is handed to the resolver as a string so it is not encoded twice.
"""

from __future__ import annotations

import time
from typing import Annotated

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver
from aws_lambda_powertools.event_handler.openapi.params import Query

from marketdata import http, snapstart  # noqa: F401 (snapstart registers the SnapStart hooks)
from marketdata.intervals import Interval
from marketdata.schemas import DEFAULT_LIMIT, MAX_LIMIT, HistoryResponse
from marketdata.service import get_service

MAX_UNIX_SECONDS = 32503680000  # year 3000, as schemas.UnixSeconds

app = APIGatewayHttpResolver(enable_validation=True)
http.register_error_handlers(app)


@app.get(
    "/v1/candles",
    summary="Historical OHLCV candles",
    description=(
        "Candles for one symbol and interval, ascending by open time. `start` and `end` are inclusive bounds "
        "on the bar open time (Unix seconds, UTC). Neither bound: the latest `limit` closed bars. Only "
        "`start`: the first `limit` bars from it. Only `end`: the last `limit` bars up to it. Both: the bars "
        "in the range, at most `limit`; `next_start` is then the `start` of the next page, or null when "
        "nothing remains. Crypto symbols (BTCUSDT) come from Binance, forex pairs (EUR/USD) from Twelve Data."
    ),
    tags=["candles"],
    operation_id="getCandles",
    responses={
        **http.ok_response(HistoryResponse, "Candles, ascending by open time", with_x_cache=True),
        **http.error_responses(400, 403, 404, 502, 503),
    },
)
def get_candles(
    symbol: Annotated[
        str,
        Query(
            description="BTCUSDT (crypto, Binance) or EUR/USD (forex, Twelve Data); case-insensitive",
            min_length=1,
            max_length=64,
            examples=["BTCUSDT"],
        ),
    ],
    interval: Annotated[
        Interval,
        Query(description="1m 5m 15m 30m 1H 4H 1D 1W 1M (case matters: 1m is a minute, 1M a month)"),
    ],
    start: Annotated[
        int | None,
        Query(description="first bar open time to include (Unix seconds, UTC)", ge=0, le=MAX_UNIX_SECONDS),
    ] = None,
    end: Annotated[
        int | None,
        Query(description="last bar open time to include (Unix seconds, UTC)", ge=0, le=MAX_UNIX_SECONDS),
    ] = None,
    limit: Annotated[int, Query(description="maximum number of candles", ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    include_open: Annotated[
        bool, Query(description="append the still-open bar (fetched live, never cached)")
    ] = False,
):
    # No return annotation on purpose: the body is already JSON, validated by construction below, and
    # the resolver's response validation would re-validate and re-encode every candle.
    service = get_service()
    result = service.get_historical_candles(
        symbol, interval, start, end, limit, include_open,
        timeout=http.request_timeout(app, service.settings), candles_json=True,
    )
    body = http.history_body(result)
    http.record_answer_metrics(
        result.cache, provider_calls=result.provider_calls, rows_written=result.rows_written
    )
    return http.json_response(
        body,
        cache_control=http.history_cache_control(result, now=time.time()),
        x_cache=result.cache,
    )


lambda_handler = http.lambda_entry(app, operation="candles")
