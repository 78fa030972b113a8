"""Provider clients behind one interface, one client per asset class per process.

`get_provider` caches the client so its httpx connection pool (and Binance's weight bookkeeping)
survives across warm Lambda invocations. The client modules are imported inside the factory: a
handler that never touches a provider never pays for httpx.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from marketdata.schemas import AssetClass, detect_asset_class

if TYPE_CHECKING:
    from marketdata.config import Settings
    from marketdata.providers.base import MarketDataProvider

_lock = threading.Lock()
_providers: dict[tuple[AssetClass, Settings], MarketDataProvider] = {}


def get_provider(asset_class: AssetClass | str, settings: Settings | None = None) -> MarketDataProvider:
    """The process-wide client for an asset class (crypto: Binance, forex: Twelve Data).

    Without `settings` the process settings (`get_settings()`) are used. Clients are cached per asset
    class and settings object, so tests that pass their own settings get their own client.
    """
    kind = AssetClass(asset_class)
    if settings is None:
        from marketdata.config import get_settings

        settings = get_settings()
    key = (kind, settings)
    with _lock:
        provider = _providers.get(key)
        if provider is None:
            provider = _build(kind, settings)
            _providers[key] = provider
        return provider


def provider_for_symbol(symbol: str, settings: Settings | None = None) -> MarketDataProvider:
    """The client serving this symbol: EUR/USD -> Twelve Data, BTCUSDT -> Binance."""
    return get_provider(detect_asset_class(symbol), settings)


def reset_providers() -> None:
    """Close and forget every cached client (tests; settings changes)."""
    with _lock:
        providers = list(_providers.values())
        _providers.clear()
    for provider in providers:
        provider.close()


def _build(kind: AssetClass, settings: Settings) -> MarketDataProvider:
    if kind is AssetClass.CRYPTO:
        from marketdata.providers.binance import BinanceClient

        return BinanceClient(settings)
    from marketdata.providers.twelve_data import TwelveDataClient

    return TwelveDataClient(settings)


__all__ = ["get_provider", "provider_for_symbol", "reset_providers"]
