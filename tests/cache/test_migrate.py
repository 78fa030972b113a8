"""The migration runner: idempotent, safe with two runners, stops at a failing file, refuses edited files."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from marketdata.migrate import MigrationError, apply_migrations, default_migrations_dir, load_migrations
from tests.support.postgres import PgServer

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def _db_name(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[-1]


def _tables(pg_server: PgServer, url: str) -> set[str]:
    conn = pg_server.connect(_db_name(url))
    try:
        return {r[0] for r in conn.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    finally:
        conn.close()


def _recorded(pg_server: PgServer, url: str) -> list[str]:
    conn = pg_server.connect(_db_name(url))
    try:
        return [r[0] for r in conn.run("SELECT version FROM schema_migrations ORDER BY version")]
    finally:
        conn.close()


def _write(folder: Path, files: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_apply_twice_is_a_noop(pg_server: PgServer, empty_database_url: str) -> None:
    conn = pg_server.connect(_db_name(empty_database_url))
    try:
        first = apply_migrations(conn)
        second = apply_migrations(conn)
    finally:
        conn.close()
    assert first == [m.version for m in load_migrations(REPO_MIGRATIONS)]
    assert first[0] == "0001"
    assert second == []
    assert {"series", "candles", "coverage", "symbol_lists", "schema_migrations"} <= _tables(
        pg_server, empty_database_url
    )
    assert _recorded(pg_server, empty_database_url) == first


def test_fixture_database_is_already_migrated(pg_server: PgServer, database_url: str) -> None:
    conn = pg_server.connect(_db_name(database_url))
    try:
        assert apply_migrations(conn) == []
    finally:
        conn.close()


def test_accepts_a_store(store, database_url: str, pg_server: PgServer) -> None:
    assert apply_migrations(store) == []
    store.ping()  # the store's connection is left usable


def test_two_concurrent_runners_apply_each_file_once(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    # Each file sleeps a little so the two runners really overlap.
    folder = _write(
        tmp_path / "m",
        {
            "0001_a.sql": "SELECT pg_sleep(0.2); CREATE TABLE a (x int);",
            "0002_b.sql": "SELECT pg_sleep(0.2); CREATE TABLE b (x int);",
            "0003_c.sql": "CREATE TABLE c (x int);",
        },
    )
    results: list[list[str]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def runner() -> None:
        conn = pg_server.connect(_db_name(empty_database_url))
        try:
            barrier.wait()
            results.append(apply_migrations(conn, folder))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=runner) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert sorted(v for r in results for v in r) == ["0001", "0002", "0003"]
    assert _recorded(pg_server, empty_database_url) == ["0001", "0002", "0003"]
    assert {"a", "b", "c"} <= _tables(pg_server, empty_database_url)


def test_failing_file_stops_the_run_and_keeps_earlier_ones(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    folder = _write(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE first_table (x int);",
            "0002_bad.sql": "CREATE TABLE half_done (x int); SELECT no_such_column FROM first_table;",
            "0003_later.sql": "CREATE TABLE later_table (x int);",
        },
    )
    conn = pg_server.connect(_db_name(empty_database_url))
    try:
        with pytest.raises(MigrationError, match=r"0002_bad\.sql"):
            apply_migrations(conn, folder)
        # The connection is usable and the history is exactly the first file.
        assert _recorded(pg_server, empty_database_url) == ["0001"]
        tables = _tables(pg_server, empty_database_url)
        assert "first_table" in tables
        assert "half_done" not in tables  # the failed file's own statements rolled back with it
        assert "later_table" not in tables
        # A second run still refuses to go past the broken file.
        with pytest.raises(MigrationError, match=r"0002_bad\.sql"):
            apply_migrations(conn, folder)
        assert "later_table" not in _tables(pg_server, empty_database_url)
        # Once fixed (it never applied, so editing it is allowed) the rest goes through.
        (folder / "0002_bad.sql").write_text("CREATE TABLE half_done (x int);")
        assert apply_migrations(conn, folder) == ["0002", "0003"]
    finally:
        conn.close()


def test_changed_checksum_of_an_applied_file_is_refused(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    folder = _write(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (x int);"})
    conn = pg_server.connect(_db_name(empty_database_url))
    try:
        assert apply_migrations(conn, folder) == ["0001"]
        (folder / "0001_a.sql").write_text("CREATE TABLE a (x bigint);")
        (folder / "0002_b.sql").write_text("CREATE TABLE b (x int);")
        with pytest.raises(MigrationError, match=r"0001_a\.sql"):
            apply_migrations(conn, folder)
        assert _recorded(pg_server, empty_database_url) == ["0001"]
        assert "b" not in _tables(pg_server, empty_database_url)
    finally:
        conn.close()


def test_line_endings_do_not_change_the_checksum(tmp_path: Path) -> None:
    unix = _write(tmp_path / "u", {"0001_a.sql": "CREATE TABLE a (x int);\nSELECT 1;\n"})
    dos = tmp_path / "d"
    dos.mkdir()
    (dos / "0001_a.sql").write_bytes(b"CREATE TABLE a (x int);\r\nSELECT 1;\r\n")
    assert load_migrations(unix)[0].checksum == load_migrations(dos)[0].checksum


def test_files_are_ordered_numerically_and_bad_names_refused(tmp_path: Path) -> None:
    folder = _write(tmp_path / "m", {"10_ten.sql": "SELECT 1;", "9_nine.sql": "SELECT 1;"})
    assert [m.version for m in load_migrations(folder)] == ["9", "10"]
    (folder / "notes.sql").write_text("SELECT 1;")
    with pytest.raises(MigrationError, match=r"notes\.sql"):
        load_migrations(folder)


def test_default_dir_is_the_repo_folder_or_migrations_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("MIGRATIONS_DIR", raising=False)
    assert default_migrations_dir() == REPO_MIGRATIONS
    monkeypatch.setenv("MIGRATIONS_DIR", str(tmp_path))
    assert default_migrations_dir() == tmp_path


def test_command_line(pg_server: PgServer, empty_database_url: str) -> None:
    command = [sys.executable, "-m", "marketdata.migrate", "--database-url", empty_database_url]
    first = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "applied: 0001" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "up to date" in second.stdout
    assert "candles" in _tables(pg_server, empty_database_url)


def test_command_line_reports_an_unreachable_database(tmp_path: Path) -> None:
    url = f"postgresql://nobody:secretpw@/x?host={tmp_path}"
    result = subprocess.run(
        [sys.executable, "-m", "marketdata.migrate", "--database-url", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert "migration failed" in result.stderr
    assert "secretpw" not in result.stderr + result.stdout


def test_migrations_through_pgbouncer(pgbouncer, pg_server: PgServer, empty_database_url: str) -> None:
    from marketdata.config import Settings
    from marketdata.store import CandleStore

    store = CandleStore(Settings.from_env({"DATABASE_URL": pgbouncer.url_for(empty_database_url)}))
    try:
        assert apply_migrations(store) == [m.version for m in load_migrations(REPO_MIGRATIONS)]
        assert apply_migrations(store) == []
    finally:
        store.close()
    assert "candles" in _tables(pg_server, empty_database_url)


def test_default_dir_inside_a_built_layer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The layer ships python/marketdata and python/migrations side by side (at /opt/python on Lambda)."""
    import shutil

    import marketdata

    layer = tmp_path / "python"
    shutil.copytree(Path(marketdata.__file__).parent, layer / "marketdata",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO_MIGRATIONS, layer / "migrations")
    monkeypatch.delenv("MIGRATIONS_DIR", raising=False)
    code = "from marketdata.migrate import default_migrations_dir as d; print(d())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={"PYTHONPATH": str(layer), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()) == layer / "migrations"


def test_a_file_may_outlast_the_statement_timeouts_of_the_functions(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    # As deployed: the role's statement_timeout (README) and the store's socket timeout derived from
    # DB_STATEMENT_TIMEOUT_MS are both shorter than a big data migration (0005 on millions of bars).
    from marketdata.config import Settings
    from marketdata.store import CandleStore

    database = _db_name(empty_database_url)
    pg_server.admin().run(f'ALTER DATABASE "{database}" SET statement_timeout = 300')
    folder = _write(tmp_path / "m", {"0001_slow.sql": "SELECT pg_sleep(1.6); CREATE TABLE slow (x int);"})
    settings = Settings.from_env({"DATABASE_URL": empty_database_url, "DB_STATEMENT_TIMEOUT_MS": "400"})
    store = CandleStore(settings)
    try:
        with pytest.raises(Exception, match="statement timeout"):
            store.connection().run("SELECT pg_sleep(1)")  # what the functions get
        store.close()
        assert apply_migrations(store, folder) == ["0001"]
        store.ping()  # the store's own timeouts are back for the functions' statements
        assert store.connection()._usock.gettimeout() == 1.4
    finally:
        store.close()
    assert "slow" in _tables(pg_server, empty_database_url)
