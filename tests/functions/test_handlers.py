"""Both lambda_handlers, fed API Gateway v2 events, against a real Postgres and the fake upstream."""

from __future__ import annotations

import itertools
import json
import math

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.schemas import MAX_UNIX_SECONDS
from scripts.local_api import FakeLambdaContext
from tests.functions.conftest import Api

JAN_1_2024 = 1704067200  # 2024-01-01T00:00:00Z, a Monday
HOUR = 3600
KLINES = "/api/v3/klines"


def as_rows(candles: list) -> list[dict]:
    return [
        {"time": c.time, "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume}
        for c in candles
    ]


# --- 200 answers --------------------------------------------------------------------------------


def test_candles_for_a_closed_range_are_the_providers_bars_cached_for_long(
    api: Api, fake_upstream: FakeUpstream
):
    start, end = JAN_1_2024, JAN_1_2024 + 23 * HOUR
    answer = api.candles(symbol="BTCUSDT", interval="1H", start=start, end=end)

    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.headers["x-cache"] == "miss"
    assert answer.headers["cache-control"] == "public, max-age=86400, immutable"
    body = answer.json()
    assert set(body) == {"symbol", "interval", "asset_class", "provider", "candles", "next_start"}
    assert (body["symbol"], body["interval"], body["asset_class"], body["provider"]) == (
        "BTCUSDT",
        "1H",
        "crypto",
        "binance",
    )
    assert body["next_start"] is None
    assert body["candles"] == as_rows(fake_upstream.expected_candles("BTCUSDT", "1H", start, end))
    assert len(body["candles"]) == 24


def test_a_repeat_is_a_cache_hit_without_provider_calls(api: Api, fake_upstream: FakeUpstream):
    query = {"symbol": "ethusdt", "interval": "15m", "start": JAN_1_2024, "end": JAN_1_2024 + 99 * 900}
    first = api.candles(**query)
    calls = fake_upstream.count(KLINES)
    second = api.candles(**query)

    assert first.status == second.status == 200
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert calls >= 1
    assert fake_upstream.count(KLINES) == calls
    assert second.json() == first.json()
    assert second.json()["symbol"] == "ETHUSDT"


def test_latest_bars_reach_the_present_and_are_cached_briefly(api: Api, fake_upstream: FakeUpstream):
    answer = api.candles(symbol="BTCUSDT", interval="1m", limit=10)

    assert answer.status == 200
    candles = answer.json()["candles"]
    assert len(candles) == 10
    # The newest closed bar is included (allow for a minute boundary between the two clocks).
    assert candles[-1]["time"] >= fake_upstream.last_closed_open("BTCUSDT", "1m") - 60
    assert [b["time"] - a["time"] for a, b in itertools.pairwise(candles)] == [60] * 9
    assert "immutable" not in answer.headers["cache-control"]
    assert 5 <= answer.max_age() <= 60


def test_include_open_appends_the_open_bar_with_a_very_short_cache_life(
    api: Api, fake_upstream: FakeUpstream
):
    answer = api.candles(symbol="BTCUSDT", interval="1D", limit=3, include_open="true")

    assert answer.status == 200
    candles = answer.json()["candles"]
    open_bar = fake_upstream.open_bar("BTCUSDT", "1D")
    assert open_bar is not None
    assert candles[-1]["time"] == open_bar.time
    assert len(candles) == 4
    assert 5 <= answer.max_age() <= 60  # a minute at most, even for 1D


def test_paging_with_next_start_gives_every_bar_once_in_order(api: Api, fake_upstream: FakeUpstream):
    start, end = JAN_1_2024, JAN_1_2024 + 99 * HOUR
    pages: list[list[dict]] = []
    cursor: int | None = start
    while cursor is not None:
        answer = api.candles(symbol="BNBUSDT", interval="1H", start=cursor, end=end, limit=30)
        assert answer.status == 200
        body = answer.json()
        pages.append(body["candles"])
        if body["next_start"] is not None:
            assert body["next_start"] == body["candles"][-1]["time"] + HOUR
        cursor = body["next_start"]
        assert len(pages) <= 10, "paging does not terminate"

    assert [len(p) for p in pages] == [30, 30, 30, 10]
    bars = [bar for page in pages for bar in page]
    assert bars == as_rows(fake_upstream.expected_candles("BNBUSDT", "1H", start, end))
    times = [bar["time"] for bar in bars]
    assert times == list(range(start, end + 1, HOUR))


def test_forex_candles_come_from_twelve_data(api: Api, fake_upstream: FakeUpstream):
    start, end = JAN_1_2024, JAN_1_2024 + 13 * 86400  # two weeks
    answer = api.candles(symbol="eur/usd", interval="1D", start=start, end=end)

    assert answer.status == 200
    body = answer.json()
    assert (body["symbol"], body["asset_class"], body["provider"]) == ("EUR/USD", "forex", "twelve_data")
    assert body["candles"] == as_rows(fake_upstream.expected_candles("EUR/USD", "1D", start, end))
    # Every weekday, and the Saturday- and Sunday-dated days the provider has.
    weekdays = [start + d * 86400 for d in range(14) if d % 7 < 5]
    assert {bar["time"] for bar in body["candles"]} >= set(weekdays)


def test_a_5000_candle_answer_is_complete(api: Api, fake_upstream: FakeUpstream):
    start = JAN_1_2024
    end = start + 4999 * 60
    answer = api.candles(symbol="BTCUSDT", interval="1m", start=start, end=end, limit=5000)

    assert answer.status == 200
    candles = answer.json()["candles"]
    assert len(candles) == 5000
    assert candles == as_rows(fake_upstream.expected_candles("BTCUSDT", "1m", start, end))


def test_large_answers_are_gzipped_when_the_client_accepts_it(api: Api):
    query = {"symbol": "BTCUSDT", "interval": "1H", "start": JAN_1_2024, "end": JAN_1_2024 + 199 * HOUR}
    # Cached first: the bodies compared below are then both hits (a miss is answered from the pages just
    # fetched, whose numbers pydantic writes as 100.0 where Postgres writes 100: the same JSON values).
    api.get("/v1/candles", query)
    plain = api.get("/v1/candles", query)
    zipped = api.get("/v1/candles", query, headers={"accept-encoding": "gzip, deflate, br"})
    refused = api.get("/v1/candles", query, headers={"accept-encoding": "gzip;q=0, identity"})

    assert plain.raw["isBase64Encoded"] is False and "content-encoding" not in plain.headers
    assert zipped.raw["isBase64Encoded"] is True and zipped.headers["content-encoding"] == "gzip"
    assert len(zipped.raw["body"]) < len(plain.raw["body"]) / 2
    assert zipped.body == plain.body  # decode_result gunzips
    assert refused.raw["isBase64Encoded"] is False
    assert "accept-encoding" in zipped.headers["vary"].lower()


def test_symbols_are_sorted_and_cached(api: Api, fake_upstream: FakeUpstream):
    first = api.symbols(asset_class="crypto")
    second = api.symbols(asset_class="crypto")

    assert first.status == second.status == 200
    body = first.json()
    assert body["asset_class"] == "crypto"
    assert "BTCUSDT" in body["symbols"]
    assert body["symbols"] == sorted(body["symbols"])
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")
    assert second.json() == body
    assert first.max_age() == 3600


def test_forex_symbols(api: Api):
    answer = api.symbols(asset_class="forex")

    assert answer.status == 200
    symbols = answer.json()["symbols"]
    assert "EUR/USD" in symbols
    assert symbols == sorted(symbols)


# --- errors -------------------------------------------------------------------------------------

_VALID = {"symbol": "BTCUSDT", "interval": "1H"}

BAD_CANDLE_QUERIES = [
    pytest.param({"interval": "1H"}, "symbol", id="missing-symbol"),
    pytest.param({"symbol": "BTCUSDT"}, "interval", id="missing-interval"),
    pytest.param({}, "symbol", id="nothing"),
    pytest.param({**_VALID, "symbol": ""}, "symbol", id="empty-symbol"),
    pytest.param({**_VALID, "symbol": "   "}, "symbol", id="blank-symbol"),
    pytest.param({**_VALID, "interval": ""}, "interval", id="empty-interval"),
    pytest.param({**_VALID, "interval": "1h"}, "interval", id="lower-case-hour"),
    pytest.param({**_VALID, "interval": "2H"}, "interval", id="unsupported-interval"),
    pytest.param({**_VALID, "limit": "0"}, "limit", id="limit-zero"),
    pytest.param({**_VALID, "limit": "5001"}, "limit", id="limit-too-big"),
    pytest.param({**_VALID, "limit": "-3"}, "limit", id="limit-negative"),
    pytest.param({**_VALID, "limit": "ten"}, "limit", id="limit-word"),
    pytest.param({**_VALID, "limit": "1e3"}, "limit", id="limit-float-notation"),
    pytest.param({**_VALID, "limit": ""}, "limit", id="limit-empty"),
    pytest.param({**_VALID, "start": "-1"}, "start", id="start-negative"),
    pytest.param({**_VALID, "start": "9" * 40}, "start", id="start-huge"),
    pytest.param({**_VALID, "end": str(MAX_UNIX_SECONDS + 1)}, "end", id="end-after-year-3000"),
    pytest.param({**_VALID, "start": "2024-01-01"}, "start", id="start-as-date"),
    pytest.param({**_VALID, "start": "1704067200", "end": "1704060000"}, "start", id="start-after-end"),
    pytest.param({**_VALID, "include_open": "maybe"}, "include_open", id="include-open-word"),
    pytest.param({**_VALID, "symbol": "BTC'; DROP TABLE candles; --"}, "symbol", id="sql"),
    pytest.param({**_VALID, "symbol": "BTC\x00USDT"}, "symbol", id="nul-byte"),
    pytest.param({**_VALID, "symbol": "💩💩"}, "symbol", id="emoji"),
    pytest.param({**_VALID, "symbol": "A" * 5000}, "symbol", id="very-long-symbol"),
    pytest.param({**_VALID, "symbol": "EUR/"}, "symbol", id="half-a-pair"),
    pytest.param({**_VALID, "symbol": "<script>alert(1)</script>"}, "symbol", id="html"),
]


@pytest.mark.parametrize(("query", "param"), BAD_CANDLE_QUERIES)
def test_invalid_candle_queries_are_400_naming_the_parameter(
    api: Api, fake_upstream: FakeUpstream, query, param
):
    answer = api.candles(**query)

    assert answer.status == 400, answer.body
    body = answer.json()
    assert body["param"] == param
    assert param in body["message"]
    assert "Traceback" not in body["message"] and "pydantic" not in body["message"].lower()
    assert answer.headers["cache-control"] == "no-store"
    assert fake_upstream.count() == 0  # rejected before any provider call


def test_a_wrong_interval_case_gets_a_hint(api: Api):
    answer = api.candles(symbol="BTCUSDT", interval="4h")

    assert answer.status == 400
    assert "'4H'" in answer.json()["message"]


@pytest.mark.parametrize(
    ("query", "param"),
    [
        pytest.param({}, "asset_class", id="missing"),
        pytest.param({"asset_class": ""}, "asset_class", id="empty"),
        pytest.param({"asset_class": "stocks"}, "asset_class", id="unknown"),
        pytest.param({"asset_class": "CRYPTO'--"}, "asset_class", id="sql"),
    ],
)
def test_invalid_symbols_queries_are_400(api: Api, query, param):
    answer = api.symbols(**query)

    assert answer.status == 400
    assert answer.json()["param"] == param
    assert "crypto" in answer.json()["message"]


def test_an_unknown_symbol_is_404(api: Api):
    answer = api.candles(symbol="NOSUCHCOIN", interval="1H")

    assert answer.status == 404
    assert answer.json()["param"] == "symbol"
    assert "NOSUCHCOIN" in answer.json()["message"]
    assert answer.headers["cache-control"] == "no-store"


def test_an_unknown_forex_pair_is_404(api: Api):
    answer = api.candles(symbol="ABC/XYZ", interval="1D")

    assert answer.status == 404
    assert answer.json()["param"] == "symbol"


@pytest.mark.parametrize("real_status", [False, True])
def test_a_pair_outside_the_twelve_data_plan_is_403(api: Api, fake_upstream: FakeUpstream, real_status: bool):
    # A served pair that answers the "available starting with the Grow or Venture plan" 404 body (as
    # USD/TRY does by default): not the caller's typo, not a passing outage.
    fake_upstream.plan_gated_symbols = {"GBP/NZD"}
    fake_upstream.twelve_data_real_status = real_status
    answer = api.candles(symbol="GBP/NZD", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + 5 * HOUR)

    assert answer.status == 403
    body = answer.json()
    assert body["param"] == "symbol"
    assert "GBP/NZD" in body["message"] and "higher Twelve Data plan" in body["message"]
    assert answer.headers["cache-control"] == "no-store"


def test_rate_limited_with_nothing_cached_is_503_with_retry_after(api: Api, fake_upstream: FakeUpstream):
    fake_upstream.fail_next(20, 429, KLINES, retry_after=42)
    answer = api.candles(symbol="BTCUSDT", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + 5 * HOUR)

    assert answer.status == 503
    assert answer.headers["retry-after"] == "42"
    assert answer.headers["cache-control"] == "no-store"
    assert "42" in answer.json()["message"]


def test_twelve_data_out_of_credits_is_503_with_retry_after_to_the_next_minute(
    api: Api, fake_upstream: FakeUpstream
):
    fake_upstream.fail_next(20, "td_credits", "/time_series")
    answer = api.candles(symbol="EUR/USD", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + 5 * HOUR)

    assert answer.status == 503
    assert 1 <= int(answer.headers["retry-after"]) <= 60


@pytest.mark.parametrize("fault", [500, 503, "malformed", "html", "wrong_shape"])
def test_provider_failure_with_nothing_cached_is_502(api: Api, fake_upstream: FakeUpstream, fault):
    fake_upstream.fail_next(20, fault, KLINES)
    answer = api.candles(symbol="BTCUSDT", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + 5 * HOUR)

    assert answer.status == 502, answer.body
    assert answer.json()["message"]
    assert "<html" not in answer.json()["message"].lower()
    assert answer.headers["cache-control"] == "no-store"


def test_a_provider_failure_after_a_fill_serves_the_cache(api: Api, fake_upstream: FakeUpstream):
    start, end = JAN_1_2024, JAN_1_2024 + 23 * HOUR
    assert api.candles(symbol="BTCUSDT", interval="1H", start=start, end=end).status == 200
    fake_upstream.fail_next(20, 500, KLINES)
    again = api.candles(symbol="BTCUSDT", interval="1H", start=start, end=end)

    assert again.status == 200
    assert again.headers["x-cache"] == "hit"


def test_refused_provider_credentials_are_502_without_the_key(
    api: Api, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
):
    from tests.functions.conftest import reset_process_singletons

    monkeypatch.setenv("TWELVE_DATA_API_KEY", "wrong-key-123")
    reset_process_singletons()
    answer = api.candles(symbol="EUR/USD", interval="1D", start=JAN_1_2024, end=JAN_1_2024 + 3 * 86400)

    assert answer.status == 502
    assert "wrong-key-123" not in answer.body.decode()
    assert "credentials" in answer.json()["message"]


def test_missing_configuration_is_503_without_config_details(api: Api, monkeypatch: pytest.MonkeyPatch):
    from tests.functions.conftest import reset_process_singletons

    monkeypatch.delenv("TWELVE_DATA_API_KEY")
    reset_process_singletons()
    event = api.event("/v1/candles", {"symbol": "EUR/USD", "interval": "1D", "limit": 3})
    answer = api.invoke(event)

    assert answer.status == 503
    message = answer.json()["message"]
    assert "TWELVE_DATA" not in message and "SECRET" not in message
    assert event["requestContext"]["requestId"] in message  # what the operator looks up in the logs
    # Crypto does not need the key: still served.
    assert api.candles(symbol="BTCUSDT", interval="1D", limit=3).status == 200


def test_an_unreachable_database_is_bypassed(
    api: Api, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
):
    from tests.functions.conftest import reset_process_singletons

    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/nothing")
    monkeypatch.setenv("DB_CONNECT_TIMEOUT", "1")
    reset_process_singletons()
    start, end = JAN_1_2024, JAN_1_2024 + 9 * HOUR
    answer = api.candles(symbol="BTCUSDT", interval="1H", start=start, end=end)

    assert answer.status == 200
    assert answer.headers["x-cache"] == "bypass"
    assert answer.json()["candles"] == as_rows(fake_upstream.expected_candles("BTCUSDT", "1H", start, end))


# --- what API Gateway could send that is not a normal request ----------------------------------


def test_an_unknown_path_inside_a_function_is_a_json_404(api: Api):
    event = api.event("/v1/nothing-here")
    answer = api.invoke(event, route="GET /v1/candles")

    assert answer.status == 404
    assert "message" in answer.json()


def test_repeated_parameters_as_api_gateway_joins_them_are_rejected_cleanly(api: Api):
    answer = api.get("/v1/candles", "symbol=BTCUSDT&symbol=ETHUSDT&interval=1H")

    assert answer.status == 400
    assert answer.json()["param"] == "symbol"


def test_unknown_parameters_are_ignored(api: Api):
    answer = api.candles(symbol="BTCUSDT", interval="1D", limit=2, _="1700000000123")

    assert answer.status == 200
    assert len(answer.json()["candles"]) == 2


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({}, id="empty"),
        pytest.param({"version": "2.0", "rawPath": "/v1/candles"}, id="no-request-context"),
        pytest.param(
            {
                "version": "2.0",
                "routeKey": "GET /v1/candles",
                "rawPath": "/v1/candles",
                "queryStringParameters": 7,
            },
            id="query-not-an-object",
        ),
    ],
)
def test_malformed_events_still_get_a_json_answer(api: Api, event):
    result = api.handlers["GET /v1/candles"](event, FakeLambdaContext("test-historical"))

    assert isinstance(result, dict)
    assert result["statusCode"] != 500
    assert 400 <= result["statusCode"] < 600
    body = json.loads(result["body"])
    assert body["message"]
    assert "Traceback" not in result["body"]


