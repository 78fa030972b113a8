"""The local API: API Gateway v2 events built like API Gateway builds them, and HTTP served like it."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

import pg8000.native
import pytest

from marketdata.store import parse_database_url
from scripts.local_api import ROOT, FakeLambdaContext, LocalApi, from_v2_result, to_v2_event


def test_events_have_the_payload_2_0_shape():
    event = to_v2_event(
        "get",
        "/v1/candles?symbol=BTCUSDT&interval=1H&tag=a&tag=b&empty=&flag&q=%20x%2Fy",
        [("Host", "localhost:3000"), ("X-Thing", "1"), ("x-thing", "2"), ("Cookie", "a=1; b=2")],
        source_ip="10.0.0.7",
        route_key="GET /v1/candles",
        request_id="req-1",
        now=1704067200.5,
    )

    assert event["version"] == "2.0"
    assert event["routeKey"] == "GET /v1/candles"
    assert event["rawPath"] == "/v1/candles"
    assert event["rawQueryString"] == "symbol=BTCUSDT&interval=1H&tag=a&tag=b&empty=&flag&q=%20x%2Fy"
    assert event["queryStringParameters"] == {
        "symbol": "BTCUSDT",
        "interval": "1H",
        "tag": "a,b",  # API Gateway joins repeated keys with commas
        "empty": "",
        "flag": "",
        "q": " x/y",
    }
    assert event["headers"] == {"host": "localhost:3000", "x-thing": "1,2"}
    assert event["cookies"] == ["a=1", "b=2"]
    context = event["requestContext"]
    assert context["http"] == {
        "method": "GET",
        "path": "/v1/candles",
        "protocol": "HTTP/1.1",
        "sourceIp": "10.0.0.7",
        "userAgent": "",
    }
    assert context["requestId"] == "req-1"
    assert context["time"] == "01/Jan/2024:00:00:00 +0000"
    assert context["timeEpoch"] == 1704067200500
    assert event["isBase64Encoded"] is False
    assert "body" not in event


def test_an_event_without_a_query_has_no_query_parameters():
    event = to_v2_event("GET", "/v1/symbols", {})
    assert "queryStringParameters" not in event
    assert event["rawQueryString"] == ""


def test_results_are_turned_into_http_like_api_gateway_does():
    status, headers, body = from_v2_result(
        {
            "statusCode": 201,
            "headers": {"Content-Type": "application/json"},
            "cookies": ["s=1"],
            "body": base64.b64encode(b'{"a":1}').decode(),
            "isBase64Encoded": True,
        }
    )
    assert (status, body) == (201, b'{"a":1}')
    assert ("Set-Cookie", "s=1") in headers
    assert from_v2_result({"plain": True}) == (
        200,
        [("Content-Type", "application/json")],
        b'{"plain": true}',
    )


def test_the_fake_context_counts_down():
    context = FakeLambdaContext("fn")
    assert 0 < context.get_remaining_time_in_millis() <= 29_000
    assert context.invoked_function_arn.endswith(":function:fn")


@pytest.fixture
def echo_api():
    """A LocalApi whose only function echoes the event it received."""

    def echo(event, context):
        return {"statusCode": 200, "headers": {"Content-Type": "application/json"}, "body": json.dumps(event)}

    api = LocalApi("127.0.0.1", 0, handlers={"GET /v1/candles": echo}, access_log=False).start()
    yield api
    api.stop()


def _request(api: LocalApi, method: str, target: str) -> tuple[int, bytes]:
    host, port = api.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request(method, target)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_the_server_routes_like_the_http_api(echo_api: LocalApi):
    status, body = _request(echo_api, "GET", "/v1/candles?symbol=BTCUSDT&symbol=ETHUSDT")
    event = json.loads(body)
    assert status == 200
    assert event["routeKey"] == "GET /v1/candles"
    assert event["queryStringParameters"] == {"symbol": "BTCUSDT,ETHUSDT"}

    for method, target in [("GET", "/v1/nothing"), ("POST", "/v1/candles"), ("TRACE", "/v1/candles")]:
        status, body = _request(echo_api, method, target)
        assert status == 404, (method, target)
        assert json.loads(body) == {"message": "Not Found"}
    assert echo_api.status_counts == {200: 1, 404: 3}


def test_routes_come_from_the_template_and_path_parameters_are_matched():
    from scripts.local_api import ROUTES
    from scripts.sam_template import load

    template = load()
    assert {route.key: template.functions[route.function].name for route in template.routes} == ROUTES
    assert ROUTES["GET /udf/history"] == "udf" and ROUTES["GET /chart/{asset}"] == "chart"

    def echo(event, context):
        return {"statusCode": 200, "body": json.dumps(event)}

    handlers = {"GET /chart": echo, "GET /chart/{asset}": echo, "GET /chart/fixed.js": echo}
    api = LocalApi("127.0.0.1", 0, handlers=handlers, access_log=False).start()
    try:
        page = json.loads(_request(api, "GET", "/chart")[1])
        asset = json.loads(_request(api, "GET", "/chart/lib-1.0.js?v=1")[1])
        exact = json.loads(_request(api, "GET", "/chart/fixed.js")[1])
        deeper = _request(api, "GET", "/chart/a/b")
    finally:
        api.stop()
    assert page["routeKey"] == "GET /chart" and "pathParameters" not in page
    assert asset["routeKey"] == "GET /chart/{asset}"
    assert asset["pathParameters"] == {"asset": "lib-1.0.js"}
    assert asset["rawPath"] == "/chart/lib-1.0.js"
    assert exact["routeKey"] == "GET /chart/fixed.js"  # an exact route wins over a parameter
    assert deeper[0] == 404  # {asset} is one path segment


def test_a_failing_function_is_api_gateways_500_not_a_hang():
    def broken(event, context):
        raise RuntimeError("boom")

    api = LocalApi("127.0.0.1", 0, handlers={"GET /v1/symbols": broken}, access_log=False).start()
    try:
        status, body = _request(api, "GET", "/v1/symbols?asset_class=crypto")
    finally:
        api.stop()
    assert status == 500
    assert json.loads(body) == {"message": "Internal Server Error"}


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_the_serve_command_runs_offline_in_its_own_database_and_stops_cleanly(
    database_url: str, tmp_path, local_tool_pgdata, stop_signal
):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BINANCE_", "TWELVE_DATA_"))}
    env["DATABASE_URL"] = database_url
    process = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "scripts" / "local_api.py"),
            "--offline",
            "--port",
            "0",
            "--pgdata",
            str(local_tool_pgdata),
            "--upstream-port",
            "0",  # not the fixed default: other runs may be serving on it
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # As a non-interactive shell starts a background job: SIGINT ignored. Ctrl-C must still stop it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        url = None
        deadline = time.monotonic() + 60
        lines = []
        while url is None and time.monotonic() < deadline:
            line = process.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            found = re.search(r"market data API on (http://\S+)", line)
            url = found.group(1) if found else None
        assert url, "".join(lines)
        with urllib.request.urlopen(
            f"{url}/v1/candles?symbol=BTCUSDT&interval=1D&limit=3", timeout=30
        ) as reply:
            body = json.loads(reply.read())
            assert reply.status == 200
            assert reply.headers["X-Cache"] == "miss"
        assert len(body["candles"]) == 3
        process.send_signal(stop_signal)
        assert process.wait(timeout=20) == 0
        # The fake's made-up candles went to the offline database, never to the real DATABASE_URL.
        conn = pg8000.native.Connection(**parse_database_url(database_url))
        try:
            assert conn.run("SELECT count(*) FROM ohlcv_cache") == [[0]]
        finally:
            conn.close()
        # And the embedded server was stopped with the service.
        assert not (local_tool_pgdata / "postmaster.pid").exists()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
