"""Test doubles for the provider unit tests: a fake clock, a request recorder, tiny upstream emulators.

The emulators here are deliberately small (one function each) and follow the documented upstream
semantics that the clients depend on; the full fake server lives in devtools/fake_upstream.py.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from marketdata.config import Settings
from marketdata.intervals import Interval, bar_open, first_open_at_or_after, next_open

SAMPLES = Path(__file__).resolve().parent.parent / "data" / "provider-samples"
API_KEY = "td-SECRET-key-7f3a9c"
BINANCE_URL = "https://binance.test"
TWELVE_URL = "https://twelvedata.test"

Handler = Callable[[httpx.Request], httpx.Response]


def sample_bytes(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def sample_json(name: str) -> Any:
    return json.loads(sample_bytes(name))


def utc(text: str) -> int:
    """'2024-01-30 16:00' -> Unix seconds (UTC)."""
    fmt = "%Y-%m-%d %H:%M:%S" if text.count(":") == 2 else "%Y-%m-%d %H:%M" if ":" in text else "%Y-%m-%d"
    return int(datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp())


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "binance_rest_url": BINANCE_URL,
        "twelve_data_rest_url": TWELVE_URL,
        "twelve_data_api_key": API_KEY,
        "upstream_retry_budget_seconds": 8.0,
        "upstream_max_attempts": 4,
    }
    values.update(overrides)
    return Settings.model_validate(values)


@dataclass
class FakeTime:
    """Wall clock and monotonic clock that only move when the client sleeps (or a test says so)."""

    now: float
    mono: float = 1000.0
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.mono

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.mono += seconds


class Recorder:
    """A MockTransport handler that records every request and answers from a script or a function.

    `script` items are answered in order, one per request: an httpx.Response, an exception instance
    to raise (timeouts, connection errors), or a Handler. When the script is used up, `fallback`
    answers (or the test fails loudly).
    """

    def __init__(
        self, *script: httpx.Response | Exception | Handler, fallback: Handler | None = None
    ) -> None:
        self.script = list(script)
        self.fallback = fallback
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.script:
            item = self.script.pop(0)
        elif self.fallback is not None:
            item = self.fallback
        else:
            raise AssertionError(f"unexpected request {request.method} {request.url.path}")
        if isinstance(item, Exception):
            raise item
        if isinstance(item, httpx.Response):
            return item
        return item(request)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self))

    def params(self, index: int = -1) -> dict[str, str]:
        return dict(self.requests[index].url.params)

    @property
    def count(self) -> int:
        return len(self.requests)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, json=body, headers=headers)


def raw_response(content: bytes, status: int = 200, content_type: str = "application/json") -> httpx.Response:
    return httpx.Response(status, content=content, headers={"content-type": content_type})


# --- a tiny Binance klines emulator -----------------------------------------------------------


def synthetic_bar(t: int) -> tuple[float, float, float, float, float]:
    base = 100.0 + (t // 60) % 97
    return base, base + 2.0, base - 1.5, base + 0.5, 1.0 + (t // 60) % 7


def kline_row(interval: Interval, t: int) -> list[Any]:
    o, h, low, c, v = synthetic_bar(t)
    close_ms = next_open(interval, t) * 1000 - 1
    return [
        t * 1000,
        f"{o:.8f}",
        f"{h:.8f}",
        f"{low:.8f}",
        f"{c:.8f}",
        f"{v:.8f}",
        close_ms,
        "0",
        10,
        "0",
        "0",
        "0",
    ]


def binance_klines(
    *, listed: int = 0, now: Callable[[], float] | None = None, weight: Iterable[int] | None = None
) -> Handler:
    """Binance klines semantics: bars from `listed` up to the bar open at now; startTime/endTime in ms
    (a mid-bar startTime skips to the next bar, endTime includes a bar opening exactly at it), `limit`
    rows at most, oldest first. `weight` yields X-MBX-USED-WEIGHT-1M values, one per response."""
    weights = iter(weight) if weight is not None else None

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v3/klines"
        p = request.url.params
        interval = next(i for i in Interval if i.binance == p["interval"])
        start_s = math.ceil(int(p["startTime"]) / 1000)
        end_s = int(p["endTime"]) // 1000
        limit = int(p.get("limit", "500"))
        t = first_open_at_or_after(interval, max(start_s, listed))
        newest = bar_open(interval, int(now())) if now is not None else None
        rows = []
        while t <= end_s and len(rows) < limit and (newest is None or t <= newest):
            rows.append(kline_row(interval, t))
            t = next_open(interval, t)
        headers = {"X-MBX-USED-WEIGHT-1M": str(next(weights))} if weights is not None else {}
        return json_response(rows, headers=headers)

    return handle


# --- a tiny Twelve Data time_series emulator ------------------------------------------------


def td_bar_row(t: int, date_only: bool = False) -> dict[str, str]:
    o, h, low, c, _ = synthetic_bar(t)
    fmt = "%Y-%m-%d" if date_only else "%Y-%m-%d %H:%M:%S"
    when = datetime.fromtimestamp(t, UTC).strftime(fmt)
    return {
        "datetime": when,
        "open": f"{o:.5f}",
        "high": f"{h:.5f}",
        "low": f"{low:.5f}",
        "close": f"{c:.5f}",
    }


def twelve_time_series(*, end_inclusive: bool = True, skip: Callable[[int], bool] | None = None) -> Handler:
    """time_series over start_date..end_date (UTC, end inclusive or exclusive), order asc, forex rows
    without volume; `skip(t)` removes bars (weekends). No rows at all -> Twelve Data's 404 body."""

    def handle(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/time_series"
        p = request.url.params
        interval = next(i for i in Interval if i.twelve_data == p["interval"])
        start = utc(p["start_date"])
        end = utc(p["end_date"])
        outputsize = int(p["outputsize"])
        t = first_open_at_or_after(interval, start)
        rows = []
        while t < end or (end_inclusive and t == end):
            if skip is None or not skip(t):
                rows.append(td_bar_row(t))
            t = next_open(interval, t)
        if len(rows) > outputsize:
            rows = rows[-outputsize:]  # Twelve Data keeps the newest rows
        if not rows:
            return json_response({"code": 404, "message": "Data not found", "status": "error"})
        return json_response({"meta": {"symbol": p["symbol"]}, "values": rows, "status": "ok"})

    return handle
