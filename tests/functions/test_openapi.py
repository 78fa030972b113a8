"""The committed openapi.json is what the code generates (the CI check), and it documents what the
functions really answer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from scripts import gen_openapi, sam_template


def test_the_committed_document_matches_the_code():
    ok, diff = gen_openapi.check()
    assert ok, f"openapi.json is stale; run `python3 scripts/dev.py openapi`:\n{diff[:3000]}"


def test_check_reports_a_stale_document_with_a_diff(tmp_path: Path):
    stale = json.loads(gen_openapi.OPENAPI_PATH.read_text())
    stale["paths"]["/v1/candles"]["get"]["summary"] = "something else"
    target = tmp_path / "openapi.json"
    target.write_text(json.dumps(stale, indent=2) + "\n")

    ok, diff = gen_openapi.check(target)

    assert not ok
    assert "something else" in diff and "Historical OHLCV candles" in diff
    assert gen_openapi.main(["--check", "--output", str(target)]) == 1
    assert gen_openapi.main(["--output", str(target)]) == 0
    assert gen_openapi.main(["--check", "--output", str(target)]) == 0


def test_every_http_function_of_the_template_is_merged_with_its_error_answers():
    doc = gen_openapi.build_openapi()

    template_paths = {route.path for route in sam_template.load().routes}
    assert set(doc["paths"]) == template_paths
    assert {"/v1/candles", "/v1/symbols", "/udf/history", "/chart", "/chart/{asset}"} <= template_paths
    candles = doc["paths"]["/v1/candles"]["get"]
    symbols = doc["paths"]["/v1/symbols"]["get"]
    assert set(candles["responses"]) == {"200", "400", "403", "404", "502", "503"}
    assert set(symbols["responses"]) == {"200", "400", "502", "503"}
    assert "Retry-After" in candles["responses"]["503"]["headers"]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    assert "higher data-provider plan" in candles["responses"]["403"]["description"]
    for status in ("400", "403", "404", "502", "503"):
        assert candles["responses"][status]["content"]["application/json"]["schema"] == error_ref
    assert {p["name"] for p in candles["parameters"]} == {
        "symbol",
        "interval",
        "start",
        "end",
        "limit",
        "include_open",
    }
    assert {p["name"]: p["required"] for p in symbols["parameters"]} == {"asset_class": True}
    schemas = doc["components"]["schemas"]
    assert "HTTPValidationError" not in schemas  # validation errors are 400 ErrorResponse here
    assert schemas["Interval"]["enum"] == ["1m", "5m", "15m", "30m", "1H", "4H", "1D", "1W", "1M"]
    assert set(schemas["HistoryResponse"]["required"]) == {
        "symbol",
        "interval",
        "asset_class",
        "provider",
        "candles",
        "next_start",
    }


def test_the_udf_datafeed_and_the_chart_page_are_documented():
    doc = gen_openapi.build_openapi()
    paths = doc["paths"]

    history = paths["/udf/history"]["get"]
    assert {p["name"]: p["required"] for p in history["parameters"]} == {
        "symbol": True, "resolution": True, "to": True, "from": False, "countback": False,
    }  # fmt: skip
    udf_error = {"$ref": "#/components/schemas/UdfError"}
    for status in ("400", "404", "503"):
        assert history["responses"][status]["content"]["application/json"]["schema"] == udf_error
    ok = history["responses"]["200"]["content"]["application/json"]["schema"]["anyOf"]
    assert ok == [{"$ref": "#/components/schemas/UdfBars"}, {"$ref": "#/components/schemas/UdfNoData"}]
    assert set(paths["/udf/time"]["get"]["responses"]["200"]["content"]) == {"text/plain"}
    assert set(paths["/chart"]["get"]["responses"]["200"]["content"]) == {"text/html"}
    resolutions = doc["components"]["schemas"]["Resolution"]["enum"]
    assert resolutions[:9] == ["1", "5", "15", "30", "60", "240", "1D", "1W", "1M"]


def test_a_route_the_template_declares_but_no_function_documents_is_refused(monkeypatch):
    template = sam_template.load()
    udf = template.functions["UdfFunction"]
    extra = sam_template.Route("GET", "/udf/marks", "UdfFunction", "UdfMarks")
    functions = {**template.functions, "UdfFunction": dataclasses.replace(udf, routes=(*udf.routes, extra))}
    monkeypatch.setattr(sam_template, "load", lambda: sam_template.Template(functions, template.cors))

    with pytest.raises(ValueError, match="/udf/marks"):
        gen_openapi.build_openapi()
