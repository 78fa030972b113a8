"""Bounds on what one request may cost: provider requests, time, and the provider budgets all share.

Every API request runs under a `RequestLimits`: at most `max_provider_requests` upstream requests
(Binance pages, Twelve Data credits) and a deadline (the Lambda's remaining time less a margin). A
provider request is started only when both allow it; otherwise `RequestLimitReached` stops the fill
and the answer holds what was filled, marked partial, so the worst case of any caller is a small,
known multiple of the best case. The deadline also reaches the HTTP layer (`seconds_left`), which
caps every attempt's timeouts and its retry budget by it, so no provider wait outlives the request.

Provider quotas shared by every Lambda (Twelve Data credits per minute and per day, a Binance ban's
end) live in Postgres (`CandleStore.take_provider_request`, `block_provider`): one atomic statement
per request, no session state. `ProviderQuota` says what each provider's quota is.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

from marketdata.config import Settings

# The monotonic instant the current request must have answered by (None: no deadline).
_deadline: ContextVar[float | None] = ContextVar("marketdata_request_deadline", default=None)


class RequestLimitReached(Exception):
    """No further provider request fits this request's ceiling or deadline (not an error: the answer is
    what was filled, marked partial). `reason` is "ceiling" or "deadline"."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"request limit reached: {reason}")
        self.reason = reason


@dataclass(slots=True)
class RequestLimits:
    """What one request may still spend. `deadline` is a time.monotonic() instant."""

    max_provider_requests: int | None = None
    deadline: float | None = None
    #: The least time a provider request needs; none is started with less left than this.
    min_request_seconds: float = 1.0
    provider_requests: int = field(default=0)

    @classmethod
    def for_request(cls, max_provider_requests: int | None, timeout: float | None) -> RequestLimits:
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        return cls(max_provider_requests=max_provider_requests, deadline=deadline)

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def before_provider_request(self) -> None:
        """Count one provider request, or raise RequestLimitReached when it does not fit."""
        if self.max_provider_requests is not None and self.provider_requests >= self.max_provider_requests:
            raise RequestLimitReached("ceiling")
        left = self.seconds_left()
        if left is not None and left < self.min_request_seconds:
            raise RequestLimitReached("deadline")
        self.provider_requests += 1

    @contextlib.contextmanager
    def active(self) -> Iterator[RequestLimits]:
        """Make this request's deadline the one the HTTP layer sees (seconds_left) while inside."""
        token = _deadline.set(self.deadline)
        try:
            yield self
        finally:
            _deadline.reset(token)


def seconds_left() -> float | None:
    """Seconds until the current request's deadline, None outside a request with one."""
    deadline = _deadline.get()
    return None if deadline is None else deadline - time.monotonic()


@dataclass(frozen=True, slots=True)
class ProviderQuota:
    """A provider's request quota shared by every Lambda of the deployment.

    per_minute, per_day: requests (Twelve Data: credits, one per time_series page) per UTC minute and
    day; None where the provider counts nothing we must share (Binance limits request weight per IP,
    guarded in each client; its bans are shared through `block_provider` all the same).
    reserved_minute, reserved_day: the part the backfill may not use, kept for interactive requests.
    open_bar_ttl: how long one fetched open bar serves every caller.
    max_per_request: the ceiling on provider requests of one API request.
    """

    per_minute: int | None
    per_day: int | None
    reserved_minute: int
    reserved_day: int
    open_bar_ttl: float
    max_per_request: int

    def caps(self, *, interactive: bool) -> tuple[int | None, int | None]:
        """(per-minute, per-day) caps for an interactive request or the backfill."""
        if interactive:
            return self.per_minute, self.per_day
        minute = None if self.per_minute is None else max(1, self.per_minute - self.reserved_minute)
        day = None if self.per_day is None else max(1, self.per_day - self.reserved_day)
        return minute, day


def quota_for(provider: str, settings: Settings) -> ProviderQuota:
    """The quota of provider `provider` ("binance" or "twelve_data") under these settings."""
    if provider == "twelve_data":
        return ProviderQuota(
            per_minute=settings.twelve_data_credits_per_minute,
            per_day=settings.twelve_data_credits_per_day,
            reserved_minute=min(settings.twelve_data_reserved_credits_per_minute,
                                settings.twelve_data_credits_per_minute - 1),
            reserved_day=min(settings.twelve_data_reserved_credits_per_day,
                             settings.twelve_data_credits_per_day - 1),
            open_bar_ttl=settings.twelve_data_open_bar_ttl_seconds,
            max_per_request=settings.twelve_data_max_requests_per_call,
        )
    return ProviderQuota(
        per_minute=None,
        per_day=None,
        reserved_minute=0,
        reserved_day=0,
        open_bar_ttl=settings.binance_open_bar_ttl_seconds,
        max_per_request=settings.binance_max_requests_per_call,
    )


def backfill_pages_per_minute(provider: str, settings: Settings) -> float | None:
    """Provider pages per minute the backfill may use at most (its share of the shared quota; Binance:
    the weight guard's threshold over the klines weight), or None where nothing bounds it."""
    if provider == "twelve_data":
        per_minute, _ = quota_for(provider, settings).caps(interactive=False)
        return None if per_minute is None else float(per_minute)
    if provider == "binance":
        from marketdata.providers.binance import KLINES_WEIGHT  # the backfill imports the client anyway

        return settings.binance_weight_safety_share * settings.binance_weight_limit / KLINES_WEIGHT
    return None
