"""CORS at the local service: preflights and simple requests answered as template.yaml configures the HTTP
API (API Gateway answers preflights itself, adds the headers to every other answer, and drops the CORS
headers a function sets)."""

from __future__ import annotations

import http.client
import json

from scripts import sam_template
from scripts.local_api import TEMPLATE, Cors, LocalApi

APP_ORIGIN = "http://localhost:5173"  # a browser app on another localhost port


def _request(api: LocalApi, method: str, target: str, headers: dict[str, str]) -> tuple[int, dict, bytes]:
    host, port = api.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(method, target, headers=headers)
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def test_the_local_cors_is_the_templates_configuration():
    raw = sam_template.read_raw()
    configured = raw["Resources"]["MarketDataApi"]["Properties"]["CorsConfiguration"]
    default_origins = raw["Parameters"][configured["AllowOrigins"]["Ref"]]["Default"]
    cors = Cors.from_config(TEMPLATE.cors)

    assert cors.allow_origins == tuple(default_origins.split(","))
    assert cors.allow_methods == tuple(configured["AllowMethods"])
    assert cors.allow_headers == tuple(configured["AllowHeaders"])
    assert cors.expose_headers == tuple(configured["ExposeHeaders"])
    assert cors.max_age == configured["MaxAge"]
    assert "Authorization" in cors.allow_headers  # the chart page's bearer token


def test_a_preflight_is_answered_without_a_function(local_api: LocalApi):
    status, headers, body = _request(
        local_api, "OPTIONS", "/udf/history?symbol=BTCUSDT",
        {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "GET",
         "Access-Control-Request-Headers": "authorization"},
    )  # fmt: skip

    assert (status, body) == (204, b"")
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-allow-methods"] == "GET,OPTIONS"
    assert headers["access-control-allow-headers"] == "Content-Type,Authorization"
    assert headers["access-control-max-age"] == "86400"
    assert "access-control-allow-credentials" not in headers
    # Any path: API Gateway answers preflights before routing.
    assert _request(local_api, "OPTIONS", "/nowhere", {"Origin": APP_ORIGIN,
                    "Access-Control-Request-Method": "GET"})[0] == 204  # fmt: skip
    # An OPTIONS that is not a preflight is routed, and no route takes OPTIONS.
    assert _request(local_api, "OPTIONS", "/udf/config", {"Origin": APP_ORIGIN})[0] == 404
    assert local_api.status_counts == {204: 2, 404: 1}


def test_simple_requests_get_the_origin_and_the_exposed_headers(local_api: LocalApi):
    status, headers, body = _request(
        local_api, "GET", "/v1/candles?symbol=BTCUSDT&interval=1H&start=1704067200&end=1704070800",
        {"Origin": APP_ORIGIN},
    )  # fmt: skip
    assert status == 200, body
    assert headers["access-control-allow-origin"] == "*"
    assert headers["access-control-expose-headers"] == "X-Cache,Retry-After"
    assert headers["x-cache"] in {"miss", "hit"}
    assert "access-control-max-age" not in headers  # preflight only

    status, headers, body = _request(local_api, "GET", "/udf/symbols?symbol=NOPEUSDT", {"Origin": APP_ORIGIN})
    assert status == 404 and json.loads(body) == {"s": "error", "errmsg": "unknown_symbol"}
    assert headers["access-control-allow-origin"] == "*"  # errors are readable by the page too

    _, headers, _ = _request(local_api, "GET", "/udf/config", {})
    assert not [name for name in headers if name.startswith("access-control-")]


def test_only_the_configured_origins_are_allowed_and_function_headers_are_dropped():
    def sneaky(event, context):
        headers = {"Content-Type": "application/json", "Access-Control-Allow-Origin": "https://evil.example"}
        return {"statusCode": 200, "headers": headers, "body": "{}"}

    cors = Cors(
        allow_origins=("https://app.example.com",), allow_methods=("GET",), allow_headers=("Authorization",),
        expose_headers=("X-Cache",), max_age=600, allow_credentials=True,
    )  # fmt: skip
    api = LocalApi("127.0.0.1", 0, handlers={"GET /udf/config": sneaky}, cors=cors, access_log=False).start()
    try:
        _, allowed, _ = _request(api, "GET", "/udf/config", {"Origin": "https://app.example.com"})
        _, other, _ = _request(api, "GET", "/udf/config", {"Origin": "https://evil.example"})
        _, preflight, _ = _request(
            api,
            "OPTIONS",
            "/udf/config",
            {"Origin": "https://app.example.com", "Access-Control-Request-Method": "GET"},
        )
        _, refused, _ = _request(
            api,
            "OPTIONS",
            "/udf/config",
            {"Origin": "https://evil.example", "Access-Control-Request-Method": "GET"},
        )
        _, wrong_method, _ = _request(
            api,
            "OPTIONS",
            "/udf/config",
            {"Origin": "https://app.example.com", "Access-Control-Request-Method": "DELETE"},
        )
    finally:
        api.stop()

    assert allowed["access-control-allow-origin"] == "https://app.example.com"
    assert allowed["access-control-allow-credentials"] == "true"
    assert allowed["vary"] == "Origin"
    assert "access-control-allow-origin" not in other  # the function's own header was dropped
    assert preflight["access-control-allow-origin"] == "https://app.example.com"
    assert preflight["access-control-max-age"] == "600"
    assert "access-control-allow-origin" not in refused
    assert "access-control-allow-origin" not in wrong_method
