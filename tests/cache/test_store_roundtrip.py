"""CandleStore against a real Postgres: bars, coverage merging, fill transactions, symbol lists."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from marketdata.config import Settings
from marketdata.errors import DatabaseUnavailable, SingleFlightTimeout
from marketdata.intervals import Interval, add_bars, next_open
from marketdata.providers.base import Page
from marketdata.schemas import AssetClass, Candle
from marketdata.store import CandleStore, lock_key
from tests.cache.store_helpers import coverage_seen_by_a_waiter

T0 = 1_699_999_200  # 2023-11-14 22:00 UTC: aligned to every fixed interval up to 1H
M = 60


def bars(n: int, start: int = T0, step: int = M, base: float = 100.0) -> list[Candle]:
    out = []
    for i in range(n):
        o = base + i * 0.25
        out.append(Candle(start + i * step, o, o + 1.5, o - 1.0, o + 0.5, 10.0 + i))
    return out


def coverage_rows(store: CandleStore) -> int:
    rows, _ = store._run("SELECT count(*) FROM coverage")
    return int(rows[0][0])


@pytest.fixture
def other_store(db_settings: Settings) -> Iterator[CandleStore]:
    """A second store (its own connection) on the same database: another Lambda."""
    second = CandleStore(db_settings)
    try:
        yield second
    finally:
        second.close()


# --- bars ------------------------------------------------------------------------------------


def test_bulk_insert_is_idempotent_and_one_statement(store: CandleStore) -> None:
    candles = bars(5000)
    store.ping()  # open the connection first, so the count below is the insert alone
    before = store.round_trips
    assert store.store_candles("binance", "BTCUSDT", Interval.M1, candles) == 5000
    assert store.round_trips - before == 1
    assert store.store_candles("binance", "BTCUSDT", Interval.M1, candles) == 0
    assert store.read_candles("BTCUSDT", Interval.M1, T0, T0 + 10**7) == candles


def test_values_come_back_exactly(store: CandleStore) -> None:
    tricky = [
        Candle(T0, 0.1 + 0.2, 0.30000000000000004, 0.1, 0.3, 1e-300),
        Candle(T0 + M, 1e-8, 3e-8, 5e-324, 2e-8, 0.0),
        Candle(T0 + 2 * M, 123456789.12345679, 1.7976931348623157e308, 1.0, 98765.4321, 2.5e15),
        Candle(T0 + 3 * M, 1.1, 1.1, 1.1, 1.1, 123.456),
    ]
    store.store_candles("twelve_data", "EUR/USD", "1m", tricky)
    back = store.read_candles("EUR/USD", "1m", T0, T0 + 3 * M)
    assert back == tricky
    assert [type(c.time) for c in back] == [int] * 4
    assert all(type(v) is float for c in back for v in (c.open, c.high, c.low, c.close, c.volume))


def test_read_bounds_are_inclusive_and_limits_apply(store: CandleStore) -> None:
    candles = bars(20)
    store.store_candles("binance", "BTCUSDT", "1m", candles)
    assert store.read_candles("BTCUSDT", "1m", candles[3].time, candles[7].time) == candles[3:8]
    assert store.read_candles("BTCUSDT", "1m", candles[3].time + 1, candles[7].time - 1) == candles[4:7]
    assert store.read_candles("BTCUSDT", "1m", T0, T0 + 10**6, limit=5) == candles[:5]
    assert store.read_candles("BTCUSDT", "1m", T0, T0 + 10**6, limit=5, newest=True) == candles[-5:]
    assert store.read_candles("BTCUSDT", "1m", T0, candles[9].time, limit=3, newest=True) == candles[7:10]
    assert store.read_candles("BTCUSDT", "1m", T0, T0 + 10**6, newest=True) == candles
    assert store.read_candles("BTCUSDT", "1m", 0, T0 - 1) == []
    assert store.read_candles("BTCUSDT", "1m", candles[5].time, candles[4].time) == []


def test_series_are_isolated_by_symbol_and_interval(store: CandleStore) -> None:
    store.store_candles("binance", "BTCUSDT", "1m", bars(5))
    store.store_candles("binance", "ETHUSDT", "1m", bars(3, base=2000))
    store.store_candles("binance", "BTCUSDT", "5m", bars(2, step=300, base=50))
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 5
    assert [c.open for c in store.read_candles("ETHUSDT", "1m", 0, 10**10)] == [2000, 2000.25, 2000.5]
    assert len(store.read_candles("BTCUSDT", Interval.M5, 0, 10**10)) == 2
    assert store.read_candles("btcusdt", "1m", 0, 10**10) == []  # verbatim: the store does not normalize


def test_symbols_with_quotes_and_sql_are_stored_verbatim(store: CandleStore) -> None:
    nasty = ["X'); DROP TABLE ohlcv_cache;--", 'A"B\\C', "{a,b}", "Ünï/cödé", "$1 :symbol %s"]
    for i, symbol in enumerate(nasty):
        store.store_candles("binance", symbol, "1m", bars(2, base=10 + i))
    for i, symbol in enumerate(nasty):
        assert [c.open for c in store.read_candles(symbol, "1m", 0, 10**10)] == [10 + i, 10.25 + i]
    with store.fill_transaction(nasty[0], "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0 + 10 * M, bars(3)))
    assert store.read_coverage(nasty[0], "1m", 0, 10**10) == [(T0, T0 + 10 * M)]
    store.put_symbols(AssetClass.CRYPTO, nasty, 1_700_000_000.25)
    assert store.get_symbols("crypto") == (nasty, 1_700_000_000.25)
    rows, _ = store._run("SELECT count(*) FROM ohlcv_cache")
    assert rows[0][0] == 11  # 5 x 2 bars + the page's one new bar (its first two existed)


def test_invalid_bars_are_refused_as_database_unavailable_and_nothing_is_stored(store: CandleStore) -> None:
    good = bars(3)
    bad = [*good, Candle(T0 + 3 * M, float("nan"), 1.0, 1.0, 1.0, 1.0)]
    with pytest.raises(DatabaseUnavailable, match="candles_finite_chk"):
        store.store_candles("binance", "BTCUSDT", "1m", bad)
    assert store.read_candles("BTCUSDT", "1m", 0, 10**10) == []  # one statement: all or nothing
    assert store.store_candles("binance", "BTCUSDT", "1m", good) == 3  # the connection is still fine


def test_an_open_time_off_the_minute_grid_is_refused(store: CandleStore) -> None:
    # The compact layout stores whole minutes: a time between them must fail, never be rounded.
    with pytest.raises(DatabaseUnavailable, match="open_minute"):
        store.store_candles("binance", "BTCUSDT", "1m", [*bars(2), Candle(T0 + 2 * M + 1, 1, 1, 1, 1, 1)])
    assert store.read_candles("BTCUSDT", "1m", 0, 10**10) == []


def test_reads_bound_seconds_to_the_stored_minutes(store: CandleStore) -> None:
    store.store_candles("binance", "BTCUSDT", "1m", bars(3))
    # Bounds between minutes, and beyond what int4 minutes hold, select exactly the bars inside.
    assert [c.time for c in store.read_candles("BTCUSDT", "1m", T0 + 1, T0 + 2 * M - 1)] == [T0 + M]
    assert len(store.read_candles("BTCUSDT", "1m", -(10**15), 10**15)) == 3
    assert store.read_candles_json("BTCUSDT", "1m", T0 + 1, T0 + 2 * M - 1, limit=5).count == 1


def test_a_series_gets_one_id_that_every_statement_finds(
    store: CandleStore, other_store: CandleStore
) -> None:
    store.store_candles("binance", "BTCUSDT", "1m", bars(2))
    other_store.store_candles("binance", "BTCUSDT", "1m", bars(3))
    with store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0 + 3 * M, bars(4)))
    rows, _ = store._run("SELECT id, symbol, interval, provider FROM series")
    assert len(rows) == 1 and rows[0][1:] == ["BTCUSDT", "1m", "binance"]
    rows, _ = store._run("SELECT DISTINCT series_id FROM candles UNION SELECT series_id FROM coverage")
    assert rows == [[store._run("SELECT id FROM series")[0][0][0]]]


def test_a_taken_series_id_is_skipped_for_the_next_free_one(store: CandleStore) -> None:
    from marketdata.store import _series_id_candidate

    first = _series_id_candidate("BTCUSDT", "1m")
    store._run("INSERT INTO series VALUES (:id, 'OTHER', '1m', 'binance')", {"id": first})
    assert store.store_candles("binance", "BTCUSDT", "1m", bars(2)) == 2
    with store.fill_transaction("ETHUSDT", "1m", wait_seconds=1) as tx:
        taken = _series_id_candidate("ETHUSDT", "1m")
        store._run("UPDATE series SET id = :id WHERE symbol = 'OTHER'", {"id": taken})
        tx.store_page("binance", Page(T0, T0 + M, bars(2)))
    ids = dict(store._run("SELECT symbol, id FROM series")[0])
    assert ids["BTCUSDT"] == _series_id_candidate("BTCUSDT", "1m", 1)
    assert ids["ETHUSDT"] == _series_id_candidate("ETHUSDT", "1m", 1)
    assert [c.time for c in store.read_candles("OTHER", "1m", 0, 10**10)] == []
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 2
    assert store.read_coverage("ETHUSDT", "1m", 0, 10**10) == [(T0, T0 + M)]


def test_unknown_interval_is_refused_before_the_database(store: CandleStore) -> None:
    from marketdata.errors import InvalidInterval

    with pytest.raises(InvalidInterval):
        store.read_candles("BTCUSDT", "1h", 0, 10)
    assert store.round_trips == 0


# --- coverage --------------------------------------------------------------------------------


def fill(store: CandleStore, symbol: str, interval: Interval, *pages: Page) -> int:
    with store.fill_transaction(symbol, interval, wait_seconds=2) as tx:
        return sum(tx.store_page("binance", p) for p in pages)


def test_adjacent_pages_merge_into_one_range(store: CandleStore) -> None:
    fill(store, "BTCUSDT", Interval.M1, Page(T0, T0 + 9 * M, bars(10)))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 10 * M, T0 + 19 * M, bars(10, start=T0 + 10 * M)))
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0, T0 + 19 * M)]
    assert coverage_rows(store) == 1
    # ... also when the new page comes before the old one
    fill(store, "BTCUSDT", Interval.M1, Page(T0 - 5 * M, T0 - M, []))
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0 - 5 * M, T0 + 19 * M)]
    assert coverage_rows(store) == 1


def test_overlapping_pages_merge(store: CandleStore) -> None:
    fill(store, "BTCUSDT", Interval.M1, Page(T0, T0 + 10 * M, []))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 5 * M, T0 + 30 * M, []))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 2 * M, T0 + 3 * M, []))  # inside
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0, T0 + 30 * M)]
    assert coverage_rows(store) == 1


def test_disjoint_pages_stay_apart_until_the_gap_is_filled(store: CandleStore) -> None:
    # One missing bar (T0 + 10 min) between the two pages: they must not merge.
    fill(store, "BTCUSDT", Interval.M1, Page(T0, T0 + 9 * M, []))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 11 * M, T0 + 20 * M, []))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 40 * M, T0 + 50 * M, []))
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [
        (T0, T0 + 9 * M),
        (T0 + 11 * M, T0 + 20 * M),
        (T0 + 40 * M, T0 + 50 * M),
    ]
    assert coverage_rows(store) == 3
    # The one-bar page bridging the first two merges all three rows into one... but not the third.
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 10 * M, T0 + 10 * M, []))
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0, T0 + 20 * M), (T0 + 40 * M, T0 + 50 * M)]
    assert coverage_rows(store) == 2
    # A page spanning several ranges swallows them all.
    fill(store, "BTCUSDT", Interval.M1, Page(T0 - 60 * M, T0 + 45 * M, []))
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == [(T0 - 60 * M, T0 + 50 * M)]
    assert coverage_rows(store) == 1


def test_calendar_months_merge_by_month_not_by_width(store: CandleStore) -> None:
    jan = 1_704_067_200  # 2024-01-01
    feb, mar, apr = (add_bars(Interval.MO1, jan, k) for k in (1, 2, 3))
    fill(store, "BTCUSDT", Interval.MO1, Page(jan, feb, []))
    fill(store, "BTCUSDT", Interval.MO1, Page(mar, apr, []))
    assert store.read_coverage("BTCUSDT", "1M", 0, 10**10) == [(jan, apr)]
    may = next_open(Interval.MO1, apr)
    fill(store, "BTCUSDT", Interval.MO1, Page(next_open(Interval.MO1, may), next_open(Interval.MO1, may), []))
    assert len(store.read_coverage("BTCUSDT", "1M", 0, 10**10)) == 2  # May missing


def test_read_coverage_returns_intersecting_ranges_unclipped(store: CandleStore) -> None:
    fill(store, "BTCUSDT", Interval.M1, Page(T0, T0 + 9 * M, []))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 20 * M, T0 + 29 * M, []))
    fill(store, "BTCUSDT", Interval.M1, Page(T0 + 40 * M, T0 + 49 * M, []))
    assert store.read_coverage("BTCUSDT", "1m", T0 + 5 * M, T0 + 25 * M) == [
        (T0, T0 + 9 * M),
        (T0 + 20 * M, T0 + 29 * M),
    ]
    assert store.read_coverage("BTCUSDT", "1m", T0 + 9 * M, T0 + 9 * M) == [(T0, T0 + 9 * M)]
    assert store.read_coverage("BTCUSDT", "1m", T0 + 10 * M, T0 + 19 * M) == []
    assert store.read_coverage("BTCUSDT", "5m", 0, 10**10) == []
    assert store.read_coverage("ETHUSDT", "1m", 0, 10**10) == []


def test_page_with_dropped_bars_stores_bars_but_no_coverage(store: CandleStore) -> None:
    assert fill(store, "BTCUSDT", Interval.M1, Page(T0, T0 + 9 * M, bars(9), dropped=1)) == 9
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 9
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == []


def test_empty_page_records_coverage_without_bars(store: CandleStore) -> None:
    weekend = Page(T0, T0 + 2 * 86400, [])
    assert fill(store, "EUR/USD", Interval.H1, weekend) == 0
    assert store.read_coverage("EUR/USD", "1H", T0, T0) == [(T0, T0 + 2 * 86400)]
    assert store.read_candles("EUR/USD", "1H", 0, 10**10) == []


def test_store_page_counts_only_new_rows(store: CandleStore) -> None:
    assert fill(store, "BTCUSDT", Interval.M1, Page(T0, T0 + 9 * M, bars(10))) == 10
    assert fill(store, "BTCUSDT", Interval.M1, Page(T0 + 5 * M, T0 + 14 * M, bars(10, start=T0 + 5 * M))) == 5
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 15


def test_a_page_is_one_statement(store: CandleStore) -> None:
    with store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        before = store.round_trips
        tx.store_page("binance", Page(T0, T0 + 4999 * M, bars(5000)))
        assert store.round_trips - before == 1


# --- fill transactions -----------------------------------------------------------------------


def test_exception_rolls_back_bars_and_coverage(store: CandleStore) -> None:
    class Boom(Exception):
        pass

    with pytest.raises(Boom), store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0 + 9 * M, bars(10)))
        assert len(tx.read_candles(T0, T0 + 9 * M)) == 10  # visible inside the transaction
        raise Boom
    assert store.read_candles("BTCUSDT", "1m", 0, 10**10) == []
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == []
    store.ping()


def test_filltx_is_bound_to_its_series_and_its_block(store: CandleStore) -> None:
    with store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        assert tx.store_candles("binance", "BTCUSDT", "1m", bars(2)) == 2
        with pytest.raises(ValueError):
            tx.store_candles("binance", "ETHUSDT", "1m", bars(2))
    with pytest.raises(RuntimeError):
        tx.read_coverage(0, 10)
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 2


def test_lock_is_exclusive_per_series_and_times_out(store: CandleStore, other_store: CandleStore) -> None:
    with store.fill_transaction("BTCUSDT", "1m", wait_seconds=1):
        with (
            pytest.raises(SingleFlightTimeout) as info,
            other_store.fill_transaction("BTCUSDT", "1m", wait_seconds=0.2),
        ):
            pass
        assert isinstance(info.value, DatabaseUnavailable)
        # Another interval or symbol is not blocked.
        with other_store.fill_transaction("BTCUSDT", "5m", wait_seconds=0):
            pass
        with other_store.fill_transaction("ETHUSDT", "1m", wait_seconds=0):
            pass
    # Released at commit: the other store gets it at once.
    with other_store.fill_transaction("BTCUSDT", "1m", wait_seconds=0) as tx:
        tx.store_page("binance", Page(T0, T0, bars(1)))
    assert len(store.read_candles("BTCUSDT", "1m", 0, 10**10)) == 1


def test_waiter_gets_the_lock_after_the_holder_commits_and_sees_its_rows(
    store: CandleStore, other_store: CandleStore
) -> None:
    seen = coverage_seen_by_a_waiter(store, other_store, Page(T0, T0 + 9 * M, bars(10)))
    assert seen == [[(T0, T0 + 9 * M)]]


_ADVISORY_LOCKS_HELD = "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"


def test_no_lock_or_statement_survives_a_transaction(store: CandleStore) -> None:
    with store.fill_transaction("BTCUSDT", "1m", wait_seconds=1) as tx:
        tx.store_page("binance", Page(T0, T0, bars(1)))
        rows, _ = store._run(_ADVISORY_LOCKS_HELD)
        assert rows[0][0] == 1
    rows, _ = store._run(_ADVISORY_LOCKS_HELD)
    assert rows[0][0] == 0
    rows, _ = store._run("SELECT count(*) FROM pg_prepared_statements")
    assert rows[0][0] == 0


def test_lock_keys_are_stable_and_distinct() -> None:
    assert lock_key("BTCUSDT", "1m") == lock_key("BTCUSDT", Interval.M1)
    keys = {lock_key(s, i) for s in ("BTCUSDT", "ETHUSDT", "EUR/USD") for i in Interval}
    assert len(keys) == 3 * len(Interval)
    assert all(-(2**63) <= k < 2**63 for k in keys)


# --- symbol lists ----------------------------------------------------------------------------


def test_symbol_lists_round_trip_and_replace(store: CandleStore) -> None:
    assert store.get_symbols(AssetClass.FOREX) is None
    store.put_symbols(AssetClass.FOREX, ["EUR/USD", "GBP/USD"], 1_700_000_000.5)
    assert store.get_symbols("forex") == (["EUR/USD", "GBP/USD"], 1_700_000_000.5)
    store.put_symbols("forex", ["USD/JPY"], 1_700_000_100.0)
    assert store.get_symbols(AssetClass.FOREX) == (["USD/JPY"], 1_700_000_100.0)
    assert store.get_symbols(AssetClass.CRYPTO) is None
    store.put_symbols("crypto", [], 5.0)
    assert store.get_symbols("crypto") == ([], 5.0)


def test_big_symbol_list(store: CandleStore) -> None:
    symbols = [f"SYM{i:05d}USDT" for i in range(3000)]
    store.put_symbols("crypto", symbols, 1.0)
    assert store.get_symbols("crypto") == (symbols, 1.0)


def test_a_parameterized_statement_is_one_network_round_trip(store: CandleStore) -> None:
    """One flush (Parse/Bind/Describe/Execute/Sync together) instead of pg8000's three: one unit of work
    for a transaction-pooling proxy, and a third of the latency."""
    store.store_candles("binance", "BTCUSDT", "1m", bars(10))
    conn = store.connection()

    class CountingSocket:
        def __init__(self, inner: object) -> None:
            self.inner = inner
            self.flushes = 0

        def flush(self) -> None:
            self.flushes += 1
            self.inner.flush()  # type: ignore[attr-defined]

        def __getattr__(self, name: str) -> object:
            return getattr(self.inner, name)

    counting = CountingSocket(conn._sock)
    real, conn._sock = conn._sock, counting
    try:
        got = store.read_candles("BTCUSDT", "1m", T0, T0 + 9 * M, limit=3, newest=True)
    finally:
        conn._sock = real
    assert got == bars(10)[-3:]
    assert counting.flushes == 1


def test_a_bad_page_rolls_back_the_whole_transaction(store: CandleStore) -> None:
    bad = Candle(T0 + 20 * M, 1.0, 0.5, 2.0, 1.0, 1.0)  # low above high
    with pytest.raises(DatabaseUnavailable, match="candles_ohlc_chk"), store.fill_transaction(
        "BTCUSDT", "1m", wait_seconds=1
    ) as tx:
        tx.store_page("binance", Page(T0, T0 + 9 * M, bars(10)))
        tx.store_page("binance", Page(T0 + 10 * M, T0 + 20 * M, [*bars(10, start=T0 + 10 * M), bad]))
    assert store.read_candles("BTCUSDT", "1m", 0, 10**10) == []
    assert store.read_coverage("BTCUSDT", "1m", 0, 10**10) == []


def test_huge_batches_are_split_into_a_few_statements(store: CandleStore) -> None:
    store.ping()
    before = store.round_trips
    assert store.store_candles("binance", "BTCUSDT", "1m", bars(12_000)) == 12_000
    assert store.round_trips - before == 2
    with store.fill_transaction("ETHUSDT", "1m", wait_seconds=1) as tx:
        assert tx.store_page("binance", Page(T0, T0 + 11_999 * M, bars(12_000))) == 12_000
    assert store.read_coverage("ETHUSDT", "1m", 0, 10**10) == [(T0, T0 + 11_999 * M)]
    assert len(store.read_candles("ETHUSDT", "1m", 0, 10**10)) == 12_000
