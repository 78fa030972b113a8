"""marketdata: the shared layer of the market-data service (providers, cache, cache-first service).

Importing the package imports nothing else: Lambda cold starts pay only for the modules a handler uses.
"""

import os as _os
import sys as _sys
import types as _types

_PYDANTIC_LOADER = "pydantic.plugin._loader"


def _skip_pydantic_plugin_lookup() -> None:
    """With PYDANTIC_DISABLE_PLUGINS=__all__ (template.yaml's Globals), give pydantic a plugin loader
    that returns no plugins without importing `importlib.metadata`.

    pydantic asks its loader for plugins when it builds the first model; the loader module imports
    `importlib.metadata` (and with it `email`, `zipfile`, `csv`...) at the top, only to find out, from the
    variable, that it must not look: about a seventh of a handler's import. The stand-in answers what
    the real `get_plugins` answers in that case (no plugins); any other name loads the real module, so a
    pydantic that uses more of it still works. Without the variable nothing changes.
    """
    if _os.environ.get("PYDANTIC_DISABLE_PLUGINS") not in ("__all__", "1", "true"):
        return
    if _PYDANTIC_LOADER in _sys.modules:
        return
    stand_in = _types.ModuleType(_PYDANTIC_LOADER, "marketdata's stand-in: plugins are disabled")

    def get_plugins() -> tuple[()]:
        return ()

    def __getattr__(name: str) -> object:
        if name.startswith("__"):  # the import system probing (__path__ ...): not a use of the loader
            raise AttributeError(name)
        import importlib

        del _sys.modules[_PYDANTIC_LOADER]
        return getattr(importlib.import_module(_PYDANTIC_LOADER), name)

    stand_in.get_plugins = get_plugins  # type: ignore[attr-defined]
    stand_in.__getattr__ = __getattr__  # type: ignore[method-assign]
    _sys.modules[_PYDANTIC_LOADER] = stand_in


_skip_pydantic_plugin_lookup()
