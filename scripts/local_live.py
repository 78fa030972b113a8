"""The live (WebSocket) API locally, as `dev.py serve` runs it next to the HTTP API (scripts/local_api.py).

- `LocalLive`: a WebSocket server (the `websockets` library) speaking the protocol of the WebSocket API
  in template.yaml. Each connection gets an id; its opening handshake is the `$connect` event (a
  non-2xx answer refuses it with that status), each text frame the event of the route API Gateway would
  select on `$request.body.action` (`subscribe`, `unsubscribe`, else `$default`), its close
  `$disconnect`; the events go to the `lambda_handler` of the function template.yaml puts behind the
  routes, and the answer's body is sent back as the route response.
- `ManagementStandIn`: the API Gateway Management API's `POST /@connections/{id}` on a local HTTP
  server. It delivers to the local connections when given a `LocalLive` (410 GoneException for an id it
  does not hold), and records every post; tests mark ids gone or slow.
- `LocalBroadcaster`: the broadcaster (marketdata.broadcast) running in a thread of this process,
  posting through the stand-in with the same boto3 client as deployed.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from scripts import sam_template

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]


# --- API Gateway WebSocket events ------------------------------------------------------------------


def to_ws_event(
    route_key: str,
    connection_id: str,
    body: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    domain: str = "localhost",
    stage: str = "local",
    now: float | None = None,
) -> dict[str, Any]:
    """The event API Gateway sends a WebSocket API's integration for one connection event or frame."""
    instant = time.time() if now is None else now
    event_type = {"$connect": "CONNECT", "$disconnect": "DISCONNECT"}.get(route_key, "MESSAGE")
    context: dict[str, Any] = {
        "routeKey": route_key,
        "eventType": event_type,
        "messageDirection": "IN",
        "connectionId": connection_id,
        "connectedAt": int(instant * 1000),
        "requestId": uuid.uuid4().hex[:16],
        "requestTimeEpoch": int(instant * 1000),
        "extendedRequestId": uuid.uuid4().hex[:16],
        "domainName": domain,
        "stage": stage,
        "apiId": "local",
        "identity": {"sourceIp": "127.0.0.1"},
    }
    if event_type == "MESSAGE":
        context["messageId"] = uuid.uuid4().hex[:16]
    event: dict[str, Any] = {"requestContext": context, "isBase64Encoded": False}
    if event_type == "CONNECT":
        event["headers"] = dict(headers or {})
    if body is not None:
        event["body"] = body
    return event


def select_route(body: str, routes: Iterable[str]) -> str:
    """The route key `$request.body.action` selects for a frame: the action when it names a route,
    else `$default` (bad JSON, no action, an unknown one)."""
    try:
        action = json.loads(body).get("action")
    except (ValueError, AttributeError):
        return "$default"
    actions = set(routes) - {"$connect", "$disconnect"}
    return action if isinstance(action, str) and action in actions else "$default"


def load_ws_handlers() -> dict[str, LambdaHandler]:
    """route key -> lambda_handler of the function template.yaml puts behind that WebSocket route."""
    from scripts.gen_openapi import load_function_module

    template = sam_template.load()
    return {
        route.route_key: load_function_module(template.functions[route.function].name).lambda_handler
        for route in template.ws_routes
    }


def _context(route_key: str) -> Any:
    from scripts.local_api import FakeLambdaContext

    return FakeLambdaContext(f"marketdata-live-{route_key.strip('$')}")


# --- the local WebSocket server --------------------------------------------------------------------


