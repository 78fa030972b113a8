"""The pg8000 internals the store relies on, and the pins that hold them still.

The store runs each parameterized statement as Parse/Bind/Describe/Execute/Sync in one flush (one round
trip, one unit of work for a transaction pooler) through pg8000 internals that its version range does not
promise. So pg8000 is pinned to one version, in both places that install it, and this test names what
moved when an upgrade breaks them, instead of the store silently falling back to three round trips.
"""

from __future__ import annotations

import inspect
import re
import tomllib
from pathlib import Path

import pg8000
import pg8000.core
import pg8000.native

from marketdata.store import CandleStore, _pipeline_supported

ROOT = Path(__file__).resolve().parents[2]
PINNED = "1.31.6"


def _requirement(lines: list[str], name: str) -> str:
    found = [line.strip() for line in lines if re.match(rf"^{re.escape(name)}\b", line.strip())]
    assert len(found) == 1, f"{name} listed {len(found)} times"
    return found[0].replace(" ", "")


def test_the_layer_and_the_project_pin_the_same_runtime_requirements() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    layer = [
        line for line in (ROOT / "layers/shared/requirements.txt").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    names = [re.split(r"[<>=!~ \[]", req, maxsplit=1)[0] for req in project]
    assert sorted(names) == sorted(re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0] for req in layer)
    for name in names:
        assert _requirement(project, name) == _requirement(layer, name), name
    assert _requirement(project, "pg8000") == f"pg8000=={PINNED}"


def test_the_installed_pg8000_is_the_pinned_one() -> None:
    assert pg8000.__version__ == PINNED


def test_the_internals_the_store_uses_are_there() -> None:
    for name in ("DESCRIBE", "NULL_BYTE", "PORTAL", "SYNC_MSG", "Context", "_flush", "_write"):
        assert hasattr(pg8000.core, name), f"pg8000.core.{name} moved"
    assert pg8000.core.SYNC_MSG == b"S\x00\x00\x00\x04"
    assert pg8000.core.DESCRIBE == b"D" and pg8000.core.PORTAL == b"P"
    assert list(inspect.signature(pg8000.core.Context).parameters)[:1] == ["statement"]
    for name in ("send_PARSE", "send_BIND", "send_EXECUTE", "handle_messages", "_send_message"):
        assert callable(getattr(pg8000.native.Connection, name, None)), f"Connection.{name} moved"
    assert callable(getattr(pg8000.native, "to_statement", None))


def test_a_live_connection_takes_the_one_round_trip_path(store: CandleStore) -> None:
    conn = store.connection()
    assert _pipeline_supported(conn) and hasattr(conn, "_sock") and hasattr(conn, "py_types")
    # The socket whose timeout the store bounds by the statement timeout (and migrate lifts for a file).
    assert conn._usock.gettimeout() == store._settings.db_statement_timeout_ms / 1000 + 1
    before = store.round_trips
    assert store.read_candles("BTCUSDT", "1m", 0, 10) == []
    assert store.round_trips - before == 1
