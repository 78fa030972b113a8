"""schemathesis against the local API (the same code as `python3 scripts/dev.py serve`) and the committed
openapi.json: no 5xx, and every answer conforms to the document (status, content type, headers, body).

The API runs in a thread of this process on a fresh test database, with the fake upstream as both
providers; schemathesis runs as its CLI in a subprocess so it sees only HTTP.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from scripts.gen_openapi import OPENAPI_PATH
from scripts.local_api import LocalApi

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)
MAX_EXAMPLES = 150  # per operation: about 1150 requests for the nine (~65 s on 2 cores)
MIN_REQUESTS = 300


@pytest.mark.slow
def test_generated_requests_never_get_a_5xx_or_break_the_document(local_api: LocalApi, tmp_path):
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        str(OPENAPI_PATH),
        "--url",
        local_api.url,
        "--checks",
        CHECKS,
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "1",
        "--seed",
        "20240101",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
        "--no-color",
    ]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=240)

    counts = local_api.status_counts
    total = sum(counts.values())
    assert run.returncode == 0, (
        f"schemathesis failed (statuses {counts}):\n{run.stdout[-8000:]}\n{run.stderr[-2000:]}"
    )
    assert total >= MIN_REQUESTS, f"only {total} requests were made: {counts}"
    assert not [status for status in counts if status >= 500], counts
    # The generated requests exercised both answers and rejections.
    assert counts.get(200, 0) > 0 and counts.get(400, 0) > 0, counts
