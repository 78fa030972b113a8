"""template.yaml, events/ and env.json hold together (fast; `sam validate --lint` runs in test_sam_build).

The functions and routes are read from template.yaml itself (scripts/sam_template.py), as the local API,
the OpenAPI generation and the build check read them: what is checked here is every one of them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from scripts import sam_template
from tests.deploy.cfn import deployed

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = sam_template.load()
FUNCTIONS = tuple(TEMPLATE.functions)
#: Each function's role: its own grants only (the chart page reads no database and no key).
ROLES = {"MigrateFunction": "MigrateFunctionRole", "ChartFunction": "ChartFunctionRole",
         "BackfillFunction": "BackfillFunctionRole", "LiveFunction": "LiveFunctionRole",
         "BroadcasterFunction": "BroadcasterFunctionRole"}  # fmt: skip


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return sam_template.read_raw()


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _statements(template: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for node in _walk(template["Resources"]):
        if isinstance(node, dict) and "Effect" in node and "Action" in node:
            found.append(node)
    return found


def test_runtime_architecture_and_layer(template: dict[str, Any]) -> None:
    assert template["Transform"] == "AWS::Serverless-2016-10-31"
    function = template["Globals"]["Function"]
    assert function["Runtime"] == "python3.13"
    assert function["Architectures"] == ["arm64"]
    assert function["Layers"] == [{"Ref": "SharedLayer"}]
    layer = template["Resources"]["SharedLayer"]
    assert layer["Properties"]["ContentUri"] == "layers/shared"
    assert layer["Properties"]["CompatibleRuntimes"] == ["python3.13"]
    assert layer["Properties"]["CompatibleArchitectures"] == ["arm64"]
    assert (ROOT / "layers/shared/Makefile").read_text().count("build-SharedLayer:") == 1


def test_every_function_has_its_handler_and_log_group(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    for logical_id in FUNCTIONS:
        props = resources[logical_id]["Properties"]
        source = ROOT / props["CodeUri"] / "app.py"
        handler = re.compile(r"^(def lambda_handler|lambda_handler\s*=)", re.MULTILINE)
        assert handler.search(source.read_text()), f"{source} defines no lambda_handler"
        group = props["LoggingConfig"]["LogGroup"]["Ref"]
        assert resources[group]["Type"] == "AWS::Logs::LogGroup"
        assert resources[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_api_routes_timeouts_throttling_and_cors(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    assert {"GET /v1/candles", "GET /v1/symbols", "GET /udf/history", "GET /chart"} <= {
        route.key for route in TEMPLATE.routes
    }
    for function in TEMPLATE.http_functions:
        props = resources[function.logical_id]["Properties"]
        # API Gateway gives up after 30 s: the function must answer (or fail) before.
        assert props["Timeout"] < 30
        for route in function.routes:
            event = props["Events"][route.event]
            assert event["Properties"]["Method"] == "GET"
            assert event["Properties"]["ApiId"] == {"Ref": "MarketDataApi"}
            assert event["Properties"]["PayloadFormatVersion"] == "2.0"
            assert props["Timeout"] * 1000 < event["Properties"]["TimeoutInMillis"] <= 30000
    api = resources["MarketDataApi"]["Properties"]
    assert api["DefaultRouteSettings"]["ThrottlingBurstLimit"] == {"Ref": "ApiThrottlingBurstLimit"}
    assert api["DefaultRouteSettings"]["ThrottlingRateLimit"] == {"Ref": "ApiThrottlingRateLimit"}
    assert "GET" in api["CorsConfiguration"]["AllowMethods"]
    assert "X-Cache" in api["CorsConfiguration"]["ExposeHeaders"]


def test_backfill_schedule_delivers_the_jobs_parameter(template: dict[str, Any]) -> None:
    props = template["Resources"]["BackfillFunction"]["Properties"]
    assert props["Timeout"] == 900
    (event,) = props["Events"].values()
    assert event["Type"] == "ScheduleV2"
    assert event["Properties"]["Input"] == {"Ref": "BackfillJobs"}
    assert event["Properties"]["ScheduleExpression"] == {"Ref": "BackfillSchedule"}
    default_jobs = json.loads(template["Parameters"]["BackfillJobs"]["Default"])
    assert default_jobs["jobs"] and all({"symbol", "interval"} <= set(job) for job in default_jobs["jobs"])


def test_no_wildcard_actions_and_scoped_resources(template: dict[str, Any]) -> None:
    statements = _statements(template)
    actions: set[str] = set()
    for statement in statements:
        action = statement["Action"]
        actions.update([action] if isinstance(action, str) else action)
    assert actions == {
        "rds-db:connect", "secretsmanager:GetSecretValue", "ssm:GetParameter", "kms:Decrypt",
        "logs:CreateLogStream", "logs:PutLogEvents", "sts:AssumeRole", "sqs:SendMessage",
        "execute-api:ManageConnections",
    }  # fmt: skip
    assert not any("*" in action for action in actions)
    for statement in statements:
        if statement["Action"] == "sts:AssumeRole":
            assert statement["Principal"] == {"Service": "lambda.amazonaws.com"}
            continue
        if statement["Action"] == "execute-api:ManageConnections":
            # Posting to the live API's connections, whose ids are not known in advance: that one
            # stage's @connections, POST only.
            assert statement["Resource"] == {
                "Fn::Sub": "arn:${AWS::Partition}:execute-api:${AWS::Region}:${AWS::AccountId}:${LiveApi}"
                "/live/POST/@connections/*"
            }
            continue
        resource = statement["Resource"]
        assert resource != "*" and "*" not in json.dumps(resource), statement
        if statement["Action"] == "rds-db:connect":
            assert resource == {
                "Fn::Sub": "arn:${AWS::Partition}:rds-db:${AWS::Region}:${AWS::AccountId}:dbuser:"
                "${DbProxyResourceId}/${DbUser}"
            }
        if statement["Action"] == "secretsmanager:GetSecretValue":
            assert resource in ({"Ref": "DbSecretArn"}, {"Ref": "TwelveDataApiKeySecretArn"})
        if "logs:PutLogEvents" in statement["Action"]:
            groups = resource if isinstance(resource, list) else [resource]
            assert all(set(g) == {"Fn::GetAtt"} and g["Fn::GetAtt"][0].endswith("LogGroup") for g in groups)
        if statement["Action"] == "kms:Decrypt" and resource == {"Ref": "EnvironmentKmsKeyArn"}:
            # Lambda's environment ciphertexts only (their encryption context names the function).
            assert statement["Condition"] == {"Null": {"kms:EncryptionContext:LambdaFunctionName": "false"}}
        elif statement["Action"] == "kms:Decrypt":
            assert resource == {"Ref": "SecretsKmsKeyArn"}
            assert "kms:ViaService" in statement["Condition"]["StringEquals"]
        if statement["Action"] == "sqs:SendMessage":  # the backfill's dead letters
            assert resource == {"Fn::GetAtt": ["BackfillDeadLetterQueue", "Arn"]}


def test_access_is_granted_only_when_used(template: dict[str, Any]) -> None:
    conditions = template["Conditions"]
    resources = template["Resources"]
    assert resources["DatabaseAccessPolicy"]["Condition"] == "HasDbAccessPolicy"
    assert resources["TwelveDataKeyPolicy"]["Condition"] == "HasTwelveDataKeyPolicy"
    statements = resources["DatabaseAccessPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    guarded = {s["Fn::If"][0]: s["Fn::If"][1]["Action"] for s in statements}
    assert guarded == {"GrantDbConnect": "rds-db:connect", "GrantDbSecret": "secretsmanager:GetSecretValue",
                       "HasKmsKey": "kms:Decrypt"}  # fmt: skip
    assert {"Condition": "UseIamAuth"} in conditions["GrantDbConnect"]["Fn::And"]
    assert {"Condition": "UseSecretAuth"} in conditions["GrantDbSecret"]["Fn::And"]
    # Functions use the stack's own roles; the migration function's never gets the Twelve Data key.
    for logical_id in FUNCTIONS:
        role = resources[logical_id]["Properties"]["Role"]["Fn::GetAtt"][0]
        assert role == ROLES.get(logical_id, "ServiceFunctionRole")
        assert "Policies" not in resources[logical_id]["Properties"]
    assert "TwelveDataKeyPolicy" not in json.dumps(resources["MigrateFunctionRole"])
    assert "TwelveDataKeyPolicy" in json.dumps(resources["ServiceFunctionRole"])
    assert "TwelveDataKeyPolicy" in json.dumps(resources["BackfillFunctionRole"])
    assert "TwelveDataKeyPolicy" in json.dumps(resources["BroadcasterFunctionRole"])
    assert "TwelveDataKeyPolicy" not in json.dumps(resources["LiveFunctionRole"])
    assert "ManageConnections" in json.dumps(resources["BroadcasterFunctionRole"])
    # Every managed policy of a role is conditional on the feature that needs it.
    chart_role = json.dumps(resources["ChartFunctionRole"])
    assert "TwelveDataKeyPolicy" not in chart_role and "DatabaseAccessPolicy" not in chart_role
    for role in ("ServiceFunctionRole", "BackfillFunctionRole", "MigrateFunctionRole", "ChartFunctionRole",
                 "LiveFunctionRole", "BroadcasterFunctionRole"):
        for arn in resources[role]["Properties"]["ManagedPolicyArns"]:
            assert arn["Fn::If"][2] == {"Ref": "AWS::NoValue"}, arn
    # VPC settings only when subnets and security groups are given.
    vpc = template["Globals"]["Function"]["VpcConfig"]["Fn::If"]
    assert vpc[0] == "HasVpc" and vpc[2] == {"Ref": "AWS::NoValue"}


def test_common_environment(template: dict[str, Any]) -> None:
    variables = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in (
        "BINANCE_REST_URL", "TWELVE_DATA_REST_URL", "DB_HOST", "DB_PORT", "DB_NAME", "DB_USER",
        "DB_SECRET_ARN", "DB_IAM_AUTH", "TWELVE_DATA_API_KEY_SECRET_ARN", "TWELVE_DATA_API_KEY_PARAMETER",
        "POWERTOOLS_SERVICE_NAME", "POWERTOOLS_METRICS_NAMESPACE", "LOG_LEVEL",
    ):  # fmt: skip
        assert name in variables, name
    # The secret-only settings are emptied when another mode is chosen (Settings treats "" as unset).
    assert variables["DB_SECRET_ARN"] == {"Fn::If": ["UseSecretAuth", {"Ref": "DbSecretArn"}, ""]}
    # Declared for `sam local invoke` only: never a value in a deployed stack.
    assert variables["TWELVE_DATA_API_KEY"] == "" and variables["DATABASE_URL"] == ""


def test_events_match_routes_and_env_json_names_functions(template: dict[str, Any]) -> None:
    routes = {route.key: route for route in TEMPLATE.routes}
    samples = 0
    for path in sorted((ROOT / "events").glob("*.json")):
        event = json.loads(path.read_text())
        if not (isinstance(event, dict) and event.get("version") == "2.0"):
            continue
        samples += 1
        route = routes[event["routeKey"]]  # a route the template declares
        assert event["rawPath"] == event["requestContext"]["http"]["path"]
        assert route.match("GET", event["rawPath"]) == event.get("pathParameters", {}), path.name
        query = "&".join(f"{k}={v}" for k, v in (event.get("queryStringParameters") or {}).items())
        assert event["rawQueryString"] == query
    assert samples >= len(routes)
    jobs = json.loads((ROOT / "events" / "backfill_schedule.json").read_text())
    assert jobs["jobs"] and all({"symbol", "interval"} <= set(job) for job in jobs["jobs"])
    assert json.loads((ROOT / "events" / "migrate.json").read_text()) == {}
    env = json.loads((ROOT / "events" / "env.json").read_text())
    assert set(env) - {"Parameters"} <= set(template["Resources"])
    assert set(FUNCTIONS) <= set(env)
    # sam local silently drops variables the template does not declare for the function.
    declared_globally = set(template["Globals"]["Function"]["Environment"]["Variables"])
    for section, values in env.items():
        names = set(values)
        if section != "Parameters":
            props = template["Resources"][section]["Properties"]
            names -= set(props.get("Environment", {}).get("Variables", {}))
        undeclared = sorted(names - declared_globally)
        assert not undeclared, f"env.json {section}: {undeclared} are not declared in template.yaml"


#: The HTTP functions on SnapStart (the chart page serves static files: its init is already short).
SNAPSTART_FUNCTIONS = ("HistoricalFunction", "SymbolsFunction", "UdfFunction")


def test_snapstart_on_published_versions_behind_the_alias(template: dict[str, Any]) -> None:
    parameter = template["Parameters"]["EnableSnapStart"]
    assert parameter["Default"] == "true" and parameter["AllowedValues"] == ["true", "false"]
    on = deployed(template)["Resources"]
    off = deployed(template, EnableSnapStart="false")["Resources"]
    for logical_id in SNAPSTART_FUNCTIONS:
        props = template["Resources"][logical_id]["Properties"]
        # The API's integrations point at the alias SAM moves to each published version; every property
        # counts for a new version, so a new layer (its ARN) publishes (and snapshots) one too.
        assert props["AutoPublishAlias"] == "live"
        assert props["AutoPublishAliasAllProperties"] is True
        assert on[logical_id]["Properties"]["SnapStart"] == {"ApplyOn": "PublishedVersions"}
        assert off[logical_id]["Properties"]["SnapStart"] == {"ApplyOn": "None"}
        # The handler registers the restore hooks (marketdata.snapstart) at import.
        source = (ROOT / props["CodeUri"] / "app.py").read_text()
        assert re.search(r"^from marketdata import .*\bsnapstart\b", source, re.MULTILINE), logical_id
    # Functions that are not invoked through the API stay unversioned.
    for logical_id in ("BackfillFunction", "MigrateFunction"):
        assert "SnapStart" not in template["Resources"][logical_id]["Properties"]
        assert "AutoPublishAlias" not in template["Resources"][logical_id]["Properties"]


def test_the_live_websocket_api_its_routes_auth_schedule_and_urls(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    api = resources["LiveApi"]["Properties"]
    assert api["ProtocolType"] == "WEBSOCKET" and api["RouteSelectionExpression"] == "$request.body.action"
    routes = {route.route_key: route for route in TEMPLATE.ws_routes}
    assert set(routes) == {"$connect", "$disconnect", "subscribe", "unsubscribe", "$default"}
    assert {route.function for route in routes.values()} == {"LiveFunction"}
    # The message routes answer the caller (subscribed / error) through their route response.
    answered = {key for key, route in routes.items() if route.route_response}
    assert answered == {"subscribe", "unsubscribe", "$default"}
    # Only $connect can be authorized on a WebSocket API: the ApiAuth choice applies there.
    for key, route in routes.items():
        props = resources[route.logical_id]["Properties"]
        if key == "$connect":
            assert props["AuthorizationType"] == {"Fn::If": ["AuthorizeDataRoutes", "AWS_IAM", "NONE"]}
        else:
            assert "AuthorizationType" not in props
    for mode, wanted in (("iam", "AWS_IAM"), ("jwt", "AWS_IAM"), ("none", "NONE")):
        extra = {"JwtIssuer": "https://issuer.example.com", "JwtAudience": "app"} if mode == "jwt" else {}
        connect = deployed(template, ApiAuth=mode, **extra)["Resources"][routes["$connect"].logical_id]
        assert connect["Properties"]["AuthorizationType"] == wanted, mode
    permission = resources["LiveInvokePermission"]["Properties"]
    assert permission["FunctionName"] == {"Ref": "LiveFunction"}
    assert permission["Principal"] == "apigateway.amazonaws.com"
    assert "${LiveApi}/*" in permission["SourceArn"]["Fn::Sub"]

    # The broadcaster: every minute, running most of it, posting to the stage's management endpoint.
    stage = resources["LiveStage"]["Properties"]["StageName"]
    broadcaster = resources["BroadcasterFunction"]["Properties"]
    (event,) = broadcaster["Events"].values()
    assert event["Type"] == "ScheduleV2" and event["Properties"]["ScheduleExpression"] == "rate(1 minute)"
    assert event["Properties"]["FlexibleTimeWindow"] == {"Mode": "OFF"}
    assert 60 < broadcaster["Timeout"] <= 120
    endpoint = broadcaster["Environment"]["Variables"]["LIVE_MANAGEMENT_ENDPOINT"]["Fn::Sub"]
    assert endpoint == f"https://${{LiveApi}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{stage}"
    # Clients and the chart page get the wss URL of the same stage.
    url = template["Outputs"]["LiveWebSocketUrl"]["Value"]["Fn::Sub"]
    assert url == f"wss://${{LiveApi}}.execute-api.${{AWS::Region}}.${{AWS::URLSuffix}}/{stage}"
    chart = resources["ChartFunction"]["Properties"]["Environment"]["Variables"]["LIVE_WEBSOCKET_URL"]
    assert chart == {"Fn::Sub": url}
    live = resources["LiveFunction"]["Properties"]
    assert live["Timeout"] * 1000 < resources["LiveIntegration"]["Properties"]["TimeoutInMillis"] <= 29000


def test_the_live_function_reserves_its_concurrency_unless_told_not_to(template: dict[str, Any]) -> None:
    # Each execution holds a database connection: a flood of connects must not exhaust RDS Proxy.
    props = deployed(template)["Resources"]["LiveFunction"]["Properties"]
    default = template["Parameters"]["LiveReservedConcurrency"]["Default"]
    assert str(props["ReservedConcurrentExecutions"]) == str(default) == "10"
    unreserved = deployed(template, LiveReservedConcurrency=0)["Resources"]["LiveFunction"]["Properties"]
    assert "ReservedConcurrentExecutions" not in unreserved
