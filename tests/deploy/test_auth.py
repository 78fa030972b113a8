"""ApiAuth: which routes need which credentials, for each of its three values.

The template is evaluated as CloudFormation would for given parameters (tests/deploy/cfn.py), both as
written and after SAM's own transform (the HTTP API's OpenAPI body is what API Gateway imports: its
`security` per operation and its `securitySchemes` are the routes' authorization). The routes come from
scripts/sam_template.py, the one table of the template's routes, so a new data route without an
authorization entry fails here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import sam_template
from tests.deploy.cfn import deployed

ROOT = Path(__file__).resolve().parents[2]
MODES = ("iam", "jwt", "none")
JWT = {
    "JwtIssuer": "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Example",
    "JwtAudience": "app1,app2",
}
DATA_PREFIXES = ("/v1/", "/udf/")
OPEN_PREFIXES = ("/chart",)


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return sam_template.read_raw()


@pytest.fixture(scope="module")
def routes() -> list[sam_template.Route]:
    return sam_template.load().routes


def _params(mode: str) -> dict[str, str]:
    return {"ApiAuth": mode, **(JWT if mode == "jwt" else {})}


def _body(template: dict[str, Any], mode: str, api_property: str) -> dict[str, Any]:
    api = deployed(template, **_params(mode))["Resources"]["MarketDataApi"]["Properties"]
    return api[api_property]


def _check_authorization(body: dict[str, Any], mode: str, routes: list[sam_template.Route]) -> None:
    """Every data route needs the mode's credentials; /chart never does; nothing else is authorized."""
    schemes = body.get("components", {}).get("securitySchemes", {})
    data = [r for r in routes if r.path.startswith(DATA_PREFIXES)]
    chart = [r for r in routes if r.path.startswith(OPEN_PREFIXES)]
    assert {r.path for r in data} >= {"/v1/candles", "/v1/symbols", "/udf/history"}
    assert {r.path for r in chart} == {"/chart", "/chart/{asset}"}
    assert len(data) + len(chart) == len(routes), "a route that is neither data nor the chart page"
    for route in data:
        operation = body["paths"].get(route.path, {}).get(route.method.lower())
        assert operation is not None, f"{route.key} has no authorization entry in the API's DefinitionBody"
        if mode == "none":
            assert "security" not in operation, route.key
        else:
            assert operation["security"] == [{"DataAuth": []}], route.key
    for route in chart:
        operation = body["paths"].get(route.path, {}).get(route.method.lower(), {})
        assert "security" not in operation, f"{route.key} must stay open in mode {mode}"
    if mode == "iam":
        assert schemes == {
            "DataAuth": {"type": "apiKey", "name": "Authorization", "in": "header",
                         "x-amazon-apigateway-authtype": "awsSigv4"}
        }  # fmt: skip
    elif mode == "jwt":
        authorizer = schemes["DataAuth"]["x-amazon-apigateway-authorizer"]
        assert set(schemes) == {"DataAuth"} and schemes["DataAuth"]["type"] == "oauth2"
        assert authorizer == {
            "type": "jwt",
            "identitySource": "$request.header.Authorization",
            "jwtConfiguration": {"issuer": JWT["JwtIssuer"], "audience": ["app1", "app2"]},
        }
    else:
        assert schemes == {}
    # A preflight must never meet an authorizer: API Gateway answers OPTIONS itself from the CORS
    # configuration only when no route could take it (no OPTIONS, ANY or $default route).
    for path, item in body["paths"].items():
        assert path not in ("$default", "/$default") and "{proxy+}" not in path, path
        assert not {"options", "x-amazon-apigateway-any-method", "any"} & {m.lower() for m in item}, path


@pytest.mark.parametrize("mode", MODES)
def test_each_mode_authorizes_the_data_routes_and_never_the_chart(raw, routes, mode) -> None:
    _check_authorization(_body(raw, mode, "DefinitionBody"), mode, routes)


def test_the_definition_body_holds_only_routes_the_functions_serve(raw, routes) -> None:
    paths = raw["Resources"]["MarketDataApi"]["Properties"]["DefinitionBody"]["paths"]
    stubs = {f"{method.upper()} {path}" for path, item in paths.items() for method in item}
    assert stubs <= {route.key for route in routes}, "authorization for a route no function serves"
    # Only authorization lives there: the routes and their integrations come from the functions' events.
    for item in paths.values():
        for operation in item.values():
            assert set(operation) == {"security"}, operation