# --- observability ---------------------------------------------------------------------------------


def test_each_invocation_emits_emf_metrics(api: Api, capsys: pytest.CaptureFixture[str]):
    capsys.readouterr()
    api.candles(symbol="BTCUSDT", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + 2 * HOUR)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]

    metrics = [b for b in blobs if "CacheMiss" in b]
    assert len(metrics) == 1
    emf = metrics[0]
    directive = emf["_aws"]["CloudWatchMetrics"][0]
    assert directive["Namespace"] == "MarketData"
    names = {m["Name"] for m in directive["Metrics"]}
    assert {"CacheMiss", "ProviderCalls", "RowsWritten", "Latency"} <= names
    # EMF values are lists (one entry per add_metric call in the invocation).
    assert emf["ProviderCalls"][0] >= 1
    assert emf["RowsWritten"] == [1000.0]  # one whole provider page from the start (3 bars answered)
    assert emf["Latency"][0] > 0
    assert emf["Operation"] == "candles"
    assert "ClientErrors" not in emf and "ServerErrors" not in emf


def test_error_answers_are_counted(api: Api, fake_upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]):
    capsys.readouterr()
    api.candles(symbol="BTCUSDT", interval="7m")
    fake_upstream.fail_next(20, 429, KLINES, retry_after=5)
    api.candles(symbol="BTCUSDT", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + HOUR)
    blobs = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith('{"_aws"')]

    invocations = [b for b in blobs if "Latency" in b]
    assert len(invocations) == 2
    assert invocations[0]["ClientErrors"] == [1.0] and "ServerErrors" not in invocations[0]
    assert invocations[1]["ServerErrors"] == [1.0] and "ClientErrors" not in invocations[1]


