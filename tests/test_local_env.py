"""scripts/local_env.py: serve and backfill share one local database without stopping it under each other,
and say what to do when the offline fake upstream's port is taken."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from marketdata.config import Settings
from marketdata.store import CandleStore
from scripts import local_env
from tests.providers.helpers import utc

ROOT = Path(__file__).resolve().parent.parent


def test_a_backfill_during_serve_leaves_serve_s_database_running(local_tool_pgdata, monkeypatch) -> None:
    pgdata = local_tool_pgdata
    monkeypatch.setenv("DATABASE_URL", "")  # open_local_database exports the URL it opens
    with contextlib.ExitStack() as cleanup:
        # What serve --offline --pgdata <dir> holds while it runs.
        database = local_env.open_local_database(cleanup, offline=True, pgdata=pgdata)
        ours = ("DATABASE_", "DB_", "BINANCE_", "TWELVE_")
        env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
        script = str(ROOT / "scripts" / "local_backfill.py")
        proc = subprocess.run(
            [sys.executable, script, "--offline", "--pgdata", str(pgdata), "BTCUSDT:1D:2026-01-01"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert f"embedded Postgres in {pgdata.resolve()}" in proc.stdout
        # The backfill attached to the running server and let go of it without stopping it.
        store = CandleStore(Settings.from_env({"DATABASE_URL": database.url}))
        cleanup.callback(store.close)
        stored = store.read_candles("BTCUSDT", "1D", utc("2026-01-01"), utc("2026-03-01"))
        assert [c.time for c in stored] == list(range(utc("2026-01-01"), utc("2026-03-01") + 1, 86400))
    # The last user (serve, here) stops it.
    assert not (pgdata / "postmaster.pid").exists()


def test_a_taken_upstream_port_says_which_option_to_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with contextlib.ExitStack() as cleanup, pytest.raises(local_env.LocalSetupError) as failure:
            local_env.start_offline_upstream(cleanup, port)
    assert f"port {port}" in str(failure.value) and "--upstream-port" in str(failure.value)


def test_offline_streams_aim_the_live_clients_at_the_fake(monkeypatch) -> None:
    # Registered, so what the local tools set in os.environ is undone after the test.
    for name in ("BINANCE_REST_URL", "TWELVE_DATA_REST_URL", "TWELVE_DATA_API_KEY"):
        monkeypatch.setenv(name, "")
    for name in ("BINANCE_WS_URL", "TWELVE_DATA_WS_URL"):
        monkeypatch.setenv(name, "wss://real.example")
    from websockets.sync.client import connect

    with contextlib.ExitStack() as cleanup:
        upstream = local_env.start_offline_upstream(cleanup, 0)
        streams = local_env.start_offline_streams(cleanup, upstream)
        settings = Settings.from_env()
        assert settings.binance_ws_url == settings.twelve_data_ws_url == streams.url
        with connect(f"{streams.url}/stream?streams=btcusdt@kline_1m") as ws:
            assert '"btcusdt@kline_1m"' in ws.recv(timeout=30)  # the fake's kline stream answers
