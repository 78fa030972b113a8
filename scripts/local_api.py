#!/usr/bin/env python3
"""Run the whole service locally, without Docker or AWS: `python3 scripts/dev.py serve`.

    python scripts/local_api.py [--host 127.0.0.1] [--port 3000] [--offline [--upstream-port 3001]]

- Database: DATABASE_URL when set, else an embedded Postgres whose data lives in .local/pgdata (kept
  between runs, so the cache stays warm), the same one `dev.py backfill` fills (scripts/local_env.py).
  Migrations are applied at start; the URL is printed, for psql or other tools.
- The routes, the functions behind them and the CORS configuration are template.yaml's (read by
  scripts/sam_template.py): nothing here lists them again.
- Each HTTP request becomes an API Gateway HTTP API payload-format-2.0 event (routeKey, rawPath,
  rawQueryString, queryStringParameters with repeated keys joined by commas, lower-cased headers,
  pathParameters, requestContext) and goes to the `lambda_handler` of the function API Gateway would
  route it to, with a small fake Lambda context. The function's answer is turned back into HTTP as API
  Gateway does (isBase64Encoded bodies decoded, cookies as Set-Cookie). A route no function declares
  gets API Gateway's own 404 `{"message":"Not Found"}`.
- CORS as the HTTP API's CorsConfiguration makes API Gateway answer: a preflight (OPTIONS with Origin
  and Access-Control-Request-Method) gets 204 with the allowed origin, methods, headers and max age,
  without reaching a function; any other request with an allowed Origin gets Access-Control-Allow-Origin
  and Access-Control-Expose-Headers added, and CORS headers a function sets itself are dropped.
- One request at a time reaches the functions, as a Lambda execution environment handles one event
  at a time (the resolvers and the database connection are per-process singletons).
- --offline starts the fake Binance/Twelve Data server (devtools/fake_upstream.py) in this process,
  on a fixed port (--upstream-port, default 3001; 0 = any free port) so its printed URL stays the same
  between starts, and points BINANCE_REST_URL / TWELVE_DATA_REST_URL at it, with a dummy Twelve Data
  key. Its made-up candles go to a separate embedded database (.local/pgdata-offline, which `dev.py
  backfill --offline` fills), never to DATABASE_URL or the normal local cache. Its WebSocket streams
  (devtools/fake_streams.py, any free port) get BINANCE_WS_URL / TWELVE_DATA_WS_URL, so the
  broadcaster runs the real live clients offline; without --offline they use the real providers'.

- The live API (scripts/local_live.py) on ws://127.0.0.1:3002 (`--live-port`): the WebSocket routes of
  template.yaml, a local stand-in for the Management API, and the broadcaster ticking in this process;
  the chart page is told its URL (LIVE_WEBSOCKET_URL).

`LocalApi` is also what the schemathesis test runs (in a thread).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import signal
import sys
import threading
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # devtools.fake_upstream, when run as a script
    sys.path.insert(0, str(ROOT))

from scripts import local_env, sam_template  # noqa: E402
from scripts.lambda_context import FakeLambdaContext  # noqa: E402

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

TEMPLATE = sam_template.load()
LIVE_PORT = 3002  # the live (WebSocket) API; 3000 is the HTTP API, 3001 the offline fake upstream
#: The routes template.yaml declares: route key -> function directory under functions/.
ROUTES: dict[str, str] = {key: function.name for key, function in TEMPLATE.route_functions.items()}


# --- API Gateway emulation -------------------------------------------------------------------------


def to_v2_event(
    method: str,
    target: str,
    headers: Mapping[str, str] | list[tuple[str, str]],
    body: bytes = b"",
    *,
    source_ip: str = "127.0.0.1",
    route_key: str | None = None,
    request_id: str | None = None,
    now: float | None = None,
    path_parameters: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The API Gateway HTTP API (payload 2.0) event for one request (`target` = path?query)."""
    parts = urlsplit(target)
    raw_path = parts.path or "/"
    raw_query = parts.query
    query: dict[str, str] = {}
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        query[key] = f"{query[key]},{value}" if key in query else value
    header_items = headers.items() if isinstance(headers, Mapping) else headers
    lowered: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in header_items:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        lowered[key] = f"{lowered[key]},{value}" if key in lowered else value
    instant = time.time() if now is None else now
    stamp = datetime.fromtimestamp(instant, UTC)
    request_id = request_id or base64.b32encode(uuid.uuid4().bytes)[:16].decode().rstrip("=")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key or "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
        "headers": lowered,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "domainName": lowered.get("host", "localhost"),
            "domainPrefix": lowered.get("host", "localhost").split(".")[0],
            "http": {
                "method": method.upper(),
                "path": raw_path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": lowered.get("user-agent", ""),
            },
            "requestId": request_id,
            "routeKey": route_key or "$default",
            "stage": "$default",
            "time": stamp.strftime("%d/%b/%Y:%H:%M:%S +0000"),
            "timeEpoch": int(instant * 1000),
        },
        "isBase64Encoded": False,
    }
    if query:
        event["queryStringParameters"] = query
    if path_parameters:
        event["pathParameters"] = dict(path_parameters)
    if cookies:
        event["cookies"] = cookies
    if body:
        try:
            event["body"] = body.decode("utf-8")
        except UnicodeDecodeError:
            event["body"] = base64.b64encode(body).decode()
            event["isBase64Encoded"] = True
    return event


