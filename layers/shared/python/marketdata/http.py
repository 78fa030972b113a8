"""What the HTTP functions share: parameters, error mapping, caching headers, responses, observability.

This is the ONE place that turns the typed errors of `marketdata.errors` (and a query that fails its
model, `QueryInvalid`, see `params`) into HTTP answers, so the functions cannot drift apart:

    InvalidRequest / InvalidInterval / bad query types  -> 400 {"message", "param"}
    SymbolNotFound                                      -> 404 {"message", "param": "symbol"}
    SymbolNotInPlan                                     -> 403 {"message", "param": "symbol"}: the pair
                                                           needs a higher provider plan than the service's
    UpstreamRateLimited                                 -> 503 + Retry-After (whole seconds, rounded up)
    IncompleteAnswer                                    -> 503 + Retry-After: a whole answer (UDF history)
                                                           could not be completed in this request
    UpstreamUnavailable / BadResponse / AuthError       -> 502
    ConfigurationError, DatabaseUnavailable, any bug    -> 503 (logged with its stack; the body says only
                                                           what the caller can act on, and the request id)

No input, however odd, produces a 500 or a stack trace: every handler is wrapped by `lambda_entry`,
which also catches what escapes the resolver itself. Errors are never cached (`Cache-Control: no-store`).
The body is `{"message", "param"}` (ErrorResponse) unless a function speaks another protocol: the UDF
function passes its own `ErrorBody` renderer (`{"s": "error", "errmsg"}`) and parameter descriptions,
and the mapping stays this one.

Observability: one Powertools Logger (JSON, Lambda context and the API Gateway request id as
correlation id, one "answered" line per request with status, X-Cache and latency), one Metrics object
(EMF, namespace "MarketData", dimension Operation=candles|symbols: CacheHit/CacheMiss/CachePartial/
CacheBypass, ProviderCalls, RowsWritten, Latency (ms), ClientErrors, ServerErrors, ColdStart), and
X-Ray tracing only when `TRACING_ENABLED` is true (it needs aws-xray-sdk, which the layer does not
ship by default). The stdlib loggers of the domain modules (`logging.getLogger("marketdata.…")`) are
routed into the same JSON stream. Nothing here imports boto3.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from aws_lambda_powertools import Logger, Metrics
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled
from pydantic import BaseModel, ValidationError

from marketdata.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    IncompleteAnswer,
    InvalidRequest,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamAuthError,
    UpstreamError,
    UpstreamRateLimited,
)
from marketdata.intervals import Interval, bar_open, is_closed, next_open
from marketdata.resolver import APIGatewayHttpResolver, NotFoundError, Response, content_types
from marketdata.schemas import MAX_LIMIT, UNIX_SECONDS_HELP, CacheStatus, ErrorResponse, HistoryResponse

if TYPE_CHECKING:
    from marketdata.config import Settings
    from marketdata.service import HistoryResult, SymbolsResult

SERVICE_NAME = os.environ.get("POWERTOOLS_SERVICE_NAME") or "marketdata"
METRICS_NAMESPACE = os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "MarketData"


class _CurrentStdout:
    """sys.stdout as it is at each write, not as it was at import.

    Every Powertools Logger with this service name shares the handler created first; binding it to
    the import-time stdout would send the logs of whoever imports later (another function module in
    the same process, a test capturing output) to a stream they cannot see. On Lambda it is the same.
    """

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


logger = Logger(service=SERVICE_NAME, stream=_CurrentStdout())  # type: ignore[arg-type]
metrics = Metrics(namespace=METRICS_NAMESPACE, service=SERVICE_NAME)
_log = logging.getLogger(__name__)


def _route_domain_logs_to_powertools() -> None:
    """Send `marketdata.*` stdlib log records through the Powertools JSON handler.

    With the default service name the Powertools logger *is* the "marketdata" logger, so the domain
    loggers already propagate to it; with another name the package logger gets the same handler.
    Done with a handler on the parent rather than copy_config_to_registered_loggers so modules imported
    later (lazily, on the path that needs them) are covered too.
    """
    package_logger = logging.getLogger("marketdata")
    if logger.name == package_logger.name:
        return
    package_logger.handlers[:] = [logger.registered_handler]
    package_logger.setLevel(logger.log_level)
    package_logger.propagate = False


_route_domain_logs_to_powertools()


# --- errors ------------------------------------------------------------------------------------

#: Seconds a client is told to wait when a provider rate-limits us without saying for how long:
#: both providers' quotas are per minute.
DEFAULT_RETRY_AFTER_SECONDS = 60
NO_STORE = "no-store"


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error answer before it becomes an HTTP response."""

    status: int
    message: str
    param: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