class LocalLive:
    """The WebSocket API on ws://host:port, routed like template.yaml's WebSocket API."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3002,
        *,
        handlers: Mapping[str, LambdaHandler] | None = None,
        invoke_lock: threading.Lock | None = None,
    ) -> None:
        from websockets.sync.server import serve

        self.handlers = dict(handlers if handlers is not None else load_ws_handlers())
        self.replies = {route.route_key for route in sam_template.load().ws_routes if route.route_response}
        self._invoke_lock = invoke_lock or threading.Lock()
        self._connections: dict[str, Any] = {}
        self._send_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        self._server = serve(self._serve, host, port, process_request=self._handshake)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.socket.getsockname()[:2]
        return f"ws://{host}:{port}"

    @property
    def connection_ids(self) -> list[str]:
        with self._lock:
            return list(self._connections)

    def _invoke(self, route_key: str, event: dict[str, Any]) -> dict[str, Any]:
        handler = self.handlers.get(route_key) or self.handlers.get("$default")
        if handler is None:
            return {"statusCode": 200}
        with self._invoke_lock:
            result = handler(event, _context(route_key))
        return result if isinstance(result, dict) else {"statusCode": 200, "body": json.dumps(result)}

    def _handshake(self, connection: Any, request: Any) -> Any:
        connection_id = uuid.uuid4().hex[:12] + "="  # API Gateway's ids look like this (base64-ish)
        connection.marketdata_id = connection_id
        headers = {k.lower(): v for k, v in request.headers.raw_items()}
        result = self._invoke("$connect", to_ws_event("$connect", connection_id, headers=headers))
        status = int(result.get("statusCode", 200))
        if not 200 <= status < 300:
            return connection.respond(HTTPStatus(status), str(result.get("body") or "Forbidden"))
        return None

    def _serve(self, connection: Any) -> None:
        connection_id = connection.marketdata_id
        with self._lock:
            self._connections[connection_id] = connection
            self._send_locks[connection_id] = threading.Lock()
        try:
            for frame in connection:
                body = frame if isinstance(frame, str) else frame.decode("utf-8", errors="replace")
                route_key = select_route(body, self.handlers)
                result = self._invoke(route_key, to_ws_event(route_key, connection_id, body))
                if route_key in self.replies and result.get("body"):
                    self.send(connection_id, str(result["body"]))
        except Exception:  # the client went away mid-frame: what $disconnect is for
            pass
        finally:
            with self._lock:
                self._connections.pop(connection_id, None)
                self._send_locks.pop(connection_id, None)
            self._invoke("$disconnect", to_ws_event("$disconnect", connection_id))

    def send(self, connection_id: str, data: str | bytes) -> bool:
        """Send to one local connection (what post_to_connection does); False when it is gone."""
        with self._lock:
            connection = self._connections.get(connection_id)
            lock = self._send_locks.get(connection_id)
        if connection is None or lock is None:
            return False
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        try:
            with lock:
                connection.send(text)
        except Exception:
            return False
        return True

    def start(self) -> LocalLive:
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-live", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- the Management API stand-in -------------------------------------------------------------------

_POST_PATH = re.compile(r"^(?:/[^/]+)?/@connections/(?P<id>[^/?]+)$")


@dataclass
class Post:
    connection_id: str
    data: bytes


@dataclass
class _StandInState:
    live: LocalLive | None
    posts: list[Post] = field(default_factory=list)
    gone: set[str] = field(default_factory=set)
    slow: dict[str, float] = field(default_factory=dict)  # connection id -> seconds each post takes
    lock: threading.Lock = field(default_factory=threading.Lock)


class _StandInHandler(BaseHTTPRequestHandler):
    server: _StandInServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        data = self.rfile.read(length) if length > 0 else b""
        found = _POST_PATH.match(self.path.split("?", 1)[0])
        state = self.server.state
        if found is None:
            self._answer(404, {"message": "Not Found"})
            return
        from urllib.parse import unquote

        connection_id = unquote(found.group("id"))
        with state.lock:
            delay = state.slow.get(connection_id, 0.0)
            gone = connection_id in state.gone
        if delay:
            time.sleep(delay)
        if not gone and state.live is not None:
            gone = not state.live.send(connection_id, data)
        if gone:
            # What API Gateway answers for a connection that is no longer there (boto3: GoneException).
            self._answer(410, {"message": None}, error_type="GoneException")
            return
        with state.lock:
            state.posts.append(Post(connection_id, data))
        self._answer(200, None)

    def _answer(self, status: int, body: Any, *, error_type: str | None = None) -> None:
        payload = b"" if body is None else json.dumps(body).encode()
        # A client that timed out has gone: nothing to answer (what API Gateway sees too).
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.send_response(status)
            if error_type:
                self.send_header("x-amzn-ErrorType", error_type)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _StandInServer(ThreadingHTTPServer):
    daemon_threads = True
    state: _StandInState


class ManagementStandIn:
    """`POST /@connections/{id}` on http://host:port (any stage prefix), recording every post."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, live: LocalLive | None = None) -> None:
        self._server = _StandInServer((host, port), _StandInHandler)
        self._server.state = _StandInState(live)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def posts(self) -> list[Post]:
        with self._server.state.lock:
            return list(self._server.state.posts)

    def messages(self, connection_id: str) -> list[dict[str, Any]]:
        """The JSON messages delivered to one connection, in order."""
        return [json.loads(p.data) for p in self.posts if p.connection_id == connection_id]

    def mark_gone(self, *connection_ids: str) -> None:
        with self._server.state.lock:
            self._server.state.gone.update(connection_ids)

    def make_slow(self, connection_id: str, seconds: float) -> None:
        with self._server.state.lock:
            self._server.state.slow[connection_id] = seconds

    def clear(self) -> None:
        with self._server.state.lock:
            self._server.state.posts.clear()

    def start(self) -> ManagementStandIn:
        self._thread = threading.Thread(target=self._server.serve_forever, name="mgmt-standin", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- the broadcaster in a thread -------------------------------------------------------------------


class LocalBroadcaster:
    """marketdata.broadcast's Broadcaster, ticking in a thread of this process until stopped, on its own
    database connection (or on `service`: a test's, with the fake upstream's settable clock)."""

    def __init__(self, settings: Any, endpoint: str, *, service: Any = None) -> None:
        from marketdata.broadcast import Broadcaster, ManagementApiPoster, build_streams
        from marketdata.service import MarketDataService, lazy_providers
        from marketdata.store import CandleStore

        self.service = service or MarketDataService(CandleStore(settings), lazy_providers(settings), settings)
        poster = ManagementApiPoster(
            endpoint, timeout=settings.live_post_timeout_seconds, pool=settings.live_fanout_threads,
            unsigned=True,
        )
        self.broadcaster = Broadcaster(self.service, poster, build_streams(self.service))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> LocalBroadcaster:
        self._thread = threading.Thread(
            target=self.broadcaster.run, args=(lambda: math.inf,), kwargs={"stop": self._stop},
            name="local-broadcaster", daemon=True,
        )  # fmt: skip
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
        with contextlib.suppress(Exception):
            self.service.close()


@dataclass
class LiveStack:
    """What `dev.py serve` runs for the live API: the WebSocket server, the Management API stand-in
    delivering to it, and the broadcaster posting through the stand-in."""

    live: LocalLive
    standin: ManagementStandIn
    broadcaster: LocalBroadcaster

    def stop(self) -> None:
        self.broadcaster.stop()
        self.standin.stop()
        self.live.stop()


def start_live_stack(
    host: str = "127.0.0.1", port: int = 3002, *, invoke_lock: threading.Lock | None = None,
    service: Any = None,
) -> LiveStack:
    """Start the local live API and point this process's settings at it (LIVE_WEBSOCKET_URL for the
    chart page, LIVE_MANAGEMENT_ENDPOINT for the broadcaster). `service`: the broadcaster's (a test's,
    with the fake's clock); by default one of its own on DATABASE_URL."""
    import os

    from marketdata.config import Settings, get_settings

    live = LocalLive(host, port, invoke_lock=invoke_lock).start()
    standin = ManagementStandIn(host, 0, live=live).start()
    os.environ["LIVE_WEBSOCKET_URL"] = live.url
    os.environ["LIVE_MANAGEMENT_ENDPOINT"] = standin.url
    get_settings.cache_clear()
    settings = service.settings if service is not None else Settings.from_env()
    broadcaster = LocalBroadcaster(settings, standin.url, service=service).start()
    return LiveStack(live, standin, broadcaster)
