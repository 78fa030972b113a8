"""The schema itself: one narrow index on candles, and CHECK constraints that keep garbage out."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pg8000.exceptions import DatabaseError

from tests.support.postgres import PgServer

_SERIES = "INSERT INTO series (id, symbol, interval, provider) VALUES (:id, :symbol, :interval, :provider)"
_INSERT = (
    "INSERT INTO candles (series_id, open_minute, open, high, low, close, volume)"
    " VALUES (:series_id, :open_minute, CAST(:open AS float8), CAST(:high AS float8),"
    " CAST(:low AS float8), CAST(:close AS float8), CAST(:volume AS float8))"
)
_HOUR_OPEN = 1_700_000_000 - 1_700_000_000 % 3600
_GOOD_SERIES = {"id": 1, "symbol": "BTCUSDT", "interval": "1H", "provider": "binance"}
_GOOD = {
    "series_id": 1,
    "open_minute": _HOUR_OPEN // 60,
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


def test_candles_have_exactly_one_index_the_narrow_primary_key(conn: Any) -> None:
    indexes = conn.run("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'candles'")
    assert len(indexes) == 1, indexes
    name, definition = indexes[0]
    assert name == "candles_pkey"
    assert "UNIQUE" in definition
    assert definition.endswith("(series_id, open_minute)")


def test_candles_columns_are_two_int4_keys_then_doubles(conn: Any) -> None:
    # The order that leaves no alignment padding (migrations/0005_compact_candles.sql).
    columns = conn.run(
        "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'candles'"
        " ORDER BY ordinal_position"
    )
    assert columns == [
        ["series_id", "integer"], ["open_minute", "integer"],
        *[[name, "double precision"] for name in ("open", "high", "low", "close", "volume")],
    ]


def test_coverage_series_and_symbols_have_only_their_keys(conn: Any) -> None:
    rows = conn.run(
        "SELECT tablename, count(*) FROM pg_indexes WHERE tablename IN ('coverage', 'series', 'symbol_lists')"
        " GROUP BY tablename ORDER BY tablename"
    )
    # series: the id and the (symbol, interval) every statement looks the id up by.
    assert rows == [["coverage", 1], ["series", 2], ["symbol_lists", 1]]


def test_the_old_tables_are_read_only_views_of_the_new_ones(conn: Any) -> None:
    conn.run(_SERIES, **_GOOD_SERIES)
    conn.run(_INSERT, **_GOOD)
    conn.run("INSERT INTO coverage VALUES (1, :t, :t)", t=_HOUR_OPEN)
    assert conn.run("SELECT * FROM ohlcv_cache") == [
        ["BTCUSDT", "1H", _HOUR_OPEN, "binance", 100.0, 110.0, 90.0, 105.0, 12.5]
    ]
    assert conn.run("SELECT * FROM ohlcv_coverage") == [["BTCUSDT", "1H", _HOUR_OPEN, _HOUR_OPEN]]
    with pytest.raises(DatabaseError) as info:
        conn.run("INSERT INTO ohlcv_coverage VALUES ('BTCUSDT', '1H', 0, 0)")
    assert info.value.args[0]["C"] == "55000"  # object_not_in_prerequisite_state: not updatable


def test_no_sequences(conn: Any) -> None:
    # nextval pins RDS Proxy sessions: the runtime tables use natural keys only.
    assert conn.run("SELECT count(*) FROM pg_sequences WHERE schemaname = 'public'") == [[0]]


def test_a_good_row_is_accepted_and_a_duplicate_refused(conn: Any) -> None:
    conn.run(_SERIES, **_GOOD_SERIES)
    conn.run(_INSERT, **_GOOD)
    for statement, params in ((_INSERT, _GOOD), (_SERIES, {**_GOOD_SERIES, "id": 2})):
        with pytest.raises(DatabaseError) as info:
            conn.run(statement, **params)
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
        {"open_minute": 32_503_680_000 // 60},  # the year 3000
        {"open_minute": -1},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_garbage_is_refused(conn: Any, change: dict[str, Any]) -> None:
    conn.run(_SERIES, **_GOOD_SERIES)
    with pytest.raises(DatabaseError) as info:
        conn.run(_INSERT, **{**_GOOD, **change})
    assert info.value.args[0]["C"] == "23514", info.value  # check_violation
    assert conn.run("SELECT count(*) FROM candles") == [[0]]


@pytest.mark.parametrize(
    "change",
    [
        {"interval": "1h"},  # not an app interval (case matters)
        {"interval": "2H"},
        {"symbol": ""},
        {"symbol": "X" * 33},
        {"provider": "Binance; DROP"},
        {"id": 0},
    ],
    ids=lambda change: ",".join(f"{k}={v}" for k, v in change.items()),
)
def test_garbage_series_are_refused(conn: Any, change: dict[str, Any]) -> None:
    with pytest.raises(DatabaseError) as info:
        conn.run(_SERIES, **{**_GOOD_SERIES, **change})
    assert info.value.args[0]["C"] == "23514", info.value
    assert conn.run("SELECT count(*) FROM series") == [[0]]


@pytest.mark.parametrize("bounds", [(10, 5), (-60, 0)])
def test_coverage_ranges_must_be_ordered(conn: Any, bounds: tuple[int, int]) -> None:
    with pytest.raises(DatabaseError) as info:
        conn.run(
            "INSERT INTO coverage (series_id, start_time, end_time) VALUES (1, :s, :e)",
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
