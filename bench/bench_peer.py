#!/usr/bin/env python3
"""Peer benchmark: ccxt `fetch_ohlcv` against the service, cold and warm, in-process and over HTTP.

Run from the repository root:  .venv/bin/python bench/bench_peer.py [--runs 5]

Needs the dev extras (ccxt is a dev dependency only, never in the layer). One run, side by side:
the test fake upstream (devtools/fake_upstream.py, frozen clock) in a child process, behind a
small proxy that adds 50 ms to every upstream request, as a real round trip would; ccxt's binance and the
service's Binance client both go through it. Postgres is embedded (or DATABASE_URL, as bench_cache.py).
For 1000 and 5000 bars of BTCUSDT 1H and 1m (a forward request: `start` and `limit`, the same bars ccxt
pages through with `since`/`limit` 1000):

- ccxt: `fetch_ohlcv` page by page (markets loaded once, untimed), the rows as ccxt returns them;
- cold: the cache emptied of the series before every run; warm: the same request again (a hit);
- in-process: the /v1/candles Lambda handler called with an API Gateway event (body built, not parsed);
- http: a GET through the local HTTP API (scripts/local_api.py on a free port), body parsed with json.

Medians of --runs. Targets of issue 9, printed with the figures: a warm 5000-bar hit through the handler
at most 3x the binary-fetch floor of the same rows (COPY ... TO STDOUT (FORMAT binary) through pg8000,
bytes only, no decoding) and at least 20x faster than ccxt; a cold 5000-bar request at least 2x faster
than ccxt.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import io
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# The handler's per-request log line would drown the figures (its EMF metrics go to the sink below).
os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "layers" / "shared" / "python"))

import bench_cache  # noqa: E402
from bench_cache import API_KEY, NOW, database  # noqa: E402

from marketdata.intervals import Interval, add_bars, last_closed_open  # noqa: E402
from marketdata.store import CandleStore  # noqa: E402

DELAY_SECONDS = 0.050
SYMBOL = "BTCUSDT"
CASES = [(Interval.H1, 1000), (Interval.H1, 5000), (Interval.M1, 1000), (Interval.M1, 5000)]
CCXT_TIMEFRAME = {Interval.H1: "1h", Interval.M1: "1m"}


# --- the delayed upstream ---------------------------------------------------------------------------


class DelayProxy:
    """GET forwarder to `target` that waits `delay` seconds before every request (a WAN round trip).

    `memo`: answer a path seen before from memory. The fake upstream (frozen clock) is a pure function of
    the URL, but it builds and encodes every page in Python, one at a time under its interpreter lock: left
    alone, its own work (about as long as the 50 ms delay per 1000 bars) would be part of every figure, and
    pages asked for at once would queue behind each other, where a real exchange answers them in parallel
    on many servers. With it, the upstream costs its round trip (plus the transfer), for ccxt and the
    service alike; the first of each figure's runs still pays the fake's work."""

    def __init__(self, target: str, delay: float, *, memo: bool = False) -> None:
        host, port = target.removeprefix("http://").split(":")
        local = threading.local()
        seen: dict[str, tuple[int, list[tuple[str, str]], bytes]] = {}

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                time.sleep(delay)
                known = seen.get(self.path) if memo else None
                if known is None:
                    conn = getattr(local, "conn", None)
                    if conn is None:
                        conn = local.conn = http.client.HTTPConnection(host, int(port), timeout=30)
                    conn.request("GET", self.path, headers={"Accept-Encoding": "identity"})
                    answer = conn.getresponse()
                    known = (answer.status, answer.getheaders(), answer.read())
                    if memo and answer.status == 200:
                        seen[self.path] = known
                status, headers, body = known
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in ("content-length", "transfer-encoding", "connection"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DelayProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


# --- the three ways to get the bars -------------------------------------------------------------------


class DelayedUpstreamProcess:
    """The fake upstream behind DelayProxy, in a child process with a frozen clock at NOW: its work (building
    and encoding the bars) runs on its own interpreter, as a real provider's runs on its own servers, instead
    of competing for this process's GIL with the clients measured. `url`, `clock`, `stop()`."""

    SCRIPT = (
        "import sys, time\n"
        "sys.path[:0] = sys.argv[1:4]\n"
        "from bench_peer import DELAY_SECONDS, DelayProxy\n"
        "from devtools.fake_upstream import FakeUpstream\n"
        "fake = FakeUpstream(api_keys=[sys.argv[4]]).start()\n"
        "fake.now = float(sys.argv[5])\n"
        "proxy = DelayProxy(fake.url, DELAY_SECONDS, memo=sys.argv[6] == 'memo').start()\n"
        "print(proxy.url, flush=True)\n"
        "sys.stdin.read()\n"
    )

    def __init__(self, *, memo: bool = False) -> None:
        """`memo`: see DelayProxy."""
        paths = [str(ROOT), str(ROOT / "bench"), str(ROOT / "layers" / "shared" / "python")]
        self._proc = subprocess.Popen(
            [sys.executable, "-c", self.SCRIPT, *paths, API_KEY, str(NOW), "memo" if memo else "-"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self._proc.stdout is not None
        self.url = self._proc.stdout.readline().strip()

    @staticmethod
    def clock() -> float:
        return float(NOW)

    def stop(self) -> None:
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        self._proc.terminate()
        self._proc.wait(10)


def load_handler_module() -> ModuleType:
    path = ROOT / "functions" / "historical" / "app.py"
    spec = importlib.util.spec_from_file_location("bench_peer_historical_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def ccxt_exchange(base_url: str) -> Any:
    import ccxt

    exchange = ccxt.binance({"enableRateLimit": False, "options": {"fetchMarkets": {"types": ["spot"]}}})
    exchange.urls["api"] = {name: f"{base_url}/api/v3" for name in exchange.urls["api"]}
    exchange.load_markets()
    return exchange


def ccxt_fetch(exchange: Any, interval: Interval, start: int, n: int) -> list[list[float]]:
    rows: list[list[float]] = []
    since = start * 1000
    while len(rows) < n:
        page = exchange.fetch_ohlcv("BTC/USDT", CCXT_TIMEFRAME[interval], since, min(1000, n - len(rows)))
        if not page:
            break
        rows.extend(page)
        since = int(page[-1][0]) + interval.nominal_seconds * 1000
    return rows


def median(fn: Callable[[], Any], runs: int, before: Callable[[], Any] | None = None) -> float:
    samples = []
    for _ in range(runs):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def main(argv: list[str] | None = None) -> int:
    # The handler writes its EMF metrics to stdout: send them to /dev/null, the figures to the real stdout.
    figures = sys.stdout
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        return _run(argv, figures)


def _run(argv: list[str] | None, figures: Any) -> int:
    def say(line: str) -> None:
        print(line, file=figures, flush=True)

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median)")
    args = parser.parse_args(argv)
    runs = max(1, args.runs)

    from scripts.local_api import FakeLambdaContext, LocalApi, to_v2_event

    upstream = DelayedUpstreamProcess(memo=True)
    try:
        with database() as url:
            delayed = upstream
            store = CandleStore(bench_cache._settings(url))
            service = bench_cache.service_for(url, delayed, store)  # type: ignore[arg-type]
            app = load_handler_module()
            app.get_service = lambda: service  # the handler's service: this one, on the delayed upstream
            api = LocalApi("127.0.0.1", 0, handlers={"GET /v1/candles": app.lambda_handler},
                           access_log=False).start()
            exchange = ccxt_exchange(upstream.url)
            raw = bench_cache._connect(url)
            host, port = api.url.removeprefix("http://").split(":")
            client = http.client.HTTPConnection(host, int(port), timeout=60)
            say(
                f"bench_peer: fake upstream + {DELAY_SECONDS * 1000:.0f} ms per request, {SYMBOL},"
                f" ccxt {__import__('ccxt').__version__}, median of {runs} runs"
            )
            header = (
                f"    {'case':<10} {'ccxt ms':>8} {'cold ms':>8} {'cold http':>9} {'warm ms':>8}"
                f" {'warm http':>9} {'floor ms':>8} {'ccxt/cold':>9} {'ccxt/warm':>9} {'(http)':>7}"
                f" {'warm/floor':>10}"
            )
            say(header)
            verdicts = []
            for interval, n in CASES:
                end = add_bars(interval, last_closed_open(interval, NOW), -10)
                start = add_bars(interval, end, -(n - 1))
                query = f"symbol={SYMBOL}&interval={interval.value}&start={start}&limit={n}"
                target = f"/v1/candles?{query}"

                def empty(interval: Interval = interval) -> None:
                    for table in ("candles", "coverage"):
                        raw.run(f"DELETE FROM {table} WHERE series_id IN"
                                " (SELECT id FROM series WHERE symbol = :s AND interval = :i)",
                                s=SYMBOL, i=interval.value)

                def in_process(target: str = target, n: int = n) -> None:
                    event = to_v2_event("GET", target, {"host": "bench"}, route_key="GET /v1/candles")
                    result = app.lambda_handler(event, FakeLambdaContext("bench"))
                    assert result["statusCode"] == 200, result
                    assert result["body"].count('"time"') == n

                def over_http(target: str = target, n: int = n) -> None:
                    client.request("GET", target)
                    answer = client.getresponse()
                    body = answer.read()
                    assert answer.status == 200, body[:300]
                    assert len(json.loads(body)["candles"]) == n

                def peer(interval: Interval = interval, start: int = start, n: int = n) -> None:
                    assert len(ccxt_fetch(exchange, interval, start, n)) == n

                copy_sql = (
                    "COPY (SELECT CAST(open_minute AS bigint) * 60, open, high, low, close, volume"
                    " FROM candles"
                    f" WHERE series_id = (SELECT id FROM series WHERE symbol = '{SYMBOL}'"
                    f" AND interval = '{interval.value}')"
                    f" AND open_minute BETWEEN {int(start) // 60} AND {int(end) // 60} ORDER BY open_minute)"
                    " TO STDOUT (FORMAT binary)"
                )

                def floor(copy_sql: str = copy_sql) -> None:
                    raw.run(copy_sql, stream=io.BytesIO())

                t_ccxt = median(peer, runs)
                t_cold = median(in_process, runs, before=empty)
                t_cold_http = median(over_http, runs, before=empty)
                in_process()  # cached from here on
                t_warm = median(in_process, runs * 3)
                t_warm_http = median(over_http, runs * 3)
                floor()
                t_floor = median(floor, runs * 3)
                ms = {k: v * 1000 for k, v in {"ccxt": t_ccxt, "cold": t_cold, "cold_http": t_cold_http,
                                               "warm": t_warm, "warm_http": t_warm_http,
                                               "floor": t_floor}.items()}
                label = f"{interval.value} {n}"
                say(
                    f"    {label:<10} {ms['ccxt']:>8.1f} {ms['cold']:>8.1f} {ms['cold_http']:>9.1f}"
                    f" {ms['warm']:>8.2f} {ms['warm_http']:>9.2f} {ms['floor']:>8.2f}"
                    f" {t_ccxt / t_cold:>8.2f}x {t_ccxt / t_warm:>8.1f}x {t_ccxt / t_warm_http:>6.1f}x"
                    f" {t_warm / t_floor:>9.2f}x"
                )
                if n == 5000:
                    verdicts.append((label, t_ccxt / t_cold, t_ccxt / t_warm, t_warm / t_floor))
            say("    targets for 5000 bars: warm/floor <= 3x, ccxt/warm >= 20x, ccxt/cold >= 2x")
            for label, cold_ratio, warm_ratio, floor_ratio in verdicts:
                marks = [
                    f"warm/floor {floor_ratio:.2f}x {'ok' if floor_ratio <= 3 else 'MISSED'}",
                    f"ccxt/warm {warm_ratio:.1f}x {'ok' if warm_ratio >= 20 else 'MISSED'}",
                    f"ccxt/cold {cold_ratio:.2f}x {'ok' if cold_ratio >= 2 else 'MISSED'}",
                ]
                say(f"    {label:<10} " + "; ".join(marks))
            client.close()
            api.stop()
            raw.close()
            store.close()
            service.close()
    finally:
        upstream.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
