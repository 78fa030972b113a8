#!/usr/bin/env python3
"""Benchmark of the live broadcaster's fan-out: connections and posts per second one broadcaster sustains.

Run from the repository root:  .venv/bin/python bench/bench_live.py [--ticks 5] [--threads 32]

Embedded Postgres (or DATABASE_URL; see bench/bench_cache.py) holds the subscriptions: N connections
spread over 10 pairs. A synthetic LiveStream moves every pair's forming bar each tick (no provider: this
measures the fan-out, not a provider), and the broadcaster posts every update through boto3's
`post_to_connection` to the local Management API stand-in (scripts/local_live.py), which runs in a child
process so it does not share the broadcaster's interpreter. Each tick is followed by `flush()`: the time
until every connection has its message.

Baseline, same run: the same number of `post_to_connection` calls on the same thread pool to the same
stand-in, without the broadcaster (the floor: boto3 + HTTP). Printed: posts/s, the tick's fan-out time,
the ratio to the floor, and how many connections one broadcaster keeps at one update per second (posts/s
at one message per connection per tick). A last case adds one connection whose posts hang (3 s) behind a
0.5 s post timeout: the other connections' fan-out time against the case without it.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "layers" / "shared" / "python"))

from bench_cache import database  # noqa: E402

from marketdata.broadcast import Broadcaster, ManagementApiPoster  # noqa: E402
from marketdata.config import Settings  # noqa: E402
from marketdata.intervals import Interval  # noqa: E402
from marketdata.providers.streams import BarUpdate, LiveEvent  # noqa: E402
from marketdata.schemas import AssetClass, Candle  # noqa: E402
from marketdata.service import MarketDataService  # noqa: E402
from marketdata.store import CandleStore  # noqa: E402
from marketdata.subscriptions import Subscriptions  # noqa: E402

PAIRS = [(f"BENCH{i}USDT", Interval.M1) for i in range(10)]
NOW = 1715769440


class MovingBars:
    """Every followed pair's forming bar moves at each events() call."""

    def __init__(self) -> None:
        self.pairs: list[tuple[str, Interval]] = []
        self.n = 0

    def follow(self, pairs: Collection[tuple[str, Interval]]) -> None:
        self.pairs = sorted(pairs)

    def events(self, timeout: float) -> list[LiveEvent]:
        self.n += 1
        price = 100.0 + self.n / 100
        bar = Candle(NOW - NOW % 60, 100.0, max(100.0, price), 99.0, price, float(self.n))
        return [BarUpdate(symbol, interval, bar, is_closed=False) for symbol, interval in self.pairs]

    def close(self) -> None:
        pass


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def standin_process() -> Iterator[tuple[str, Any]]:
    """The Management API stand-in in a child process; (its URL, the process)."""
    port = _free_port()
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); from scripts.local_live import ManagementStandIn;"
        "s = ManagementStandIn('127.0.0.1', int(sys.argv[2])); s.make_slow('slow=', 3.0);"
        "s.start(); print('ready', flush=True); sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(port)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(timeout=10)


def floor_posts_per_second(url: str, connections: int, ticks: int, threads: int) -> float:
    poster = ManagementApiPoster(url, timeout=2.0, pool=threads, unsigned=True)
    data = b'{"type":"price","symbol":"BENCH0USDT","interval":"1m","candle":{},"is_closed":false}'
    ids = [f"c{i}=" for i in range(connections)]
    poster.post(ids[0], data)  # the client and its pool warm
    with ThreadPoolExecutor(threads) as pool:
        started = time.perf_counter()
        for _ in range(ticks):
            list(pool.map(lambda c: poster.post(c, data), ids))
        elapsed = time.perf_counter() - started
    return connections * ticks / elapsed


def run_case(url: str, db_url: str, connections: int, ticks: int, threads: int, *, slow: bool = False,
             timeout: float = 2.0) -> tuple[float, float, Broadcaster]:  # fmt: skip
    """(posts/s, median fan-out ms of a tick) for `connections` subscribers over the 10 pairs."""
    settings = Settings.model_validate({"DATABASE_URL": db_url, "LIVE_FANOUT_THREADS": str(threads)})
    store = CandleStore(settings)
    service = MarketDataService(store, {}, settings)
    subs = Subscriptions(store)
    store._run("DELETE FROM live_connections")
    ids = [f"c{i}=" for i in range(connections)] + (["slow="] if slow else [])
    for number, connection in enumerate(ids):
        subs.connect(connection, NOW)
        symbol, interval = PAIRS[number % len(PAIRS)]
        subs.subscribe(connection, symbol, interval, AssetClass.CRYPTO, NOW, limit=10)
    poster = ManagementApiPoster(url, timeout=timeout, pool=threads, unsigned=True)
    broadcaster = Broadcaster(service, poster, {"binance": MovingBars()}, threads=threads)
    broadcaster.tick()  # warm: the pool, the client, the subscription read
    broadcaster.flush()
    before = broadcaster.stats.posts
    times = []
    started = time.perf_counter()
    for _ in range(ticks):
        tick = time.perf_counter()
        broadcaster.tick()
        # The others' fan-out: wait for everyone but a hanging connection (its post is still in flight).
        _wait_for_all_but_slow(broadcaster)
        times.append((time.perf_counter() - tick) * 1000)
    elapsed = time.perf_counter() - started
    posts = broadcaster.stats.posts - before
    broadcaster.flush(timeout=5)
    broadcaster.close()
    service.close()
    return posts / elapsed, statistics.median(times), broadcaster


def _wait_for_all_but_slow(broadcaster: Broadcaster) -> None:
    broadcaster._send()
    for connection, future in list(broadcaster._in_flight.items()):
        if connection != "slow=":
            future.result()
    broadcaster._reap()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=5)
    parser.add_argument("--threads", type=int, default=32)
    args = parser.parse_args()
    # The broadcaster logs each timed-out post (the hanging-connection case): not wanted in the figures.
    logging.getLogger("marketdata").setLevel(logging.WARNING)
    with database() as db_url, standin_process() as (url, _):
        print(f"bench_live: embedded Postgres, Management API stand-in at {url} (child process), "
              f"{args.threads} post threads, {args.ticks} ticks per case, 10 pairs")  # fmt: skip
        print("  connections  posts/s  floor posts/s  vs floor  fan-out ms/tick  connections at 1 update/s")
        best = 0.0
        for connections in (100, 500, 1000, 2000):
            floor = floor_posts_per_second(url, connections, args.ticks, args.threads)
            rate, fanout, _ = run_case(url, db_url, connections, args.ticks, args.threads)
            best = max(best, rate)
            print(f"  {connections:>11}  {rate:>7.0f}  {floor:>13.0f}  {rate / floor:>7.2f}x  {fanout:>15.1f}"
                  f"  {int(rate):>10}")  # fmt: skip
        _, base_ms, _ = run_case(url, db_url, 500, args.ticks, args.threads, timeout=0.5)
        _, slow_ms, slowed = run_case(url, db_url, 500, args.ticks, args.threads, slow=True, timeout=0.5)
        print(f"  one hanging connection among 500 (3 s per post, 0.5 s timeout): the others' fan-out "
              f"{slow_ms:.1f} ms/tick vs {base_ms:.1f} without it ({slow_ms / base_ms:.2f}x); "
              f"posts lost to the timeout {slowed.stats.failed}")  # fmt: skip
        print(f"one broadcaster sustains about {best:.0f} posts/s: that many connections at one update/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
