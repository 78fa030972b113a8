"""Fixtures for the HTTP function tests: the process singletons pointed at a test database and the fake
upstream through the environment (as on Lambda), the lambda_handlers of every route template.yaml
declares, and API Gateway v2 events."""

from __future__ import annotations

import base64
import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import pytest

from devtools.fake_streams import FakeStreams
from devtools.fake_upstream import FakeUpstream
from scripts.gen_openapi import load_function_module
from scripts.local_api import ROUTES, FakeLambdaContext, LocalApi, load_handlers, to_v2_event
from scripts.sam_template import route_for
from tests.support.upstream_fixtures import upstream_env

#: Every variable the service reads that a developer's shell might set: cleared for each test.
_SERVICE_ENV = (
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_NAME",
    "DB_USER",
    "DB_SECRET_ARN",
    "DB_IAM_AUTH",
    "BINANCE_REST_URL",
    "TWELVE_DATA_REST_URL",
    "TWELVE_DATA_API_KEY",
    "TWELVE_DATA_API_KEY_SECRET_ARN",
    "TWELVE_DATA_API_KEY_PARAMETER",
    "BINANCE_WS_URL",
    "TWELVE_DATA_WS_URL",
    "POWERTOOLS_METRICS_DISABLED",
    "POWERTOOLS_DEV",
)


def reset_process_singletons() -> None:
    """Forget the settings, the service (closing its database connection) and the provider clients.

    What a new Lambda execution environment would start from; the tests change the environment
    between cases, and these objects are cached per process on purpose.
    """
    from marketdata import udf
    from marketdata.service import reset_service

    reset_service()
    udf.reset_precision_cache()


def service_env_vars(database_url: str, fake: FakeUpstream) -> dict[str, str]:
    return {"DATABASE_URL": database_url, **upstream_env(fake)}


@pytest.fixture
def service_env(
    monkeypatch: pytest.MonkeyPatch, database_url: str, fake_upstream: FakeUpstream, fake_streams: FakeStreams
) -> Iterator[FakeUpstream]:
    """The environment of a deployed function, aimed at this test's database and the fake upstream (its
    REST API and, for the broadcaster's live clients, its streams)."""
    for name in _SERVICE_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in service_env_vars(database_url, fake_upstream).items():
        monkeypatch.setenv(name, value)
    for name in ("BINANCE_WS_URL", "TWELVE_DATA_WS_URL"):
        monkeypatch.setenv(name, fake_streams.url)
    reset_process_singletons()
    yield fake_upstream
    reset_process_singletons()


@dataclass
class Answer:
    """An API Gateway v2 result, decoded."""

    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes
    raw: dict[str, Any]

    def json(self) -> Any:
        return json.loads(self.body)

    def max_age(self) -> int:
        for part in self.headers["cache-control"].split(","):
            name, _, value = part.strip().partition("=")
            if name == "max-age":
                return int(value)
        raise AssertionError(f"no max-age in {self.headers['cache-control']!r}")


def decode_result(result: dict[str, Any]) -> Answer:
    body = result.get("body") or ""
    raw = base64.b64decode(body) if result.get("isBase64Encoded") else body.encode()
    headers = {k.lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    if headers.get("content-encoding") == "gzip":
        raw = gzip.decompress(raw)
    return Answer(int(result["statusCode"]), headers, raw, result)


class Api:
    """Calls the lambda_handlers with the events API Gateway would send."""

    def __init__(self) -> None:
        self.handlers = {route: load_function_module(fn).lambda_handler for route, fn in ROUTES.items()}
        self.events: list[dict[str, Any]] = []

    def event(
        self,
        path: str,
        query: Mapping[str, Any] | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        if query is None:
            target = path
        elif isinstance(query, str):
            target = f"{path}?{query}"
        else:
            target = f"{path}?{urlencode({k: v for k, v in query.items() if v is not None})}"
        sent = {"host": "api.example.com", "user-agent": "pytest", **(headers or {})}
        found = route_for(ROUTES, "GET", path)
        route_key, params = found if found is not None else (f"GET {path}", {})
        return to_v2_event("GET", target, sent, route_key=route_key, path_parameters=params)

    def invoke(self, event: dict[str, Any], route: str | None = None) -> Answer:
        route = route or event["routeKey"]
        handler = self.handlers[route]
        self.events.append(event)
        result = handler(event, FakeLambdaContext("test-" + ROUTES[route]))
        assert isinstance(result, dict), result
        return decode_result(result)

    def get(
        self,
        path: str,
        query: Mapping[str, Any] | str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Answer:
        return self.invoke(self.event(path, query, headers))

    def candles(self, **query: Any) -> Answer:
        return self.get("/v1/candles", query)

    def symbols(self, **query: Any) -> Answer:
        return self.get("/v1/symbols", query)

    def udf(self, endpoint: str, **query: Any) -> Answer:
        """GET /udf/<endpoint>; `from_` is sent as `from`."""
        if "from_" in query:
            query["from"] = query.pop("from_")
        return self.get(f"/udf/{endpoint}", query)


@pytest.fixture
def api(service_env: FakeUpstream) -> Api:
    return Api()


@pytest.fixture
def local_api(service_env: FakeUpstream) -> Iterator[LocalApi]:
    """The local service (what `dev.py serve` runs) on this test's database and the fake upstream, in a
    thread of this process."""
    api = LocalApi("127.0.0.1", 0, handlers=load_handlers(), access_log=False).start()
    try:
        yield api
    finally:
        api.stop()
