"""The WebSocket function (functions/live) fed real API Gateway WebSocket events, against a real Postgres and
the fake upstream: connections and subscriptions land in (and leave) the tables as they should, and every
refused frame gets a message saying why."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from devtools.fake_upstream import FakeUpstream
from scripts.gen_openapi import load_function_module
from scripts.local_api import FakeLambdaContext
from scripts.local_live import to_ws_event
from tests.cache.service_helpers import connect


class Live:
    """Sends WebSocket events to the live function's lambda_handler as API Gateway would."""

    def __init__(self) -> None:
        self.handler = load_function_module("live").lambda_handler

    def send(self, route_key: str, connection_id: str, body: Any = None) -> dict[str, Any]:
        text = body if isinstance(body, str) or body is None else json.dumps(body)
        result = self.handler(to_ws_event(route_key, connection_id, text), FakeLambdaContext("test-live"))
        assert isinstance(result, dict)
        return result

    def message(self, route_key: str, connection_id: str, body: Any) -> dict[str, Any]:
        """The route response a frame gets back (always delivered: statusCode 200)."""
        result = self.send(route_key, connection_id, body)
        assert result["statusCode"] == 200, result
        return json.loads(result["body"])

    def subscribe(self, connection_id: str, symbol: str, interval: str) -> dict[str, Any]:
        body = {"action": "subscribe", "symbol": symbol, "interval": interval}
        return self.message("subscribe", connection_id, body)


@pytest.fixture
def live(service_env: FakeUpstream) -> Live:
    return Live()


@pytest.fixture
def rows(database_url: str):
    conn = connect(database_url)

    def read() -> dict[str, list[tuple[Any, ...]]]:
        connections = conn.run("SELECT connection_id FROM live_connections ORDER BY 1")
        subscriptions = conn.run(
            "SELECT connection_id, symbol, interval, asset_class FROM live_subscriptions ORDER BY 1, 2, 3"
        )
        return {
            "connections": [tuple(r) for r in connections],
            "subscriptions": [tuple(r) for r in subscriptions],
        }

    yield read
    conn.close()


def test_connect_subscribe_unsubscribe_disconnect_keep_the_rows(live: Live, rows) -> None:
    assert live.send("$connect", "conn-A=") == {"statusCode": 200}
    assert rows() == {"connections": [("conn-A=",)], "subscriptions": []}

    reply = live.subscribe("conn-A=", "btcusdt", "1m")
    assert reply == {"type": "subscribed", "symbol": "BTCUSDT", "interval": "1m", "subscriptions": 1}
    reply = live.subscribe("conn-A=", "EUR/USD", "1H")
    assert reply["subscriptions"] == 2
    assert live.subscribe("conn-A=", "BTCUSDT", "1m")["subscriptions"] == 2  # a repeat is no new row
    assert rows()["subscriptions"] == [
        ("conn-A=", "BTCUSDT", "1m", "crypto"), ("conn-A=", "EUR/USD", "1H", "forex"),
    ]  # fmt: skip

    body = {"action": "unsubscribe", "symbol": "BTCUSDT", "interval": "1m"}
    reply = live.message("unsubscribe", "conn-A=", body)
    assert reply == {"type": "unsubscribed", "symbol": "BTCUSDT", "interval": "1m", "subscriptions": 1}
    assert rows()["subscriptions"] == [("conn-A=", "EUR/USD", "1H", "forex")]

    assert live.send("$disconnect", "conn-A=") == {"statusCode": 200}
    assert rows() == {"connections": [], "subscriptions": []}


def test_disconnect_removes_only_that_connections_rows(live: Live, rows) -> None:
    for connection in ("one=", "two="):
        live.send("$connect", connection)
        live.subscribe(connection, "ETHUSDT", "5m")
    live.send("$disconnect", "one=")
    assert rows() == {"connections": [("two=",)], "subscriptions": [("two=", "ETHUSDT", "5m", "crypto")]}


def test_an_unlisted_symbol_is_refused_with_the_candles_routes_message_and_hint(live: Live, rows) -> None:
    live.send("$connect", "c=")
    unknown = live.subscribe("c=", "NOPEUSDT", "1m")
    assert unknown["type"] == "error" and unknown["status"] == 404 and unknown["param"] == "symbol"
    assert "NOPEUSDT" in unknown["message"]
    # The same hint /v1/candles gives: a forex pair written without its slash.
    hinted = live.subscribe("c=", "EURUSD", "1H")
    assert hinted["status"] == 404 and "EUR/USD" in hinted["message"]
    assert rows()["subscriptions"] == []


@pytest.mark.parametrize(
    ("interval", "hint"), [("1h", "1H"), ("60", None), ("2m", None)], ids=["case", "udf", "unknown"]
)
def test_a_bad_interval_is_refused_naming_it(live: Live, rows, interval: str, hint: str | None) -> None:
    live.send("$connect", "c=")
    reply = live.subscribe("c=", "BTCUSDT", interval)
    assert reply["type"] == "error" and reply["status"] == 400 and reply["param"] == "interval"
    if hint:
        assert hint in reply["message"]
    assert rows()["subscriptions"] == []


