#!/usr/bin/env python3
"""Benchmark of bounded cost: what a hostile or careless caller makes the providers do, against the minimum.

Run from the repository root:  .venv/bin/python bench/bench_limits.py

The abuse cases measured against the first release (its figure in the `before` column), replayed
against the service (real clients over HTTP against the test fake upstream, the real store on an
embedded Postgres or DATABASE_URL, default limits). Each line prints the provider requests counted at
the fake, the minimum the case needs, and the first release's figure.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import API_KEY, NOW, _settings, database

from devtools.fake_upstream import FakeUpstream
from marketdata.errors import MarketDataError
from marketdata.intervals import Interval, add_bars, last_closed_open
from marketdata.schemas import AssetClass
from marketdata.service import MarketDataService
from marketdata.store import CandleStore

M1 = Interval.M1


def service_for(url: str, fake: FakeUpstream, **overrides: Any) -> MarketDataService:
    from marketdata.config import Settings
    from marketdata.providers.binance import BinanceClient
    from marketdata.providers.twelve_data import TwelveDataClient

    base = _settings(url, fake).model_dump(by_alias=False)
    settings = Settings.model_validate({**base, **overrides})
    providers = {
        AssetClass.CRYPTO: BinanceClient(settings, clock=fake.clock),
        AssetClass.FOREX: TwelveDataClient(settings, clock=fake.clock),
    }
    return MarketDataService(CandleStore(settings), providers, settings, clock=fake.clock)


def fresh(url: str) -> None:
    conn = CandleStore(_settings(url)).connection()
    for table in ("candles", "coverage", "series", "provider_limits", "open_bars", "rejected_symbols"):
        conn.run(f"DELETE FROM {table}")
    conn.close()


def count(fake: FakeUpstream, *paths: str) -> int:
    return sum(fake.count(p) for p in paths)


def main() -> int:
    fake = FakeUpstream(api_keys=[API_KEY]).start()
    fake.now = NOW
    klines, series = "/api/v3/klines", "/time_series"
    rows: list[tuple[str, int, int, str]] = []
    try:
        with database() as url:
            print(f"bench_limits: fake upstream at {fake.url}, default limits")

            def case(label: str, minimum: int, before: str, run: Any, *paths: str) -> None:
                fresh(url)
                fake.reset()
                fake.now = NOW
                service = service_for(url, fake)
                try:
                    run(service)
                finally:
                    service.close()
                rows.append((label, count(fake, *paths), minimum, before))

            case("SOLUSDT 1m start=0 limit=5000", 5, "22",
                 lambda s: s.get_historical_candles("SOLUSDT", "1m", start=0, limit=5000), klines)
            case("AUD/CAD 1m end=1262600000 limit=5000", 2, "23",
                 lambda s: s.get_historical_candles("AUD/CAD", "1m", end=1262600000, limit=5000), series)

            def include_open(s: MarketDataService) -> None:
                s.get_historical_candles("BTCUSDT", "1m", limit=5)
                for _ in range(20):
                    s.get_historical_candles("BTCUSDT", "1m", limit=5, include_open=True)

            case("20 x include_open=true within 2 s (+1 closed fill)", 2, "21", include_open, klines)

            def unknown(s: MarketDataService) -> None:
                for _ in range(5):
                    with contextlib.suppress(MarketDataError):
                        s.get_historical_candles("NOPEUSDT", "1H", limit=10)

            case("5 x unknown symbol NOPEUSDT", 0, "5", unknown, klines)

            def fragments(s: MarketDataService) -> None:
                start = add_bars(M1, last_closed_open(M1, NOW), -10_000)
                for k in range(0, 600, 2):
                    t = add_bars(M1, start, k)
                    s.get_historical_candles("BTCUSDT", "1m", start=t, end=t)
                s.get_historical_candles("BTCUSDT", "1m", start=start, limit=600)

            case("300 one-bar requests (alternating), then limit=600", 1, "600", fragments, klines)

            def paging(s: MarketDataService) -> None:
                cursor: int | None = add_bars(M1, last_closed_open(M1, NOW), -3000)
                for _ in range(300):
                    if cursor is None:
                        break
                    cursor = s.get_historical_candles("ETHUSDT", "1m", start=cursor, limit=7).next_start

            case("300 pages of limit=7 (2100 bars)", 3, "300", paging, klines)

            def fifty_slow(s: MarketDataService) -> None:
                fake.fail_next(3, "timeout", klines, delay=4)
                start = add_bars(M1, last_closed_open(M1, NOW), -20_000)
                services = [service_for(url, fake, http_read_timeout=6) for _ in range(50)]
                barrier = threading.Barrier(50)

                def ask(svc: MarketDataService) -> None:
                    barrier.wait(30)
                    svc.get_historical_candles("BTCUSDT", "1m", start=start, limit=2500)

                threads = [threading.Thread(target=ask, args=(svc,)) for svc in services]
                t0 = time.monotonic()
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join(120)
                took = time.monotonic() - t0
                print(f"    (50 concurrent cold requests, 4 s per page: all answered in {took:.1f} s)")
                for svc in services:
                    svc.close()

            case("50 concurrent cold 2500 x 1m, provider 4 s/page", 3, "51", fifty_slow, klines)
    finally:
        fake.stop()
    print(f"    {'case':<54} {'requests':>8} {'minimum':>8} {'before':>7}")
    worst = 0.0
    for label, made, minimum, before in rows:
        verdict = "" if made <= minimum else "  ABOVE MINIMUM"
        worst = max(worst, made / minimum if minimum else float(made > 0))
        print(f"    {label:<54} {made:>8} {minimum:>8} {before:>7}{verdict}")
    print(f"verdict: worst case {worst:.2f}x the minimum")
    return 0


if __name__ == "__main__":
    sys.exit(main())