def from_v2_result(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) for a Lambda's payload-2.0 answer, as API Gateway turns it into HTTP."""
    if not isinstance(result, dict) or "statusCode" not in result:
        # API Gateway's rule for a result without statusCode: the value itself is a 200 JSON body.
        return 200, [("Content-Type", "application/json")], json.dumps(result).encode()
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [("Set-Cookie", str(c)) for c in result.get("cookies") or []]
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode("utf-8")
    return int(result["statusCode"]), headers, body


def function_name(route_key: str) -> str:
    """The (local) Lambda function name serving a route: marketdata-<folder>."""
    return f"marketdata-{ROUTES.get(route_key, 'local')}"


def load_handlers() -> dict[str, LambdaHandler]:
    """route key -> lambda_handler, importing each function's app.py as Lambda would."""
    from scripts.gen_openapi import load_function_module

    return {route: load_function_module(function).lambda_handler for route, function in ROUTES.items()}


@dataclass(frozen=True)
class Cors:
    """The HTTP API's CorsConfiguration, applied as API Gateway applies it."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: int | None = None
    allow_credentials: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Cors:
        def names(key: str) -> tuple[str, ...]:
            value = config.get(key) or ()
            return tuple(str(v) for v in ([value] if isinstance(value, str) else value))

        max_age = config.get("MaxAge")
        return cls(
            names("AllowOrigins"),
            tuple(m.upper() for m in names("AllowMethods")),
            names("AllowHeaders"),
            names("ExposeHeaders"),
            int(max_age) if max_age is not None else None,
            str(config.get("AllowCredentials", "false")).lower() == "true",
        )

    def allowed_origin(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from `origin`, None if it is not allowed."""
        if not origin:
            return None
        if "*" in self.allow_origins:
            return origin if self.allow_credentials else "*"
        lowered = {o.lower().rstrip("/") for o in self.allow_origins}
        return origin if origin.lower().rstrip("/") in lowered else None

    def preflight(self, origin: str | None, method: str) -> list[tuple[str, str]]:
        """The headers of the answer to a preflight (empty: the browser will refuse the request)."""
        allowed = self.allowed_origin(origin)
        if allowed is None or ("*" not in self.allow_methods and method.upper() not in self.allow_methods):
            return []
        headers = [("Access-Control-Allow-Origin", allowed)]
        if self.allow_methods:
            headers.append(("Access-Control-Allow-Methods", ",".join(self.allow_methods)))
        if self.allow_headers:
            headers.append(("Access-Control-Allow-Headers", ",".join(self.allow_headers)))
        if self.max_age is not None:
            headers.append(("Access-Control-Max-Age", str(self.max_age)))
        return headers + self._credentials(allowed)

    def simple(self, origin: str | None) -> list[tuple[str, str]]:
        """The headers added to any other answer to a request from `origin`."""
        allowed = self.allowed_origin(origin)
        if allowed is None:
            return []
        headers = [("Access-Control-Allow-Origin", allowed)]
        if self.expose_headers:
            headers.append(("Access-Control-Expose-Headers", ",".join(self.expose_headers)))
        return headers + self._credentials(allowed)

    def _credentials(self, allowed: str) -> list[tuple[str, str]]:
        extra = [("Access-Control-Allow-Credentials", "true")] if self.allow_credentials else []
        return extra + ([("Vary", "Origin")] if allowed != "*" else [])


