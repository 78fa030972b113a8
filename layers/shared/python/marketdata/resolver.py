"""The Powertools resolver the HTTP functions use, loaded without the rest of `event_handler`.

Handlers import `APIGatewayHttpResolver` (and `Response`, `content_types`) from here, never from
`aws_lambda_powertools.event_handler`, whose package `__init__` imports every resolver Powertools has
(AppSync, AppSync events, Bedrock agents, VPC Lattice, Lambda function URLs, with asyncio): about a
sixth of a handler's import, for nothing the service uses. See `_without_package_init` for how, and why
it cannot break code that does want those resolvers.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any


def _without_package_init(package: str) -> None:
    """Make `package` importable without running its `__init__`.

    Powertools' `event_handler/__init__.py` imports every resolver it has (AppSync, Bedrock, VPC Lattice,
    Lambda function URLs, with asyncio), and `utilities/data_classes/__init__.py` every event class of
    every AWS service; the handlers use one resolver and one event class. The package is registered as
    an empty module over its real folder, so its submodules (`event_handler.api_gateway`) load alone,
    and a name the `__init__` re-exports (`from ...data_classes import APIGatewayProxyEventV2`, as
    api_gateway does) loads only the submodule it comes from (read from the `__init__`'s own import
    statements). Any other name runs the real `__init__` first, so code that wants more (another
    resolver, in tests or elsewhere) still gets it, at what it cost before. A no-op once loaded.
    """
    if package in sys.modules:
        return
    spec = importlib.util.find_spec(package)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return
    module = importlib.util.module_from_spec(spec)
    completed = False

    def __getattr__(name: str) -> Any:
        nonlocal completed
        if name.startswith("__") or completed:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        submodule = f"{package}.{name}"
        if submodule in sys.modules or importlib.util.find_spec(submodule) is not None:
            return importlib.import_module(submodule)
        source = _reexports(package, spec.origin).get(name)
        if source is not None:
            value = getattr(importlib.import_module(source[0]), source[1])
            setattr(module, name, value)
            return value
        completed = True
        del module.__getattr__
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        return getattr(module, name)

    module.__getattr__ = __getattr__  # type: ignore[method-assign]
    sys.modules[package] = module
    parent, _, child = package.rpartition(".")
    setattr(sys.modules[parent], child, module)


def _reexports(package: str, init_path: str | None) -> dict[str, tuple[str, str]]:
    """name -> (module, attribute) for every `from <module> import <attribute> [as name]` at the top
    level of a package's `__init__.py`."""
    import ast  # already loaded by the standard library's inspect (Powertools' logger imports it)

    if init_path is None:
        return {}
    with open(init_path, encoding="utf-8") as source:
        tree = ast.parse(source.read(), init_path)
    found: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}"
            else:
                module = node.module
            for alias in node.names:
                found[alias.asname or alias.name] = (module, alias.name)
    return found


_without_package_init("aws_lambda_powertools.event_handler")
_without_package_init("aws_lambda_powertools.utilities.data_classes")

from aws_lambda_powertools.event_handler import content_types  # noqa: E402
from aws_lambda_powertools.event_handler.api_gateway import APIGatewayHttpResolver, Response  # noqa: E402
from aws_lambda_powertools.event_handler.exceptions import NotFoundError  # noqa: E402

__all__ = ["APIGatewayHttpResolver", "NotFoundError", "Response", "content_types"]
