"""The WebSocket API's handler (functions/live): connections, subscribe and unsubscribe messages.

API Gateway routes every frame on `$request.body.action`: `$connect`, `$disconnect`, `subscribe`,
`unsubscribe`, and `$default` for anything else (bad JSON, an unknown action). The answer to a message
is the route response (the `body` returned here, sent to the caller by API Gateway): a
SubscriptionReply, or a LiveError. Input is validated exactly as /v1/candles validates it: the symbol
normalized and checked against the listed symbols with the same hints (`EURUSD` -> `EUR/USD`), the nine
intervals; errors are mapped once, by marketdata.http's mapping, and carry its status.

Subscriptions are rows in Postgres (marketdata.subscriptions), at most
LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION per connection; `$disconnect` removes the connection's rows. The
broadcaster (marketdata.broadcast) reads them and posts the bars.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from pydantic import ValidationError

from marketdata import http
from marketdata.errors import DatabaseUnavailable, InvalidRequest, MarketDataError
from marketdata.schemas import LiveError, SubscribeMessage, SubscriptionReply
from marketdata.service import MarketDataService, get_service
from marketdata.subscriptions import Subscriptions

#: The message every refused frame's error points to.
EXPECTED = '{"action": "subscribe" or "unsubscribe", "symbol": "BTCUSDT", "interval": "1m"}'
_ACTIONS = ("subscribe", "unsubscribe")


def parse_message(body: object) -> SubscribeMessage:
    """The client's frame as a SubscribeMessage, or InvalidRequest naming what is wrong."""
    if not isinstance(body, str) or not body.strip():
        raise InvalidRequest(f"empty message: send {EXPECTED}", param="action")
    try:
        data = json.loads(body)
    except ValueError:
        raise InvalidRequest(f"the message is not JSON: send {EXPECTED}", param="action") from None
    if not isinstance(data, dict):
        raise InvalidRequest(f"the message is not a JSON object: send {EXPECTED}", param="action")
    action = data.get("action")
    if action not in _ACTIONS:
        shown = json.dumps(action)[:40] if action is not None else "none"
        raise InvalidRequest(f"unknown action {shown}: send {EXPECTED}", param="action")
    try:
        return SubscribeMessage.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = str(first["loc"][0]) if first.get("loc") else "action"
        if first.get("type") == "missing":
            raise InvalidRequest(f"{field} is required: send {EXPECTED}", param=field) from None
        if first.get("type") == "extra_forbidden":
            raise InvalidRequest(f"unexpected field {field!r}: send {EXPECTED}", param=field) from None
        # The domain validators' own words (normalize_symbol, parse_interval and its hints).
        message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        raise InvalidRequest(message, param=field) from None


def error_reply(exc: BaseException, *, request_id: str | None = None) -> LiveError:
    """The error message for a refused frame: marketdata.http's one mapping, as a message."""
    error = http.error_for_exception(exc, request_id=request_id)
    return LiveError(message=error.message, param=error.param, status=error.status)


def on_message(
    service: MarketDataService, subscriptions: Subscriptions, connection_id: str, body: object, now: float
) -> SubscriptionReply:
    """Apply one subscribe/unsubscribe frame; typed errors propagate (error_reply renders them)."""
    message = parse_message(body)
    if message.action == "unsubscribe":
        left = subscriptions.unsubscribe(connection_id, message.symbol, message.interval)
        return SubscriptionReply(
            type="unsubscribed", symbol=message.symbol, interval=message.interval, subscriptions=left
        )
    asset_class = service.check_listed(message.symbol)
    held = subscriptions.subscribe(
        connection_id, message.symbol, message.interval, asset_class, now,
        limit=service.settings.live_max_subscriptions_per_connection,
    )
    return SubscriptionReply(
        type="subscribed", symbol=message.symbol, interval=message.interval, subscriptions=held
    )


def _body(event: Mapping[str, Any]) -> object:
    body = event.get("body")
    if event.get("isBase64Encoded") and isinstance(body, str):
        try:
            return base64.b64decode(body).decode("utf-8")
        except ValueError:
            return None  # a binary frame: refused as not JSON
    return body


def handle(event: Mapping[str, Any], service: MarketDataService | None = None) -> dict[str, Any]:
    """One WebSocket event -> the integration's answer ({"statusCode", "body"}).

    $connect answers 200 to accept (anything else refuses the connection); a message's body is the
    route response the caller receives."""
    context = event.get("requestContext") or {}
    route = str(context.get("routeKey") or "$default")
    connection_id = str(context.get("connectionId") or "")
    request_id = context.get("requestId") if isinstance(context.get("requestId"), str) else None
    service = service or get_service()
    now = time.time()
    if not connection_id:
        return _answer(400, LiveError(message="no connection id in the event", status=400))
    if service.store is None:
        error = error_reply(DatabaseUnavailable("no cache database configured"), request_id=request_id)
        http.metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=1)
        return _answer(error.status, error)
    subscriptions = Subscriptions(service.store)
    if route in ("$connect", "$disconnect"):
        try:
            if route == "$connect":
                subscriptions.connect(connection_id, now)
            else:
                subscriptions.disconnect(connection_id)
        except MarketDataError as exc:
            error = error_reply(exc, request_id=request_id)
            http.metrics.add_metric(name="ServerErrors", unit=MetricUnit.Count, value=1)
            return _answer(error.status, error)
        http.metrics.add_metric(name="Connections" if route == "$connect" else "Disconnections",
                                unit=MetricUnit.Count, value=1)  # fmt: skip
        return {"statusCode": 200}
    try:
        reply: SubscriptionReply | LiveError = on_message(
            service, subscriptions, connection_id, _body(event), now
        )
        http.metrics.add_metric(name="SubscriptionChanges", unit=MetricUnit.Count, value=1)
    except Exception as exc:  # every failure is a message to the caller, never a dropped frame
        reply = error_reply(exc, request_id=request_id)
        http.metrics.add_metric(
            name="ClientErrors" if reply.status < 500 else "ServerErrors", unit=MetricUnit.Count, value=1
        )
    # A refused message is still a delivered answer: the route response goes back with 200.
    return _answer(200, reply)


def _answer(status: int, reply: SubscriptionReply | LiveError) -> dict[str, Any]:
    return {"statusCode": status, "body": reply.model_dump_json()}


def lambda_entry() -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    """The live function's Lambda handler: handle() inside marketdata.http's instrumentation (logging
    context, metrics flush, optional tracing), as every function has it."""

    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        started = time.perf_counter()
        result = handle(event)
        route = (event.get("requestContext") or {}).get("routeKey")
        http.logger.info(
            "answered",
            extra={"route": route, "status": result.get("statusCode"),
                   "latency_ms": round((time.perf_counter() - started) * 1000, 3)},
        )  # fmt: skip
        return result

    return http.instrumented(handler, operation="live", correlation_id_path="requestContext.requestId")
