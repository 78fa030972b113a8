"""The README stays true to the code: every setting documented, CI running the README's test command, the
README's local backfill command filling the database `serve` uses."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from devtools.fake_upstream import expected_bars
from marketdata.backfill import parse_since
from marketdata.config import Settings
from marketdata.store import CandleStore
from scripts import dev, local_env

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    names = {field.validation_alias for field in Settings.model_fields.values()}
    assert names, "Settings has no environment variables?"
    missing = sorted(str(n) for n in names if f"`{n}`" not in README)
    assert not missing, f"README's configuration table lacks: {missing}"


def test_readme_documents_no_setting_that_does_not_exist() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", table))
    known = {str(f.validation_alias) for f in Settings.model_fields.values()} | {"MIGRATIONS_DIR"}
    assert documented <= known, f"README documents unknown settings: {sorted(documented - known)}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = "python3 scripts/dev.py test"
    assert command in README
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci], ".ci/run must call the README's test command"


# --- the README's local backfill command ----------------------------------------------------------


def _readme_commands(prefix: str) -> list[list[str]]:
    """The README's shell lines starting with `prefix`, split as the shell would."""
    return [shlex.split(line) for line in README.splitlines() if line.startswith(prefix)]


def test_the_readme_backfill_command_fills_the_database_serve_uses(local_tool_pgdata, monkeypatch) -> None:
    """The README's `dev.py backfill --offline ...`, run as dev.py runs it, lands its bars in the database
    `serve --offline` opens (the same function decides it for both)."""
    pgdata = local_tool_pgdata  # instead of the checkout's .local/pgdata-offline
    commands = _readme_commands("python3 scripts/dev.py backfill")
    assert any("--offline" not in c for c in commands), "README: the backfill into serve's cache"
    offline = [c for c in commands if "--offline" in c]
    assert len(offline) == 1, f"README: one `dev.py backfill --offline` command, found {offline}"
    args = offline[0][3:]
    argv = dev.local_tool_argv("backfill", [*args, "--pgdata", str(pgdata)])
    assert Path(argv[1]) == ROOT / "scripts" / "local_backfill.py"
    ours = ("DATABASE_", "DB_", "BINANCE_", "TWELVE_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(ours)}
    proc = subprocess.run(
        [sys.executable, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "database: postgresql://" in proc.stdout, proc.stdout  # printed, as serve prints it

    # What serve --offline --pgdata <dir> would open (it sets DATABASE_URL for the functions it runs).
    monkeypatch.setenv("DATABASE_URL", "")
    jobs = [arg.split(":", 2) for arg in args if arg.count(":") >= 1 and not arg.startswith("-")]
    assert {(symbol, interval) for symbol, interval, *_ in jobs} == {("BTCUSDT", "1H"), ("EUR/USD", "1D")}
    with contextlib.ExitStack() as cleanup:
        database = local_env.open_local_database(cleanup, offline=True, pgdata=pgdata)
        assert database.applied == [], "the backfill migrated the database serve uses"
        store = CandleStore(Settings.from_env({"DATABASE_URL": database.url}))
        cleanup.callback(store.close)
        now = int(time.time())
        lookback = Settings.from_env({}).backfill_default_lookback_days
        for symbol, interval, *since in jobs:
            start = parse_since(since[0]) if since else now - lookback * 86400
            stored = store.read_candles(symbol, interval, start, now)
            assert stored, f"no {symbol} {interval} bars in the database serve uses"
            truth = expected_bars(symbol, interval, start, stored[-1].time)
            assert [c.time for c in stored] == [b.time for b in truth], f"{symbol} {interval}"
    assert not (pgdata / "postmaster.pid").exists(), "the embedded server was left running"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_serve_offline_prints_its_database_and_the_fake_upstream_on_a_fixed_port(local_tool_pgdata) -> None:
    pgdata = local_tool_pgdata
    assert f"`http://127.0.0.1:{local_env.DEFAULT_UPSTREAM_PORT}`" in README, "README: the fake's default URL"
    port, upstream_port = _free_port(), _free_port()
    args = ["--offline", "--port", str(port), "--upstream-port", str(upstream_port), "--pgdata", str(pgdata)]
    argv = dev.local_tool_argv("serve", args)
    assert Path(argv[1]) == ROOT / "scripts" / "local_api.py"
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    proc = subprocess.Popen(
        [sys.executable, *argv[1:]], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    killer = threading.Timer(120, proc.kill)  # a start-up that hangs fails the test instead of the run
    killer.start()
    try:
        assert proc.stdout is not None
        printed = []
        for line in proc.stdout:
            printed.append(line)
            if line.startswith("market data API on"):
                break
        output = "".join(printed)
        assert re.search(
            rf"^database: postgresql://\S+  \(embedded Postgres in {re.escape(str(pgdata))};", output, re.M
        ), output
        assert f"fake upstream at http://127.0.0.1:{upstream_port}\n" in output, output
        streams_line = r"^offline: their live streams \(kline, price\) at ws://127\.0\.0\.1:\d+$"
        assert re.search(streams_line, output, re.M), output
        with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/api/v3/exchangeInfo", timeout=10) as r:
            assert r.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/udf/time", timeout=10) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        killer.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert not (pgdata / "postmaster.pid").exists(), "serve left its embedded Postgres running"
