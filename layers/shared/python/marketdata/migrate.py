"""Applies migrations/NNNN_name.sql files in order: `python -m marketdata.migrate [--database-url URL]`.

Also callable from a Lambda: `apply_migrations(get_store())` returns the versions it applied.

Rules:
- A file's version is its name up to the first underscore (`0001_cache_schema.sql` -> "0001");
  files run in numeric version order. A file must not contain transaction control (BEGIN/COMMIT) or
  statements that cannot run in a transaction (CREATE INDEX CONCURRENTLY).
- Each file runs in its own transaction together with its row in `schema_migrations` (version,
  file name, sha256 of the text, time): a file is either fully applied and recorded, or not at all.
- Two runners starting at once serialize on a transaction-scoped advisory lock
  (pg_advisory_xact_lock, which works through PgBouncer/RDS Proxy transaction pooling, unlike a
  session lock); the second one finds each file recorded and skips it.
- A failing file stops the run (MigrationError); files before it stay applied, none after it runs.
- A recorded file whose text changed since it was applied is refused (MigrationError) before anything
  runs: applied migrations are history, fixes go in a new file.
- A file may run for minutes (0005 copies every bar): it runs with no server statement timeout (SET LOCAL,
  whatever the role or the proxy sets for the functions) and a socket timeout of
  MIGRATION_TIMEOUT_SECONDS instead of the store's statement-sized one.

Where the files are: MIGRATIONS_DIR when set; else `migrations/` at the repository root (this file's
layers/shared/python/marketdata/../../../../migrations), else a `migrations` folder next to the
package (how the built layer ships them: python/migrations), else inside the package.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from marketdata.errors import DatabaseUnavailable, MarketDataError

logger = logging.getLogger(__name__)

# Two-int advisory lock keys live in a different key space from the store's one-bigint fill locks.
_LOCK_NAMESPACE = 0x6D64  # "md"
_LOCK_ID = 1
_FILE_NAME = re.compile(r"^(\d+)_[A-Za-z0-9_\-]+\.sql$")
# How long one file may keep the connection silent: a Lambda's longest run.
MIGRATION_TIMEOUT_SECONDS = 900.0

_BOOKKEEPING = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version    text        PRIMARY KEY,
    filename   text        NOT NULL,
    checksum   text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class MigrationError(MarketDataError):
    """A migration failed, or the recorded history does not match the files."""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str
    filename: str
    sql: str
    checksum: str


def default_migrations_dir() -> Path:
    """MIGRATIONS_DIR, else the first existing candidate described in the module docstring."""
    env = os.environ.get("MIGRATIONS_DIR")
    if env:
        return Path(env)
    package = Path(__file__).resolve().parent
    candidates = [package.parent / "migrations", package / "migrations"]
    if len(package.parents) > 3:  # repository checkout: layers/shared/python/marketdata
        candidates.insert(0, package.parents[3] / "migrations")
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.sql")):
            return candidate
    raise MigrationError(
        "migrations folder not found (set MIGRATIONS_DIR); looked in " + ", ".join(str(c) for c in candidates)
    )


def load_migrations(directory: Path | str | None = None) -> list[Migration]:
    """The migration files of a folder, in version order (checksums over LF-normalized text)."""
    folder = Path(directory) if directory is not None else default_migrations_dir()
    if not folder.is_dir():
        raise MigrationError(f"migrations folder not found: {folder}")
    found: dict[str, Migration] = {}
    for path in folder.glob("*.sql"):
        match = _FILE_NAME.match(path.name)
        if not match:
            raise MigrationError(f"unexpected file name {path.name!r}: use NNNN_description.sql")
        version = match.group(1)
        if version in found:
            other = found[version].filename
            raise MigrationError(f"two migrations with version {version}: {other}, {path.name}")
        text = path.read_text(encoding="utf-8").replace("\r\n", "\n")
        checksum = hashlib.sha256(text.encode("utf-8")).hexdigest()
        found[version] = Migration(version, path.name, text, checksum)
    return [found[v] for v in sorted(found, key=int)]


def _connection_of(conn_or_store: Any) -> Any:
    # A CandleStore (duck-typed, to keep this module free of the store's imports) or a pg8000 connection.
    if hasattr(conn_or_store, "connection") and callable(conn_or_store.connection):
        conn_or_store.ping()  # reconnects once if the kept connection was dropped
        return conn_or_store.connection()
    return conn_or_store


def _db_call(conn: Any, sql: str, **params: Any) -> list[list[Any]]:
    from pg8000.exceptions import Error

    try:
        return conn.run(sql, **params) or []
    except (Error, OSError) as exc:
        raise DatabaseUnavailable(f"database error while migrating: {exc}") from None


@contextmanager
def _socket_timeout(conn: Any, seconds: float) -> Iterator[None]:
    """The connection's socket timeout set to `seconds` for the block (pg8000 keeps the socket in
    `_usock`, the attribute the store sets its own timeout on; see tests/cache/test_pg8000_contract.py)."""
    sock = getattr(conn, "_usock", None)
    if sock is None:
        yield
        return
    before = sock.gettimeout()
    sock.settimeout(seconds)
    try:
        yield
    finally:
        sock.settimeout(before)


def _rollback_quietly(conn: Any) -> None:
    try:
        conn.run("ROLLBACK")
    except Exception:  # broken connection: the server rolls back on its own
        logger.debug("rollback after a failed migration failed too", exc_info=True)


def _begin_locked(conn: Any) -> dict[str, str]:
    """BEGIN, take the migrations lock, ensure the bookkeeping table; the recorded {version: checksum}."""
    _db_call(conn, "BEGIN")
    _db_call(conn, f"SELECT pg_advisory_xact_lock({_LOCK_NAMESPACE}, {_LOCK_ID})")
    _db_call(conn, _BOOKKEEPING)
    return {str(v): str(c) for v, c in _db_call(conn, "SELECT version, checksum FROM schema_migrations")}


def apply_migrations(conn_or_store: Any, migrations_dir: Path | str | None = None) -> list[str]:
    """Apply every migration not yet recorded; return the versions applied by this call, in order."""
    conn = _connection_of(conn_or_store)
    migrations = load_migrations(migrations_dir)
    applied_now: list[str] = []
    for migration in migrations:
        try:
            recorded = _begin_locked(conn)
            changed = [
                m.filename for m in migrations if m.version in recorded and recorded[m.version] != m.checksum
            ]
            if changed:
                raise MigrationError(
                    "applied migrations were edited since they ran (add a new file instead): "
                    + ", ".join(changed)
                )
            if migration.version in recorded:
                _db_call(conn, "COMMIT")
                continue
            _db_call(conn, "SET LOCAL statement_timeout = 0")
            try:
                with _socket_timeout(conn, MIGRATION_TIMEOUT_SECONDS):
                    conn.run(migration.sql)  # simple query protocol: the whole file, many statements
            except Exception as exc:
                raise MigrationError(f"migration {migration.filename} failed: {exc}") from None
            _db_call(
                conn,
                "INSERT INTO schema_migrations (version, filename, checksum) VALUES (:v, :f, :c)",
                v=migration.version,
                f=migration.filename,
                c=migration.checksum,
            )
            _db_call(conn, "COMMIT")
        except BaseException:
            _rollback_quietly(conn)
            raise
        logger.info("applied migration %s", migration.filename)
        applied_now.append(migration.version)
    unknown = set(_applied_versions(conn)) - {m.version for m in migrations}
    if unknown:
        logger.warning("database has migrations this code does not know: %s", ", ".join(sorted(unknown)))
    return applied_now


def _applied_versions(conn: Any) -> list[str]:
    return [str(r[0]) for r in _db_call(conn, "SELECT version FROM schema_migrations ORDER BY version")]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m marketdata.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", help="postgresql://user:pass@host:port/db (default: env)")
    parser.add_argument("--migrations-dir", help="folder of NNNN_name.sql files (default: MIGRATIONS_DIR)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    from marketdata.config import Settings
    from marketdata.store import CandleStore

    env = dict(os.environ)
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    try:
        settings = Settings.from_env(env)
        store = CandleStore.from_settings(settings)
        if store is None:
            print("no database configured: pass --database-url or set DATABASE_URL/DB_HOST", file=sys.stderr)
            return 2
        try:
            applied = apply_migrations(store, args.migrations_dir)
        finally:
            store.close()
    except MarketDataError as exc:
        print(f"migration failed: {exc.message}", file=sys.stderr)
        return 1
    print(f"applied: {', '.join(applied)}" if applied else "database is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
