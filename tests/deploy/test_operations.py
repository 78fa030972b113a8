"""Capacity, dead letters, alarms and encryption keys: what the stack gets for given parameters.

The template is evaluated as CloudFormation would (tests/deploy/cfn.py): conditions decide, `Fn::If`
picks, `AWS::NoValue` removes. The metric names come from the code that emits them or logs what the
metric filters count, so a renamed metric or log field fails here.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scripts import sam_template
from tests.deploy.cfn import deployed, statements

ROOT = Path(__file__).resolve().parents[2]
KEY = "arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
TOPIC = "arn:aws:sns:eu-west-1:123456789012:marketdata-alarms"
RESERVED = {  # function -> (parameter, default)
    "HistoricalFunction": ("HistoricalReservedConcurrency", 10),
    "UdfFunction": ("UdfReservedConcurrency", 10),
    "SymbolsFunction": ("SymbolsReservedConcurrency", 5),
}
LAMBDA_ALARMED = ("HistoricalFunction", "SymbolsFunction", "UdfFunction", "ChartFunction", "BackfillFunction",
                  "LiveFunction", "BroadcasterFunction")
API_LOG_GROUPS = ("HistoricalLogGroup", "SymbolsLogGroup", "UdfLogGroup")
ROLES = ("ServiceFunctionRole", "BackfillFunctionRole", "MigrateFunctionRole", "ChartFunctionRole",
         "LiveFunctionRole", "BroadcasterFunctionRole")


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return sam_template.read_raw()


def _of_type(resources: dict[str, Any], kind: str) -> dict[str, Any]:
    return {k: v["Properties"] for k, v in resources.items() if v["Type"] == kind}


# --- reserved concurrency -----------------------------------------------------------------------------


def test_every_http_function_with_database_access_has_its_reserved_concurrency(raw) -> None:
    http_functions = {f.logical_id for f in sam_template.load().http_functions}
    # Every HTTP function that may reach the database (the ServiceFunctionRole) has its parameter.
    with_db = {f for f in http_functions if raw["Resources"][f]["Properties"]["Role"]["Fn::GetAtt"][0]
               == "ServiceFunctionRole"}  # fmt: skip
    assert with_db == set(RESERVED)
    resources = deployed(raw)["Resources"]
    for function, (parameter, default) in RESERVED.items():
        spec = raw["Parameters"][parameter]
        assert spec["Default"] == default and spec["MinValue"] == 0
        assert "2 database connections" in spec["Description"], parameter
        assert resources[function]["Properties"]["ReservedConcurrentExecutions"] == str(default)
        chosen = deployed(raw, **{parameter: 3})["Resources"][function]["Properties"]
        assert chosen["ReservedConcurrentExecutions"] == "3"
        unreserved = deployed(raw, **{parameter: 0})["Resources"][function]["Properties"]
        assert "ReservedConcurrentExecutions" not in unreserved, f"{parameter}=0 must mean no reservation"
    # Throttling stays in front of the functions.
    routes = resources["MarketDataApi"]["Properties"]["DefaultRouteSettings"]
    assert routes["ThrottlingBurstLimit"] == "100" and routes["ThrottlingRateLimit"] == "50"


# --- dead letters -------------------------------------------------------------------------------------


def test_backfill_failures_go_to_an_encrypted_dead_letter_queue(raw) -> None:
    resources = deployed(raw)["Resources"]
    queue_arn = {"Fn::GetAtt": ["BackfillDeadLetterQueue", "Arn"]}
    queue = resources["BackfillDeadLetterQueue"]
    assert queue["Type"] == "AWS::SQS::Queue" and queue["Properties"]["SqsManagedSseEnabled"] is True
    backfill = resources["BackfillFunction"]["Properties"]
    assert backfill["DeadLetterQueue"] == {"Type": "SQS", "TargetArn": queue_arn}
    assert backfill["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    (schedule,) = backfill["Events"].values()
    assert schedule["Properties"]["DeadLetterConfig"] == {"Arn": queue_arn}
    # Only the backfill's role may send there (Lambda delivers a failed async event with it).
    senders = {
        role: [s for s in statements({role: resources[role]}) if s["Action"] == "sqs:SendMessage"]
        for role in ROLES
    }
    assert [s["Resource"] for s in senders["BackfillFunctionRole"]] == [queue_arn]
    assert not any(senders[r] for r in ROLES if r != "BackfillFunctionRole")
    assert backfill["Role"] == {"Fn::GetAtt": ["BackfillFunctionRole", "Arn"]}


# --- alarms -------------------------------------------------------------------------------------------


def _alarms(resources: dict[str, Any]) -> dict[str, Any]:
    return _of_type(resources, "AWS::CloudWatch::Alarm")


def _metric(alarm: dict[str, Any]) -> tuple[str, str, dict[str, Any]]:
    dims = {d["Name"]: d["Value"] for d in alarm.get("Dimensions", [])}
    return alarm["Namespace"], alarm["MetricName"], dims


def test_each_alarm_watches_the_right_metric(raw) -> None:
    resources = deployed(raw)["Resources"]
    variables = raw["Globals"]["Function"]["Environment"]["Variables"]
    namespace, service = variables["POWERTOOLS_METRICS_NAMESPACE"], variables["POWERTOOLS_SERVICE_NAME"]
    expected = {
        "Api5xxAlarm": ("AWS/ApiGateway", "5xx", {"ApiId": {"Ref": "MarketDataApi"}}),
        "BackfillJobsFailedAlarm": (
            namespace, "BackfillJobsFailed", {"service": service, "Operation": "backfill"},
        ),
        "ProviderFailuresAlarm": (namespace, "ProviderFailures", {}),
        "ProviderBudgetExhaustedAlarm": (namespace, "ProviderBudgetExhausted", {}),
        "BackfillDeadLettersAlarm": (
            "AWS/SQS", "ApproximateNumberOfMessagesVisible",
            {"QueueName": {"Fn::GetAtt": ["BackfillDeadLetterQueue", "QueueName"]}},
        ),
    }  # fmt: skip
    for function in LAMBDA_ALARMED:
        name = function.removesuffix("Function")
        for metric in ("Errors", "Throttles"):
            expected[f"{name}{metric}Alarm"] = ("AWS/Lambda", metric, {"FunctionName": {"Ref": function}})
    alarms = _alarms(resources)
    assert set(alarms) == set(expected)
    for name, alarm in alarms.items():
        assert _metric(alarm) == expected[name], name
        assert alarm["ComparisonOperator"] == "GreaterThanOrEqualToThreshold" and alarm["Threshold"] >= 1
        assert alarm["TreatMissingData"] == "notBreaching"
    # The backfill really emits that metric, under that dimension, in that namespace.
    backfill = (ROOT / "functions/backfill/app.py").read_text()
    assert 'name="BackfillJobsFailed"' in backfill
    assert 'instrumented(backfill, operation="backfill")' in backfill  # the Operation dimension
    http = (ROOT / "layers/shared/python/marketdata/http.py").read_text()
    assert 'os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or "MarketData"' in http
    assert namespace == "MarketData"


def test_alarms_notify_the_topic_only_when_one_is_given(raw) -> None:
    silent = _alarms(deployed(raw)["Resources"])
    assert silent and all("AlarmActions" not in a and "OKActions" not in a for a in silent.values())
    loud = _alarms(deployed(raw, AlarmTopicArn=TOPIC)["Resources"])
    assert set(loud) == set(silent)
    assert all(a["AlarmActions"] == [TOPIC] == a["OKActions"] for a in loud.values())


def _matches(pattern: str, event: dict[str, Any]) -> bool:
    """A CloudWatch Logs JSON filter pattern of the form used here ($.field = "text" | number, &&, ||,
    parentheses), evaluated against one JSON log event."""
    body = pattern.strip()
    assert body.startswith("{") and body.endswith("}"), pattern
    expr = body[1:-1]
    assert "*" not in expr, "wildcards are not evaluated here"
    expr = re.sub(r"\$\.([A-Za-z_]+)", lambda m: f"event.get({m.group(1)!r})", expr)
    expr = re.sub(r"(?<![=!<>])=(?!=)", "==", expr).replace("&&", " and ").replace("||", " or ")
    return bool(eval(expr, {"__builtins__": {}}, {"event": event}))


def _log_line(message: str, **fields: Any) -> dict[str, Any]:
    return {"level": "WARNING", "location": "x:1", "message": message, "service": "marketdata", **fields}


FILL = "provider failed while filling the cache; serving what it has"


def test_provider_failures_and_budget_metrics_come_from_the_api_functions_logs(raw) -> None:
    resources = deployed(raw)["Resources"]
    filters = _of_type(resources, "AWS::Logs::MetricFilter")
    by_metric: dict[str, set[str]] = {}
    patterns: dict[str, set[str]] = {}
    for props in filters.values():
        (transformation,) = props["MetricTransformations"]
        assert transformation["MetricNamespace"] == "MarketData" and transformation["MetricValue"] == "1"
        name = transformation["MetricName"]
        by_metric.setdefault(name, set()).add(props["LogGroupName"]["Ref"])
        patterns.setdefault(name, set()).add(props["FilterPattern"])
    assert by_metric == {
        "ProviderFailures": set(API_LOG_GROUPS),
        "ProviderBudgetExhausted": set(API_LOG_GROUPS),
    }
    (failures,), (budget,) = patterns["ProviderFailures"], patterns["ProviderBudgetExhausted"]
    cases = [
        (_log_line(FILL, symbol="BTCUSDT", error="UpstreamUnavailable"), True, False),
        (_log_line(FILL, symbol="BTCUSDT", error="UpstreamBadResponse"), True, False),
        (_log_line("provider failed; serving the stale symbol list", error="UpstreamAuthError"), True, False),
        (_log_line(FILL, symbol="EUR/USD", error="UpstreamRateLimited"), False, True),
        (_log_line("could not fetch the open bar", error="UpstreamRateLimited"), False, True),
        ({**_log_line("answered", status=502, x_cache=None), "level": "INFO"}, True, False),
        ({**_log_line("answered", status=503, x_cache=None), "level": "INFO"}, False, False),
        ({**_log_line("answered", status=200, x_cache="hit"), "level": "INFO"}, False, False),
        (_log_line("cache database unavailable; answering from the provider", error="db down"), False, False),
    ]  # fmt: skip
    for event, is_failure, is_budget in cases:
        assert _matches(failures, event) is is_failure, event
        assert _matches(budget, event) is is_budget, event
    # The fields matched are the ones the code logs: the exception's type name and the answer's status.
    service = (ROOT / "layers/shared/python/marketdata/service.py").read_text()
    assert f'"{FILL}",' in service
    assert service.count('"error": type(exc).__name__') >= 3
    http = (ROOT / "layers/shared/python/marketdata/http.py").read_text()
    assert '"answered",' in http and '"status": status,' in http
    errors = (ROOT / "layers/shared/python/marketdata/errors.py").read_text()
    for name in ("UpstreamUnavailable", "UpstreamBadResponse", "UpstreamAuthError", "UpstreamRateLimited"):
        assert f"class {name}(UpstreamError)" in errors, name


# --- encryption keys ----------------------------------------------------------------------------------


def test_kms_keys_and_their_grants_exist_only_when_given(raw) -> None:
    plain = deployed(raw)
    assert "KmsKeyArn" not in plain["Globals"]["Function"]
    assert "EnvironmentKeyPolicy" not in plain["Resources"]
    assert not [s for s in statements(plain["Resources"]) if s["Action"] == "kms:Decrypt"]
    groups = _of_type(plain["Resources"], "AWS::Logs::LogGroup")
    assert len(groups) == 9 and all("KmsKeyId" not in g for g in groups.values())
    for role in ROLES:
        assert "EnvironmentKeyPolicy" not in json.dumps(plain["Resources"][role])

    logs = deployed(raw, LogsKmsKeyArn=KEY)
    assert all(g["KmsKeyId"] == KEY for g in _of_type(logs["Resources"], "AWS::Logs::LogGroup").values())
    # CloudWatch Logs uses the key through its key policy (README): no role is granted anything for it.
    assert KEY not in json.dumps(statements(logs["Resources"]))
    assert "EnvironmentKeyPolicy" not in logs["Resources"]

    env = deployed(raw, EnvironmentKmsKeyArn=KEY)
    assert env["Globals"]["Function"]["KmsKeyArn"] == KEY
    functions = _of_type(env["Resources"], "AWS::Serverless::Function")
    assert functions and all("KmsKeyArn" not in f for f in functions.values()), "Globals decide, for all"
    (statement,) = env["Resources"]["EnvironmentKeyPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    assert statement["Action"] == "kms:Decrypt" and statement["Resource"] == KEY
    assert statement["Condition"] == {"Null": {"kms:EncryptionContext:LambdaFunctionName": "false"}}
    roles_of_functions = {f["Role"]["Fn::GetAtt"][0] for f in functions.values()}
    assert roles_of_functions == set(ROLES)
    for role in ROLES:
        assert {"Ref": "EnvironmentKeyPolicy"} in env["Resources"][role]["Properties"]["ManagedPolicyArns"]
    # The logs key does not leak into the environment grant, nor the other way round.
    assert all("KmsKeyId" not in g for g in _of_type(env["Resources"], "AWS::Logs::LogGroup").values())
