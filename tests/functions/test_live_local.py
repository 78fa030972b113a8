"""The live API end to end on the local service (what `dev.py serve --offline` runs): a WebSocket client
subscribes through the local WebSocket server (template.yaml's routes, the live function), the broadcaster
ticks in-process with the real Binance client on the fake's kline stream and posts through the Management
API stand-in. The fake upstream's clock is set, so the
minute boundary comes without waiting for it. And the chart page in headless Chromium follows the forming
bar over the WebSocket instead of polling."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from devtools.fake_streams import FakeStreams
from devtools.fake_upstream import FakeUpstream
from marketdata.config import Settings
from marketdata.store import CandleStore
from scripts.local_api import LocalApi
from scripts.local_live import LiveStack, start_live_stack
from tests.cache.service_helpers import real_service
from tests.functions.test_chart_page import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, _playwright

MINUTE = 60


@pytest.fixture
def live_env(monkeypatch: pytest.MonkeyPatch, service_env: FakeUpstream) -> FakeUpstream:
    # start_live_stack points this process at the live API: registered here so they are restored after.
    for name in ("LIVE_WEBSOCKET_URL", "LIVE_MANAGEMENT_ENDPOINT"):
        monkeypatch.setenv(name, "")
    return service_env


def _stack(fake: FakeUpstream) -> tuple[LiveStack, Any]:
    """The local live API, its broadcaster on a service with the fake's clock."""
    settings = Settings.from_env()
    service = real_service(settings, CandleStore(settings), fake.clock)
    return start_live_stack("127.0.0.1", 0, service=service), service


def _receive(ws: Any, wanted: Any, what: str, seconds: float = 15.0) -> dict[str, Any]:
    """The first message for which wanted(message) holds (others skipped), within a generous bound."""
    deadline = time.monotonic() + seconds
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {seconds:g} s")
        try:
            message = json.loads(ws.recv(timeout=left))
        except TimeoutError:
            continue
        if wanted(message):
            return message


def test_a_subscribed_client_gets_the_forming_bar_then_the_closed_bar_at_the_minute(
    live_env: FakeUpstream, fake_streams: FakeStreams
) -> None:
    fake = live_env
    forming = int(time.time()) // MINUTE * MINUTE - 5 * MINUTE  # a minute of the recent past, frozen
    fake.now = forming + 20
    stack, service = _stack(fake)
    try:
        with connect(stack.live.url) as ws:
            ws.send(json.dumps({"action": "subscribe", "symbol": "BTCUSDT", "interval": "1m"}))
            reply = _receive(ws, lambda m: m["type"] != "price", "reply")
            assert reply == {"type": "subscribed", "symbol": "BTCUSDT", "interval": "1m", "subscriptions": 1}
            update = _receive(ws, lambda m: m["type"] == "price", "price update")
            assert (update["symbol"], update["interval"], update["is_closed"]) == ("BTCUSDT", "1m", False)
            assert update["candle"]["time"] == forming
            truth = fake.open_bar("BTCUSDT", "1m")
            assert truth is not None and update["candle"]["close"] == truth.close

            fake.now = forming + MINUTE + 1  # the minute boundary
            closed = _receive(ws, lambda m: m["type"] == "price" and m["is_closed"], "closed bar")
            (final,) = fake.expected_candles("BTCUSDT", "1m", forming, forming)
            fields = ("time", "open", "high", "low", "close", "volume")
            assert closed["candle"] == {name: getattr(final, name) for name in fields}
            after = _receive(ws, lambda m: m["type"] == "price" and not m["is_closed"], "next forming bar")
            assert after["candle"]["time"] == forming + MINUTE
            # Through the Binance client and the fake's kline stream (service_env aims it there).
            assert [p for p in fake_streams.connections if p.startswith("/stream")] == [
                "/stream?streams=btcusdt@kline_1m"
            ]

            ws.send("hello")
            error = _receive(ws, lambda m: m["type"] == "error", "error reply")
            assert error["param"] == "action" and "not JSON" in error["message"]
        # Closing the socket is $disconnect: the connection's rows go.
        deadline = time.monotonic() + 10
        while stack.broadcaster.broadcaster.subscriptions.pairs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stack.broadcaster.broadcaster.subscriptions.pairs() == []
    finally:
        stack.stop()
        for provider in service.providers.values():
            provider.close()


@pytest.fixture
def live_chart(live_env: FakeUpstream) -> Iterator[tuple[LocalApi, LiveStack]]:
    """The local service with the live API on real time (the fake's clock running): what `serve` runs."""
    stack = start_live_stack("127.0.0.1", 0, invoke_lock=None)
    api = LocalApi("127.0.0.1", 0, access_log=False).start()
    try:
        yield api, stack
    finally:
        api.stop()
        stack.stop()


def test_the_chart_page_moves_the_last_bar_over_the_websocket(live_chart, tmp_path: Path) -> None:
    api, stack = live_chart
    sync_playwright = _playwright()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 720},
        )  # fmt: skip
        try:
            page = context.new_page()
            problems: list[str] = []
            page.on("pageerror", lambda exc: problems.append(str(exc)))
            page.goto(f"{api.url}/chart#symbol=BTCUSDT&interval=1m")
            page.wait_for_function("document.body.dataset.state === 'ready'", timeout=WAIT_MS)
            assert page.evaluate("document.body.dataset.liveUrl") == stack.live.url
            page.wait_for_function("document.body.dataset.liveKey === 'BTCUSDT|1m'", timeout=WAIT_MS)
            # The forming bar moves: updates arrive over the WebSocket and change the last bar.
            page.wait_for_function("Number(document.body.dataset.liveUpdates) >= 1", timeout=WAIT_MS)
            first = page.evaluate("document.body.dataset.lastClose")
            moved = f"document.body.dataset.lastClose !== '{first}'"
            page.wait_for_function(
                f"Number(document.body.dataset.liveUpdates) >= 2 && {moved}", timeout=WAIT_MS
            )
            newest = int(page.evaluate("document.body.dataset.newest"))
            this_minute = int(time.time()) // MINUTE * MINUTE
            assert newest in (this_minute, this_minute - MINUTE)  # the forming bar is the last one
            assert page.evaluate("document.body.dataset.polls") == "0"  # no polling while the WebSocket is up
            # Another interval: the page unsubscribes and follows the new pair.
            page.click("#intervals button[data-interval='5m']")
            page.wait_for_function("document.body.dataset.liveKey === 'BTCUSDT|5m'", timeout=WAIT_MS)
            # The page sets liveKey as it sends; the server's rows follow once it has handled the frames.
            subscriptions = stack.broadcaster.broadcaster.subscriptions
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                followed = [(p.symbol, p.interval.value) for p in subscriptions.pairs()]
                if followed == [("BTCUSDT", "5m")]:
                    break
                time.sleep(0.05)
            assert followed == [("BTCUSDT", "5m")], f"the subscriptions after the switch: {followed}"
            assert not problems, problems
        finally:
            context.close()
