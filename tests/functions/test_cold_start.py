"""The request path's imports stay lean (issue 13): what each HTTP handler's import must not load, and
that the shortcuts taken for it (marketdata.resolver, the pydantic plugin stand-in) change nothing else.

Each case runs in a fresh interpreter: what a module imports can only be seen from a clean start."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import sam_template

ROOT = Path(__file__).resolve().parents[2]
LAYER = ROOT / "layers" / "shared" / "python"
HTTP_FUNCTIONS = [function.name for function in sam_template.load().http_functions]

#: Loaded by no HTTP handler's import: unused Powertools resolvers and event classes, Powertools' request
#: validation, pydantic's plugin lookup (plugins are disabled on Lambda), and the clients a request
#: imports on first use (the SnapStart hook warms them before the snapshot instead).
NOT_ON_THE_IMPORT_PATH = (
    "aws_lambda_powertools.event_handler.appsync",
    "aws_lambda_powertools.event_handler.bedrock_agent",
    "aws_lambda_powertools.event_handler.vpc_lattice",
    "aws_lambda_powertools.event_handler.openapi.params",
    "aws_lambda_powertools.utilities.data_classes.sqs_event",
    "asyncio",
    "importlib.metadata",
    "httpx",
    "pg8000",
    "boto3",
    "marketdata.store",
)


def _run(code: str, *, cwd: Path = ROOT, plugins_disabled: bool = True) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYDANTIC_DISABLE_PLUGINS"}
    if plugins_disabled:
        env["PYDANTIC_DISABLE_PLUGINS"] = "__all__"  # as template.yaml's Globals set it
    prelude = f"import json, sys\nsys.path[:0] = ['.', {str(LAYER)!r}]\n"
    out = subprocess.run(
        [sys.executable, "-c", prelude + code], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("function", HTTP_FUNCTIONS)
def test_an_http_handlers_import_loads_nothing_a_request_does_not_need(function: str) -> None:
    unwanted = list(NOT_ON_THE_IMPORT_PATH)
    code = f"import app\nprint(json.dumps(sorted(m for m in {unwanted!r} if m in sys.modules)))"
    loaded = _run(code, cwd=ROOT / "functions" / function)
    assert loaded == []


def test_the_rest_of_powertools_event_handler_still_imports_after_the_resolver() -> None:
    """marketdata.resolver skips the packages' __init__; any other name loads them as before."""
    found = _run(
        "from marketdata.resolver import APIGatewayHttpResolver\n"
        "lean = 'aws_lambda_powertools.event_handler.appsync' not in sys.modules\n"
        "from aws_lambda_powertools.event_handler import AppSyncResolver, APIGatewayHttpResolver as same\n"
        "from aws_lambda_powertools.utilities.data_classes import SQSEvent, APIGatewayProxyEventV2\n"
        "print(json.dumps([lean, AppSyncResolver.__name__, same is APIGatewayHttpResolver,"
        " SQSEvent.__name__]))"
    )
    assert found == [True, "AppSyncResolver", True, "SQSEvent"]


def test_the_pydantic_plugin_stand_in_only_replaces_a_lookup_that_finds_nothing() -> None:
    code = (
        "import marketdata, pydantic\n"
        "class M(pydantic.BaseModel):\n    x: int\n"
        "from pydantic.plugin import _loader\n"
        "print(json.dumps([M(x='3').x, 'importlib.metadata' in sys.modules, list(_loader.get_plugins()),"
        " _loader.PYDANTIC_ENTRY_POINT_GROUP]))"
    )
    # Disabled (as deployed): no importlib.metadata, no plugins, and the real module behind other names.
    assert _run(code) == [3, False, [], "pydantic"]
    # Not disabled: pydantic's own loader, which looks plugins up.
    assert _run(code, plugins_disabled=False)[:2] == [3, True]


_TWO_FUNCTIONS = (
    "import warnings\nwarnings.simplefilter('always')\n"
    f"sys.path.insert(0, {str(ROOT)!r})\n"
    "from scripts.gen_openapi import load_function_module\n"
    "from scripts.local_api import FakeLambdaContext, to_v2_event\n"
    "for name, path in [('udf', '/udf/time'), ('chart', '/chart'), ('udf', '/udf/time')]:\n"
    "    handler = load_function_module(name).lambda_handler\n"
    "    result = handler(to_v2_event('GET', path, {}), FakeLambdaContext(name))\n"
    "    assert result['statusCode'] == 200, result\n"
    "print(json.dumps('done'))\n"
)


@pytest.mark.parametrize(("disabled", "blobs"), [("true", False), ("false", True)])
def test_metrics_switched_off_print_nothing_and_warn_about_nothing(disabled: str, blobs: bool) -> None:
    """As the local API runs the functions: several in one process, metrics off (issue 11's log noise)."""
    env = {**os.environ, "POWERTOOLS_METRICS_DISABLED": disabled, "POWERTOOLS_SERVICE_NAME": "marketdata"}
    out = subprocess.run(
        [sys.executable, "-c", f"import json, sys\nsys.path[:0] = [{str(LAYER)!r}]\n" + _TWO_FUNCTIONS],
        cwd=ROOT, env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert ('"_aws"' in out.stdout) is blobs  # EMF metric blobs only when metrics are on
    assert "has already been added" not in out.stderr
