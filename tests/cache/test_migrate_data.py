"""Data migrations on a cache written by an earlier release: what they remove, and all they keep."""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.postgres import PgServer

REPO_MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"
T = 1_704_067_200  # 2024-01-01 00:00 UTC


def _first_release(tmp_path: Path) -> Path:
    folder = tmp_path / "first_release"
    folder.mkdir()
    shutil.copy(REPO_MIGRATIONS / "0001_cache_schema.sql", folder)
    return folder


def _bar(conn, symbol: str, interval: str, t: int, provider: str) -> None:
    conn.run(
        "INSERT INTO ohlcv_cache VALUES (:s, :i, :t, :p, 1.1, 1.2, 1.0, 1.15, 0)", s=symbol, i=interval, t=t,
        p=provider,
    )


def _cover(conn, symbol: str, interval: str, start: int, end: int) -> None:
    conn.run("INSERT INTO ohlcv_coverage VALUES (:s, :i, :a, :b)", s=symbol, i=interval, a=start, b=end)


def test_0002_forgets_forex_series_now_built_and_unknown_pairs_remembered_as_empty(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    from marketdata.migrate import apply_migrations

    conn = pg_server.connect(empty_database_url.split("?")[0].rsplit("/", 1)[-1])
    try:
        assert apply_migrations(conn, _first_release(tmp_path)) == ["0001"]
        # What the first release left: real forex 1H/1D bars with coverage; forex 1W/1M bars (the
        # provider's own, now built from days); a typo and a plan-gated pair covered with no bars; crypto.
        for t in (T, T + 3600):
            _bar(conn, "EUR/USD", "1H", t, "twelve_data")
        _cover(conn, "EUR/USD", "1H", T, T + 3600)
        _bar(conn, "EUR/USD", "1D", T, "twelve_data")
        _cover(conn, "EUR/USD", "1D", T - 86400 * 3, T)
        _bar(conn, "EUR/USD", "1W", T, "twelve_data")
        _cover(conn, "EUR/USD", "1W", T, T)
        _bar(conn, "EUR/USD", "1M", T, "twelve_data")
        _cover(conn, "EUR/USD", "4H", T, T + 14400)  # covered but empty: every 4h bar was dropped
        _cover(conn, "ABC/XYZ", "1H", T, T + 86400)
        _cover(conn, "USD/TRY", "1D", T - 86400 * 30, T)
        for interval in ("1H", "4H", "1W", "1M"):
            _bar(conn, "BTCUSDT", interval, T, "binance")
            _cover(conn, "BTCUSDT", interval, T, T)
        _cover(conn, "SOLUSDT", "1H", T, T + 3600)  # crypto with coverage but no bars: not ours to judge

        assert apply_migrations(conn, REPO_MIGRATIONS)[0] == "0002"

        bars = sorted(tuple(r) for r in conn.run("SELECT symbol, interval, open_time FROM ohlcv_cache"))
        assert bars == sorted(
            [("EUR/USD", "1H", T), ("EUR/USD", "1H", T + 3600), ("EUR/USD", "1D", T)]
            + [("BTCUSDT", i, T) for i in ("1H", "4H", "1W", "1M")]
        )
        coverage = sorted(tuple(r) for r in conn.run("SELECT symbol, interval FROM ohlcv_coverage"))
        assert coverage == sorted(
            [("EUR/USD", "1H"), ("EUR/USD", "1D"), ("SOLUSDT", "1H")]
            + [("BTCUSDT", i) for i in ("1H", "4H", "1W", "1M")]
        )
    finally:
        conn.close()


# --- 0005: the compact layout -------------------------------------------------------------------

# Doubles whose text forms are easy to get wrong, times at both ends of the allowed range.
_TRICKY = [
    (0, 0.1 + 0.2, 0.30000000000000004, 0.1, 0.3, 1e-300),
    (60, 1e-8, 3e-8, 5e-324, 2e-8, 0.0),
    (32_503_680_000 - 60, 123456.78901234567, 1.7976931348623157e308, 2.2250738585072014e-308, 99.99, 1e308),
]


def _before_0005(tmp_path: Path) -> Path:
    folder = tmp_path / "before_0005"
    folder.mkdir()
    for path in REPO_MIGRATIONS.glob("*.sql"):
        if int(path.name.split("_", 1)[0]) < 5:
            shutil.copy(path, folder)
    return folder


def _old_bar(conn, symbol: str, interval: str, row: tuple, provider: str = "binance") -> None:
    conn.run(
        "INSERT INTO ohlcv_cache VALUES (:s, :i, :t, :p, CAST(:o AS float8), CAST(:h AS float8),"
        " CAST(:l AS float8), CAST(:c AS float8), CAST(:v AS float8))",
        s=symbol, i=interval, t=row[0], p=provider, o=repr(row[1]), h=repr(row[2]), l=repr(row[3]),
        c=repr(row[4]), v=repr(row[5]),
    )


def _migrated_database(pg_server: PgServer, url: str) -> object:
    return pg_server.connect(url.split("?")[0].rsplit("/", 1)[-1])


def test_0005_moves_every_bar_and_range_exactly(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    from marketdata.config import Settings
    from marketdata.migrate import apply_migrations
    from marketdata.schemas import Candle
    from marketdata.store import CandleStore

    conn = _migrated_database(pg_server, empty_database_url)
    try:
        assert "0005" not in apply_migrations(conn, _before_0005(tmp_path))
        symbols = ["BTCUSDT", "EUR/USD", "X'); DROP TABLE series;--", "Ünï/cödé"]
        for n, symbol in enumerate(symbols):
            provider = "twelve_data" if "/" in symbol else "binance"
            for interval, width in (("1m", 60), ("1D", 86400)):
                for i, (_, *prices) in enumerate(_TRICKY):  # the same prices at 0, 1 and the last bar
                    t = (0, width, 32_503_680_000 - width)[i]
                    _old_bar(conn, symbol, interval, (t, *prices), provider)
            _cover(conn, symbol, "1m", 0, 32_503_680_000 - 60 - n * 60)
        _cover(conn, "SOLUSDT", "1H", T, T + 3600)  # coverage without bars: a series with no provider
        old_bars = sorted(tuple(r) for r in conn.run("SELECT * FROM ohlcv_cache"))
        old_coverage = sorted(tuple(r) for r in conn.run("SELECT * FROM ohlcv_coverage"))

        assert apply_migrations(conn, REPO_MIGRATIONS)[-1] == "0005"
        assert apply_migrations(conn, REPO_MIGRATIONS) == []  # recorded: a second run does nothing

        # The views show exactly what the tables held, bit for bit (== on floats is exact).
        assert sorted(tuple(r) for r in conn.run("SELECT * FROM ohlcv_cache")) == old_bars
        assert sorted(tuple(r) for r in conn.run("SELECT * FROM ohlcv_coverage")) == old_coverage
        assert conn.run("SELECT count(*) FROM candles") == [[len(old_bars)]]
        series = {(s, i): p for s, i, p in conn.run("SELECT symbol, interval, provider FROM series")}
        assert series[("SOLUSDT", "1H")] is None and series[("EUR/USD", "1m")] == "twelve_data"
        assert len(series) == len(symbols) * 2 + 1
        old_tables = "SELECT count(*) FROM pg_tables WHERE tablename IN ('ohlcv_cache', 'ohlcv_coverage')"
        assert conn.run(old_tables) == [[0]]
    finally:
        conn.close()

    # The store reads the migrated rows and goes on writing the same series.
    store = CandleStore(Settings.from_env({"DATABASE_URL": empty_database_url}))
    try:
        expected = [Candle(*row) for row in _TRICKY]
        assert store.read_candles("BTCUSDT", "1m", 0, 32_503_680_000) == expected
        assert store.read_coverage("SOLUSDT", "1H", 0, 10**11) == [(T, T + 3600)]
        assert store.store_candles("binance", "SOLUSDT", "1H", [Candle(T, 1.0, 2.0, 0.5, 1.5, 3.0)]) == 1
        assert store.store_candles("binance", "BTCUSDT", "1m", expected) == 0
        assert store.read_candles("SOLUSDT", "1H", 0, 10**11) == [Candle(T, 1.0, 2.0, 0.5, 1.5, 3.0)]
    finally:
        store.close()


def _waiting_for_lock(pg_server: PgServer, database: str) -> bool:
    rows = pg_server.admin().run(
        "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database"
        " WHERE d.datname = :d AND NOT l.granted AND l.locktype = 'relation'",
        d=database,
    )
    return rows[0][0] > 0


def test_0005_keeps_bars_old_code_writes_during_the_copy_and_never_blocks_its_reads(
    pg_server: PgServer, empty_database_url: str, tmp_path: Path
) -> None:
    import threading
    import time

    from marketdata.migrate import apply_migrations

    database = empty_database_url.split("?")[0].rsplit("/", 1)[-1]
    setup = _migrated_database(pg_server, empty_database_url)
    old_writer = _migrated_database(pg_server, empty_database_url)
    old_reader = _migrated_database(pg_server, empty_database_url)
    try:
        apply_migrations(setup, _before_0005(tmp_path))
        _bar(setup, "BTCUSDT", "1H", T, "binance")
        # An old fill transaction, begun before the migration, commits its page after the bulk copy.
        old_writer.run("BEGIN")
        _bar(old_writer, "BTCUSDT", "1H", T + 3600, "binance")
        _bar(old_writer, "ETHUSDT", "1H", T, "binance")  # a series the first pass cannot know
        _cover(old_writer, "ETHUSDT", "1H", T, T)
        outcome: list[object] = []
        migrating = threading.Thread(target=lambda: outcome.append(apply_migrations(setup, REPO_MIGRATIONS)))
        migrating.start()
        deadline = time.monotonic() + 30
        while not _waiting_for_lock(pg_server, database):
            assert time.monotonic() < deadline, "the migration never waited for the old writer"
            time.sleep(0.05)
        # While the migration waits to hold writers off, old readers are served.
        assert old_reader.run("SELECT count(*) FROM ohlcv_cache") == [[1]]
        old_writer.run("COMMIT")
        migrating.join(60)
        assert outcome and outcome[0][-1] == "0005"  # type: ignore[index]
        rows = setup.run("SELECT symbol, open_time FROM ohlcv_cache ORDER BY 1, 2")
        assert rows == [["BTCUSDT", T], ["BTCUSDT", T + 3600], ["ETHUSDT", T]]
        assert setup.run("SELECT symbol, start_time FROM ohlcv_coverage") == [["ETHUSDT", T]]
    finally:
        for conn in (setup, old_writer, old_reader):
            conn.close()


def test_0005_is_one_transaction_the_runner_can_wrap() -> None:
    # marketdata.migrate runs each file in its own transaction: no transaction control, nothing that
    # refuses to run inside one.
    text = (REPO_MIGRATIONS / "0005_compact_candles.sql").read_text()
    code = "\n".join(line.split("--", 1)[0] for line in text.splitlines()).upper()
    first_words = {statement.split()[0] for statement in code.split(";") if statement.strip()}
    assert first_words.isdisjoint({"BEGIN", "START", "COMMIT", "END", "ROLLBACK", "VACUUM"}), first_words
    assert "CONCURRENTLY" not in code.split()