#: Renders an error answer's body (JSON text).
ErrorBody = Callable[[ApiError], str]


def error_json(error: ApiError) -> str:
    """The service's error body: ErrorResponse `{"message", "param"}`."""
    return ErrorResponse(message=error.message, param=error.param).model_dump_json()


def error_for_exception(
    exc: BaseException, *, request_id: str | None = None, param_help: Mapping[str, str] | None = None
) -> ApiError:
    """The answer for an exception raised while serving a request (the single mapping)."""
    if isinstance(exc, QueryInvalid):
        return error_for_validation(exc.errors, param_help)
    if isinstance(exc, InvalidRequest):  # InvalidInterval included
        return ApiError(400, exc.message, exc.param)
    if isinstance(exc, SymbolNotFound):
        return ApiError(404, exc.message, "symbol")
    if isinstance(exc, SymbolNotInPlan):
        # Not the caller's typo and not a passing outage: the deployment's plan lacks this pair.
        _log.warning("provider %s: %s is outside the service's plan", exc.provider, exc.symbol)
        return ApiError(403, exc.message, "symbol")
    if isinstance(exc, UpstreamRateLimited):
        wait = DEFAULT_RETRY_AFTER_SECONDS
        if exc.retry_after is not None and math.isfinite(exc.retry_after):
            wait = max(1, math.ceil(exc.retry_after))
        return ApiError(
            503,
            f"{exc.message}; nothing cached covers this request, retry after {wait} s",
            headers={"Retry-After": str(wait)},
        )
    if isinstance(exc, IncompleteAnswer):
        wait = max(1, exc.retry_after)
        return ApiError(503, f"{exc.message}; retry after {wait} s", headers={"Retry-After": str(wait)})
    if isinstance(exc, UpstreamAuthError):
        # An operator problem (our key was refused): say so without any detail about the key.
        _log.error("provider %s rejected the service's credentials: %s", exc.provider, exc.message)
        return ApiError(502, f"the data provider ({exc.provider}) refused the service's credentials")
    if isinstance(exc, UpstreamError):  # UpstreamUnavailable, UpstreamBadResponse and any other
        return ApiError(502, exc.message)
    if isinstance(exc, ConfigurationError):
        # The message names settings and variables: useful in the logs, not to API users.
        _log.error("configuration error: %s", exc.message)
        return ApiError(
            503, _with_request_id("the service is not configured to answer this request", request_id)
        )
    if isinstance(exc, DatabaseUnavailable):
        _log.error("database unavailable: %s", exc.message)
        return ApiError(503, _with_request_id("the service is temporarily unavailable", request_id))
    _log.exception("unexpected error while serving a request", exc_info=exc)
    return ApiError(503, _with_request_id("the service could not answer this request", request_id))


def _with_request_id(message: str, request_id: str | None) -> str:
    return f"{message} (request id {request_id})" if request_id else message


#: How each query parameter is described in validation messages (every function's shared ones).
_PARAM_HELP: dict[str, str] = {
    "symbol": "a symbol such as BTCUSDT or EUR/USD",
    "start": UNIX_SECONDS_HELP,
    "end": UNIX_SECONDS_HELP,
    "limit": f"an integer from 1 to {MAX_LIMIT}",
    "include_open": "true or false",
    "asset_class": "crypto or forex",
}


def error_for_validation(errors: list[Any], param_help: Mapping[str, str] | None = None) -> ApiError:
    """400 naming the first offending parameter, in words a user can act on (`errors`: pydantic's, from
    a query model; `param_help`: a function's own descriptions of its parameters, over the shared ones).
    A domain parser's own message (a symbol's or an interval's, with its hints) is passed on as it is."""
    help_for = {**_PARAM_HELP, **(param_help or {})}
    if not errors:
        return ApiError(400, "invalid request")
    first = errors[0]
    loc = [str(part) for part in first.get("loc", ()) if not isinstance(part, int)]
    param = loc[0] if loc else None
    if param is None:
        return ApiError(400, "invalid request")
    if first.get("type") == "missing":
        hint = f": {help_for[param]}" if param in help_for else ""
        return ApiError(400, f"{param} is required{hint}", param)
    domain = (first.get("ctx") or {}).get("error") if first.get("type") == "value_error" else None
    if domain is not None:
        return ApiError(400, str(domain), param)
    expected = help_for.get(param)
    detail = f"expected {expected}" if expected else str(first.get("msg", "invalid value"))
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return ApiError(400, f"invalid {param}: {detail}{more}", param)