def test_logs_are_json_with_the_request_id_and_domain_logs_join_them(
    api: Api, monkeypatch: pytest.MonkeyPatch
):
    import io

    from marketdata import http
    from tests.functions.conftest import reset_process_singletons

    stream = io.StringIO()
    handler = http.logger.registered_handler
    previous = handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        # A database that cannot be reached makes the service (stdlib logger marketdata.service) warn.
        monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/nothing")
        monkeypatch.setenv("DB_CONNECT_TIMEOUT", "1")
        reset_process_singletons()
        event = api.event("/v1/candles", {"symbol": "BTCUSDT", "interval": "1H", "limit": 2})
        assert api.invoke(event).status == 200
    finally:
        handler.setStream(previous)  # type: ignore[attr-defined]

    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    domain = [r for r in records if "provider" in r.get("message", "") and r["level"] == "WARNING"]
    assert domain, records
    record = domain[0]
    assert record["correlation_id"] == event["requestContext"]["requestId"]
    assert record["function_name"] == "test-historical"
    assert record["service"] == "marketdata"
    access = [r for r in records if r.get("message") == "answered"]
    assert len(access) == 1
    assert (access[0]["status"], access[0]["x_cache"], access[0]["path"]) == (200, "bypass", "/v1/candles")
    assert access[0]["query"] == event["rawQueryString"]
    assert access[0]["correlation_id"] == event["requestContext"]["requestId"]