def test_too_many_subscriptions_are_refused_and_nothing_past_the_bound_is_stored(
    live: Live, rows, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.functions.conftest import reset_process_singletons

    monkeypatch.setenv("LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION", "2")
    reset_process_singletons()
    live.send("$connect", "c=")
    assert live.subscribe("c=", "BTCUSDT", "1m")["subscriptions"] == 1
    assert live.subscribe("c=", "BTCUSDT", "5m")["subscriptions"] == 2
    refused = live.subscribe("c=", "ETHUSDT", "1m")
    assert refused["type"] == "error" and refused["status"] == 400
    assert "2 pairs" in refused["message"]
    # Following one of the two again is no new subscription, so it is still accepted.
    assert live.subscribe("c=", "BTCUSDT", "5m")["subscriptions"] == 2
    assert len(rows()["subscriptions"]) == 2


SUB = {"action": "subscribe", "symbol": "BTCUSDT", "interval": "1m"}


@pytest.mark.parametrize(
    ("route", "body", "param", "words"),
    [
        ("$default", "not json", "action", "not JSON"),
        ("$default", '["subscribe"]', "action", "not a JSON object"),
        ("$default", {"action": "follow", "symbol": "BTCUSDT", "interval": "1m"}, "action", "unknown action"),
        ("$default", {"symbol": "BTCUSDT", "interval": "1m"}, "action", "unknown action"),
        ("subscribe", {"action": "subscribe", "interval": "1m"}, "symbol", "symbol is required"),
        ("subscribe", {**SUB, "symbol": "BTC'USDT"}, "symbol", "invalid symbol"),
        ("subscribe", {**SUB, "x": 1}, "x", "unexpected"),
    ],
    ids=["bad-json", "not-object", "unknown-action", "no-action", "no-symbol", "bad-symbol", "extra-field"],
)
def test_refused_frames_get_a_clear_error_message(live: Live, rows, route, body, param, words) -> None:
    live.send("$connect", "c=")
    reply = live.message(route, "c=", body)
    assert reply["type"] == "error" and reply["status"] == 400, reply
    assert reply["param"] == param
    assert words in reply["message"]
    if param == "action":  # the message shows what to send instead
        assert '"action": "subscribe"' in reply["message"]
    assert rows()["subscriptions"] == []


def test_without_a_database_connect_is_refused(monkeypatch: pytest.MonkeyPatch, service_env) -> None:
    from tests.functions.conftest import reset_process_singletons

    monkeypatch.delenv("DATABASE_URL")
    reset_process_singletons()
    result = Live().send("$connect", "c=")
    assert result["statusCode"] == 503
    assert json.loads(result["body"])["type"] == "error"


# --- the broadcaster's Lambda handler --------------------------------------------------------------


def test_the_broadcaster_function_posts_to_the_subscribers_through_the_configured_endpoint(
    live: Live, monkeypatch: pytest.MonkeyPatch
) -> None:
    from scripts.local_live import ManagementStandIn
    from tests.functions.conftest import reset_process_singletons

    standin = ManagementStandIn().start()
    try:
        # What the template gives the function: the endpoint; boto3 signs with the role's credentials.
        monkeypatch.setenv("LIVE_MANAGEMENT_ENDPOINT", standin.url)
        monkeypatch.setenv("LIVE_STOP_MARGIN_SECONDS", "1")
        for name, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                            ("AWS_DEFAULT_REGION", "eu-west-1")):  # fmt: skip
            monkeypatch.setenv(name, value)
        reset_process_singletons()
        live.send("$connect", "viewer=")
        live.subscribe("viewer=", "BTCUSDT", "1m")
        handler = load_function_module("broadcaster").lambda_handler
        # A context with 4 s left: the run stops a margin (1 s) before it, after a few ticks.
        context = FakeLambdaContext("test-broadcaster", timeout_ms=4000)
        summary = handler({"source": "marketdata.live-schedule"}, context)
    finally:
        standin.stop()
    assert summary["ticks"] >= 1 and summary["pairs"] == 1 and summary["connections"] == 1
    assert summary["posts"] >= 1 and summary["failed"] == 0
    messages = standin.messages("viewer=")
    # The Binance client (aimed at the fake's streams) says it connected, then the bars come.
    (first, *_) = [m for m in messages if m["type"] == "price"]
    assert first["symbol"] == "BTCUSDT" and first["interval"] == "1m"
    statuses = {(m["status"], m["provider"]) for m in messages if m["type"] == "status"}
    assert statuses <= {("connected", "binance")}


def test_a_run_ends_before_the_next_minutes_run_and_before_its_timeout() -> None:
    from marketdata.broadcast import run_window
    from marketdata.config import Settings

    settings = Settings.model_validate({"LIVE_STOP_MARGIN_SECONDS": "8"})
    now = time.time()
    minute = now - now % 60
    # Started at :02 with 70 s of Lambda: it ends 1 s before the next :00, well inside the timeout.
    left = run_window(lambda: 70.0, settings, started=minute + 2)()
    assert abs(left - (minute + 59 - time.time())) < 1
    # Little Lambda time left: the timeout margin decides (the next run is at least 10 s away).
    assert run_window(lambda: 10.0, settings, started=now)() == pytest.approx(2.0, abs=0.01)
    # Started in a minute's last seconds (the schedule fired early for the next :00): the next minute's run.
    late = run_window(lambda: 1000.0, settings, started=minute + 55)()
    assert left + 55 < late < left + 65
