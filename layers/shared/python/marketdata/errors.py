"""Typed errors shared by every layer.

The domain (providers, store, service) raises these; the HTTP handlers map them to status codes
in exactly one place (`marketdata.http`). Messages are written for the API user: they name the
problem and, where there is one, the offending parameter. They never contain secrets (API keys,
passwords, full upstream URLs with credentials).
"""

from __future__ import annotations


class MarketDataError(Exception):
    """Base of every error this package raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- caller errors ---------------------------------------------------------------------------


class InvalidRequest(MarketDataError):
    """The caller's input is wrong (bad parameter, inconsistent range, absurd limit)."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class InvalidInterval(InvalidRequest):
    """An interval that is not one of the nine app intervals."""

    def __init__(self, message: str) -> None:
        super().__init__(message, param="interval")


class TooManySubscriptions(InvalidRequest):
    """A live connection asked to follow more pairs than LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION allows."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"this connection already follows {limit} pairs, the most one connection may:"
            " unsubscribe from one first, or open another connection",
            param="symbol",
        )
        self.limit = limit


class SymbolNotFound(MarketDataError):
    """The provider does not know the symbol (Binance -1121; Twelve Data 404 "**symbol** or **figi**
    parameter is missing or invalid", formerly 400 "**symbol** not found")."""

    def __init__(self, symbol: str, provider: str | None = None, *, hint: str = "") -> None:
        where = f" on {provider}" if provider else ""
        super().__init__(f"unknown symbol {symbol!r}{where}{hint}")
        self.symbol = symbol
        self.provider = provider


#: How providers are named in messages for API users.
_DISPLAY_NAMES = {"twelve_data": "Twelve Data", "binance": "Binance"}


class SymbolNotInPlan(MarketDataError):
    """The provider knows the symbol but the service's plan with it does not include it (Twelve Data 404
    "This symbol is available starting with the Grow or Venture plan").

    An entitlement problem of the deployment, not a passing provider failure: deliberately not an
    UpstreamError, so the service does not answer around it from the cache (cache=partial) the way it
    does when a provider is down. `plan` is the plan the provider named, when it named one.
    """

    def __init__(
        self,
        symbol: str,
        provider: str,
        *,
        display_name: str | None = None,
        plan: str | None = None,
    ) -> None:
        shown = display_name or _DISPLAY_NAMES.get(provider, provider)
        needed = f" (available starting with the {plan} plan)" if plan else ""
        super().__init__(f"{symbol!r} needs a higher {shown} plan than the service's API key has{needed}")
        self.symbol = symbol
        self.provider = provider
        self.plan = plan


# --- upstream errors -------------------------------------------------------------------------


class UpstreamError(MarketDataError):
    """Something went wrong talking to a provider."""

    def __init__(self, message: str, *, provider: str) -> None:
        super().__init__(message)
        self.provider = provider


class UpstreamRateLimited(UpstreamError):
    """The provider refuses more requests for now (429, 418 ban, out of credits, own weight guard).

    `retry_after` is in seconds when known, so the API can pass it on as a `Retry-After` header.
    """

    def __init__(self, message: str, *, provider: str, retry_after: float | None = None) -> None:
        super().__init__(message, provider=provider)
        self.retry_after = retry_after


class UpstreamUnavailable(UpstreamError):
    """5xx, timeouts or connection failures that outlasted the retry budget."""


class IncompleteAnswer(MarketDataError):
    """An answer that must be whole (a UDF history range) could not be completed in this request: a
    provider failed or the request's budget ran out part way. What was fetched stays cached, so a retry
    after `retry_after` seconds goes further; the caller is never handed a part as if it were all."""

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamBadResponse(UpstreamError):
    """The provider answered with something we cannot read: bad JSON, HTML, a wrong shape."""


class UpstreamAuthError(UpstreamError):
    """The provider rejected our credentials (Twelve Data 401/403). An operator problem, not the caller's."""


class ConfigurationError(MarketDataError):
    """A required setting is missing or malformed (for example no Twelve Data API key)."""


# --- storage errors --------------------------------------------------------------------------


class DatabaseUnavailable(MarketDataError):
    """The cache database cannot be reached or failed mid-operation; callers fall back to the provider."""


class SingleFlightTimeout(DatabaseUnavailable):
    """Another process kept the fill lock for this (symbol, interval) longer than we were willing to wait.

    A DatabaseUnavailable on purpose: the caller's fallback is the same (answer from the provider
    without the cache), but the distinct type lets metrics and logs tell contention from an outage.
    """