def test_retry_after_is_rounded_up(api: Api, fake_upstream: FakeUpstream):
    fake_upstream.fail_next(20, 429, KLINES, retry_after=7.2)
    answer = api.candles(symbol="BTCUSDT", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + HOUR)

    assert answer.status == 503
    assert answer.headers["retry-after"] == str(math.ceil(7.2))


def test_deployed_database_settings_read_the_secret_from_secrets_manager(
    api: Api, database_url: str, monkeypatch: pytest.MonkeyPatch
):
    """As template.yaml configures it: DB_HOST/DB_PORT/DB_NAME plus DB_SECRET_ARN (moto stands in)."""
    import boto3
    from moto import mock_aws

    from marketdata.store import parse_database_url
    from tests.functions.conftest import reset_process_singletons

    target = parse_database_url(database_url)
    if "unix_sock" in target:
        socket_dir, _, socket_name = target["unix_sock"].rpartition("/")
        host, port = socket_dir, socket_name.rsplit(".", 1)[1]
    else:
        host, port = target["host"], str(target["port"])
    for name, value in {"AWS_DEFAULT_REGION": "eu-west-1", "AWS_ACCESS_KEY_ID": "testing",
                        "AWS_SECRET_ACCESS_KEY": "testing"}.items():  # fmt: skip
        monkeypatch.setenv(name, value)
    with mock_aws():
        secret = json.dumps({"username": target["user"], "password": target.get("password") or "unused"})
        arn = boto3.client("secretsmanager").create_secret(Name="md-db", SecretString=secret)["ARN"]
        monkeypatch.delenv("DATABASE_URL")
        monkeypatch.setenv("DB_HOST", host)
        monkeypatch.setenv("DB_PORT", port)
        monkeypatch.setenv("DB_NAME", target["database"])
        monkeypatch.setenv("DB_SECRET_ARN", arn)
        reset_process_singletons()
        query = {"symbol": "BTCUSDT", "interval": "4H", "start": JAN_1_2024, "end": JAN_1_2024 + 5 * 4 * HOUR}
        first = api.candles(**query)
        second = api.candles(**query)

    assert (first.status, second.status) == (200, 200)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("miss", "hit")  # the database was used
    assert len(second.json()["candles"]) == 6
