#!/usr/bin/env python3
"""Generate docs/live-messages.schema.json, the JSON Schema of the live WebSocket API's messages, from the
models in marketdata.schemas (SubscribeMessage, SubscriptionReply, PriceUpdate, ConnectionStatus, LiveError).

    python scripts/gen_live_schema.py           write docs/live-messages.schema.json
    python scripts/gen_live_schema.py --check   exit 1 when the committed file is stale (the tests run this)

Every message of either direction validates against the document's `oneOf`; `x-client-messages` and
`x-service-messages` say which direction each definition travels in.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # scripts.gen_openapi, when run as a script
    sys.path.insert(0, str(ROOT))
SCHEMA_PATH = ROOT / "docs" / "live-messages.schema.json"


def build_schema() -> dict[str, Any]:
    from pydantic.json_schema import models_json_schema

    from marketdata.schemas import (
        ConnectionStatus,
        LiveError,
        PriceUpdate,
        SubscribeMessage,
        SubscriptionReply,
    )

    client = [SubscribeMessage]
    service = [SubscriptionReply, PriceUpdate, ConnectionStatus, LiveError]
    # Client messages as they are accepted, service messages as they are sent.
    models = [(m, "validation") for m in client] + [(m, "serialization") for m in service]
    _, defs = models_json_schema(models, ref_template="#/$defs/{model}")  # type: ignore[arg-type]
    names = [m.__name__ for m in client + service]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Market data live API messages",
        "description": (
            "The WebSocket API (template.yaml LiveApi; locally `dev.py serve`, ws://127.0.0.1:3002). Every "
            "frame is one JSON object. The client sends SubscribeMessage (routed on its `action`); the "
            "service answers each with SubscriptionReply or LiveError and then sends PriceUpdate for every "
            "followed pair (the forming bar at most once a second, the closed bar once, is_closed true) and "
            "ConnectionStatus when the provider stream behind them drops or recovers. Times are Unix "
            "seconds, UTC; a candle's `time` is its open time, as in GET /v1/candles."
        ),
        "oneOf": [{"$ref": f"#/$defs/{name}"} for name in names],
        "x-client-messages": [m.__name__ for m in client],
        "x-service-messages": [m.__name__ for m in service],
        "x-route-selection-expression": "$request.body.action",
        "$defs": defs["$defs"],
    }


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False) + "\n"


def check(path: Path = SCHEMA_PATH) -> tuple[bool, str]:
    """(up to date, unified diff) of the committed document against the code's."""
    from scripts.gen_openapi import compare_committed

    return compare_committed(path, render(build_schema()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when the document differs from the code")
    parser.add_argument("--output", type=Path, default=SCHEMA_PATH)
    args = parser.parse_args(argv)
    if args.check:
        ok, diff = check(args.output)
        if not ok:
            print(diff[:6000])
            print(f"\n{args.output.name} is stale: run `python scripts/gen_live_schema.py`", file=sys.stderr)
            return 1
        print(f"{args.output.name} is up to date")
        return 0
    args.output.write_text(render(build_schema()), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
