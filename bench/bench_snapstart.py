#!/usr/bin/env python3
"""What SnapStart changes in a cold start, measured here: the parts marketdata.snapstart adds.

    .venv/bin/python bench/bench_snapstart.py [--runs 9]

For each HTTP handler with SnapStart (candles, symbols, UDF history), in FRESH interpreters (medians of
`--runs`, CPU time of the process measured inside it), against the fake upstream (bypass mode, no
database, so the request's own work is the same in both columns):

  plain cold start   import the handler, then serve the first request (what every cold start costs
                     without SnapStart, besides the runtime's own start)
  before snapshot    the before-snapshot hook: warm the request path, forget the process state
                     (paid once per published version, at deploy time, not by a request)
  after restore      the after-restore hook (paid by every restored environment)
  first request      the first request after the hooks (paid by every restored environment: it
                     reconnects, re-creates clients, reads the settings again)
  warm request       the same request once more in a warm environment (what any request costs)

A restored environment costs Lambda's restore (AWS publishes no fixed figure: see the README's
estimate) plus `after restore` plus `first request`; without SnapStart it costs `plain cold start`.
Nothing here talks to AWS; `snapshot_restore_py` is a stand-in that records the hooks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CASES = {
    "historical": "candles.json",
    "symbols": "symbols_crypto.json",
    "udf": "udf_history.json",
}

CHILD = r"""
import json, sys, time, types
root, function, event_file, snap = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
hooks = {"before": [], "after": []}
runtime = types.ModuleType("snapshot_restore_py")
runtime.register_before_snapshot = lambda f, *a, **k: hooks["before"].append(f)
runtime.register_after_restore = lambda f, *a, **k: hooks["after"].append(f)
sys.modules["snapshot_restore_py"] = runtime
sys.path[:0] = [root + "/functions/" + function]


class Context:
    function_name = "bench"
    memory_limit_in_mb = 512
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:bench"
    aws_request_id = "bench"

    def get_remaining_time_in_millis(self):
        return 20000


out = {}
c = time.process_time()
import app
out["import"] = time.process_time() - c
if snap:
    c = time.process_time()
    for hook in hooks["before"]:
        hook()
    out["before"] = time.process_time() - c
    c = time.process_time()
    for hook in hooks["after"]:
        hook()
    out["after"] = time.process_time() - c
event = json.load(open(event_file))
c = time.process_time()
result = app.lambda_handler(event, Context())
out["request"] = time.process_time() - c
assert result["statusCode"] == 200, result
c = time.process_time()
app.lambda_handler(event, Context())
out["again"] = time.process_time() - c
print("RESULT", json.dumps(out))
"""


def run(function: str, event: str, snap: bool, env: dict[str, str]) -> dict[str, float]:
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), function, str(ROOT / "events" / event),
         "1" if snap else "0"],
        capture_output=True, text=True, env=env,
    )  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return {k: v * 1000 for k, v in json.loads(line[7:]).items()}
    raise SystemExit(f"{function} failed:\n{proc.stderr[-2000:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    from devtools.fake_upstream import FakeUpstream

    fake = FakeUpstream().start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON", "DB_", "DATABASE"))}
        env.update({
            "POWERTOOLS_SERVICE_NAME": "marketdata", "POWERTOOLS_METRICS_NAMESPACE": "MarketData",
            "PYDANTIC_DISABLE_PLUGINS": "__all__", "BINANCE_REST_URL": fake.url,
            "TWELVE_DATA_REST_URL": fake.url, "TWELVE_DATA_API_KEY": "bench",
            "BINANCE_CLOSE_GRACE_SECONDS": "0",
        })  # fmt: skip
        # The interpreter by version, not path: the output is pasted into committed READMEs.
        print(f"bench_snapstart: python {sys.version.split()[0]}, fake upstream, no database (bypass), "
              f"CPU ms, medians of {args.runs} fresh processes")  # fmt: skip
        print(f"  {'handler':<11} {'plain cold start':>17} {'before snapshot':>16} {'after restore':>14} "
              f"{'first request':>14} {'warm request':>13}")  # fmt: skip
        for function, event in CASES.items():
            plain, snap = [], []
            for _ in range(args.runs):
                plain.append(run(function, event, False, env))
                snap.append(run(function, event, True, env))
            med = statistics.median
            cold = med(p["import"] + p["request"] for p in plain)
            before = med(s["before"] for s in snap)
            after = med(s["after"] for s in snap)
            first = med(s["request"] for s in snap)
            warm = med(p["again"] for p in plain)
            print(f"  {function:<11} {cold:14.1f} ms {before:13.1f} ms {after:11.2f} ms {first:11.1f} ms "
                  f"{warm:10.1f} ms")  # fmt: skip
    finally:
        fake.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
