"""The committed API Gateway sample events (events/*.json, used by `sam local invoke -e`) run through
the handlers here too, and the local API builds its events with the same shape."""

from __future__ import annotations

import json
from pathlib import Path

from marketdata.schemas import ErrorResponse, HistoryResponse, SymbolsResponse
from scripts.local_api import ROOT, ROUTES, to_v2_event
from tests.functions.conftest import Api
from tests.support.fake_upstream import FakeUpstream

EVENTS_DIR = ROOT / "events"


def http_events() -> dict[str, dict]:
    """file name -> event, for every payload-2.0 API Gateway event in events/."""
    found = {}
    for path in sorted(EVENTS_DIR.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict) and data.get("version") == "2.0" and "routeKey" in data:
            found[path.name] = data
    return found


def test_every_route_has_a_sample_event():
    routes = {event["routeKey"] for event in http_events().values()}
    assert set(ROUTES) <= routes, f"events/ lacks a sample for {set(ROUTES) - routes}"


def test_sample_events_get_documented_answers(api: Api, fake_upstream: FakeUpstream):
    events = http_events()
    assert events
    for name, event in events.items():
        answer = api.invoke(event)
        assert answer.status < 500, (name, answer.status, answer.body)
        body = answer.json()
        if answer.status != 200:
            ErrorResponse.model_validate(body)
            assert answer.headers["cache-control"] == "no-store"
        elif event["routeKey"] == "GET /v1/candles":
            parsed = HistoryResponse.model_validate(body)
            query = event["queryStringParameters"]
            if "start" in query and "end" in query:
                expected = fake_upstream.expected_candles(
                    parsed.symbol, parsed.interval.value, int(query["start"]), int(query["end"])
                )
                assert parsed.candles == expected[: int(query.get("limit", 500))], name
        else:
            parsed_symbols = SymbolsResponse.model_validate(body)
            assert parsed_symbols.symbols == sorted(parsed_symbols.symbols)


def test_the_candles_sample_is_a_full_day_of_hours(api: Api):
    event = json.loads(Path(EVENTS_DIR / "candles.json").read_text())
    answer = api.invoke(event)

    assert answer.status == 200
    assert len(answer.json()["candles"]) == 24
    assert answer.headers["content-encoding"] == "gzip"  # the sample accepts gzip


def test_local_events_have_the_sample_events_shape():
    sample = next(e for e in http_events().values() if e["routeKey"] == "GET /v1/candles")
    built = to_v2_event(
        "GET",
        f"{sample['rawPath']}?{sample['rawQueryString']}",
        sample["headers"],
        route_key=sample["routeKey"],
    )
    assert set(built) == set(sample)
    assert set(built["requestContext"]) == set(sample["requestContext"])
    assert set(built["requestContext"]["http"]) == set(sample["requestContext"]["http"])
    assert built["queryStringParameters"] == sample["queryStringParameters"]
    assert built["headers"] == sample["headers"]