class QueryInvalid(Exception):
    """A request's query (or path) parameters failed their model; mapped to 400 by error_for_validation."""

    def __init__(self, errors: list[Any]) -> None:
        super().__init__(f"{len(errors)} invalid parameter(s)")
        self.errors = errors


_M = TypeVar("_M", bound=BaseModel)


def parse_params(model: type[_M], values: Mapping[str, Any] | None) -> _M:
    """`values` (query string or path parameters) validated by `model`, or QueryInvalid. Parameters the
    model does not name are ignored, as a web API does; pydantic turns the strings into the fields' types."""
    names = {info.alias or name for name, info in model.model_fields.items()}
    known = {key: value for key, value in (values or {}).items() if key in names}
    try:
        return model.model_validate(known)
    except ValidationError as exc:
        raise QueryInvalid(exc.errors(include_url=False)) from None


_F = TypeVar("_F", bound=Callable[..., Any])


def params(
    app: APIGatewayHttpResolver, *, query: type[BaseModel] | None = None, path: type[BaseModel] | None = None
) -> Callable[[_F], _F]:
    """Declare a route's parameters as pydantic models (under `@app.get(...)`): the route function gets
    the validated `query` model as its first argument and the path model's fields as keywords.

    The one place a handler's parameters are checked (Powertools' own validation, `enable_validation`,
    would build a second definition of every bound and cost about a third of a cold start in imports);
    scripts/gen_openapi.py documents the parameters from the same models (`query_model`, `path_model`)."""

    def decorate(func: _F) -> _F:
        def route(**path_values: Any) -> Any:
            args = [parse_params(query, app.current_event.query_string_parameters)] if query else []
            if path is not None:
                path_values = parse_params(path, path_values).model_dump()
            return func(*args, **path_values)

        route.__name__ = func.__name__
        route.__qualname__ = func.__qualname__
        route.__doc__ = func.__doc__
        route.query_model = query  # type: ignore[attr-defined]
        route.path_model = path  # type: ignore[attr-defined]
        return route  # type: ignore[return-value]

    return decorate


def error_response(error: ApiError, body: ErrorBody = error_json) -> Response:
    return Response(
        status_code=error.status,
        content_type=content_types.APPLICATION_JSON,
        body=body(error),
        headers={"Cache-Control": NO_STORE, **error.headers},
    )


def register_error_handlers(
    app: APIGatewayHttpResolver,
    *,
    body: ErrorBody = error_json,
    param_help: Mapping[str, str] | None = None,
) -> None:
    """Route every exception a route can raise through `error_for_exception`, rendered by `body`."""

    def handle(exc: Exception) -> Response:
        error = error_for_exception(exc, request_id=_request_id(app), param_help=param_help)
        return error_response(error, body)

    # The most specific handler wins (Powertools walks the exception's MRO), so this one catch-all
    # covers typed errors, validation errors and bugs alike.
    app.exception_handler(Exception)(handle)

    @app.not_found
    def not_found(_: NotFoundError) -> Response:
        event = app.current_event
        return error_response(ApiError(404, f"no route for {event.http_method} {event.path}"), body)


def _request_id(app: APIGatewayHttpResolver) -> str | None:
    try:
        return app.current_event.request_context.request_id
    except Exception:
        return None


# --- caching headers ----------------------------------------------------------------------------

#: Closed bars never change: answers entirely about the closed past may be kept a day by any cache.
LONG_CACHE_CONTROL = "public, max-age=86400, immutable"
MIN_MAX_AGE = 5
#: Answers reaching the present are kept at most this long, whatever the interval.
MAX_SHORT_MAX_AGE = 600
#: ... and answers carrying the still-open bar (include_open) at most this long: whoever asks for the
#: forming bar wants it current, on a 1D chart as on a 1H one (it is refetched every 2 s for Binance,
#: every 60 s for Twelve Data: BINANCE_/TWELVE_DATA_OPEN_BAR_TTL_SECONDS).
MAX_OPEN_BAR_MAX_AGE = 60


