"""template.yaml read once, for everything that must agree with it: the ONE table of functions and routes.

    python scripts/sam_template.py     print the functions (routes, own environment), the HTTP API's CORS,
                                       the WebSocket API's routes and the parameter names as JSON

The local API (scripts/local_api.py), the OpenAPI generation (scripts/gen_openapi.py), the build check
(scripts/sam_check.py) and the template tests all take the functions, their HttpApi routes and the CORS
configuration from here, so a route or a function is added in template.yaml and nowhere else. The
WebSocket API's routes (`ws_routes`: route key, the function behind its integration, whether it has a
route response) serve the local live API (scripts/local_live.py) and the template tests the same way.

Needs PyYAML (the project's dev tools, or SAM's own virtualenv: scripts/sam_check.py runs this file
there when the interpreter running it has no yaml). `!Ref` to a parameter resolves to the parameter's
default (what `sam deploy` uses when samconfig.toml does not override it).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
#: The HTTP API every route belongs to.
HTTP_API = "MarketDataApi"


@dataclass(frozen=True)
class Route:
    method: str  # GET
    path: str  # /v1/candles, /chart/{asset}
    function: str  # logical id of the function serving it
    event: str  # the event's name in the function's Events

    @property
    def key(self) -> str:
        """API Gateway's route key: "GET /v1/candles"."""
        return f"{self.method} {self.path}"

    def match(self, method: str, path: str) -> dict[str, str] | None:
        """The path parameters when (method, path) is this route, else None (as API Gateway matches:
        `{name}` is one path segment, `{name+}` the rest of the path)."""
        if method.upper() != self.method:
            return None
        found = _route_pattern(self.path).fullmatch(path)
        return None if found is None else found.groupdict()


@dataclass(frozen=True)
class WsRoute:
    """A route of the WebSocket API: `$connect`, `subscribe`, ... and the function its integration calls."""

    route_key: str  # $connect, $disconnect, $default, or an action (route selection: $request.body.action)
    function: str  # logical id of the function behind the route's integration
    logical_id: str  # the AWS::ApiGatewayV2::Route
    route_response: bool  # whether the integration's answer goes back to the caller (a RouteResponse)


@dataclass(frozen=True)
class Function:
    logical_id: str  # HistoricalFunction
    code_uri: str  # functions/historical
    timeout: int | None
    routes: tuple[Route, ...] = field(default=())
    #: The function's own Environment.Variables (not Globals'), parameter references resolved.
    environment: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The function's folder name under functions/ ("historical")."""
        return Path(self.code_uri).name

    @property
    def app_path(self) -> Path:
        return ROOT / self.code_uri / "app.py"


@dataclass(frozen=True)
class Template:
    functions: dict[str, Function]  # logical id -> function, in template order
    cors: dict[str, Any]  # the HTTP API's CorsConfiguration, parameter references resolved
    parameters: tuple[str, ...] = ()  # the template's parameter names, in template order
    ws_routes: tuple[WsRoute, ...] = ()  # the WebSocket API's routes, in template order

    @property
    def routes(self) -> list[Route]:
        return [route for function in self.functions.values() for route in function.routes]

    @property
    def http_functions(self) -> list[Function]:
        """The functions behind the HTTP API, in template order."""
        return [function for function in self.functions.values() if function.routes]

    @property
    def route_functions(self) -> dict[str, Function]:
        """route key ("GET /v1/candles") -> the function serving it."""
        return {route.key: self.functions[route.function] for route in self.routes}


def route_for(route_keys: Iterable[str], method: str, path: str) -> tuple[str, dict[str, str]] | None:
    """The route key API Gateway would pick among `route_keys` for a request, with its path parameters
    (an exact path wins over a parameterized one, as in API Gateway)."""
    routes = []
    for key in route_keys:
        route_method, _, route_path = key.partition(" ")
        routes.append((key, Route(route_method.upper(), route_path, "", "")))
    for key, route in sorted(routes, key=lambda item: "{" in item[1].path):
        params = route.match(method, path)
        if params is not None:
            return key, params
    return None


# --- reading CloudFormation YAML -------------------------------------------------------------------


def _loader() -> Any:
    import yaml

    class CfnLoader(yaml.SafeLoader):
        """Reads CloudFormation short forms (!Ref, !Sub, !If ...) as their long JSON forms."""

    def intrinsic(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> dict[str, Any]:
        value: Any
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)  # type: ignore[arg-type]
        if suffix == "Ref":
            return {"Ref": value}
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        if suffix == "Condition":
            return {"Condition": value}
        return {f"Fn::{suffix}": value}

    CfnLoader.add_multi_constructor("!", intrinsic)
    return CfnLoader


