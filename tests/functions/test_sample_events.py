"""The committed API Gateway sample events (events/*.json, used by `sam local invoke -e`) run through
the handlers here too, and the local API builds its events with the same shape."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from devtools.fake_upstream import FakeUpstream
from marketdata import udf
from marketdata.schemas import ErrorResponse, HistoryResponse, SymbolsResponse
from scripts.local_api import ROOT, ROUTES, to_v2_event
from tests.functions.conftest import Answer, Api

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


def _candles(answer: Answer, event: dict, fake: FakeUpstream) -> None:
    parsed = HistoryResponse.model_validate(answer.json())
    query = event["queryStringParameters"]
    if "start" in query and "end" in query:
        expected = fake.expected_candles(
            parsed.symbol, parsed.interval.value, int(query["start"]), int(query["end"])
        )
        assert parsed.candles == expected[: int(query.get("limit", 500))]


def _symbols(answer: Answer, event: dict, fake: FakeUpstream) -> None:
    parsed = SymbolsResponse.model_validate(answer.json())
    assert parsed.symbols == sorted(parsed.symbols)


def _udf_history(answer: Answer, event: dict, fake: FakeUpstream) -> None:
    bars = udf.UdfBars.model_validate(answer.json())
    query = event["queryStringParameters"]
    symbol = udf.parse_symbol(query["symbol"]).symbol
    interval = udf.resolution_interval(query["resolution"])
    expected = fake.expected_candles(symbol, interval.value, int(query["from"]), int(query["to"]) - 1)
    assert bars.t == [c.time for c in expected] and bars.c == [c.close for c in expected]


def _search(answer: Answer, event: dict, fake: FakeUpstream) -> None:
    found = [udf.UdfSearchResult.model_validate(r) for r in answer.json()]
    assert found and all(r.type == event["queryStringParameters"]["type"] for r in found)


def _model(model: type) -> Callable[[Answer, dict, FakeUpstream], None]:
    return lambda answer, event, fake: model.model_validate(answer.json())


def _text(start: str) -> Callable[[Answer, dict, FakeUpstream], None]:
    def check(answer: Answer, event: dict, fake: FakeUpstream) -> None:
        assert answer.body.decode().startswith(start)

    return check


#: How each route's 200 answer is checked.
CHECKS: dict[str, Callable[[Answer, dict, FakeUpstream], None]] = {
    "GET /v1/candles": _candles,
    "GET /v1/symbols": _symbols,
    "GET /udf/config": _model(udf.UdfConfig),
    "GET /udf/symbols": _model(udf.UdfSymbolInfo),
    "GET /udf/search": _search,
    "GET /udf/history": _udf_history,
    "GET /udf/time": _text("1"),
    "GET /chart": _text("<!doctype html>"),
    "GET /chart/{asset}": _text("TradingView Lightweight Charts"),
}


def test_every_route_has_an_answer_check():
    assert set(CHECKS) == set(ROUTES)


def test_sample_events_get_documented_answers(api: Api, fake_upstream: FakeUpstream):
    events = http_events()
    assert events
    for name, event in events.items():
        answer = api.invoke(event)
        assert answer.status < 500, (name, answer.status, answer.body)
        if answer.status != 200:
            ErrorResponse.model_validate(answer.json())
            assert answer.headers["cache-control"] == "no-store"
            continue
        try:
            CHECKS[event["routeKey"]](answer, event, fake_upstream)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc


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