def request_timeout(app: APIGatewayHttpResolver, settings: Settings) -> float:
    """Seconds the current request may take: the Lambda's remaining time less the answer's margin
    (REQUEST_DEADLINE_MARGIN_SECONDS), at most REQUEST_TIMEOUT_SECONDS (also what it is outside Lambda)."""
    context = getattr(app, "lambda_context", None)
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if remaining is None:
        return settings.request_timeout_seconds
    try:
        left = float(remaining()) / 1000
    except (TypeError, ValueError):
        return settings.request_timeout_seconds
    return max(0.0, min(settings.request_timeout_seconds, left - settings.request_deadline_margin_seconds))


def history_cache_control(result: HistoryResult, *, now: float) -> str:
    """Cache-Control for a candles answer.

    - partial (provider failed, cache incomplete): a few seconds, so a retry soon gets the full answer.
    - entirely about the closed past: long (the bars are final).
    - reaching the present: until the current bar closes (that is when the answer changes), but no
      longer than a tenth of the interval (a provider may publish a just-closed bar a little late),
      at most MAX_SHORT_MAX_AGE; with the still-open bar no longer than a sixtieth of the interval (it
      changes with every trade), at most MAX_OPEN_BAR_MAX_AGE; at least 5 s.
    """
    if result.cache is CacheStatus.PARTIAL:
        return f"public, max-age={MIN_MAX_AGE}"
    if not result.reaches_present:
        return LONG_CACHE_CONTROL
    interval: Interval = result.interval
    until_close = next_open(interval, bar_open(interval, int(now))) - now
    last_time = result.last_time
    has_open_bar = last_time is not None and not is_closed(interval, last_time, now)
    if has_open_bar:
        share, ceiling = interval.nominal_seconds // 60, MAX_OPEN_BAR_MAX_AGE
    else:
        share, ceiling = interval.nominal_seconds // 10, MAX_SHORT_MAX_AGE
    max_age = max(MIN_MAX_AGE, min(int(until_close), share, ceiling))
    return f"public, max-age={max_age}"


_NO_CANDLES = '"candles":[]'


def history_body(result: HistoryResult) -> str:
    """The 200 body of a candles answer: serialized once by pydantic-core, or, when the service built the
    candles array in Postgres (result.candles_json), the envelope by pydantic with that text spliced in
    (nothing decoded or re-encoded). Both give the same JSON."""
    envelope = HistoryResponse(
        symbol=result.symbol,
        interval=result.interval,
        asset_class=result.asset_class,
        provider=result.provider,  # type: ignore[arg-type]
        candles=[] if result.candles_json is not None else result.candles,
        next_start=result.next_start,
    ).model_dump_json()
    if result.candles_json is None:
        return envelope
    # Symbols never contain quotes (schemas.normalize_symbol), so the marker occurs once: the field.
    head, _, tail = envelope.partition(_NO_CANDLES)
    return f'{head}"candles":{result.candles_json}{tail}'


def symbols_cache_control(result: SymbolsResult, *, ttl_seconds: int) -> str:
    """Cache-Control for a symbols answer: the list's own freshness window, a minute when stale."""
    if result.stale or result.cache is CacheStatus.PARTIAL:
        return "public, max-age=60"
    return f"public, max-age={max(MIN_MAX_AGE, min(ttl_seconds, 3600))}"


# --- responses ----------------------------------------------------------------------------------

#: Bodies smaller than this are not worth compressing (one TCP segment).
GZIP_MIN_BYTES = 1400
# Level 1: a 5000-candle body (~650 kB) shrinks 3.4x in ~4 ms; level 9 saves 10% more for 10x the CPU.
GZIP_LEVEL = 1


def json_response(
    body: str,
    *,
    cache_control: str,
    x_cache: CacheStatus | None = None,
    content_type: str = content_types.APPLICATION_JSON,
) -> Response:
    """A 200 with an already serialized body (the resolver does not re-encode strings): JSON unless
    `content_type` says otherwise (the chart page, its script, the UDF server time)."""
    headers = {"Cache-Control": cache_control, "Vary": "Accept-Encoding"}
    if x_cache is not None:
        headers["X-Cache"] = x_cache.value
    return Response(status_code=200, content_type=content_type, body=body, headers=headers)


