#!/usr/bin/env python3
"""Backfill benchmark: one year of BTCUSDT 1m from a delayed upstream, in rows per second.

Run from the repository root:  .venv/bin/python bench/bench_backfill.py [--days 365] [--parallel 4]

The test fake upstream (frozen clock) behind the 50 ms delay proxy of bench_peer.py, both in a process
of their own (as a real upstream is: building and forwarding its bodies must not take the backfill's
interpreter lock), the real Binance client, the real store (embedded Postgres, or DATABASE_URL as
bench_cache.py), and `run_backfill` as the backfill command and Lambda run it. One run, side by side:
the backfill with one page in flight (FILL_PARALLEL_PAGES=1, each page sent after the previous one is
stored: the old pace, over --baseline-days) and with --parallel pages in flight over --days; the cache
emptied before each. Target
(issue 9): at least 40,000 rows/s for one year of 1m. Then the estimate for five years of BTCUSDT 1m
against the real Binance, from the measured pace and Binance's request weight budget
(docs/providers.md: 6000 weight per minute per IP, klines weight 2, this client stopping at
BINANCE_WEIGHT_SAFETY_SHARE of it).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "layers" / "shared" / "python"))

import bench_cache  # noqa: E402
from bench_cache import NOW, database  # noqa: E402
from bench_peer import DELAY_SECONDS, DelayedUpstreamProcess  # noqa: E402

from marketdata.backfill import PlannedJob, run_backfill  # noqa: E402
from marketdata.intervals import Interval  # noqa: E402
from marketdata.limits import backfill_pages_per_minute  # noqa: E402
from marketdata.store import CandleStore  # noqa: E402

SYMBOL = "BTCUSDT"
TARGET_ROWS_PER_SECOND = 40_000
FIVE_YEARS_OF_1M = 5 * 365 * 1440


def backfill(url: str, upstream: object, raw: object, *, days: int, parallel: int) -> tuple[int, float, int]:
    """(rows stored, seconds, pages) for `days` of 1m with `parallel` pages in flight, the cache empty."""
    for table in ("candles", "coverage"):
        raw.run(  # type: ignore[attr-defined]
            f"DELETE FROM {table} WHERE series_id IN (SELECT id FROM series WHERE symbol = :s)", s=SYMBOL
        )
    store = CandleStore(bench_cache._settings(url))
    service = bench_cache.service_for(url, upstream, store)  # type: ignore[arg-type]
    service.settings = service.settings.model_copy(update={"fill_parallel_pages": parallel})
    service.get_symbols("crypto")  # the symbol list, outside the timing
    job = PlannedJob(SYMBOL, Interval.M1, int(NOW) - days * 86400)
    try:
        t0 = time.perf_counter()
        summary = run_backfill([job], service, clock=upstream.clock)  # type: ignore[attr-defined]
        seconds = time.perf_counter() - t0
    finally:
        service.close()
    [result] = summary.jobs
    assert result.status.value == "complete", result
    return result.rows_written, seconds, result.pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=365, help="days of 1m to backfill (default: a year)")
    parser.add_argument("--parallel", type=int, default=4, help="pages in flight (FILL_PARALLEL_PAGES)")
    parser.add_argument("--baseline-days", type=int, default=30, help="days for the one-page-at-a-time run")
    args = parser.parse_args(argv)
    logging.getLogger("marketdata").setLevel(logging.WARNING)
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    upstream = DelayedUpstreamProcess()
    try:
        with database() as url, contextlib.closing(bench_cache._connect(url)) as raw:
            print(f"bench_backfill: fake upstream + {DELAY_SECONDS * 1000:.0f} ms per request, {SYMBOL} 1m,"
                  f" real Binance client and store", flush=True)
            print(f"    {'pages in flight':<16} {'days':>5} {'rows':>10} {'pages':>6} {'seconds':>8}"
                  f" {'rows/s':>9} {'vs 1':>6}", flush=True)
            figures = []
            for parallel, days in ((1, args.baseline_days), (args.parallel, args.days)):
                rows, seconds, pages = backfill(url, upstream, raw, days=days, parallel=parallel)
                rate = rows / seconds
                figures.append(rate)
                print(f"    {parallel:<16} {days:>5} {rows:>10,} {pages:>6} {seconds:>8.2f} {rate:>9,.0f}"
                      f" {rate / figures[0]:>5.1f}x", flush=True)
            rate = figures[-1]
            verdict = "ok" if rate >= TARGET_ROWS_PER_SECOND else "MISSED"
            print(f"    target: one year of 1m at >= {TARGET_ROWS_PER_SECOND:,} rows/s:"
                  f" {rate:,.0f} {verdict}")
            pages = FIVE_YEARS_OF_1M // 1000
            per_minute = backfill_pages_per_minute("binance", bench_cache._settings(url)) or 0
            weight_bound = pages / per_minute * 60
            pace_bound = FIVE_YEARS_OF_1M / rate
            print(
                f"    five years of {SYMBOL} 1m against Binance: {FIVE_YEARS_OF_1M:,} bars, {pages:,} pages;"
                f" the weight budget allows {per_minute:,.0f} pages/min ({weight_bound:,.0f} s), the"
                f" measured pace takes {pace_bound:,.0f} s: about {max(weight_bound, pace_bound) / 60:.1f}"
                " min when a round trip to Binance is about 50 ms"
            )
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