#: What API Gateway does with CORS headers a function returns: ignores them.
_CORS_PREFIX = "access-control-"
_JSON = ("Content-Type", "application/json")


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    # TCP_NODELAY: a keep-alive answer under 64 KB (headers and body written separately) otherwise waits
    # ~40 ms for the client's delayed ACK (Nagle), which made the default limit=500 answer take 50 ms.
    disable_nagle_algorithm = True

    def __getattr__(self, name: str) -> Any:
        # Every method (GET, TRACE, FOO, ...) goes through the router, as at API Gateway: a method no
        # route declares is a 404 there, never a 501.
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        started = time.perf_counter()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        body = self.rfile.read(length) if length > 0 else b""
        path = urlsplit(self.path).path
        cors, origin = self.server.cors, self.headers.get("Origin")
        preflight_method = self.headers.get("Access-Control-Request-Method")
        found = sam_template.route_for(self.server.handlers, self.command, path)
        if length < 0:
            status, headers, payload = 400, [_JSON], b'{"message":"Bad Request"}'
        elif self.command == "OPTIONS" and origin and preflight_method:
            # API Gateway answers preflights itself, for any path, without calling a function.
            status, headers, payload = 204, cors.preflight(origin, preflight_method), b""
        elif found is None:
            status, headers, payload = 404, [_JSON], b'{"message":"Not Found"}'
        else:
            route_key, path_parameters = found
            event = to_v2_event(
                self.command, self.path, list(self.headers.items()), body,
                source_ip=self.client_address[0], route_key=route_key, path_parameters=path_parameters,
            )  # fmt: skip
            context = FakeLambdaContext(function_name(route_key))
            try:
                with self.server.invoke_lock:
                    result = self.server.handlers[route_key](event, context)
                status, headers, payload = from_v2_result(result)
            except Exception:
                # What API Gateway answers when the function itself fails (our handlers never should).
                traceback.print_exc()
                status, headers, payload = 500, [_JSON], b'{"message":"Internal Server Error"}'
        if status != 204:
            headers = [(k, v) for k, v in headers if not k.lower().startswith(_CORS_PREFIX)]
            headers += cors.simple(origin)
        with self.server.stats_lock:
            self.server.stats[status] += 1
        self.send_response(status)
        for name, value in headers:
            if name.lower() not in {"content-length", "connection"}:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)
        if self.server.access_log:
            cache = next((v for k, v in headers if k.lower() == "x-cache"), "-")
            elapsed = (time.perf_counter() - started) * 1000
            print(f"{self.command} {self.path} -> {status} x-cache={cache} {elapsed:.1f} ms", file=sys.stderr)

    def log_message(self, format: str, *args: Any) -> None:  # the access line above replaces it
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    handlers: dict[str, LambdaHandler]
    cors: Cors
    invoke_lock: threading.Lock
    access_log: bool
    stats: Counter[int]
    stats_lock: threading.Lock


