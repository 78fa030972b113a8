#!/usr/bin/env python3
"""Generate openapi.json (repository root) from the routes of every HTTP function in template.yaml.

    python3 scripts/dev.py openapi           write openapi.json (with the project's .venv, which it makes)
    python3 scripts/dev.py openapi --check   exit 1, with a diff hint, when the committed file is stale (CI)

(`.venv/bin/python scripts/gen_openapi.py [--check]` is the same; the system Python lacks Powertools.)

Each function behind the HTTP API (template.yaml, read by scripts/sam_template.py) has its own
Powertools resolver (one Lambda each); their OpenAPI documents are merged into one, and every route
the template declares must be documented by its function (and no other). A route's parameters are
the pydantic models it declares with `marketdata.http.params` (the same models validate requests:
the resolver itself validates nothing, see marketdata/http.py); for the document each model field
becomes a Powertools `Query`/`Path` parameter of the route, so Powertools renders them as it always
did. Invalid parameters are 400 with the common error body (marketdata.http), never the 422 Powertools
documents for a route it validates itself; schemas nothing references are dropped.
"""

from __future__ import annotations

import argparse
import difflib
import importlib.util
import inspect
import json
import sys
import types
import typing
from pathlib import Path
from types import ModuleType
from typing import Annotated, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # scripts.sam_template, when run as a script
    sys.path.insert(0, str(ROOT))

from scripts import sam_template  # noqa: E402

OPENAPI_PATH = ROOT / "openapi.json"

TITLE = "Market data API"
VERSION = "1.0.0"
DESCRIPTION = (
    "Historical OHLCV candles and symbol lists for crypto (Binance) and forex (Twelve Data), served "
    "cache-first from Postgres, a TradingView UDF datafeed over them (/udf/*) and a chart page (/chart). "
    "Times are Unix seconds, UTC; a candle's `time` is its open time. Errors are JSON `{message, param}` "
    "(UDF: `{s: error, errmsg}`). Answers about the closed past may be cached for a day; answers reaching "
    "the present only briefly (see Cache-Control); `X-Cache` tells how an answer was produced."
)


def http_functions() -> dict[str, Path]:
    """function folder name -> its app.py, for every function template.yaml puts behind the HTTP API."""
    return {function.name: function.app_path for function in sam_template.load().http_functions}


def load_function_module(name: str, path: Path | None = None) -> ModuleType:
    """Import functions/<name>/app.py under a unique module name (every one is called app.py)."""
    module_name = f"marketdata_function_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    path = path or ROOT / "functions" / name / "app.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


#: The constraints (annotated_types attributes) that Powertools parameters document, by the same names.
_CONSTRAINTS = ("ge", "gt", "le", "lt", "min_length", "max_length")


