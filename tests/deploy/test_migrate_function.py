"""functions/migrate/app.py: direct invocation and the CloudFormation custom resource, on real Postgres."""

from __future__ import annotations

import importlib.util
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from marketdata.config import get_settings
from marketdata.migrate import load_migrations
from scripts.lambda_context import FakeLambdaContext

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = [m.version for m in load_migrations(ROOT / "migrations")]


def _load_handler() -> Any:
    spec = importlib.util.spec_from_file_location("migrate_function_app", ROOT / "functions/migrate/app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context() -> FakeLambdaContext:
    return FakeLambdaContext("MigrateFunction", timeout_ms=300_000, aws_request_id="test-request")


@pytest.fixture
def use_database(monkeypatch: pytest.MonkeyPatch):
    """Point the process settings at a database (or at none) for one test."""

    def use(url: str | None) -> None:
        for name in ("DATABASE_URL", "DB_HOST", "MIGRATIONS_DIR"):
            monkeypatch.delenv(name, raising=False)
        if url:
            monkeypatch.setenv("DATABASE_URL", url)
        get_settings.cache_clear()

    yield use
    get_settings.cache_clear()


class _Recorder(BaseHTTPRequestHandler):
    def do_PUT(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.server.received.append(  # type: ignore[attr-defined]
            {"path": self.path, "headers": dict(self.headers), "body": json.loads(self.rfile.read(length))}
        )
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def response_url() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A stand-in for CloudFormation's pre-signed S3 URL: records what the function PUTs."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/bucket/key?X-Amz-Signature=abc", server.received  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()


def _cfn_event(request_type: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "RequestType": request_type,
        "ServiceToken": "arn:aws:lambda:eu-west-1:123456789012:function:MigrateFunction",
        "ResponseURL": url,
        "StackId": "arn:aws:cloudformation:eu-west-1:123456789012:stack/marketdata-dev/abc",
        "RequestId": f"req-{request_type}",
        "LogicalResourceId": "DatabaseMigrations",
        "ResourceType": "Custom::DatabaseMigrations",
        "ResourceProperties": {"LayerVersion": "arn:aws:lambda:eu-west-1:123456789012:layer:shared:7"},
        **extra,
    }


def test_direct_invocation_applies_then_finds_nothing(empty_database_url: str, use_database) -> None:
    use_database(empty_database_url)
    app = _load_handler()
    assert app.lambda_handler({}, context()) == {"applied": VERSIONS, "latest": VERSIONS[-1]}
    assert app.lambda_handler({}, context()) == {"applied": [], "latest": VERSIONS[-1]}


def test_direct_invocation_without_database_raises(use_database) -> None:
    use_database(None)
    app = _load_handler()
    with pytest.raises(app.ConfigurationError, match="DB_HOST"):
        app.lambda_handler({}, context())


def test_custom_resource_create_migrates_and_reports_success(
    empty_database_url: str, use_database, response_url
) -> None:
    url, received = response_url
    use_database(empty_database_url)
    app = _load_handler()
    app.lambda_handler(_cfn_event("Create", url), context())
    assert len(received) == 1
    body = received[0]["body"]
    assert body["Status"] == "SUCCESS"
    assert body["Data"] == {"Applied": ",".join(VERSIONS), "Latest": VERSIONS[-1]}
    assert body["PhysicalResourceId"] == app.PHYSICAL_RESOURCE_ID
    assert (body["StackId"], body["RequestId"], body["LogicalResourceId"]) == (
        "arn:aws:cloudformation:eu-west-1:123456789012:stack/marketdata-dev/abc",
        "req-Create",
        "DatabaseMigrations",
    )
    # The pre-signed URL is signed without a content type: sending one would be rejected by S3.
    assert received[0]["headers"].get("Content-Type", "") == ""
    assert received[0]["path"].startswith("/bucket/key?X-Amz-Signature=abc")

    # An Update (new layer version) on the migrated database: success, nothing applied, same resource.
    update = _cfn_event("Update", url, PhysicalResourceId=app.PHYSICAL_RESOURCE_ID)
    app.lambda_handler(update, context())
    assert received[1]["body"]["Status"] == "SUCCESS"
    assert received[1]["body"]["Data"]["Applied"] == ""
    assert received[1]["body"]["PhysicalResourceId"] == app.PHYSICAL_RESOURCE_ID


def test_custom_resource_failure_is_reported_not_left_hanging(use_database, response_url) -> None:
    url, received = response_url
    use_database(None)  # the handler fails; CloudFormation must still hear about it
    app = _load_handler()
    outcome = app.lambda_handler(_cfn_event("Create", url), context())
    assert outcome["Status"] == "FAILED"
    assert [r["body"]["Status"] for r in received] == ["FAILED"]
    assert "DB_HOST" in received[0]["body"]["Reason"]


def test_custom_resource_delete_touches_nothing(use_database, response_url) -> None:
    url, received = response_url
    use_database(None)  # no database needed (or reachable) to delete the stack
    app = _load_handler()
    delete = _cfn_event("Delete", url, PhysicalResourceId="marketdata-database-migrations")
    app.lambda_handler(delete, context())
    assert [r["body"]["Status"] for r in received] == ["SUCCESS"]
    assert received[0]["body"]["PhysicalResourceId"] == "marketdata-database-migrations"