class LocalApi:
    """The HTTP functions behind one local HTTP server, routed (and CORS answered) like the HTTP API in
    template.yaml. `handlers` (route key -> handler) and `cors` replace the template's, for tests."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 3000,
        *,
        handlers: dict[str, LambdaHandler] | None = None,
        cors: Cors | None = None,
        access_log: bool = True,
        invoke_lock: threading.Lock | None = None,
    ) -> None:
        self._server = _Server((host, port), _RequestHandler)
        self._server.handlers = handlers if handlers is not None else load_handlers()
        self._server.cors = cors if cors is not None else Cors.from_config(TEMPLATE.cors)
        # Shared with the local live API when given: one event at a time reaches any function.
        self._server.invoke_lock = invoke_lock or threading.Lock()
        self._server.access_log = access_log
        self._server.stats = Counter()
        self._server.stats_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._serving = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def status_counts(self) -> dict[int, int]:
        """How many answers of each HTTP status this server sent."""
        with self._server.stats_lock:
            return dict(self._server.stats)

    def start(self) -> LocalApi:
        """Serve in a background thread (tests)."""
        self._serving = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="local-api", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._serving = True
        self._server.serve_forever()

    def stop(self) -> None:
        if self._serving:  # shutdown() waits for a serve loop; without one it would wait forever
            self._server.shutdown()
            self._serving = False
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)


# --- start-up ----------------------------------------------------------------------------------


def _examples(url: str) -> str:
    now = int(time.time())
    day_ago = now - 86400
    return "\n".join(
        [
            f"  curl -s '{url}/v1/symbols?asset_class=crypto'",
            f"  curl -s '{url}/v1/candles?symbol=BTCUSDT&interval=1H&limit=24'",
            f"  curl -si '{url}/v1/candles?symbol=BTCUSDT&interval=1m&start={day_ago}&end={now}&limit=1000'",
            f"  curl -s '{url}/v1/candles?symbol=EUR/USD&interval=1D&limit=30'",
            f"  curl -s '{url}/v1/candles?symbol=ETHUSDT&interval=5m&include_open=true&limit=3'",
            f"  curl -s '{url}/udf/history?symbol=BINANCE:BTCUSDT&resolution=60&to={now}&countback=5'",
        ]
    )


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 scripts/dev.py serve",
        description="Serve the HTTP functions locally as API Gateway would.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument(
        "--pgdata",
        type=Path,
        default=None,
        help="data directory of the embedded Postgres (default .local/pgdata, or .local/pgdata-offline)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="serve from the fake Binance/Twelve Data server started in this process (no network)",
    )
    parser.add_argument(
        "--upstream-port",
        type=int,
        default=local_env.DEFAULT_UPSTREAM_PORT,
        help="with --offline: the fake upstream's port (default %(default)s; 0 = any free port)",
    )
    parser.add_argument(
        "--live-port",
        type=int,
        default=LIVE_PORT,
        help="port of the live (WebSocket) API and its broadcaster; -1 = none (default %(default)s)",
    )
    args = parser.parse_args(argv)

    # `kill` (SIGTERM) stops as cleanly as Ctrl-C: the embedded Postgres is shut down, not orphaned.
    # SIGINT too, explicitly: a process started in the background by a non-interactive shell inherits
    # SIGINT ignored, and Python then never installs its Ctrl-C handler (the server would not stop).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)

    # EMF metrics would print a JSON blob per request; opt back in with POWERTOOLS_METRICS_DISABLED=false.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "marketdata")

    with contextlib.ExitStack() as cleanup:
        try:
            database = local_env.open_local_database(cleanup, offline=args.offline, pgdata=args.pgdata)
            print(database.describe())
            if args.offline:
                upstream = local_env.start_offline_upstream(cleanup, args.upstream_port)
                streams = local_env.start_offline_streams(cleanup, upstream)
                print(f"offline: Binance and Twelve Data are the fake upstream at {upstream.url}")
                print(f"offline: their live streams (kline, price) at {streams.url}")
        except local_env.LocalSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

        invoke_lock = threading.Lock()
        live_line = ""
        if args.live_port >= 0:
            from scripts.local_live import start_live_stack

            stack = start_live_stack(args.host, args.live_port, invoke_lock=invoke_lock)
            cleanup.callback(stack.stop)
            live_line = (
                f"live candles (WebSocket): {stack.live.url}  send "
                '{"action": "subscribe", "symbol": "BTCUSDT", "interval": "1m"}\n'
            )
        api = LocalApi(args.host, args.port, invoke_lock=invoke_lock)
        cleanup.callback(api.stop)
        backfill = "python3 scripts/dev.py backfill" + (" --offline" if args.offline else "")
        print(
            f"\nmarket data API on {api.url}  (Ctrl-C stops)\n"
            f"chart page:           {api.url}/chart\n"
            f"TradingView UDF feed: {api.url}/udf\n{live_line}"
            f"fill this cache:      {backfill} BTCUSDT:1H:2024-01-01\n\n{_examples(api.url)}\n",
            flush=True,
        )
        try:
            api.serve_forever()
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