def test_iam_is_the_default_and_jwt_needs_issuer_and_audience(raw) -> None:
    spec = raw["Parameters"]["ApiAuth"]
    assert spec["Default"] == "iam" and spec["AllowedValues"] == ["iam", "jwt", "none"]
    assert raw["Parameters"]["JwtIssuer"]["Default"] == "" == raw["Parameters"]["JwtAudience"]["Default"]
    rule = raw["Rules"]["JwtAuthNeedsIssuerAndAudience"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "ApiAuth"}, "jwt"]}
    asserted = [a["Assert"] for a in rule["Assertions"]]
    for name in ("JwtIssuer", "JwtAudience"):
        assert {"Fn::Not": [{"Fn::Equals": [{"Ref": name}, ""]}]} in asserted, name
    # Deployable with no extra input: the default mode references no JWT parameter.
    assert _body(raw, "iam", "DefinitionBody")["components"]["securitySchemes"]["DataAuth"]["in"] == "header"


def test_cors_stays_as_configured(raw) -> None:
    cors = raw["Resources"]["MarketDataApi"]["Properties"]["CorsConfiguration"]
    assert cors["AllowOrigins"] == {"Ref": "CorsAllowOrigins"}
    assert "OPTIONS" in cors["AllowMethods"] and "Authorization" in cors["AllowHeaders"]
    for route in sam_template.load().routes:
        assert route.method == "GET", route.key


# --- the same after SAM's transform: the body SAM generates is what API Gateway imports ---------------

TRANSLATE = r"""
import json, sys
from samcli.yamlhelper import yaml_parse
from samtranslator.translator.transform import transform

class NoManagedPolicies:
    def load(self):
        return {}

template = yaml_parse(open(sys.argv[1]).read())
for resource in template["Resources"].values():
    props = resource.get("Properties") or {}
    for key in ("CodeUri", "ContentUri"):  # as `sam validate` does: local paths become S3 locations
        if isinstance(props.get(key), str):
            props[key] = "s3://bucket/" + props[key]
print(json.dumps(transform(template, json.loads(sys.argv[2]), NoManagedPolicies())))
"""


def _sam_python() -> Path:
    spec = importlib.util.spec_from_file_location("sam_check", ROOT / "scripts" / "sam_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sam_check"] = module
    spec.loader.exec_module(module)
    module.ensure_sam()  # aws-sam-cli in .venv-sam (installed on first use, as test_sam_build does)
    return module.SAM_VENV / "bin" / "python"


@pytest.fixture(scope="module")
def translated() -> dict[str, dict[str, Any]]:
    python = _sam_python()
    env = {**os.environ, "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
    out = {}
    for mode in MODES:
        proc = subprocess.run(
            [str(python), "-c", TRANSLATE, str(ROOT / "template.yaml"), json.dumps(_params(mode))],
            capture_output=True, text=True, env=env, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        out[mode] = json.loads(proc.stdout)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("mode", MODES)
def test_sam_transform_keeps_each_routes_authorization(translated, routes, mode) -> None:
    template = translated[mode]
    body = _body(template, mode, "Body")
    _check_authorization(body, mode, routes)
    # SAM merged each function's event into the body: every route has its own function's integration,
    # on the alias SAM moves to each published version for the functions that have one (SnapStart).
    for route in routes:
        integration = body["paths"][route.path][route.method.lower()]["x-amazon-apigateway-integration"]
        alias = f"{route.function}Aliaslive"
        if alias in template["Resources"]:
            assert template["Resources"][alias]["Type"] == "AWS::Lambda::Alias"
            assert f"${{{alias}}}" in integration["uri"]["Fn::Sub"], route.key
        else:
            assert f"${{{route.function}.Arn}}" in integration["uri"]["Fn::Sub"], route.key
    aliased = {r.function for r in routes if f"{r.function}Aliaslive" in template["Resources"]}
    assert aliased == {"HistoricalFunction", "SymbolsFunction", "UdfFunction"}
    assert "OPTIONS" in body["x-amazon-apigateway-cors"]["allowMethods"]  # the CORS configuration stays
    # The stack refuses jwt without issuer and audience (the Rules survive the transform).
    assert "JwtAuthNeedsIssuerAndAudience" in template["Rules"]


@pytest.mark.slow
def test_sam_transform_lets_the_scheduler_dead_letter(translated) -> None:
    resources = deployed(translated["iam"])["Resources"]
    schedule = resources["BackfillFunctionSchedule"]["Properties"]["Target"]
    queue = {"Fn::GetAtt": ["BackfillDeadLetterQueue", "Arn"]}
    assert schedule["DeadLetterConfig"] == {"Arn": queue}
    role = resources[schedule["RoleArn"]["Fn::GetAtt"][0]]["Properties"]
    granted = [s for policy in role["Policies"] for s in policy["PolicyDocument"]["Statement"]]
    sends = [s for s in granted if s["Action"] == "sqs:SendMessage"]
    assert [s["Resource"] for s in sends] == [queue]
    invoke = resources["BackfillFunctionEventInvokeConfig"]["Properties"]
    assert invoke["MaximumRetryAttempts"] == 0
    assert resources["BackfillFunction"]["Properties"]["DeadLetterConfig"] == {"TargetArn": queue}
