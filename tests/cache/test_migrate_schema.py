"""The schema itself: one index on ohlcv_cache, and CHECK constraints that keep garbage out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from tests.support.postgres import PgServer

_INSERT = (
    "INSERT INTO ohlcv_cache (symbol, interval, provider, open_time, open, high, low, close, volume)"
    " VALUES (:symbol, :interval, :provider, :open_time, CAST(:open AS float8), CAST(:high AS float8),"
    " CAST(:low AS float8), CAST(:close AS float8), CAST(:volume AS float8))"
)
_HOUR_OPEN = 1_700_000_000 - 1_700_000_000 % 3600
_GOOD = {
    "symbol": "BTCUSDT",
    "interval": "1H",
    "provider": "binance",
    "open_time": _HOUR_OPEN,
    "open": "100",
    "high": "110",
    "low": "90",
    "close": "105",
    "volume": "12.5",
}


@pytest.fixture
def conn(pg_server: PgServer, database_url: str) -> Iterator[Any]:
    connection = pg_server.connect(database_url.split("?")[0].rsplit("/", 1)[-1])
    try:
        yield connection
    finally:
        connection.close()


def test_ohlcv_cache_has_exactly_one_index_the_primary_key(conn: Any) -> None:
    indexes = conn.run("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'ohlcv_cache'")
    assert len(indexes) == 1, indexes
    name, definition = indexes[0]
    assert name == "ohlcv_cache_pkey"
    assert "UNIQUE" in definition
    assert definition.endswith('(symbol, "interval", open_time)')


def test_coverage_and_symbols_have_only_their_keys(conn: Any) -> None:
    rows = conn.run(
        "SELECT tablename, count(*) FROM pg_indexes WHERE tablename IN ('ohlcv_coverage', 'symbol_lists')"
        " GROUP BY tablename ORDER BY tablename"
    )
    assert rows == [["ohlcv_coverage", 1], ["symbol_lists", 1]]


def test_no_sequences(conn: Any) -> None:
    # nextval pins RDS Proxy sessions: the runtime tables use natural keys only.
    assert conn.run("SELECT count(*) FROM pg_sequences WHERE schemaname = 'public'") == [[0]]


def test_a_good_row_is_accepted_and_a_duplicate_refused(conn: Any) -> None:
    conn.run(_INSERT, **_GOOD)
    with pytest.raises(DatabaseError) as info:
        conn.run(_INSERT, **_GOOD)
    assert info.value.args[0]["C"] == "23505"


@pytest.mark.parametrize(
    "change",
    [
        {"open": "NaN"},
        {"close": "Infinity"},
        {"low": "-Infinity"},
        {"high": "NaN"},
        {"volume": "Infinity"},
        {"volume": "-1"},
        {"low": "111"},  # above high
        {"open": "89"},  # below low
        {"close": "111"},  # above high
        {"low": "-1", "open": "-1"},  # negative price
        {"open_time": 1_700_000_000_000},  # milliseconds
        {"open_time": 1_700_000_001},  # not a whole minute
        {"open_time": -60},
        {"interval": "1h"},  # not an app interval (case matters)
        {"interval": "2H"},
        {"symbol": ""},
        {"symbol": "X" * 33},
        {"provider": "Binance; DROP"},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_garbage_is_refused(conn: Any, change: dict[str, Any]) -> None:
    with pytest.raises(DatabaseError) as info:
        conn.run(_INSERT, **{**_GOOD, **change})
    assert info.value.args[0]["C"] == "23514", info.value  # check_violation
    assert conn.run("SELECT count(*) FROM ohlcv_cache") == [[0]]


@pytest.mark.parametrize("bounds", [(10, 5), (-60, 0)])
def test_coverage_ranges_must_be_ordered(conn: Any, bounds: tuple[int, int]) -> None:
    with pytest.raises(DatabaseError) as info:
        conn.run(
            "INSERT INTO ohlcv_coverage (symbol, interval, start_time, end_time) VALUES ('X', '1m', :s, :e)",
            s=bounds[0],
            e=bounds[1],
        )
    assert info.value.args[0]["C"] == "23514"


def test_symbol_lists_refuse_unknown_asset_classes_and_null_entries(conn: Any) -> None:
    for asset_class, symbols in (("stocks", "{A}"), ("crypto", "{A,NULL}")):
        with pytest.raises(DatabaseError) as info:
            conn.run(
                "INSERT INTO symbol_lists (asset_class, symbols, fetched_at)"
                " VALUES (:a, CAST(:s AS text[]), now())",
                a=asset_class,
                s=symbols,
            )
        assert info.value.args[0]["C"] == "23514"
