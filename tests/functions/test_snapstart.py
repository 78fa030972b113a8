"""SnapStart's life cycle without AWS (marketdata.snapstart): init, before-snapshot hooks, after-restore
hooks, then a request. A fake `snapshot_restore_py` (what Lambda's runtime provides) records the hooks
the module registers; the handlers run against the test database and the fake upstream.

What must hold after restore: the database connections (the store's and its shared sibling's) and the
provider's httpx client are new ones, the state from before the snapshot (a "database down" mark, the
service, the settings) is not used, every copy restored from one snapshot draws its own retry jitter, and
no secret read before the snapshot is reused, whatever is left of its cache time.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from marketdata import snapstart
from marketdata.config import Settings, get_settings
from marketdata.providers import get_provider
from marketdata.service import get_service
from scripts.gen_openapi import load_function_module
from tests.functions.conftest import Api
from tests.support.aws_fixtures import AWS_REGION

ROOT = Path(__file__).resolve().parents[2]
REGION = AWS_REGION


class FakeRuntime(types.ModuleType):
    """`snapshot_restore_py` as Lambda's Python runtime offers it: register, then run the hooks."""

    def __init__(self) -> None:
        super().__init__("snapshot_restore_py")
        self.before: list[Callable[[], None]] = []
        self.after: list[Callable[[], None]] = []

    def register_before_snapshot(self, func: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        self.before.append(lambda: func(*args, **kwargs))

    def register_after_restore(self, func: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        self.after.append(lambda: func(*args, **kwargs))

    def snapshot(self) -> None:
        for hook in self.before:
            hook()

    def restore(self) -> None:
        for hook in self.after:
            hook()


@pytest.fixture
def runtime(monkeypatch: pytest.MonkeyPatch) -> FakeRuntime:
    fake = FakeRuntime()
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", fake)
    monkeypatch.setattr(snapstart, "_registered", False)
    assert snapstart.install()
    assert len(fake.before) == len(fake.after) == 1
    return fake


def _backend_pid(store: Any) -> int:
    return int(store.connection().run("SELECT pg_backend_pid()")[0][0])


def test_restored_environment_opens_new_connections_and_uses_nothing_stale(
    api: Api, runtime: FakeRuntime
) -> None:
    # Init, with everything a warm environment holds: both database connections, the provider client.
    assert api.symbols(asset_class="crypto").status == 200
    service = get_service()
    store, shared = service.store, service.shared_store()
    assert store is not None and shared is not None
    pids = {_backend_pid(store), _backend_pid(shared)}
    provider = get_provider("crypto")
    client = provider._http.client  # type: ignore[attr-defined]
    settings = get_settings()
    store._mark_down()  # a database failure noticed just before the snapshot (monotonic clock)

    runtime.snapshot()
    # Nothing process-wide is left for the snapshot to carry.
    assert get_service.cache_info().currsize == 0 and get_settings.cache_info().currsize == 0
    assert client.is_closed
    assert store._conn is None and shared._conn is None

    # Two environments restored from the same snapshot draw different retry jitter.
    frozen = random.getstate()
    runtime.restore()
    first = [random.random() for _ in range(3)]
    random.setstate(frozen)
    runtime.restore()
    assert [random.random() for _ in range(3)] != first

    # The first request after restore: new service, store, connections and client; the old mark is gone.
    answer = api.symbols(asset_class="crypto")
    assert answer.status == 200 and answer.headers["x-cache"] == "hit"
    restored = get_service()
    assert restored is not service and restored.store is not store and get_settings() is not settings
    assert restored.store is not None and restored.shared_store() is not None
    new_pids = {_backend_pid(restored.store), _backend_pid(restored.shared_store())}
    assert not new_pids & pids
    alive = {row[0] for row in restored.store.connection().run("SELECT pid FROM pg_stat_activity")}
    assert not alive & pids, "a connection from before the snapshot is still open"
    new_provider = get_provider("crypto")
    assert new_provider is not provider and not new_provider._http.client.is_closed  # type: ignore[attr-defined]


def test_no_secret_read_before_the_snapshot_is_reused_after_restore(aws: None, runtime: FakeRuntime) -> None:
    from marketdata.store import connection_kwargs

    ssm = boto3.client("ssm", region_name=REGION)
    ssm.put_parameter(Name="/marketdata/td", Value="key-at-init", Type="SecureString")
    secrets = boto3.client("secretsmanager", region_name=REGION)
    first = json.dumps({"username": "u", "password": "p1"})
    arn = secrets.create_secret(Name="db", SecretString=first)["ARN"]
    settings = Settings.from_env(
        {"TWELVE_DATA_API_KEY_PARAMETER": "/marketdata/td", "DB_HOST": "db.example.com", "DB_SECRET_ARN": arn}
    )

    def db_password() -> str:
        return str((connection_kwargs(settings) or {})["password"])

    # Read during init, then rotated: within their cache time (SECRET_MAX_AGE_SECONDS, 5 minutes) the
    # old values are what an environment keeps using.
    assert settings.require_twelve_data_api_key() == "key-at-init"
    assert db_password() == "p1"
    ssm.put_parameter(Name="/marketdata/td", Value="key-rotated", Type="SecureString", Overwrite=True)
    secrets.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": "u", "password": "p2"}))
    assert settings.require_twelve_data_api_key() == "key-at-init"
    assert db_password() == "p1"

    runtime.snapshot()
    runtime.restore()

    # Restored (possibly days later): both are read again at once.
    assert settings.require_twelve_data_api_key() == "key-rotated"
    assert db_password() == "p2"


def test_before_snapshot_warms_the_request_path(
    monkeypatch: pytest.MonkeyPatch, service_env: object, runtime: FakeRuntime
) -> None:
    handler = load_function_module("historical")
    monkeypatch.setitem(sys.modules, "app", handler)  # as Lambda imports it (Handler: app.lambda_handler)
    routes = handler.app._static_routes + handler.app._dynamic_routes
    runtime.snapshot()
    for name in snapstart.WARM_MODULES:
        assert name in sys.modules, name
    # The routes validate with pydantic models built at import (nothing for a first request to build),
    # not with Powertools' validation, whose per-route model a first request would build.
    assert routes and all(route.func.query_model.__pydantic_complete__ for route in routes)


def test_without_the_runtime_nothing_is_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "snapshot_restore_py", None)  # import fails, as off Lambda
    monkeypatch.setattr(snapstart, "_registered", False)
    assert snapstart.install() is False


def test_importing_the_module_is_cheap() -> None:
    """The handlers import it at module level: the standard library only."""
    code = (
        "import sys; import marketdata.snapstart; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'pydantic', 'httpx', 'pg8000', 'boto3', 'botocore', 'aws_lambda_powertools'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
    assert set(sys.modules) >= {"marketdata.snapstart"}
