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
