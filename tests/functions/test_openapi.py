"""The committed openapi.json is what the code generates (the CI check), and it documents what the
functions really answer."""

from __future__ import annotations

import json
from pathlib import Path

from scripts import gen_openapi


def test_the_committed_document_matches_the_code():
    ok, diff = gen_openapi.check()
    assert ok, f"openapi.json is stale; run `python scripts/gen_openapi.py`:\n{diff[:3000]}"


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


def test_both_functions_are_merged_with_their_error_answers():
    doc = gen_openapi.build_openapi()

    assert set(doc["paths"]) == {"/v1/candles", "/v1/symbols"}
    candles = doc["paths"]["/v1/candles"]["get"]
    symbols = doc["paths"]["/v1/symbols"]["get"]
    assert set(candles["responses"]) == {"200", "400", "404", "502", "503"}
    assert set(symbols["responses"]) == {"200", "400", "502", "503"}
    assert "Retry-After" in candles["responses"]["503"]["headers"]
    error_ref = {"$ref": "#/components/schemas/ErrorResponse"}
    for status in ("400", "404", "502", "503"):
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
