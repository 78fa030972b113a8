"""The Postgres side of the cache: bars, coverage, symbol lists and the limits every Lambda shares.

Concepts (the code below is the reference; `CandleStore` and `FillTx` are what the service uses):

Series and bars
    A series is one (symbol, interval), with a small integer id in the `series` table; bars live in
    `candles` under (series_id, open_minute), the open time in whole minutes, which keeps a bar under
    100 bytes with its index (migrations/0005_compact_candles.sql explains the layout). Callers speak in
    symbols, intervals and Unix seconds: every statement finds the series id itself (`_SERIES_ID`) and
    converts minutes and seconds, so no id is ever cached in a process. A series row is made by the
    first write that needs it, in that write's statement (`_SERIES_OF_WRITE`), without a sequence.
    Symbols are stored verbatim (the service normalizes and validates them); intervals must be app
    intervals. Only closed bars are stored; reads return them ascending (`read_candles`), or as the
    candles array of a /v1/candles body built by Postgres (`read_candles_json`), and build coarser bars
    from a finer base interval in the same statement (`base=`, the rules of marketdata.resample).

Coverage
    The open-time ranges fetched completely from the provider, per series, merged on write: a bar missing
    inside a covered range does not exist upstream. `FillTx.store_page` writes a page's bars and its
    range in one statement; `store_candles` writes bars only (the bypass path).

Single flight
    `fill_transaction` is a transaction holding a transaction-scoped advisory lock of the series
    (`lock_key`), so that one caller fills a gap while the others wait and then read what it stored.

One round trip per statement, no session state
    Every parameterized statement goes out as Parse/Bind/Describe/Execute/Sync in one flush
    (`_run_pipelined`; pg8000's own `run` sends three Syncs), and nothing leaves state on the server (no
    SET, no session locks, no temporary tables, no named statements, no sequences), so PgBouncer and RDS
    Proxy can multiplex the connection. Bulk bars go as one text array per column (`_bar_params`).

Failures
    Every database failure surfaces as marketdata.errors.DatabaseUnavailable, never a raw pg8000 or
    socket error; after one, the store does not try again for DB_RETRY_AFTER_SECONDS.

Configuration: `connection_kwargs` turns Settings into pg8000 arguments (TLS, the database secret read
through marketdata.config.read_secret, IAM tokens); `get_store` is the process-wide store.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from itertools import starmap
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from marketdata import intervals
from marketdata.config import Settings, get_settings, read_secret
from marketdata.errors import ConfigurationError, DatabaseUnavailable, SingleFlightTimeout
from marketdata.intervals import Interval, parse_interval
from marketdata.schemas import AssetClass, Candle

if TYPE_CHECKING:
    from marketdata.providers.base import Page

logger = logging.getLogger(__name__)

Connection = Any  # pg8000.native.Connection (or a stand-in with the same surface in tests)

_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# Rows per INSERT statement: one statement per provider page (<= 5000 bars); bigger batches are split
# only to keep single statements (and their parameter strings) bounded.
_INSERT_BATCH = 10_000
# Series ids are positive int4; a new series tries its hash and the ids after it (series_pkey).
_MAX_SERIES_ID = 2**31 - 1
_SERIES_ID_TRIES = 16
_INT4_MIN, _INT4_MAX = -(2**31), 2**31 - 1
# Extra time the client waits beyond the statement timeout before it gives a silent server up.
_SOCKET_MARGIN_SECONDS = 1.0
# SQLSTATEs meaning "this connection is gone": class 08 (connection exception), admin/crash shutdown.
_CONNECTION_LOST_STATES = frozenset({"57P01", "57P02", "57P03"})


# --- settings -> pg8000 connect kwargs ---------------------------------------------------------


def is_configured(settings: Settings) -> bool:
    """Whether a database is configured at all (DATABASE_URL or DB_HOST)."""
    return bool(settings.database_url and settings.database_url.get_secret_value()) or bool(settings.db_host)


def _is_local(host: str | None) -> bool:
    if host is None or host.startswith("/"):
        return True
    if host.lower() in _LOCAL_HOSTS:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@lru_cache(maxsize=4)
def _tls_context(cafile: str | None) -> Any:
    """One verifying context per CA file per process (loading the trust store costs milliseconds)."""
    import ssl

    # Verifies the chain and the host name (create_default_context sets CERT_REQUIRED + check_hostname).
    return ssl.create_default_context(cafile=cafile)


def _url_query(url: str) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def parse_database_url(url: str) -> dict[str, Any]:
    """pg8000 connect kwargs (user, password, database, host+port or unix_sock) from a DATABASE_URL.

    postgresql://user:pass@host:port/db; a unix socket directory may be given as `?host=/dir` (libpq
    style) or as a percent-encoded host (postgresql://user@%2Fdir/db). TLS options are read by
    connection_kwargs: `sslmode=disable` turns TLS off for a non-local host (private networks,
    containers), `sslrootcert=/path` names a CA bundle.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigurationError("DATABASE_URL must start with postgresql://")
    query = _url_query(url)
    # The host is unquoted by hand (urlsplit lower-cases .hostname, which would spoil a socket path),
    # except for an IPv6 literal in brackets.
    netloc_host = parts.netloc.rpartition("@")[2]
    from_netloc = parts.hostname if netloc_host.startswith("[") else unquote(netloc_host.partition(":")[0])
    host = query.get("host") or from_netloc or None
    try:
        port = int(query.get("port") or parts.port or 5432)
    except ValueError:
        raise ConfigurationError("DATABASE_URL has an invalid port") from None
    user = unquote(parts.username) if parts.username else query.get("user")
    if not user:
        raise ConfigurationError("DATABASE_URL needs a user name (postgresql://user:password@host/db)")
    password = unquote(parts.password) if parts.password else None
    database = unquote(parts.path.lstrip("/")) or query.get("dbname") or user
    kwargs: dict[str, Any] = {"user": user, "database": database, "password": password or None}
    if host and host.startswith("/"):
        kwargs["unix_sock"] = f"{host.rstrip('/')}/.s.PGSQL.{port}"
    else:
        kwargs["host"] = host or "localhost"
        kwargs["port"] = port
    return kwargs


def _secret_credentials(arn: str, *, refresh: bool = False) -> tuple[str | None, str]:
    """(username, password) from a Secrets Manager JSON secret, cached as every secret is
    (marketdata.config.read_secret); refresh reads it again (the password was rotated)."""
    try:
        data = json.loads(read_secret(arn, refresh=refresh))
        return data.get("username"), str(data["password"])
    except Exception as exc:  # AWS errors, bad JSON, missing key: all an operator problem
        raise DatabaseUnavailable(f"cannot read the database secret ({type(exc).__name__})") from None


def _iam_token(host: str, port: int, user: str) -> str:
    """A 15-minute RDS IAM auth token (signed locally by botocore, no network call)."""
    try:
        import boto3

        return boto3.client("rds").generate_db_auth_token(DBHostname=host, Port=port, DBUsername=user)
    except Exception as exc:
        raise DatabaseUnavailable(f"cannot create an IAM database token ({type(exc).__name__})") from None


def connection_kwargs(settings: Settings, *, refresh_secret: bool = False) -> dict[str, Any] | None:
    """The pg8000.native.Connection kwargs for these settings (secrets resolved), or None if unconfigured.

    TLS with certificate and host name verification for every non-local host; none for localhost,
    loopback addresses and unix sockets. `timeout` is the connect timeout (the store widens the socket
    timeout to the statement timeout once connected).
    """
    if settings.database_url and settings.database_url.get_secret_value():
        url = settings.database_url.get_secret_value()
        kwargs = parse_database_url(url)
        query = _url_query(url)
        sslmode = query.get("sslmode")
        cafile = query.get("sslrootcert") or settings.db_ssl_root_cert
        local = "unix_sock" in kwargs or _is_local(kwargs.get("host"))
        use_tls = not local and sslmode != "disable"
        if sslmode in ("require", "verify-ca", "verify-full") and "unix_sock" not in kwargs:
            use_tls = True
    elif settings.db_host:
        host, port = settings.db_host, settings.db_port
        user = settings.db_user
        password: str | None = None
        if settings.db_iam_auth:
            if not user:
                raise ConfigurationError("DB_IAM_AUTH needs DB_USER")
            password = _iam_token(host, port, user)
        elif settings.db_secret_arn:
            secret_user, password = _secret_credentials(settings.db_secret_arn, refresh=refresh_secret)
            user = user or secret_user
        if not user:
            raise ConfigurationError(
                "DB_USER is required with DB_HOST (or a username in the DB_SECRET_ARN secret)"
            )
        kwargs = {"user": user, "password": password, "database": settings.db_name}
        if host.startswith("/"):
            kwargs["unix_sock"] = f"{host.rstrip('/')}/.s.PGSQL.{port}"
        else:
            kwargs["host"], kwargs["port"] = host, port
        cafile = settings.db_ssl_root_cert
        use_tls = not ("unix_sock" in kwargs or _is_local(host))
    else:
        return None
    # pg8000 treats ssl_context=None as "try TLS without verification": always say exactly what we want.
    kwargs["ssl_context"] = _tls_context(cafile) if use_tls else False
    kwargs["timeout"] = settings.db_connect_timeout
    kwargs["application_name"] = "marketdata"
    return kwargs


# --- one round trip per statement --------------------------------------------------------------


@lru_cache(maxsize=64)
def _compiled(sql: str) -> tuple[str, Callable[[Mapping[str, Any]], Any]]:
    from pg8000.native import to_statement

    return to_statement(sql)


def _pipeline_supported(conn: Connection) -> bool:
    return all(hasattr(conn, name) for name in ("send_PARSE", "send_BIND", "send_EXECUTE", "handle_messages"))


def _run_pipelined(conn: Connection, sql: str, params: Mapping[str, Any]) -> tuple[list[list[Any]], int]:
    """Run one parameterized statement as Parse/Bind/Describe/Execute/Sync in a single round trip.

    pg8000's `native.Connection.run` uses the *unnamed* statement (good: nothing named is left on the
    server, so RDS Proxy does not pin), but it sends three Syncs per statement (Parse, Describe, then
    Bind/Execute). Outside an explicit transaction each Sync ends a unit of work for a transaction-pooling
    proxy, which may hand the next message to another server connection where the unnamed statement
    does not exist. One Sync makes each statement a single unit for PgBouncer/RDS Proxy, and cuts
    round trips from three to one.
    """
    from pg8000.converters import make_params
    from pg8000.core import DESCRIBE, NULL_BYTE, PORTAL, SYNC_MSG, Context, _flush, _write

    statement, make_vals = _compiled(sql)
    context = Context(statement)
    conn.send_PARSE(NULL_BYTE, statement, ())
    conn.send_BIND(NULL_BYTE, make_params(conn.py_types, make_vals(params)))
    conn._send_message(DESCRIBE, PORTAL + NULL_BYTE)
    conn.send_EXECUTE()
    _write(conn._sock, SYNC_MSG)
    _flush(conn._sock)
    conn.handle_messages(context)
    return (context.rows or []), context.row_count


def _execute(
    conn: Connection, sql: str, params: Mapping[str, Any] | None = None
) -> tuple[list[list[Any]], int]:
    if not params:
        rows = conn.run(sql)  # simple query protocol: one round trip, no statement object at all
        return (rows or []), conn.row_count
    if _pipeline_supported(conn):
        return _run_pipelined(conn, sql, params)
    rows = conn.run(sql, **params)
    return (rows or []), conn.row_count


def _server_error(exc: BaseException) -> BaseException | None:
    """The server's ErrorResponse behind exc, if any.

    pg8000 can mask it: when start-up fails over a unix socket, its own cleanup hits a broken pipe and
    raises InterfaceError("network error") with the real error (3D000, 28P01, ...) only as __context__.
    """
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return None
        args = getattr(seen, "args", ())
        if args and isinstance(args[0], dict):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _sqlstate(exc: BaseException) -> str | None:
    found = _server_error(exc)
    return found.args[0].get("C") if found is not None else None


def _connection_lost(exc: BaseException) -> bool:
    """Whether exc means the connection is unusable (as opposed to one statement failing)."""
    from pg8000.exceptions import DatabaseError

    if isinstance(exc, DatabaseError):
        state = _sqlstate(exc) or ""
        return state.startswith("08") or state in _CONNECTION_LOST_STATES
    return True  # InterfaceError, OSError (timeouts included), struct errors from a cut stream


def _timed_out(exc: BaseException) -> bool:
    """Whether exc comes from the socket timeout (a statement outliving DB_STATEMENT_TIMEOUT_MS)."""
    seen: BaseException | None = exc
    for _ in range(5):
        if seen is None:
            return False
        if isinstance(seen, TimeoutError):  # socket.timeout is TimeoutError since Python 3.10
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(exc: BaseException) -> str:
    found = _server_error(exc)
    if found is not None:
        fields = found.args[0]
        return f"{fields.get('M', 'database error')} (SQLSTATE {fields.get('C')})"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _db_errors() -> tuple[type[BaseException], ...]:
    from pg8000.exceptions import Error

    return (Error, OSError, struct.error, EOFError)


# --- SQL ------------------------------------------------------------------------------------

# Every statement names its series by (symbol, interval) and finds the id in the same statement (one
# index probe of the small series table): no id is cached in the process, so nothing can go stale.
_SERIES_ID = "(SELECT id FROM series WHERE symbol = :symbol AND interval = {interval})"
# Open times are stored in whole minutes (migrations/0005_compact_candles.sql); statements take and
# return seconds, and bound the minutes with :lo/:hi (_minute_bounds).
_SELECTED = (
    "SELECT CAST(open_minute AS bigint) * 60 AS t, open AS o, high AS h, low AS l, close AS c, volume AS v"
    " FROM candles WHERE series_id = {series} AND open_minute BETWEEN :lo AND :hi"
)
_SELECTED_NATIVE = _SELECTED.format(series=_SERIES_ID.format(interval=":interval"))
_SELECT_ASC = _SELECTED_NATIVE + " ORDER BY open_minute LIMIT :limit"
_SELECT_DESC = _SELECTED_NATIVE + " ORDER BY open_minute DESC LIMIT :limit"
# Bars of an app interval built from its base interval's rows (marketdata.resample, same rules): grouped
# by the bar they fall in, on the grid of intervals.fixed_grid (width :w, offset :o; :w = 0 for calendar
# months). Aggregates with ORDER BY keep open/close and the volume sum's term order exact.
_RESAMPLED = """
SELECT bucket AS t, (array_agg(o ORDER BY t))[1] AS o, max(h) AS h, min(l) AS l,
       (array_agg(c ORDER BY t DESC))[1] AS c, sum(v ORDER BY t) AS v
FROM (
    SELECT CASE WHEN CAST(:w AS bigint) = 0
                THEN CAST(extract(epoch FROM date_trunc('month', to_timestamp(t) AT TIME ZONE 'UTC'))
                          AS bigint)
                ELSE t - ((t - CAST(:o AS bigint)) % CAST(:w AS bigint) + CAST(:w AS bigint))
                         % CAST(:w AS bigint)
           END AS bucket,
           t, o, h, l, c, v
    FROM ({base_rows}) AS r
) AS b
GROUP BY bucket
ORDER BY bucket {{order}}
LIMIT {{limit}}
""".format(base_rows=_SELECTED.format(series=_SERIES_ID.format(interval=":base")))
_RESAMPLED_ASC = _RESAMPLED.format(order="ASC", limit=":limit")
_RESAMPLED_DESC = _RESAMPLED.format(order="DESC", limit=":limit")
# The same bars as the /v1/candles JSON array, built by Postgres in the read statement (read_candles_json):
# up to :want rows of `inner` (columns t, o, h, l, c, v), of which the first :limit (in the read's order)
# go into the array, ascending; the row after them (a forward read's peek) gives only its time. Numbers
# are float8out text, the shortest text that parses back to the same double while extra_float_digits
# >= 1 (the server default since Postgres 12; the statement returns the setting so that the caller can
# tell). Stored bars are finite (validated), so every number is a valid JSON number.
_JSON_OF = """
WITH r AS ({inner}), k AS (SELECT t, o, h, l, c, v, row_number() OVER (ORDER BY t {order}) AS n FROM r)
SELECT count(*) FILTER (WHERE n <= CAST(:limit AS bigint)),
       COALESCE('[' || string_agg(
           '{{"time":' || t || ',"open":' || o || ',"high":' || h || ',"low":' || l || ',"close":' || c
           || ',"volume":' || v || '}}', ',' ORDER BY t) FILTER (WHERE n <= CAST(:limit AS bigint)) || ']',
           '[]'),
       max(t) FILTER (WHERE n <= CAST(:limit AS bigint)),
       min(t) FILTER (WHERE n > CAST(:limit AS bigint)),
       current_setting('extra_float_digits')
FROM k
"""
_NATIVE_ROWS = _SELECTED_NATIVE + " ORDER BY open_minute {order} LIMIT :want"
_JSON_ASC = _JSON_OF.format(inner=_NATIVE_ROWS.format(order="ASC"), order="ASC")
_JSON_DESC = _JSON_OF.format(inner=_NATIVE_ROWS.format(order="DESC"), order="DESC")
_JSON_RESAMPLED_ASC = _JSON_OF.format(inner=_RESAMPLED.format(order="ASC", limit=":want"), order="ASC")
_JSON_RESAMPLED_DESC = _JSON_OF.format(inner=_RESAMPLED.format(order="DESC", limit=":want"), order="DESC")
_SELECT_COVERAGE = (
    "SELECT start_time, end_time FROM coverage"
    " WHERE series_id = " + _SERIES_ID.format(interval=":interval")
    + " AND start_time <= :end AND end_time >= :start ORDER BY start_time"
)
# A write's series (CTE s): found by (symbol, interval), else made with the id :id (written by the
# RETURNING of the insert, so the same statement can use it at once). s is empty when :id belongs to
# another series, or another writer made this series meanwhile: the caller tries the next id.
_SERIES_OF_WRITE = """
found AS (SELECT id FROM series WHERE symbol = :symbol AND interval = :interval), made AS (
    INSERT INTO series (id, symbol, interval, provider)
    SELECT CAST(:id AS integer), :symbol, :interval, :provider WHERE NOT EXISTS (SELECT 1 FROM found)
    ON CONFLICT DO NOTHING
    RETURNING id
), s AS (SELECT id FROM found UNION ALL SELECT id FROM made)"""
_ENSURE_SERIES = f"WITH {_SERIES_OF_WRITE} SELECT (SELECT id FROM s)"
# The bars of a page, from one parameter per column (_bar_params). An open time that is not a whole
# minute becomes NULL and is refused by the NOT NULL of open_minute, as the old CHECK refused it.
_BARS = """
    INSERT INTO candles (series_id, open_minute, open, high, low, close, volume)
    SELECT s.id, CASE WHEN b.t % 60 = 0 THEN b.t / 60 END, b.o, b.h, b.l, b.c, b.v
    FROM s, unnest(CAST(:t AS bigint[]), CAST(:o AS float8[]), CAST(:h AS float8[]), CAST(:l AS float8[]),
                   CAST(:c AS float8[]), CAST(:v AS float8[])) AS b(t, o, h, l, c, v)
    ON CONFLICT (series_id, open_minute) DO NOTHING
    RETURNING 1
"""
# Bars only: (rows inserted, whether the series was found or made: when not, nothing was done).
_INSERT_BARS = f"""
WITH {_SERIES_OF_WRITE}, ins AS ({_BARS})
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM s)
"""
# Bars and coverage of one page in ONE statement (one round trip): insert the bars, delete the coverage
# rows that overlap or touch the page's range, and insert their union with it. Touching means no bar
# open time lies between them (merge_lo/merge_hi: the bar before the first / after the last of the page).
# Returns (rows inserted, coverage rows written, whether the series was found or made: when not,
# nothing was done).
_STORE_PAGE = f"""
WITH {_SERIES_OF_WRITE}, ins AS ({_BARS}), gone AS (
    DELETE FROM coverage
    WHERE CAST(:cover AS boolean) AND series_id = (SELECT id FROM s)
      AND end_time >= CAST(:merge_lo AS bigint) AND start_time <= CAST(:merge_hi AS bigint)
    RETURNING start_time, end_time
), merged AS (
    INSERT INTO coverage (series_id, start_time, end_time)
    SELECT (SELECT id FROM s), LEAST(CAST(:start AS bigint), min(start_time)),
           GREATEST(CAST(:end AS bigint), max(end_time))
    FROM gone
    HAVING CAST(:cover AS boolean) AND EXISTS (SELECT 1 FROM s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT count(*) FROM merged), (SELECT count(*) FROM s)
"""
_TRY_LOCK = "SELECT pg_try_advisory_xact_lock(CAST(:key AS bigint))"
# One request of a provider counted against its shared quota, atomically (the conflicting row is locked
# and re-checked, so concurrent takers never exceed a cap). Refused when a cap of the current UTC minute
# or day is reached or a ban runs; `prev` (the state before) says which, for the Retry-After.
_TAKE_PROVIDER_REQUEST = """
WITH prev AS (
    SELECT minute_start, minute_used, day_start, day_used, blocked_until
    FROM provider_limits WHERE provider = :provider
), up AS (
    INSERT INTO provider_limits AS l (provider, minute_start, minute_used, day_start, day_used)
    VALUES (:provider, :minute, 1, :day, 1)
    ON CONFLICT (provider) DO UPDATE SET
        minute_used = CASE WHEN l.minute_start = EXCLUDED.minute_start THEN l.minute_used + 1 ELSE 1 END,
        minute_start = EXCLUDED.minute_start,
        day_used = CASE WHEN l.day_start = EXCLUDED.day_start THEN l.day_used + 1 ELSE 1 END,
        day_start = EXCLUDED.day_start
    WHERE l.blocked_until <= CAST(:now AS float8)
      AND (CASE WHEN l.minute_start = EXCLUDED.minute_start THEN l.minute_used ELSE 0 END)
          < CAST(:minute_cap AS integer)
      AND (CASE WHEN l.day_start = EXCLUDED.day_start THEN l.day_used ELSE 0 END) < CAST(:day_cap AS integer)
    RETURNING 1
)
SELECT (SELECT count(*) FROM up),
       (SELECT blocked_until FROM prev),
       (SELECT minute_start = :minute AND minute_used >= CAST(:minute_cap AS integer) FROM prev),
       (SELECT day_start = :day AND day_used >= CAST(:day_cap AS integer) FROM prev)
"""
_BLOCK_PROVIDER = """
INSERT INTO provider_limits AS l (provider, blocked_until) VALUES (:provider, CAST(:until AS float8))
ON CONFLICT (provider) DO UPDATE SET blocked_until = GREATEST(l.blocked_until, EXCLUDED.blocked_until)
"""
# The shared open bar: claim the right to fetch it when what is stored is stale or of another bar and
# nobody else holds the claim; answer with what was stored before (a fresh bar needs no fetch at all).
_CLAIM_OPEN_BAR = """
WITH prev AS (
    SELECT fetched_at, open_time, open, high, low, close, volume
    FROM open_bars WHERE symbol = :symbol AND interval = :interval
), claim AS (
    INSERT INTO open_bars AS b (symbol, interval, claimed_until)
    VALUES (:symbol, :interval, CAST(:hold_until AS float8))
    ON CONFLICT (symbol, interval) DO UPDATE SET claimed_until = EXCLUDED.claimed_until
    WHERE (b.fetched_at < CAST(:fresh_after AS float8) OR b.open_time IS DISTINCT FROM :open_time)
      AND b.claimed_until < CAST(:now AS float8)
    RETURNING 1
)
SELECT (SELECT count(*) FROM claim), p.fetched_at, p.open_time, p.open, p.high, p.low, p.close, p.volume
FROM (SELECT 1) AS one LEFT JOIN prev AS p ON true
"""
_PUT_OPEN_BAR = """
UPDATE open_bars SET fetched_at = CAST(:now AS float8), claimed_until = 0, open_time = :open_time,
       open = :open, high = :high, low = :low, close = :close, volume = :volume
WHERE symbol = :symbol AND interval = :interval
"""
_RELEASE_OPEN_BAR = "UPDATE open_bars SET claimed_until = 0 WHERE symbol = :symbol AND interval = :interval"
_GET_REJECTED = "SELECT reason FROM rejected_symbols WHERE symbol = :symbol AND until > CAST(:now AS float8)"
_PUT_REJECTED = """
INSERT INTO rejected_symbols (symbol, reason, until) VALUES (:symbol, :reason, CAST(:until AS float8))
ON CONFLICT (symbol) DO UPDATE SET reason = EXCLUDED.reason, until = EXCLUDED.until
"""
# How often a waiter on the fill lock looks whether the holder stored anything.
_PROGRESS_POLL_SECONDS = 0.5
# Counts can never reach this: a cap of "none".
_NO_CAP = 2**31 - 1
_GET_SYMBOLS = (
    "SELECT array_to_json(symbols)::text, extract(epoch FROM fetched_at)::float8"
    " FROM symbol_lists WHERE asset_class = :asset_class"
)
_PUT_SYMBOLS = """
INSERT INTO symbol_lists (asset_class, symbols, fetched_at)
VALUES (:asset_class,
        ARRAY(SELECT e FROM jsonb_array_elements_text(CAST(:symbols AS jsonb)) WITH ORDINALITY AS s(e, n)
              ORDER BY n),
        to_timestamp(CAST(:fetched_at AS float8)))
ON CONFLICT (asset_class) DO UPDATE SET symbols = EXCLUDED.symbols, fetched_at = EXCLUDED.fetched_at
"""


@dataclass(frozen=True, slots=True)
class CandlesJson:
    """Cached bars as the candles array of a /v1/candles body, built by Postgres (read_candles_json)."""

    text: str  # '[{"time":..,"open":..,"high":..,"low":..,"close":..,"volume":..},...]', ascending
    count: int  # bars in text
    last_time: int | None  # open time of the newest bar in text (None when empty)
    next_time: int | None  # peek: open time of the first bar of the range after them, else None


def _interval_value(interval: Interval | str) -> str:
    return parse_interval(interval).value


def _asset_class_value(asset_class: AssetClass | str) -> str:
    return AssetClass(asset_class).value


def _minute_bounds(start: int, end: int) -> dict[str, int]:
    """:lo/:hi of a read: the stored minutes of the open times in [start, end] seconds, inside int4."""
    lo = -(-int(start) // 60)  # the first whole minute at or after start
    hi = int(end) // 60
    return {"lo": min(max(lo, _INT4_MIN), _INT4_MAX), "hi": min(max(hi, _INT4_MIN), _INT4_MAX)}


def _series_id_candidate(symbol: str, interval: str, attempt: int = 0) -> int:
    """The id a new series tries first (attempt 0), then the ones after it: from a hash of the series, so
    two stores making one series pick the same id (and meet on it), and different series rarely meet."""
    digest = hashlib.blake2b(f"{interval} {symbol}".encode(), digest_size=4).digest()
    return 1 + (int.from_bytes(digest, "big") + attempt) % _MAX_SERIES_ID


def _series_params(provider: str, symbol: str, interval: str) -> dict[str, Any]:
    """The parameters of _SERIES_OF_WRITE."""
    return {
        "symbol": symbol, "interval": interval, "provider": provider,
        "id": _series_id_candidate(symbol, interval),
    }


def lock_key(symbol: str, interval: Interval | str) -> int:
    """The advisory lock key (signed 64-bit) of a (symbol, interval) fill; stable across processes."""
    digest = hashlib.blake2b(f"{symbol}\x00{_interval_value(interval)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def _array_literal(values: list[Any]) -> str:
    # str() of a list is C code calling repr() on each number: the shortest text that parses back to
    # the same double (Postgres parses it with correct rounding), in a form array_in accepts as is
    # (it skips the blanks after the commas). Text is the one parameter format pg8000 sends; this is its
    # cheapest producer measured (bench/bench_storage.py, "parameters").
    return "{" + str(values)[1:-1] + "}"


def _bar_params(candles: Sequence[Candle]) -> dict[str, str]:
    return {
        "t": _array_literal([int(c.time) for c in candles]),
        "o": _array_literal([c.open for c in candles]),
        "h": _array_literal([c.high for c in candles]),
        "l": _array_literal([c.low for c in candles]),
        "c": _array_literal([c.close for c in candles]),
        "v": _array_literal([c.volume for c in candles]),
    }


def _merge_ranges(rows: Sequence[Sequence[int]], interval: Interval) -> list[tuple[int, int]]:
    """Overlapping or touching ranges merged (writes already merge; this guards against a writer that
    did not hold the fill lock)."""
    merged: list[tuple[int, int]] = []
    for start, end in rows:
        if merged:
            prev_start, prev_end = merged[-1]
            if start <= intervals.next_open(interval, intervals.bar_open(interval, prev_end)):
                merged[-1] = (prev_start, max(prev_end, end))
                continue
        merged.append((int(start), int(end)))
    return merged


# --- the store -----------------------------------------------------------------------------


class CandleStore:
    """Bars, coverage and symbol lists in Postgres over one lazily opened pg8000 connection.

    The connection lives as long as the process (a Lambda execution environment) and is reopened once
    when a statement finds it dropped (RDS Proxy closes idle clients; databases restart). Nothing here
    leaves session state on the server: no SET, no session advisory locks, no temporary tables, no
    named prepared statements, so a transaction-pooling proxy can multiplex the connection freely.

    Timeouts: the connect timeout is settings.db_connect_timeout; once connected, the socket timeout is
    settings.db_statement_timeout_ms (+1 s), so no statement can hold a Lambda past it. The server-side
    statement_timeout is deliberately NOT set from here: `SET` pins RDS Proxy sessions (its docs list
    SET and set_config as pinning without an exception for SET LOCAL), and startup parameters are
    refused by PgBouncer. Set it where it costs nothing per session: the RDS Proxy InitQuery
    (`SET statement_timeout = '10s'`) or `ALTER ROLE <app user> SET statement_timeout = '10s'`.
    """

    def __init__(self, settings: Settings, *, connect: Callable[[], Connection] | None = None) -> None:
        self._settings = settings
        self._connect_override = connect
        self._conn: Connection | None = None
        self._lock = threading.RLock()
        self._in_transaction = False
        self._tx_conn: Connection | None = None  # the connection the open fill transaction lives on
        self.round_trips = 0
        # After the database could not be reached or hung: no new attempt before this monotonic instant,
        # so requests answer from the providers at once instead of each waiting out a timeout.
        self._down_until = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> CandleStore | None:
        """A store for these settings, or None when no database is configured (nothing is opened yet)."""
        return cls(settings) if is_configured(settings) else None

    def sibling(self) -> CandleStore:
        """Another store on the same database with its own connection (opened lazily).

        For the limits every Lambda shares (marketdata.limits): their statements must commit at once,
        never inside a fill transaction, where a quota row's lock would be held for a whole provider
        request and serialize every Lambda's requests behind it.
        """
        return CandleStore(self._settings, connect=self._connect_override)

    # --- connection handling ---

    def _mark_down(self) -> None:
        self._down_until = time.monotonic() + self._settings.db_retry_after_seconds

    def _open(self) -> Connection:
        wait = self._down_until - time.monotonic()
        if wait > 0:
            raise DatabaseUnavailable(
                f"the database failed moments ago; not tried again for {math.ceil(wait)} s"
                " (DB_RETRY_AFTER_SECONDS)"
            )
        try:
            return self._connect()
        except DatabaseUnavailable:
            self._mark_down()
            raise

    def _connect(self) -> Connection:
        if self._connect_override is not None:
            try:
                return self._connect_override()
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                raise DatabaseUnavailable(f"cannot connect to the database: {_describe(exc)}") from None
        import pg8000.native

        kwargs = connection_kwargs(self._settings)
        if kwargs is None:
            raise DatabaseUnavailable("no database configured (set DATABASE_URL or DB_HOST)")
        try:
            conn = self._connect_with(pg8000.native.Connection, kwargs)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            # A rotated Secrets Manager password: fetch the secret again, once.
            if _sqlstate(exc) == "28P01" and self._settings.db_secret_arn and not self._settings.database_url:
                kwargs = connection_kwargs(self._settings, refresh_secret=True) or kwargs
                try:
                    conn = self._connect_with(pg8000.native.Connection, kwargs)
                except Exception as exc2:
                    raise DatabaseUnavailable(f"cannot connect to the database: {_describe(exc2)}") from None
            else:
                raise DatabaseUnavailable(f"cannot connect to the database: {_describe(exc)}") from None
        return conn

    def _connect_with(self, factory: Callable[..., Connection], kwargs: dict[str, Any]) -> Connection:
        conn = factory(**kwargs)
        sock = getattr(conn, "_usock", None)
        if sock is not None:
            sock.settimeout(self._settings.db_statement_timeout_ms / 1000 + _SOCKET_MARGIN_SECONDS)
        self.round_trips += 1
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to tell the server
                conn.close()

    def _run(
        self, sql: str, params: Mapping[str, Any] | None = None, *, retry: bool = True
    ) -> tuple[list[list[Any]], int]:
        """Run one statement on the shared connection; reopen once if a reused connection was dropped."""
        errors = _db_errors()
        with self._lock:
            if self._in_transaction and (self._conn is None or self._conn is not self._tx_conn):
                # The transaction died with its connection: never carry on outside it (no lock, autocommit).
                raise DatabaseUnavailable("the fill transaction's database connection was lost")
            fresh = self._conn is None
            if fresh:
                self._conn = self._open()
            try:
                self.round_trips += 1
                return _execute(self._conn, sql, params)
            except errors as exc:
                lost = _connection_lost(exc)
                if lost:
                    self._drop()
                # A dropped connection is retried once on a new one; a statement that timed out is not
                # (it would only time out again, doubling the wait).
                if lost and retry and not fresh and not self._in_transaction and not _timed_out(exc):
                    logger.info("database connection was dropped; reconnecting once (%s)", _describe(exc))
                    self._conn = self._open()
                    try:
                        self.round_trips += 1
                        return _execute(self._conn, sql, params)
                    except errors as exc2:
                        if _connection_lost(exc2):
                            self._drop()
                        raise DatabaseUnavailable(f"database error: {_describe(exc2)}") from None
                if _timed_out(exc):
                    self._mark_down()
                    limit = self._settings.db_statement_timeout_ms / 1000 + _SOCKET_MARGIN_SECONDS
                    raise DatabaseUnavailable(f"the database did not answer within {limit:g} s") from None
                raise DatabaseUnavailable(f"database error: {_describe(exc)}") from None

    def ping(self) -> None:
        """One round trip; DatabaseUnavailable when the database cannot be reached."""
        self._run("SELECT 1")

    def connection(self) -> Connection:
        """The live connection (opened if needed), for the migration runner."""
        with self._lock:
            if self._conn is None:
                self._conn = self._open()
            return self._conn

    def close(self) -> None:
        """Close the connection; idempotent, and a later call opens a new one."""
        with self._lock:
            self._drop()

    # --- reads ---

    def read_candles(
        self,
        symbol: str,
        interval: Interval | str,
        start: int,
        end: int,
        *,
        limit: int | None = None,
        newest: bool = False,
        base: Interval | None = None,
    ) -> list[Candle]:
        """Cached bars with open time in [start, end], ascending; newest=True: the last `limit` of them.

        base: build the `interval` bars from the cached bars of this finer interval instead (see
        marketdata.resample), in the database: one statement, one row per built bar.
        """
        iv = parse_interval(interval)
        limit_param = None if limit is None else int(limit)
        if base is None or base is iv:
            params: dict[str, Any] = {
                "symbol": symbol, "interval": iv.value, **_minute_bounds(start, end), "limit": limit_param,
            }
            rows, _ = self._run(_SELECT_DESC if newest else _SELECT_ASC, params)
        else:
            first, last = intervals.base_span(iv, base, int(start), int(end))
            width, offset = intervals.fixed_grid(iv) or (0, 0)
            params = {
                "symbol": symbol, "base": base.value, **_minute_bounds(first, last), "limit": limit_param,
                "w": width, "o": offset,
            }
            rows, _ = self._run(_RESAMPLED_DESC if newest else _RESAMPLED_ASC, params)
        if newest:
            rows.reverse()
        return list(starmap(Candle, rows))

    def read_candles_json(
        self,
        symbol: str,
        interval: Interval | str,
        start: int,
        end: int,
        *,
        limit: int,
        newest: bool = False,
        peek: bool = False,
        base: Interval | None = None,
    ) -> CandlesJson | None:
        """The bars read_candles would return, as JSON text built by Postgres in the same one statement.

        The bars are those of read_candles(..., limit=limit, newest=newest, base=base); peek (ascending
        reads only) also reports the open time of the bar after them (a forward answer's next_start).
        Numbers are the server's shortest round-trip text of the stored doubles. None when the server's
        extra_float_digits is below 1 (its float text would not round-trip): use read_candles then.
        """
        if peek and newest:
            raise ValueError("peek reads the bar after the answer: ascending reads only")
        iv = parse_interval(interval)
        want = int(limit) + (1 if peek else 0)
        if base is None or base is iv:
            params: dict[str, Any] = {
                "symbol": symbol, "interval": iv.value, **_minute_bounds(start, end), "limit": int(limit),
                "want": want,
            }
            sql = _JSON_DESC if newest else _JSON_ASC
        else:
            first, last = intervals.base_span(iv, base, int(start), int(end))
            width, offset = intervals.fixed_grid(iv) or (0, 0)
            params = {
                "symbol": symbol, "base": base.value, **_minute_bounds(first, last), "limit": int(limit),
                "want": want, "w": width, "o": offset,
            }
            sql = _JSON_RESAMPLED_DESC if newest else _JSON_RESAMPLED_ASC
        rows, _ = self._run(sql, params)
        count, text, last_time, next_time, float_digits = rows[0]
        if int(float_digits) < 1:
            logger.warning(
                "extra_float_digits is %s: float text would not round-trip; reading bars as objects",
                float_digits,
            )
            return None
        return CandlesJson(
            text=str(text),
            count=int(count),
            last_time=None if last_time is None else int(last_time),
            next_time=None if next_time is None else int(next_time),
        )

    def read_coverage(
        self, symbol: str, interval: Interval | str, start: int, end: int
    ) -> list[tuple[int, int]]:
        """Merged covered ranges (inclusive) intersecting [start, end], ascending, not clipped."""
        iv = parse_interval(interval)
        params = {"symbol": symbol, "interval": iv.value, "start": int(start), "end": int(end)}
        rows, _ = self._run(_SELECT_COVERAGE, params)
        return _merge_ranges(rows, iv)

    # --- writes ---

    def store_candles(
        self, provider: str, symbol: str, interval: Interval | str, candles: Sequence[Candle]
    ) -> int:
        """Bars only (no coverage), idempotent; each batch one autocommitted statement. Rows inserted."""
        return self._store_bars(provider, symbol, _interval_value(interval), candles, retry=True)

    def _store_bars(
        self, provider: str, symbol: str, interval: str, candles: Sequence[Candle], *, retry: bool
    ) -> int:
        inserted = 0
        for i in range(0, len(candles), _INSERT_BATCH):
            params = {
                **_series_params(provider, symbol, interval), **_bar_params(candles[i : i + _INSERT_BATCH])
            }
            rows, _ = self._run(_INSERT_BARS, params, retry=retry)
            if not rows[0][1]:  # the series' id was taken meanwhile (rare): find one, then store
                params["id"] = self._ensure_series(provider, symbol, interval, retry=retry)
                rows, _ = self._run(_INSERT_BARS, params, retry=retry)
            inserted += int(rows[0][0])
        return inserted

    def _ensure_series(self, provider: str, symbol: str, interval: str, *, retry: bool) -> int:
        """The id of the series, made now if it has none: an id after its hash's (which was taken)."""
        params = _series_params(provider, symbol, interval)
        for attempt in range(1, _SERIES_ID_TRIES + 1):
            params["id"] = _series_id_candidate(symbol, interval, attempt)
            rows, _ = self._run(_ENSURE_SERIES, params, retry=retry)
            if rows[0][0] is not None:
                return int(rows[0][0])
        raise DatabaseUnavailable(f"no free series id found in {_SERIES_ID_TRIES} tries")

    def get_symbols(self, asset_class: AssetClass | str) -> tuple[list[str], float] | None:
        """(symbols in stored order, fetched_at Unix seconds), or None when never stored."""
        rows, _ = self._run(_GET_SYMBOLS, {"asset_class": _asset_class_value(asset_class)})
        if not rows:
            return None
        symbols_json, fetched_at = rows[0]
        return json.loads(symbols_json), float(fetched_at)

    def put_symbols(self, asset_class: AssetClass | str, symbols: Sequence[str], fetched_at: float) -> None:
        """Replace the stored list of an asset class."""
        self._run(_PUT_SYMBOLS, {"asset_class": _asset_class_value(asset_class),
                                 "symbols": json.dumps(list(symbols)), "fetched_at": float(fetched_at)})

    # --- limits shared by every Lambda (marketdata.limits) ---

    def take_provider_request(
        self, provider: str, now: float, *, per_minute: int | None, per_day: int | None
    ) -> float | None:
        """Count one request of `provider` against the shared quota: None when granted, else the seconds
        until it may be asked again (the ban's end, the next minute or the next UTC day)."""
        minute, day = int(now // 60), int(now // 86400)
        params = {
            "provider": provider, "now": float(now), "minute": minute, "day": day,
            "minute_cap": _NO_CAP if per_minute is None else per_minute,
            "day_cap": _NO_CAP if per_day is None else per_day,
        }
        rows, _ = self._run(_TAKE_PROVIDER_REQUEST, params)
        granted, blocked_until, minute_full, day_full = rows[0]
        if granted:
            return None
        waits = []
        if blocked_until is not None and blocked_until > now:
            waits.append(blocked_until - now)
        if day_full:
            waits.append((day + 1) * 86400 - now)
        if minute_full or not waits:
            waits.append((minute + 1) * 60 - now)
        return max(1.0, max(waits))

    def block_provider(self, provider: str, until: float) -> None:
        """Nobody calls `provider` before `until` (a ban's end, a 429's Retry-After)."""
        self._run(_BLOCK_PROVIDER, {"provider": provider, "until": float(until)})

    def claim_open_bar(
        self, symbol: str, interval: Interval | str, open_time: int, now: float, *, ttl: float, hold: float
    ) -> tuple[bool, Candle | None]:
        """(claimed, stored): whether this caller should fetch the open bar (and then put_open_bar), and
        the stored bar when it is of `open_time` (fresh when not claimed and stored within ttl)."""
        params = {
            "symbol": symbol, "interval": _interval_value(interval), "open_time": int(open_time),
            "now": float(now), "fresh_after": float(now - ttl), "hold_until": float(now + hold),
        }
        rows, _ = self._run(_CLAIM_OPEN_BAR, params)
        claimed, _fetched_at, stored_time, *ohlcv = rows[0]
        stored = None
        if stored_time == open_time and ohlcv[0] is not None:
            stored = Candle(int(stored_time), *ohlcv)
        return bool(claimed), stored

    def put_open_bar(self, symbol: str, interval: Interval | str, bar: Candle | None, now: float) -> None:
        """Store the open bar just fetched for every caller (None: nothing to share; the claim ends)."""
        key = {"symbol": symbol, "interval": _interval_value(interval)}
        if bar is None:
            self._run(_RELEASE_OPEN_BAR, key)
            return
        self._run(_PUT_OPEN_BAR, {
            **key, "now": float(now), "open_time": bar.time, "open": bar.open, "high": bar.high,
            "low": bar.low, "close": bar.close, "volume": bar.volume,
        })

    def rejected_symbol(self, symbol: str, now: float) -> str | None:
        """Why the provider refused `symbol` ("unknown" or "plan") while that is remembered, else None."""
        rows, _ = self._run(_GET_REJECTED, {"symbol": symbol, "now": float(now)})
        return str(rows[0][0]) if rows else None

    def remember_rejected_symbol(self, symbol: str, reason: str, until: float) -> None:
        self._run(_PUT_REJECTED, {"symbol": symbol, "reason": reason, "until": float(until)})

    # --- single-flight fills ---

    @contextmanager
    def fill_transaction(
        self,
        symbol: str,
        interval: Interval | str,
        *,
        wait_seconds: float,
        stall_seconds: float | None = None,
        watch: tuple[int, int] | None = None,
    ) -> Iterator[FillTx]:
        """A transaction holding the fill lock of (symbol, interval); see the module docstring.

        The lock is pg_try_advisory_xact_lock tried until wait_seconds pass, rather than a blocking
        pg_advisory_xact_lock under `SET LOCAL lock_timeout`: transaction-level advisory locks are the
        ones RDS Proxy documents as not pinning, and the tries need no SET of any kind. Each try that
        fails ends its transaction, so a waiter holds no server connection between tries: behind a
        transaction pooler with few server connections, waiters never crowd out the holder.

        stall_seconds, watch: give up earlier when the holder makes no progress: when the coverage of
        `watch` (an open-time range of this series) has not changed for stall_seconds. A holder that
        keeps storing pages is waited for up to wait_seconds.
        """
        iv = parse_interval(interval)
        with self._lock:
            if self._in_transaction:
                raise RuntimeError("fill_transaction is not reentrant on one store")
            self._begin_locked(symbol, iv, wait_seconds, stall_seconds, watch)
            tx = FillTx(self, symbol, iv)
            try:
                yield tx
            except BaseException:
                tx._open = False
                self._end_failed_transaction()
                raise
            else:
                tx._open = False
                try:
                    self._run("COMMIT", retry=False)  # raises if the transaction's connection was lost
                finally:
                    self._in_transaction = False
                    self._tx_conn = None

    def _end_failed_transaction(self) -> None:
        self._in_transaction = False
        if self._conn is self._tx_conn:
            self._rollback()
        self._tx_conn = None

    def _begin_locked(
        self,
        symbol: str,
        interval: Interval,
        wait_seconds: float,
        stall_seconds: float | None,
        watch: tuple[int, int] | None,
    ) -> None:
        """BEGIN with the fill lock held, or SingleFlightTimeout (no transaction left open)."""
        key = lock_key(symbol, interval)
        started = time.monotonic()
        deadline = started + max(0.0, wait_seconds)
        stall = wait_seconds if stall_seconds is None or watch is None else stall_seconds
        stalled_at = started + max(0.0, stall)
        seen: object = None
        next_look = started + _PROGRESS_POLL_SECONDS
        pause = 0.02
        while True:
            self._run("BEGIN")  # may reconnect once: nothing of this transaction exists yet
            self._tx_conn = self._conn
            self._in_transaction = True
            try:
                rows, _ = self._run(_TRY_LOCK, {"key": key}, retry=False)
            except BaseException:
                self._end_failed_transaction()
                raise
            if rows and rows[0][0]:
                return
            self._end_failed_transaction()  # not ours yet: wait outside any transaction
            now = time.monotonic()
            if watch is not None and now >= next_look:
                coverage = self.read_coverage(symbol, interval, *watch)
                if coverage != seen:
                    seen, stalled_at = coverage, now + max(0.0, stall)
                next_look = now + _PROGRESS_POLL_SECONDS
            give_up = min(deadline, stalled_at)
            if now >= give_up:
                why = (
                    f"made no progress for {stall:g} s" if stalled_at < deadline
                    else f"held the lock for more than {wait_seconds:g} s"
                )
                raise SingleFlightTimeout(f"another fill of this series {why}")
            time.sleep(min(pause, give_up - now))
            pause = min(pause * 2, 0.1)

    def _rollback(self) -> None:
        if self._conn is None:
            return
        try:
            self.round_trips += 1
            _execute(self._conn, "ROLLBACK")
        except Exception:  # the connection is broken: the server rolls back when it notices
            self._drop()


class FillTx:
    """Operations inside one fill_transaction (same connection, same transaction, fill lock held)."""

    def __init__(self, store: CandleStore, symbol: str, interval: Interval) -> None:
        self._store = store
        self.symbol = symbol
        self.interval = interval
        self._open = True

    def _check(self) -> None:
        if not self._open:
            raise RuntimeError("this FillTx's transaction has ended")

    def read_coverage(self, start: int, end: int) -> list[tuple[int, int]]:
        self._check()
        params = {
            "symbol": self.symbol, "interval": self.interval.value, "start": int(start), "end": int(end),
        }
        rows, _ = self._store._run(_SELECT_COVERAGE, params, retry=False)
        return _merge_ranges(rows, self.interval)

    def read_candles(
        self, start: int, end: int, *, limit: int | None = None, newest: bool = False
    ) -> list[Candle]:
        self._check()
        return self._store.read_candles(self.symbol, self.interval, start, end, limit=limit, newest=newest)

    def store_page(self, provider: str, page: Page) -> int:
        """Bars of the page plus its coverage (unless it dropped bars), in one statement. Rows inserted."""
        self._check()
        iv = self.interval
        candles = page.candles
        cover = page.dropped == 0 and page.start <= page.end
        inserted = 0
        # Pages are at most 5000 bars: normally one statement. A bigger one stores its bars first and
        # its coverage with the last batch, still inside this transaction.
        for i in range(0, max(len(candles), 1), _INSERT_BATCH):
            batch = candles[i : i + _INSERT_BATCH]
            last = i + _INSERT_BATCH >= len(candles)
            params = {
                **_series_params(provider, self.symbol, iv.value), **_bar_params(batch),
                "cover": cover and last, "start": int(page.start), "end": int(page.end),
                "merge_lo": intervals.prev_open(iv, intervals.first_open_at_or_after(iv, int(page.start))),
                "merge_hi": intervals.next_open(iv, intervals.bar_open(iv, int(page.end))),
            }
            rows, _ = self._store._run(_STORE_PAGE, params, retry=False)
            if not rows[0][2]:  # the series' id was taken meanwhile (rare): find one, then store
                params["id"] = self._store._ensure_series(provider, self.symbol, iv.value, retry=False)
                rows, _ = self._store._run(_STORE_PAGE, params, retry=False)
            inserted += int(rows[0][0])
        return inserted

    def store_candles(
        self, provider: str, symbol: str, interval: Interval | str, candles: Sequence[Candle]
    ) -> int:
        """Bars only, no coverage, inside this transaction. Rows inserted."""
        self._check()
        if symbol != self.symbol or parse_interval(interval) is not self.interval:
            raise ValueError("FillTx.store_candles takes the transaction's own symbol and interval")
        return self._store._store_bars(provider, symbol, self.interval.value, candles, retry=False)


# --- process-wide default ------------------------------------------------------------------

_default_store: CandleStore | None = None
_default_lock = threading.Lock()
_default_built = False


def get_store(settings: Settings | None = None) -> CandleStore | None:
    """The process-wide store (connection reused across Lambda invocations); None when unconfigured."""
    global _default_store, _default_built
    with _default_lock:
        if not _default_built:
            _default_store = CandleStore.from_settings(settings or get_settings())
            _default_built = True
        return _default_store


def reset_default_store() -> None:
    """Close and forget the process-wide store (tests, settings changes)."""
    global _default_store, _default_built
    with _default_lock:
        if _default_store is not None:
            _default_store.close()
        _default_store, _default_built = None, False