def _constraints(metadata: list[Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in metadata:
        for name in _CONSTRAINTS:
            value = getattr(item, name, None)
            if value is not None:
                found[name] = value
    return found


def _documented_type(annotation: Any) -> tuple[Any, dict[str, Any]]:
    """A field's type without pydantic's own metadata, and the constraints found inside it
    (`UnixSeconds | None` is `int | None` bounded by the UnixSeconds bounds)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        (inner,) = [arg for arg in args if arg is not type(None)]
        if typing.get_origin(inner) is Annotated:
            base, *metadata = typing.get_args(inner)
            found: dict[str, Any] = {}
            for item in metadata:
                found.update(_constraints(getattr(item, "metadata", [item])))
            return base | None, found
    return annotation, {}


def _parameter(name: str, info: Any, kind: type) -> inspect.Parameter:
    """One model field as the Powertools parameter that documents it."""
    annotation, constraints = _documented_type(info.annotation)
    constraints.update(_constraints(info.metadata))
    options: dict[str, Any] = {"description": info.description, **constraints}
    if info.alias:
        options["alias"] = info.alias
    if info.examples:
        options["examples"] = info.examples
    default = inspect.Parameter.empty if info.is_required() else info.default
    documented = Annotated[annotation, kind(**options)]
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=documented)


def declare_parameters(app: Any) -> None:
    """Give each route function the signature Powertools documents parameters from, built from the
    models the route declares (`marketdata.http.params`: `path_model`, `query_model`)."""
    from aws_lambda_powertools.event_handler.openapi.params import Path as PathParam
    from aws_lambda_powertools.event_handler.openapi.params import Query

    for route in [*app._static_routes, *app._dynamic_routes]:
        parameters = []
        for model, kind in ((getattr(route.func, "path_model", None), PathParam),
                            (getattr(route.func, "query_model", None), Query)):  # fmt: skip
            if model is not None:
                parameters += [_parameter(name, info, kind) for name, info in model.model_fields.items()]
        route.func.__signature__ = inspect.Signature(parameters)
        route._dependant = None  # built from the signature on first use


def build_openapi() -> dict[str, Any]:
    """The merged OpenAPI document of every HTTP function."""
    merged: dict[str, Any] = {}
    template = sam_template.load()
    for function in template.http_functions:
        app = load_function_module(function.name, function.app_path).app
        declare_parameters(app)
        doc = json.loads(app.get_openapi_json_schema(title=TITLE, version=VERSION, description=DESCRIPTION))
        documented = {f"{m.upper()} {path}" for path, item in doc.get("paths", {}).items() for m in item}
        declared = {route.key for route in function.routes}
        if documented != declared:
            raise ValueError(
                f"{function.logical_id}: template.yaml routes {sorted(declared)} but the function "
                f"documents {sorted(documented)}"
            )
        if not merged:
            merged = doc
            continue
        for path, item in doc.get("paths", {}).items():
            if path in merged["paths"]:
                raise ValueError(f"two functions declare {path}")
            merged["paths"][path] = item
        schemas = merged.setdefault("components", {}).setdefault("schemas", {})
        for schema_name, schema in doc.get("components", {}).get("schemas", {}).items():
            if schema_name in schemas and schemas[schema_name] != schema:
                raise ValueError(f"the functions define the schema {schema_name} differently")
            schemas[schema_name] = schema
    schemas = merged.get("components", {}).get("schemas", {})
    used = _referenced_schemas(merged["paths"], schemas)
    merged["paths"] = dict(sorted(merged["paths"].items()))
    merged["components"]["schemas"] = {name: schemas[name] for name in sorted(used)}
    return merged


def _referenced_schemas(paths: dict[str, Any], schemas: dict[str, Any]) -> set[str]:
    """Names of the component schemas reachable from the paths (Powertools adds a few nothing uses)."""
    prefix = "#/components/schemas/"
    used: set[str] = set()
    pending: list[Any] = [paths]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith(prefix) and ref[len(prefix) :] not in used:
                name = ref[len(prefix) :]
                used.add(name)
                pending.append(schemas.get(name, {}))
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return used


def render(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def check(path: Path = OPENAPI_PATH) -> tuple[bool, str]:
    """(up to date?, a unified diff of committed -> generated when not)."""
    return compare_committed(path, render(build_openapi()))


def compare_committed(path: Path, wanted: str) -> tuple[bool, str]:
    """Whether the committed document at `path` is exactly `wanted` (the one the code generates), and a
    unified diff of committed -> generated when not: the check of every generated document."""
    current = path.read_text(encoding="utf-8") if path.exists() else ""
    if current == wanted:
        return True, ""
    diff = difflib.unified_diff(
        current.splitlines(keepends=True),
        wanted.splitlines(keepends=True),
        fromfile=f"{path.name} (committed)",
        tofile=f"{path.name} (generated from the code)",
        n=2,
    )
    return False, "".join(diff)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail when openapi.json differs from the code")
    parser.add_argument(
        "--output", type=Path, default=OPENAPI_PATH, help="where to write (default: openapi.json)"
    )
    args = parser.parse_args(argv)
    if args.check:
        ok, diff = check(args.output)
        if ok:
            print(f"{args.output.name} is up to date")
            return 0
        lines = diff.splitlines()
        print("\n".join(lines[:80]) + ("\n..." if len(lines) > 80 else ""))
        print(
            f"\n{args.output.name} is stale: run `python3 scripts/dev.py openapi` and commit the result",
            file=sys.stderr,
        )
        return 1
    args.output.write_text(render(build_openapi()), encoding="utf-8")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
