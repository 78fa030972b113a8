"""Connection settings, TLS, secrets, IAM tokens, reconnects; failures surface as DatabaseUnavailable."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from marketdata.config import Settings
from marketdata.errors import ConfigurationError, DatabaseUnavailable
from marketdata.providers.base import Page
from marketdata.schemas import Candle
from marketdata.store import (
    CandleStore,
    connection_kwargs,
    get_store,
    parse_database_url,
    reset_default_store,
)
from tests.support.postgres import PgServer

T0 = 1_699_999_200


def settings(**env: str) -> Settings:
    return Settings.from_env(env)


def db_name(url: str) -> str:
    return url.split("?")[0].rsplit("/", 1)[-1]


# --- DATABASE_URL parsing ----------------------------------------------------------------------


def test_parse_tcp_url_with_encoded_password() -> None:
    kwargs = parse_database_url("postgresql://app:p%40ss%3Aw%2Frd@db.example.com:6432/market")
    assert kwargs["user"] == "app"
    assert kwargs["password"] == "p@ss:w/rd"
    assert kwargs["host"] == "db.example.com"
    assert kwargs["port"] == 6432
    assert kwargs["database"] == "market"
    assert "unix_sock" not in kwargs


def test_parse_defaults() -> None:
    kwargs = parse_database_url("postgres://app@localhost/")
    assert (kwargs["host"], kwargs["port"], kwargs["database"], kwargs["password"]) == (
        "localhost",
        5432,
        "app",
        None,
    )


def test_parse_unix_socket_directory_in_query() -> None:
    kwargs = parse_database_url("postgresql://postgres:@/postgres?host=/tmp/pg-dir")
    assert kwargs["unix_sock"] == "/tmp/pg-dir/.s.PGSQL.5432"
    assert kwargs["password"] is None
    assert "host" not in kwargs
    kwargs = parse_database_url("postgresql://postgres@/db?host=/run/postgresql/&port=5433")
    assert kwargs["unix_sock"] == "/run/postgresql/.s.PGSQL.5433"


def test_parse_unix_socket_directory_as_encoded_host() -> None:
    kwargs = parse_database_url("postgresql://u:pw@%2Fvar%2Frun%2FPG:5499/db")
    assert kwargs["unix_sock"] == "/var/run/PG/.s.PGSQL.5499"


@pytest.mark.parametrize("url", ["mysql://u@h/db", "postgresql://h/db", "postgresql://u@h:notaport/db"])
def test_parse_rejects_bad_urls(url: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_database_url(url)


# --- TLS choice ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["db.example.com", "10.0.3.17", "proxy.proxy-abc.eu-west-1.rds.amazonaws.com"]
)
def test_tls_with_verification_for_remote_hosts(host: str) -> None:
    kwargs = connection_kwargs(settings(DATABASE_URL=f"postgresql://app:pw@{host}:5432/market"))
    assert kwargs is not None
    context = kwargs["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pw@localhost:5432/market",
        "postgresql://app:pw@127.0.0.1/market",
        "postgresql://app:pw@[::1]:5432/market",
        "postgresql://app@/market?host=/tmp/sock",
    ],
)
def test_no_tls_for_local_hosts(url: str) -> None:
    kwargs = connection_kwargs(settings(DATABASE_URL=url))
    assert kwargs is not None
    # False, not None: pg8000 treats None as "try TLS without verifying".
    assert kwargs["ssl_context"] is False


def test_sslmode_disable_opts_out_for_a_private_host() -> None:
    kwargs = connection_kwargs(settings(DATABASE_URL="postgresql://app:pw@db:5432/market?sslmode=disable"))
    assert kwargs is not None and kwargs["ssl_context"] is False


def test_db_host_settings_use_tls_and_timeouts() -> None:
    kwargs = connection_kwargs(
        settings(
            DB_HOST="proxy.example.com", DB_PORT="5432", DB_NAME="md", DB_USER="app", DB_CONNECT_TIMEOUT="2.5"
        )
    )
    assert kwargs is not None
    assert (kwargs["host"], kwargs["port"], kwargs["database"], kwargs["user"]) == (
        "proxy.example.com",
        5432,
        "md",
        "app",
    )
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    assert kwargs["ssl_context"].verify_mode == ssl.CERT_REQUIRED
    assert kwargs["timeout"] == 2.5


def test_unconfigured() -> None:
    assert connection_kwargs(settings()) is None
    assert CandleStore.from_settings(settings()) is None
    with pytest.raises(ConfigurationError):
        connection_kwargs(settings(DB_HOST="db.example.com"))  # no user anywhere


def test_get_store_is_process_wide(monkeypatch: pytest.MonkeyPatch) -> None:
    reset_default_store()
    try:
        configured = settings(DATABASE_URL="postgresql://app@localhost/x")
        first = get_store(configured)
        assert first is not None and get_store() is first
    finally:
        reset_default_store()


def test_boto3_is_not_imported_for_database_url() -> None:
    code = (
        "import sys; from marketdata.config import Settings; from marketdata.store import connection_kwargs;"
        "connection_kwargs(Settings.from_env({'DATABASE_URL': 'postgresql://u:p@db.example.com/x'}));"
        "import marketdata.store, marketdata.migrate;"
        "print('boto3' in sys.modules, 'botocore' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False"]


# --- Secrets Manager and IAM -----------------------------------------------------------------


def test_secret_credentials_are_fetched_once_and_refreshable(aws: None) -> None:
    import boto3

    client = boto3.client("secretsmanager")
    arn = client.create_secret(
        Name="db", SecretString=json.dumps({"username": "svc", "password": "s3cret!"})
    )["ARN"]
    configured = settings(DB_HOST="db.internal.example", DB_NAME="md", DB_SECRET_ARN=arn)
    kwargs = connection_kwargs(configured)
    assert kwargs is not None
    assert (kwargs["user"], kwargs["password"]) == ("svc", "s3cret!")
    # Cached per process: a rotation is not seen until a refresh (the store refreshes on auth failure).
    client.put_secret_value(SecretId=arn, SecretString=json.dumps({"username": "svc", "password": "rotated"}))
    assert connection_kwargs(configured)["password"] == "s3cret!"  # type: ignore[index]
    assert connection_kwargs(configured, refresh_secret=True)["password"] == "rotated"  # type: ignore[index]
    # DB_USER wins over the secret's username.
    with_user = settings(DB_HOST="db.internal.example", DB_USER="other", DB_SECRET_ARN=arn)
    assert connection_kwargs(with_user)["user"] == "other"  # type: ignore[index]


def test_missing_secret_is_database_unavailable_without_leaking(aws: None) -> None:
    arn = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:nope-AbCdEf"
    with pytest.raises(DatabaseUnavailable) as info:
        connection_kwargs(settings(DB_HOST="db.example.com", DB_SECRET_ARN=arn))
    assert "secret" in info.value.message


def test_secret_path_connects_end_to_end(aws: None, pg_server: PgServer, database_url: str) -> None:
    import boto3

    if pg_server.socket_dir is None:
        host, port = str(pg_server.host), pg_server.port
    else:
        host, port = pg_server.socket_dir, pg_server.port
    arn = boto3.client("secretsmanager").create_secret(
        Name="db2",
        SecretString=json.dumps({"username": pg_server.user, "password": pg_server.password or ""}),
    )["ARN"]
    configured = settings(DB_HOST=host, DB_PORT=str(port), DB_NAME=db_name(database_url), DB_SECRET_ARN=arn)
    store = CandleStore(configured)
    try:
        store.store_candles("binance", "BTCUSDT", "1m", [Candle(T0, 1, 2, 0.5, 1.5, 3)])
        assert store.read_candles("BTCUSDT", "1m", T0, T0) == [Candle(T0, 1, 2, 0.5, 1.5, 3)]
    finally:
        store.close()


def test_iam_token_is_generated_locally(aws: None) -> None:
    configured = settings(
        DB_HOST="proxy.proxy-xyz.eu-west-1.rds.amazonaws.com",
        DB_PORT="5432",
        DB_USER="app",
        DB_NAME="md",
        DB_IAM_AUTH="true",
    )
    kwargs = connection_kwargs(configured)
    assert kwargs is not None
    token = kwargs["password"]
    assert token.startswith("proxy.proxy-xyz.eu-west-1.rds.amazonaws.com:5432/?")
    assert "Action=connect" in token and "DBUser=app" in token and "X-Amz-Signature=" in token
    assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
    with pytest.raises(ConfigurationError):
        connection_kwargs(settings(DB_HOST="h.example.com", DB_IAM_AUTH="true"))


# --- failures and reconnects -----------------------------------------------------------------


def test_reconnects_once_after_the_server_dropped_the_connection(
    store: CandleStore, pg_server: PgServer, database_url: str
) -> None:
    store.store_candles("binance", "BTCUSDT", "1m", [Candle(T0, 1, 2, 0.5, 1.5, 3)])
    old_conn = store.connection()
    assert pg_server.terminate_connections(db_name(database_url)) == 1
    assert store.read_candles("BTCUSDT", "1m", T0, T0) == [Candle(T0, 1, 2, 0.5, 1.5, 3)]
    assert store.connection() is not old_conn
    # and again: every drop gets its one reconnect
    assert pg_server.terminate_connections(db_name(database_url)) == 1
    store.put_symbols("crypto", ["BTCUSDT"], 1.0)
    assert store.get_symbols("crypto") == (["BTCUSDT"], 1.0)


def test_connection_dropped_inside_a_fill_transaction_is_not_retried(
    store: CandleStore, pg_server: PgServer, database_url: str
) -> None:
    with pytest.raises(DatabaseUnavailable), store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0, [Candle(T0, 1, 2, 0.5, 1.5, 3)]))
        pg_server.terminate_connections(db_name(database_url))
        tx.store_page("binance", Page(T0 + 60, T0 + 60, [Candle(T0 + 60, 1, 2, 0.5, 1.5, 3)]))
    # nothing of the transaction was committed, and the store works again
    assert store.read_candles("BTCUSDT", "1m", 0, 10**10) == []
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == []


def test_begin_on_a_dropped_connection_reconnects(
    store: CandleStore, pg_server: PgServer, database_url: str
) -> None:
    store.ping()
    pg_server.terminate_connections(db_name(database_url))
    with store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0, [Candle(T0, 1, 2, 0.5, 1.5, 3)]))
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0, T0)]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_tcp_server_is_database_unavailable() -> None:
    store = CandleStore(
        settings(DATABASE_URL=f"postgresql://app:hunter2@127.0.0.1:{_free_port()}/x", DB_CONNECT_TIMEOUT="2")
    )
    for call in (
        store.ping,
        lambda: store.read_candles("BTCUSDT", "1m", 0, 1),
        lambda: store.get_symbols("crypto"),
    ):
        with pytest.raises(DatabaseUnavailable) as info:
            call()
        assert "hunter2" not in str(info.value)
    with pytest.raises(DatabaseUnavailable), store.fill_transaction("BTCUSDT", "1m", wait_seconds=0):
        pass


def test_missing_socket_directory_is_database_unavailable(tmp_path: Path) -> None:
    store = CandleStore(settings(DATABASE_URL=f"postgresql://postgres@/x?host={tmp_path}"))
    with pytest.raises(DatabaseUnavailable):
        store.read_coverage("BTCUSDT", "1m", 0, 1)


def test_unknown_database_is_database_unavailable(pg_server: PgServer) -> None:
    store = CandleStore(settings(DATABASE_URL=pg_server.url_for("md_does_not_exist")))
    with pytest.raises(DatabaseUnavailable, match="does not exist"):
        store.ping()


def test_server_going_away_mid_run_then_coming_back(
    store: CandleStore, pg_server: PgServer, database_url: str
) -> None:
    """Dropped twice in a row (reconnect also fails) -> DatabaseUnavailable; the next call recovers."""
    store.ping()
    calls = {"n": 0}
    real_open = store._open

    def flaky_open():  # the reconnect finds the server still down
        calls["n"] += 1
        if calls["n"] == 1:
            raise DatabaseUnavailable("cannot connect to the database: server restarting")
        return real_open()

    store._open = flaky_open  # type: ignore[method-assign]
    pg_server.terminate_connections(db_name(database_url))
    with pytest.raises(DatabaseUnavailable):
        store.ping()
    store.ping()  # recovers on the next call
    assert calls["n"] == 2


def test_injected_connection_factory_errors_are_wrapped() -> None:
    def broken() -> object:
        raise OSError("no route to host")

    store = CandleStore(settings(DATABASE_URL="postgresql://u@localhost/x"), connect=broken)
    with pytest.raises(DatabaseUnavailable, match="no route"):
        store.ping()


def test_statement_outliving_the_timeout_is_cut_and_not_retried(database_url: str) -> None:
    store = CandleStore(
        settings(DATABASE_URL=database_url, DB_STATEMENT_TIMEOUT_MS="300", DB_RETRY_AFTER_SECONDS="0.5")
    )
    try:
        store.ping()
        before = store.round_trips
        with pytest.raises(DatabaseUnavailable, match=r"did not answer within 1\.3 s"):
            store._run("SELECT pg_sleep(30)")
        assert store.round_trips - before == 1  # not retried on a new connection
        # A database that hangs is not asked again for DB_RETRY_AFTER_SECONDS: refused at once ...
        t0 = time.monotonic()
        with pytest.raises(DatabaseUnavailable, match="not tried again"):
            store.ping()
        assert time.monotonic() - t0 < 0.2 and store.round_trips - before == 1
        time.sleep(0.6)
        store.ping()  # ... then the next call gets a fresh connection
    finally:
        store.close()


def test_a_lost_fill_transaction_never_continues_on_a_new_connection(store: CandleStore, pg_server: PgServer,
                                                                     database_url: str) -> None:
    """Even if the caller swallows the error and goes on inside the block, nothing runs outside the
    transaction (no lock, autocommit), and the block does not pretend to commit."""
    page = Page(T0, T0, [Candle(T0, 1, 2, 0.5, 1.5, 3)])
    with pytest.raises(DatabaseUnavailable, match="lost"), store.fill_transaction("BTCUSDT", "1m",
                                                                                   wait_seconds=1) as tx:
        pg_server.terminate_connections(db_name(database_url))
        with pytest.raises(DatabaseUnavailable):
            tx.read_coverage(0, 10**10)
        with pytest.raises(DatabaseUnavailable, match="lost"):
            tx.store_page("binance", page)
    assert store.read_candles("BTCUSDT", "1m", 0, 10**10) == []
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == []
