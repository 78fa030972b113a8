"""The HTTP plumbing both provider clients share: client construction and the retry loop.

One `httpx.Client` per provider per process (built here, cached by `marketdata.providers.get_provider`)
keeps TLS connections alive across warm Lambda invocations. Idle connections are dropped after
`KEEPALIVE_EXPIRY_SECONDS` so a container thawed after a long freeze does not reuse a socket the
server has long closed; when that still happens, the stale-socket error is a transport error and
is retried like any other.

The retry loop is provider-agnostic: a provider hands it an `interpret` function that turns a
response into a value, raises a final typed error, or returns `Retry` (transient: 5xx, 429).
Transport errors and timeouts are always transient. Every wait (backoff, Retry-After, the Binance
weight guard) comes out of one time budget per logical request, `upstream_retry_budget_seconds`, and
attempts are capped by `upstream_max_attempts`, so a request never outlives API Gateway's 30 s.
"""

from __future__ import annotations

import json
import logging
import math
import random
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import TypeVar

import httpx

from marketdata.config import Settings
from marketdata.errors import ConfigurationError, UpstreamBadResponse, UpstreamError, UpstreamUnavailable
from marketdata.limits import seconds_left

logger = logging.getLogger(__name__)

USER_AGENT = f"marketdata-service/1.0 httpx/{httpx.__version__}"
KEEPALIVE_EXPIRY_SECONDS = 15.0
# Exponential backoff: attempt n waits uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2**(n-1))) ("full jitter").
BACKOFF_BASE_SECONDS = 0.25
BACKOFF_CAP_SECONDS = 4.0
# A retry attempt's timeouts shrink to the budget left, but never below this (a 0.01 s read timeout
# would only turn a slow success into a failure).
MIN_ATTEMPT_TIMEOUT_SECONDS = 1.0
# Kept free before the request's deadline for storing a page and sending the answer.
_ANSWER_MARGIN_SECONDS = 0.5

T = TypeVar("T")
Sleep = Callable[[float], None]
Clock = Callable[[], float]


def build_http_client(
    settings: Settings, base_url: str, *, transport: httpx.BaseTransport | None = None
) -> httpx.Client:
    """The reusable client for one provider: base URL, explicit timeouts, User-Agent, small pool.

    `transport` is for tests (httpx.MockTransport); production uses httpx's default transport.
    """
    return httpx.Client(
        base_url=base_url,
        transport=transport,
        verify=tls_context(),
        timeout=default_timeout(settings),
        headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
        limits=httpx.Limits(
            max_connections=10, max_keepalive_connections=4, keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS
        ),
        follow_redirects=False,
    )


@cache
def tls_context() -> ssl.SSLContext:
    """The TLS settings of every provider client: httpx's default (certifi's CA bundle, host names
    checked, SSL_CERT_FILE/SSL_CERT_DIR honoured), built once per process. Loading the bundle costs tens
    of milliseconds; the context holds no connection or session, so a SnapStart snapshot keeps it and a
    restored environment's new clients reuse it (marketdata.snapstart)."""
    return httpx.create_ssl_context()


def default_timeout(settings: Settings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.http_connect_timeout,
        read=settings.http_read_timeout,
        write=settings.http_read_timeout,
        pool=settings.http_connect_timeout,
    )


@dataclass(frozen=True, slots=True)
class Retry:
    """`interpret`'s answer for a transient failure.

    error: what to raise when no retry is left (budget or attempts exhausted).
    delay: the wait the upstream asked for (Retry-After); None means "use the backoff".
    """

    error: UpstreamError
    delay: float | None = None


class Budget:
    """The time one logical request may spend, waits included, measured on a monotonic clock."""

    def __init__(self, seconds: float, *, monotonic: Clock, sleep: Sleep) -> None:
        self._seconds = seconds
        self._monotonic = monotonic
        self._sleep = sleep
        self._started = monotonic()

    def remaining(self) -> float:
        return self._seconds - (self._monotonic() - self._started)

    def fits(self, delay: float) -> bool:
        return delay <= self.remaining()

    def sleep(self, delay: float) -> None:
        if delay > 0:
            self._sleep(delay)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Retry-After in seconds when it is a plain number (both providers send seconds), else None."""
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def seconds_to_next_minute(now: float) -> float:
    """Seconds until the next UTC minute starts (per-minute quotas reset then), at least 1."""
    return max(1.0, 60.0 - now % 60.0)


def backoff_delay(attempt: int, rng: Callable[[], float]) -> float:
    """Full-jitter exponential backoff before retry number `attempt` (1-based)."""
    ceiling = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (attempt - 1))
    return ceiling * rng()


class WeightCounter:
    """A provider's request weight used in the current UTC minute, as one process sees it (Binance).

    Thread-safe: the pages of a cold range and the backfill are fetched by several threads at once, so
    the check and the count of a request are one step under a lock (`reserve`), and the weight of a
    request in flight counts before its response reports the server's figure (`note`). The figure kept
    is the larger of the two (the header already includes our own requests), so parallel requests can
    neither slip under the threshold together nor make the count go backwards."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self._lock = threading.Lock()
        self._used = 0
        self._minute: int | None = None

    @property
    def used(self) -> int:
        with self._lock:
            return self._used

    def reserve(self, weight: int, now: float) -> float:
        """Count `weight` for a request about to be sent and return 0, or, when it would cross the
        threshold, count nothing and return the seconds until the next minute (when the count resets)."""
        minute = int(now // 60)
        with self._lock:
            if self._minute != minute:
                # A new minute (or the first request): the server's counter has been reset.
                self._minute, self._used = minute, 0
            elif self._used + weight > self.threshold:
                return seconds_to_next_minute(now)
            self._used += weight
            return 0.0

    def restart(self, weight: int, now: float) -> None:
        """After waiting for the next minute: a fresh count holding this request's weight."""
        with self._lock:
            self._minute, self._used = int(now // 60), weight

    def note(self, used: int, now: float) -> None:
        """The server's figure for this minute (a response header)."""
        minute = int(now // 60)
        with self._lock:
            if self._minute == minute:
                self._used = max(self._used, used)
            else:
                self._minute, self._used = minute, used


class RetryingHttp:
    """Sends GET requests for one provider with the shared retry policy."""

    def __init__(
        self,
        client: httpx.Client,
        settings: Settings,
        *,
        base_url: str,
        base_url_setting: str,
        provider: str,
        display_name: str,
        sleep: Sleep = time.sleep,
        monotonic: Clock = time.monotonic,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.client = client
        # Absolute URLs: an injected client (tests, the fake upstream) needs no base_url of its own.
        self.base_url = base_url.rstrip("/")
        self.base_url_setting = base_url_setting
        self.provider = provider
        self.display_name = display_name
        self._budget_seconds = settings.upstream_retry_budget_seconds
        self._max_attempts = settings.upstream_max_attempts
        self._timeout = default_timeout(settings)
        self._sleep = sleep
        self._monotonic = monotonic
        self._rng = rng

    def new_budget(self) -> Budget:
        """The retry budget of one logical request: UPSTREAM_RETRY_BUDGET_SECONDS, cut to what is left of
        the API request's deadline (marketdata.limits) so no wait outlives the answer."""
        seconds = self._budget_seconds
        left = seconds_left()
        if left is not None:
            seconds = max(0.0, min(seconds, left - _ANSWER_MARGIN_SECONDS))
        return Budget(seconds, monotonic=self._monotonic, sleep=self._sleep)

    def get(
        self,
        path: str,
        params: Mapping[str, str | int],
        *,
        interpret: Callable[[httpx.Response], T | Retry],
        headers: Mapping[str, str] | None = None,
        before_attempt: Callable[[Budget], None] | None = None,
        budget: Budget | None = None,
    ) -> T:
        """GET path until `interpret` accepts the response, a final error is raised, or retries run out.

        `before_attempt` runs before every attempt (the Binance weight guard and ban check); it may
        wait on the budget or raise. Messages name the path, never the full URL: a URL may carry
        credentials in other deployments and errors are shown to API users.
        """
        budget = budget or self.new_budget()
        attempt = 0
        while True:
            attempt += 1
            if before_attempt is not None:
                before_attempt(budget)
            try:
                response = self.client.get(
                    self.base_url + path,
                    params=dict(params),
                    headers=dict(headers or {}),
                    timeout=self._attempt_timeout(attempt, budget),
                )
            except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
                # A base URL without http(s):// or otherwise unusable: retrying cannot help.
                raise ConfigurationError(
                    f"{self.display_name} base URL is not usable ({type(exc).__name__}): "
                    f"check {self.base_url_setting}"
                ) from None
            except httpx.TimeoutException as exc:
                outcome: T | Retry = Retry(
                    UpstreamUnavailable(
                        f"{self.display_name} did not answer in time ({type(exc).__name__} on {path})",
                        provider=self.provider,
                    )
                )
            except httpx.TransportError as exc:
                outcome = Retry(
                    UpstreamUnavailable(
                        f"{self.display_name} could not be reached ({type(exc).__name__} on {path})",
                        provider=self.provider,
                    )
                )
            except httpx.DecodingError:
                # A body whose gzip/brotli encoding is broken: as unreadable as malformed JSON.
                raise UpstreamBadResponse(
                    f"{self.display_name} sent a body that could not be decoded ({path})",
                    provider=self.provider,
                ) from None
            else:
                outcome = interpret(response)
            if not isinstance(outcome, Retry):
                return outcome
            delay = outcome.delay if outcome.delay is not None else backoff_delay(attempt, self._rng)
            if attempt >= self._max_attempts or not budget.fits(delay):
                logger.warning(
                    "%s %s: giving up after %d attempt(s): %s",
                    self.display_name,
                    path,
                    attempt,
                    outcome.error.message,
                )
                raise outcome.error
            logger.info(
                "%s %s: attempt %d failed (%s); retrying in %.2fs",
                self.display_name,
                path,
                attempt,
                outcome.error.message,
                delay,
            )
            budget.sleep(delay)

    def _attempt_timeout(self, attempt: int, budget: Budget) -> httpx.Timeout:
        # The first attempt gets the configured timeouts, cut to the request's deadline; retries get what
        # is left of the budget, so the total stays near one timeout plus the budget.
        left = seconds_left()
        if attempt == 1 and left is None:
            return self._timeout
        cap = budget.remaining() if attempt > 1 else (left or 0.0) - _ANSWER_MARGIN_SECONDS
        cap = max(MIN_ATTEMPT_TIMEOUT_SECONDS, cap)
        t = self._timeout
        return httpx.Timeout(
            connect=min(t.connect or cap, cap),
            read=min(t.read or cap, cap),
            write=min(t.write or cap, cap),
            pool=min(t.pool or cap, cap),
        )


def read_json(response: httpx.Response, *, provider: str, display_name: str) -> object:
    """The decoded JSON body, or UpstreamBadResponse for HTML pages, empty, truncated or malformed bodies."""
    content_type = response.headers.get("content-type", "").lower()
    if "html" in content_type:
        raise UpstreamBadResponse(
            f"{display_name} answered HTTP {response.status_code} with an HTML page instead of JSON",
            provider=provider,
        )
    try:
        return json.loads(response.content)
    except (ValueError, UnicodeDecodeError):
        size = len(response.content)
        raise UpstreamBadResponse(
            f"{display_name} answered HTTP {response.status_code} with a body that is not valid JSON "
            f"({size} bytes)",
            provider=provider,
        ) from None