def gzip_result(event: Mapping[str, Any], result: dict[str, Any]) -> dict[str, Any]:
    """Compress a successful JSON result when the client accepts gzip.

    API Gateway HTTP APIs do not compress, and a 5000-candle answer is several hundred kB. Done on the
    finished Lambda result (not in the route) so the resolver never sees bytes.
    """
    body = result.get("body")
    if result.get("statusCode") != 200 or result.get("isBase64Encoded") or not isinstance(body, str):
        return result
    if len(body) < GZIP_MIN_BYTES:
        return result
    headers = event.get("headers") or {}
    accept = next((str(v) for k, v in headers.items() if str(k).lower() == "accept-encoding"), "")
    if not accepts_gzip(accept):
        return result
    import base64  # only for answers worth compressing
    import zlib

    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    payload = compressor.compress(body.encode()) + compressor.flush()
    result_headers = dict(result.get("headers") or {})
    result_headers["Content-Encoding"] = "gzip"
    return {
        **result,
        "headers": result_headers,
        "body": base64.b64encode(payload).decode(),
        "isBase64Encoded": True,
    }


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (q=0 refuses it)."""
    for part in accept_encoding.lower().split(","):
        name, _, params = part.strip().partition(";")
        if name.strip() in {"gzip", "*"}:
            q = params.strip()
            if q.startswith("q="):
                try:
                    return float(q[2:]) > 0
                except ValueError:
                    return False
            return True
    return False


# --- metrics ------------------------------------------------------------------------------------

_CACHE_METRIC = {
    CacheStatus.HIT: "CacheHit",
    CacheStatus.MISS: "CacheMiss",
    CacheStatus.PARTIAL: "CachePartial",
    CacheStatus.BYPASS: "CacheBypass",
}


def record_answer_metrics(cache: CacheStatus, *, provider_calls: int = 0, rows_written: int = 0) -> None:
    metrics.add_metric(name=_CACHE_METRIC[cache], unit=MetricUnit.Count, value=1)
    metrics.add_metric(name="ProviderCalls", unit=MetricUnit.Count, value=provider_calls)
    metrics.add_metric(name="RowsWritten", unit=MetricUnit.Count, value=rows_written)


# --- the Lambda entry point -------------------------------------------------------------------

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """X-Ray tracing is opt-in: TRACING_ENABLED=true and not POWERTOOLS_TRACE_DISABLED=true."""
    env = os.environ if environ is None else environ
    on = env.get("TRACING_ENABLED", "").strip().lower() in {"1", "true", "yes"}
    off = env.get("POWERTOOLS_TRACE_DISABLED", "").strip().lower() in {"1", "true", "yes"}
    return on and not off


def lambda_entry(
    app: APIGatewayHttpResolver, *, operation: str, body: ErrorBody = error_json
) -> LambdaHandler:
    """Wrap a resolver into the Lambda handler: logging context, metrics flush, optional tracing, and a
    last-resort catch so even a failure outside the routes answers JSON (rendered by `body`), never a
    stack trace."""

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        started = time.perf_counter()
        try:
            result = gzip_result(event, app.resolve(event, context))
        except Exception as exc:
            result = raw_error_result(error_for_exception(exc, request_id=_safe_request_id(event)), body)
        elapsed_ms = round((time.perf_counter() - started) * 1000, 3)
        _account(event, result, elapsed_ms)
        return result

    return instrumented(handler, operation=operation, correlation_id_path=correlation_paths.API_GATEWAY_HTTP)


def instrumented(
    handler: Callable[[Any, Any], Any], *, operation: str, correlation_id_path: str | None = None
) -> Callable[[Any, Any], Any]:
    """Every function's Lambda handler around its work: the logging context (Lambda context, correlation
    id), the Operation dimension, the metrics flush with the cold-start metric, and optional tracing."""

    def with_dimension(event: Any, context: Any) -> Any:
        metrics.add_dimension(name="Operation", value=operation)
        return handler(event, context)

    measured = metrics.log_metrics(with_dimension, capture_cold_start_metric=True)

    def metered(event: Any, context: Any) -> Any:
        if not is_metrics_disabled():
            return measured(event, context)
        # Metrics off (POWERTOOLS_METRICS_DISABLED, as the local API sets it): Powertools would still
        # print the ColdStart blob and, flushing nothing, keep every request's metrics and its Operation
        # dimension (warning when the next function's differs); forget them after each request instead.
        try:
            return with_dimension(event, context)
        finally:
            metrics.clear_metrics()

    wrapped: Callable[[Any, Any], Any] = logger.inject_lambda_context(
        metered, correlation_id_path=correlation_id_path, clear_state=True
    )
    if tracing_enabled():
        wrapped = _traced(wrapped)
    return wrapped


def _account(event: Mapping[str, Any], result: Mapping[str, Any], elapsed_ms: float) -> None:
    """One metric set and one access-log line per invocation (Logs Insights: filter by status, x_cache)."""
    status = int(result.get("statusCode", 0))
    metrics.add_metric(name="Latency", unit=MetricUnit.Milliseconds, value=elapsed_ms)
    if status >= 500:
        metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=1)
    elif status >= 400:
        metrics.add_metric(name="ClientErrors", unit=MetricUnit.Count, value=1)
    headers = result.get("headers") or {}
    raw_query = event.get("rawQueryString") if isinstance(event, Mapping) else None
    _log.info(
        "answered",
        extra={
            "status": status,
            "x_cache": headers.get("X-Cache"),
            "latency_ms": elapsed_ms,
            "path": event.get("rawPath") if isinstance(event, Mapping) else None,
            # Query strings carry no secrets here (no keys or tokens are ever passed in them).
            "query": raw_query[:500] if isinstance(raw_query, str) else None,
        },
    )


def _traced(handler: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    try:
        from aws_lambda_powertools import Tracer

        return Tracer(service=SERVICE_NAME).capture_lambda_handler(handler)
    except Exception:  # aws-xray-sdk missing: serve untraced rather than fail every request
        _log.warning("TRACING_ENABLED is set but X-Ray tracing could not start (is aws-xray-sdk installed?)")
        return handler


def _safe_request_id(event: object) -> str | None:
    if isinstance(event, dict):
        context = event.get("requestContext")
        if isinstance(context, dict) and isinstance(context.get("requestId"), str):
            return context["requestId"]
    return None


def raw_error_result(error: ApiError, body: ErrorBody = error_json) -> dict[str, Any]:
    """An API Gateway v2 result dict for an error, built without the resolver."""
    return {
        "statusCode": error.status,
        "headers": {
            "Content-Type": content_types.APPLICATION_JSON,
            "Cache-Control": NO_STORE,
            **error.headers,
        },
        "body": body(error),
        "isBase64Encoded": False,
    }


# --- OpenAPI: the documented answers --------------------------------------------------------------

_ERROR_DESCRIPTIONS = {
    400: "Invalid input: the message names the problem and `param` the offending query parameter",
    403: "The symbol exists but needs a higher data-provider plan (Twelve Data) than the service's",
    404: "Unknown symbol",
    502: "The data provider failed (unavailable, unreadable answer, or refused the service's credentials) "
    "and the cache has nothing for this request",
    503: "The data provider is rate limiting and nothing cached covers this request (see Retry-After), "
    "or the service is not configured or temporarily unavailable",
}


def error_responses(
    *statuses: int, model: type = ErrorResponse, descriptions: Mapping[int, str] | None = None
) -> dict[int, dict[str, Any]]:
    """OpenAPI response objects for the given error statuses (all share one body model, ErrorResponse
    unless the function speaks another protocol)."""
    described = {**_ERROR_DESCRIPTIONS, **(descriptions or {})}
    out: dict[int, dict[str, Any]] = {}
    for status in statuses:
        headers: dict[str, Any] = {
            "Cache-Control": {"description": "always no-store", "schema": {"type": "string"}},
        }
        if status == 503:
            headers["Retry-After"] = {
                "description": "seconds to wait before retrying (sent when the provider rate-limits)",
                "schema": {"type": "integer", "minimum": 1},
            }
        out[status] = {
            "description": described[status],
            "headers": headers,
            "content": {content_types.APPLICATION_JSON: {"model": model}},
        }
    return out


def ok_response(
    model: Any,
    description: str,
    *,
    with_x_cache: bool,
    content_type: str | tuple[str, ...] = content_types.APPLICATION_JSON,
    cache_control: str = "long for answers about the closed past, a few seconds to minutes for answers "
    "reaching the present",
) -> dict[int, dict[str, Any]]:
    """The documented 200: a `model` body, or a plain string body (model None) of `content_type` (or
    of any of several)."""
    types = (content_type,) if isinstance(content_type, str) else content_type
    headers: dict[str, Any] = {
        "Cache-Control": {"description": cache_control, "schema": {"type": "string"}},
    }
    if with_x_cache:
        headers["X-Cache"] = {
            "description": "hit: from the cache; miss: the cache was filled from the provider first; "
            "partial: the provider failed, this is what the cache had; bypass: the database was unavailable",
            "schema": {"type": "string", "enum": [status.value for status in CacheStatus]},
        }
    return {
        200: {
            "description": description,
            "headers": headers,
            "content": {t: {"model": model} if model else {"schema": {"type": "string"}} for t in types},
        }
    }