def read_raw(path: Path = TEMPLATE) -> dict[str, Any]:
    """template.yaml as data, the short forms as their long JSON forms (`!Ref X` -> {"Ref": "X"})."""
    import yaml

    return yaml.load(path.read_text(), Loader=_loader())


def _resolve(value: Any, parameters: dict[str, Any]) -> Any:
    """Parameter references replaced by the parameters' defaults (lists for CommaDelimitedList)."""
    if isinstance(value, dict) and set(value) == {"Ref"} and value["Ref"] in parameters:
        param = parameters[value["Ref"]]
        default = param.get("Default")
        if param.get("Type") == "CommaDelimitedList" and isinstance(default, str):
            return [part.strip() for part in default.split(",") if part.strip()]
        return default
    if isinstance(value, dict):
        return {k: _resolve(v, parameters) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, parameters) for v in value]
    return value


def load(path: Path = TEMPLATE) -> Template:
    raw = read_raw(path)
    parameters = raw.get("Parameters") or {}
    functions: dict[str, Function] = {}
    cors: dict[str, Any] = {}
    for logical_id, resource in (raw.get("Resources") or {}).items():
        props = resource.get("Properties") or {}
        if resource.get("Type") == "AWS::Serverless::HttpApi" and logical_id == HTTP_API:
            cors = _resolve(props.get("CorsConfiguration") or {}, parameters)
        if resource.get("Type") != "AWS::Serverless::Function":
            continue
        routes = []
        for event_name, event in (props.get("Events") or {}).items():
            if event.get("Type") != "HttpApi":
                continue
            ev = event.get("Properties") or {}
            routes.append(Route(str(ev["Method"]).upper(), str(ev["Path"]), logical_id, event_name))
        variables = (props.get("Environment") or {}).get("Variables") or {}
        functions[logical_id] = Function(
            logical_id,
            str(props["CodeUri"]).rstrip("/"),
            props.get("Timeout"),
            tuple(routes),
            _resolve(variables, parameters),
        )
    return Template(functions, cors, tuple(parameters), _ws_routes(raw.get("Resources") or {}))


def _ws_routes(resources: dict[str, Any]) -> tuple[WsRoute, ...]:
    """The routes of WEBSOCKET APIs: each Route's Target (integrations/${Integration}) leads to the
    function named in the integration's IntegrationUri (${Function.Arn})."""
    websocket = {k for k, r in resources.items() if r.get("Type") == "AWS::ApiGatewayV2::Api"
                 and (r.get("Properties") or {}).get("ProtocolType") == "WEBSOCKET"}  # fmt: skip
    answered = {
        (r.get("Properties") or {}).get("RouteId", {}).get("Ref")
        for r in resources.values() if r.get("Type") == "AWS::ApiGatewayV2::RouteResponse"
    }  # fmt: skip
    found = []
    for logical_id, resource in resources.items():
        props = resource.get("Properties") or {}
        api = (props.get("ApiId") or {}).get("Ref")
        if resource.get("Type") != "AWS::ApiGatewayV2::Route" or api not in websocket:
            continue
        target = json.dumps(props.get("Target"))
        integration = re.search(r"integrations/\$\{(\w+)\}", target)
        if integration is None:
            continue
        uri = json.dumps((resources[integration.group(1)].get("Properties") or {}).get("IntegrationUri"))
        function = re.search(r"\$\{(\w+)\.Arn\}", uri)
        if function is not None:
            route_key = str(props["RouteKey"])
            found.append(WsRoute(route_key, function.group(1), logical_id, logical_id in answered))
    return tuple(found)


@lru_cache(maxsize=256)
def _route_pattern(path: str) -> re.Pattern[str]:
    out = []
    for part in re.split(r"(\{[^}]+\})", path):
        if part.startswith("{") and part.endswith("}"):
            name = part[1:-1]
            greedy = name.endswith("+")
            out.append(f"(?P<{name.rstrip('+')}>{'.+' if greedy else '[^/]+'})")
        else:
            out.append(re.escape(part))
    return re.compile("".join(out))


def main() -> int:
    template = load()
    print(
        json.dumps(
            {
                "functions": {k: {**asdict(f), "name": f.name} for k, f in template.functions.items()},
                "cors": template.cors,
                "parameters": list(template.parameters),
                "ws_routes": [asdict(route) for route in template.ws_routes],
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
