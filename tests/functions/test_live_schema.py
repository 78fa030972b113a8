"""docs/live-messages.schema.json is what the code generates, and the messages the code sends are the
shapes it documents (as tests/functions/test_openapi.py does for openapi.json)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from marketdata.intervals import Interval
from marketdata.schemas import Candle, ConnectionStatus, LiveError, PriceUpdate, SubscriptionReply
from scripts import gen_live_schema


def _defs() -> dict[str, Any]:
    return json.loads(gen_live_schema.SCHEMA_PATH.read_text())["$defs"]


def test_the_committed_document_matches_the_code() -> None:
    ok, diff = gen_live_schema.check()
    assert ok, f"the live schema is stale; run `python scripts/gen_live_schema.py`:\n{diff[:3000]}"


def test_check_reports_a_stale_document(tmp_path: Path) -> None:
    stale = json.loads(gen_live_schema.SCHEMA_PATH.read_text())
    del stale["$defs"]["PriceUpdate"]
    target = tmp_path / "live.json"
    target.write_text(json.dumps(stale))
    ok, diff = gen_live_schema.check(target)
    assert not ok and "PriceUpdate" in diff
    assert gen_live_schema.main(["--check", "--output", str(target)]) == 1
    assert gen_live_schema.main(["--output", str(target)]) == 0
    assert gen_live_schema.main(["--check", "--output", str(target)]) == 0


def _conforms(message: dict[str, Any], name: str) -> None:
    schema = _defs()[name]
    assert set(schema["required"]) <= set(message) <= set(schema["properties"]), (name, message)
    type_field = schema["properties"].get("type", {})
    allowed = type_field.get("enum") or ([type_field["const"]] if "const" in type_field else None)
    if allowed is not None:
        assert message["type"] in allowed


def test_what_the_service_sends_is_what_the_document_says() -> None:
    candle = Candle(1715769420, 1.0, 2.0, 0.5, 1.5, 10.0)
    sent = {
        "PriceUpdate": PriceUpdate(symbol="BTCUSDT", interval=Interval.M1, candle=candle, is_closed=False),
        "SubscriptionReply": SubscriptionReply(
            type="subscribed", symbol="BTCUSDT", interval=Interval.M1, subscriptions=1
        ),
        "ConnectionStatus": ConnectionStatus(status="reconnecting", message="dropped", provider="binance"),
        "LiveError": LiveError(message="unknown symbol", param="symbol", status=404),
    }
    for name, model in sent.items():
        message = json.loads(model.model_dump_json())
        _conforms(message, name)
    price = json.loads(sent["PriceUpdate"].model_dump_json())
    candle_schema = _defs()["Candle"]
    fields = {"time", "open", "high", "low", "close", "volume"}
    assert set(price["candle"]) == set(candle_schema["properties"]) == fields
    # The client's message: the three fields, the two actions, the nine intervals.
    subscribe = _defs()["SubscribeMessage"]
    assert set(subscribe["required"]) == {"action", "symbol", "interval"}
    assert subscribe["properties"]["action"]["enum"] == ["subscribe", "unsubscribe"]
    assert _defs()["Interval"]["enum"] == [i.value for i in Interval]
