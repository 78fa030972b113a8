"""Lambda SnapStart: the work worth doing before the snapshot, and what a snapshot must not carry over.

With SnapStart (template.yaml `EnableSnapStart`), Lambda runs a published version's init once, takes a
snapshot of the execution environment and starts new environments from it, possibly days later and
many at once. So, with the runtime's hooks (`snapshot_restore_py`, which Lambda provides; elsewhere it
is absent and importing this module does nothing else):

before the snapshot
    warm what the first request would otherwise load or build after every restore: the request
    path's lazily imported modules (the service, the store and pg8000, both provider clients, httpx
    and httpcore), the settings, the provider clients' TLS context (the CA bundle: no connection in
    it) and the pydantic models of the package (the routes' parameter models among them: they are
    built at import, see marketdata.http.params, so no route builds anything on its first request);
    then forget the process state below, so none of it is in the snapshot.

after restore
    reseed `random` (retry jitter draws from it: restored copies of one snapshot would otherwise draw
    the same backoff sequence and retry in lockstep) and forget the process state again.

The process state: the service with its database connections (the cache's store and its
`shared_store()` sibling), the provider clients with their httpx connection pools (TLS sessions to
Binance and Twelve Data), the settings, the cached secrets and credentials together with their age
(the database secret and the Twelve Data key, which Powertools Parameters caches for
`SECRET_MAX_AGE_SECONDS`, their boto3 clients and session), and bookkeeping measured on the
monotonic clock (the store's "database down" back-off, Binance's request weight, the UDF price steps).
Everything is rebuilt lazily by the first request after restore, as on a plain cold start.

The handlers import this module at module level (`from marketdata import snapstart`); it imports only
the standard library unless the hooks run, and the hooks touch only modules already loaded or warmed.
"""

from __future__ import annotations

import importlib
import logging
import random
import sys
import time
from typing import Any

logger = logging.getLogger(__name__)

#: Modules the first request imports lazily (see the module docstring): imported before the snapshot.
WARM_MODULES = (
    "marketdata.service",
    "marketdata.store",
    "pg8000.native",
    "marketdata.providers.binance",
    "marketdata.providers.twelve_data",
    "httpcore",  # imported by httpx's transport when the first client is built
)

_registered = False


def install() -> bool:
    """Register the hooks with the runtime when it offers them (once per process); True when registered."""
    global _registered
    if _registered:
        return True
    try:
        from snapshot_restore_py import register_after_restore, register_before_snapshot
    except ImportError:  # not on Lambda, or a runtime without SnapStart: nothing to do
        return False
    register_before_snapshot(before_snapshot)
    register_after_restore(after_restore)
    _registered = True
    return True


def before_snapshot() -> None:
    """Warm the request path, then drop every connection, client, secret and clock-bound value."""
    started = time.perf_counter()
    warm()
    forget_process_state()
    logger.info("snapstart: warmed and cleared in %.0f ms", (time.perf_counter() - started) * 1000)


def after_restore() -> None:
    """A restored environment: fresh randomness, and nothing left over from the snapshot."""
    random.seed()  # from os.urandom: every restored copy draws its own jitter
    forget_process_state()


# --- warming -------------------------------------------------------------------------------------------


def warm() -> None:
    """Best effort: a failure here is logged, never raised (the init must not fail on a warm-up)."""
    for name in WARM_MODULES:
        _attempt(f"import {name}", importlib.import_module, name)
    _attempt("settings", _warm_settings)
    _attempt("TLS context", _warm_tls)
    _attempt("pydantic models", _warm_models)


def _attempt(what: str, func: Any, *args: Any) -> None:
    try:
        func(*args)
    except Exception as exc:
        logger.warning("snapstart: warming %s failed (%s: %s)", what, type(exc).__name__, exc)


def _warm_settings() -> None:
    from marketdata.config import get_settings

    get_settings()


def _warm_tls() -> None:
    """The provider clients' CA bundle, loaded (no connection, no session: safe in a snapshot)."""
    from marketdata.providers.http import tls_context

    tls_context()


def _warm_models() -> None:
    """Complete every pydantic model of the package (a model with a deferred annotation is built on
    first use otherwise)."""
    from pydantic import BaseModel

    seen: set[type] = set()
    for name, module in list(sys.modules.items()):
        if not name.startswith("marketdata") or module is None:
            continue
        for value in list(vars(module).values()):
            if isinstance(value, type) and issubclass(value, BaseModel) and value not in seen:
                seen.add(value)
                if value.__module__.startswith("marketdata"):
                    value.model_rebuild()


# --- what must not outlive the snapshot --------------------------------------------------------------


def forget_process_state() -> None:
    """Close and forget the process-wide objects of the modules already loaded (imports nothing new)."""
    service = sys.modules.get("marketdata.service")
    if service is not None:
        # The service's connections (store and shared_store sibling), the default store, the provider
        # clients and the settings.
        service.reset_service()
    else:
        store_module = sys.modules.get("marketdata.store")
        if store_module is not None:
            store_module.reset_default_store()
        providers = sys.modules.get("marketdata.providers")
        if providers is not None:
            providers.reset_providers()
        config = sys.modules.get("marketdata.config")
        if config is not None:
            config.get_settings.cache_clear()
    _forget_secrets()
    udf = sys.modules.get("marketdata.udf")
    if udf is not None:
        udf.reset_precision_cache()


def _forget_secrets() -> None:
    config = sys.modules.get("marketdata.config")
    if config is not None:
        # The Twelve Data key and the database secret with their age, and the clients that read them.
        config.reset_secrets()
    boto3 = sys.modules.get("boto3")
    if boto3 is not None:
        boto3.DEFAULT_SESSION = None  # type: ignore[attr-defined]  # its credential cache, its clients


install()
