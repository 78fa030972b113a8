"""GET /v1/symbols: the symbols one asset class offers (API Gateway HTTP API, payload format 2.0).

crypto: Binance spot pairs in the configured quote assets; forex: the Twelve Data pairs in scope.
The list is cached in Postgres for SYMBOLS_TTL_SECONDS (see `marketdata.service.get_symbols`); a stale
list is served when the provider fails, with a short Cache-Control.
"""

from __future__ import annotations

from marketdata import http, snapstart  # noqa: F401 (snapstart registers the SnapStart hooks)
from marketdata.resolver import APIGatewayHttpResolver
from marketdata.schemas import SymbolsQuery, SymbolsResponse
from marketdata.service import get_service

app = APIGatewayHttpResolver()
http.register_error_handlers(app)


@app.get(
    "/v1/symbols",
    summary="Symbols of an asset class",
    description="The symbols `GET /v1/candles` accepts for one asset class, sorted.",
    tags=["symbols"],
    operation_id="getSymbols",
    responses={
        **http.ok_response(SymbolsResponse, "Symbols, sorted", with_x_cache=True),
        **http.error_responses(400, 502, 503),
    },
)
@http.params(app, query=SymbolsQuery)
def get_symbols(query: SymbolsQuery):
    service = get_service()
    result = service.get_symbols(query.asset_class)
    body = SymbolsResponse(asset_class=result.asset_class, symbols=result.symbols).model_dump_json()
    http.record_answer_metrics(result.cache)
    return http.json_response(
        body,
        cache_control=http.symbols_cache_control(result, ttl_seconds=service.settings.symbols_ttl_seconds),
        x_cache=result.cache,
    )


lambda_handler = http.lambda_entry(app, operation="symbols")
