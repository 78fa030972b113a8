"""A small CloudFormation evaluator for the template tests: what a stack gets for given parameter values.

`deployed(template, **parameters)` resolves what CloudFormation resolves before it creates anything:
parameter references (defaults, then the given values), the Conditions, `Fn::If` (a branch of
`AWS::NoValue` removes the key or list item), `Fn::Split`, `Fn::Join`, `Fn::Select`, `Fn::Equals`... and
drops the resources whose Condition is false. References to resources, `Fn::GetAtt` and `Fn::Sub` of
anything but parameters stay as they are, so tests compare them with the template's own spelling.
"""

from __future__ import annotations

import copy
import re
from typing import Any

NO_VALUE = object()  # Ref AWS::NoValue: the key or item disappears


def parameter_values(template: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name, spec in template.get("Parameters", {}).items():
        value = overrides.get(name, spec.get("Default"))
        if spec.get("Type") == "CommaDelimitedList" and isinstance(value, str):
            value = value.split(",")
        elif spec.get("Type") == "Number" and value is not None:
            value = str(value)
        values[name] = value
    unknown = set(overrides) - set(values)
    assert not unknown, f"not template parameters: {sorted(unknown)}"
    return values


class _Evaluator:
    def __init__(self, template: dict[str, Any], parameters: dict[str, Any]) -> None:
        self.params = parameter_values(template, parameters)
        self.condition_defs = template.get("Conditions", {})
        self.conditions: dict[str, bool] = {}

    def condition(self, name: str) -> bool:
        if name not in self.conditions:
            self.conditions[name] = bool(self.value(self.condition_defs[name]))
        return self.conditions[name]

    def value(self, node: Any) -> Any:
        if isinstance(node, list):
            items = [self.value(item) for item in node]
            return [item for item in items if item is not NO_VALUE]
        if not isinstance(node, dict):
            return node
        if len(node) == 1:
            ((key, arg),) = node.items()
            if key == "Ref":
                if arg == "AWS::NoValue":
                    return NO_VALUE
                return copy.deepcopy(self.params[arg]) if arg in self.params else node
            if key == "Condition":
                return self.condition(arg)
            if key == "Fn::If":
                name, then, otherwise = arg
                return self.value(then if self.condition(name) else otherwise)
            if key == "Fn::Equals":
                left, right = (self.value(a) for a in arg)
                return str(left) == str(right)
            if key == "Fn::Not":
                return not self.value(arg[0])
            if key == "Fn::And":
                return all(self.value(a) for a in arg)
            if key == "Fn::Or":
                return any(self.value(a) for a in arg)
            if key == "Fn::Split":
                sep, text = arg[0], self.value(arg[1])
                return text.split(sep) if isinstance(text, str) else node
            if key == "Fn::Join":
                sep, items = arg[0], self.value(arg[1])
                return sep.join(items) if all(isinstance(i, str) for i in items) else node
            if key == "Fn::Select":
                index, items = int(self.value(arg[0])), self.value(arg[1])
                return items[index] if isinstance(items, list) else node
            if key == "Fn::Sub" and isinstance(arg, str):
                names = re.findall(r"\$\{([^}!]+)\}", arg)
                if names and all(n in self.params and isinstance(self.params[n], str) for n in names):
                    return re.sub(r"\$\{([^}!]+)\}", lambda m: self.params[m.group(1)], arg)
                return node
        out = {}
        for key, item in node.items():
            item = self.value(item)
            if item is not NO_VALUE:
                out[key] = item
        return out


def deployed(template: dict[str, Any], **parameters: Any) -> dict[str, Any]:
    """The template as the stack gets it: Globals, Resources and Outputs resolved for these parameters."""
    ev = _Evaluator(template, parameters)
    resources = {}
    for logical_id, resource in template["Resources"].items():
        if "Condition" in resource and not ev.condition(resource["Condition"]):
            continue
        resources[logical_id] = ev.value(resource)
    return {
        "Globals": ev.value(template.get("Globals", {})),
        "Resources": resources,
        "Conditions": {name: ev.condition(name) for name in ev.condition_defs},
    }


def walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def statements(resources: dict[str, Any]) -> list[dict[str, Any]]:
    """Every IAM policy statement (anything with Effect and Action) in these resources."""
    return [n for n in walk(resources) if isinstance(n, dict) and "Effect" in n and "Action" in n]
