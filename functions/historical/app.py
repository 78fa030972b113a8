"""GET /v1/candles: historical OHLCV candles, cache-first (API Gateway HTTP API, payload format 2.0).

A thin handler: `schemas.HistoryQuery` validates the query (its one definition), the service
does the work (`marketdata.service`), and `marketdata.http` maps errors, sets the caching headers and
records metrics. On a cache hit Postgres builds the candles array as JSON in the read statement and the
handler splices it into the envelope (no bar becomes a Python object); otherwise the body is serialized
once, by pydantic-core. Either way it is handed to the resolver as a string so it is not encoded twice.
"""

from __future__ import annotations

import time

from marketdata import http, snapstart  # noqa: F401 (snapstart registers the SnapStart hooks)
from marketdata.resolver import APIGatewayHttpResolver
from marketdata.schemas import HistoryQuery, HistoryResponse
from marketdata.service import get_service

app = APIGatewayHttpResolver()
http.register_error_handlers(app)


@app.get(
    "/v1/candles",
    summary="Historical OHLCV candles",
    description=(
        "Candles for one symbol and interval, ascending by open time. `start` and `end` are inclusive bounds "
        "on the bar open time (Unix seconds, UTC). Neither bound: the latest `limit` closed bars. Only "
        "`start`: the first `limit` bars from it. Only `end`: the last `limit` bars up to it. Both: the bars "
        "in the range, at most `limit`. With `start` (with or without `end`), `next_start` is the `start` "
        "of the next page, or null when nothing remains; without `start` it is null. Crypto symbols "
        "(BTCUSDT) come from Binance, forex pairs (EUR/USD) from Twelve Data."
    ),
    tags=["candles"],
    operation_id="getCandles",
    responses={
        **http.ok_response(HistoryResponse, "Candles, ascending by open time", with_x_cache=True),
        **http.error_responses(400, 403, 404, 502, 503),
    },
)
@http.params(app, query=HistoryQuery)
def get_candles(query: HistoryQuery):
    # The body is already JSON, validated by construction (http.history_body): handed over as a string,
    # it is not encoded again.
    service = get_service()
    result = service.get_historical_candles(
        query.symbol,
        query.interval,
        query.start,
        query.end,
        query.limit,
        query.include_open,
        timeout=http.request_timeout(app, service.settings),
        candles_json=True,
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
