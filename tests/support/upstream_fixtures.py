"""pytest fixtures for the fake upstream server (registered in tests/conftest.py).

- `fake_upstream_server` (session): one FakeUpstream per test process (per xdist worker) on a free
  loopback port.
- `fake_upstream` (function): the same server, reset before the test (requests, faults, clock,
  weight and credit counters), so every test starts clean.
- `upstream_settings` (function): a `Settings` pointing both providers at the fake, with a test Twelve
  Data key and small timeouts and retry budgets so injected faults resolve quickly.
- `settings_for(fake, **overrides)`: the same as a plain function, for tests that need other knobs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from marketdata.config import Settings
from tests.support.fake_upstream import FakeUpstream

__all__ = [
    "TEST_TWELVE_DATA_API_KEY",
    "fake_upstream",
    "fake_upstream_server",
    "settings_for",
    "upstream_env",
    "upstream_settings",
]

#: The only Twelve Data key the test fake accepts (any other gets the 401 body).
TEST_TWELVE_DATA_API_KEY = "test-td-key-0123456789"


def upstream_env(fake: FakeUpstream) -> dict[str, str]:
    """The environment aiming the service at `fake`, as a deployed function or a subprocess would get it."""
    return {
        "BINANCE_REST_URL": fake.url,
        "TWELVE_DATA_REST_URL": fake.url,
        "TWELVE_DATA_API_KEY": TEST_TWELVE_DATA_API_KEY,
        "HTTP_CONNECT_TIMEOUT": "1",
        # Below FakeUpstream.timeout_seconds, so a "timeout" fault really times the client out; above what
        # a 5000-row answer of the fake takes on a busy 2-core machine.
        "HTTP_READ_TIMEOUT": "2",
        # Small budgets so injected faults resolve in a few seconds (one timed-out attempt can be retried).
        "UPSTREAM_RETRY_BUDGET_SECONDS": "4",
        "UPSTREAM_MAX_ATTEMPTS": "3",
        # The fake's bars are final the instant they close; a grace would only move the tests' boundaries.
        "BINANCE_CLOSE_GRACE_SECONDS": "0",
        # Tests freeze the clock, so a free-tier minute (8 credits) would never end: budgets are tested
        # where a test sets them (tests/cache/test_limits.py, the backfill's rate tests).
        "TWELVE_DATA_CREDITS_PER_MINUTE": "10000",
        "TWELVE_DATA_CREDITS_PER_DAY": "1000000",
    }


def settings_for(fake: FakeUpstream, **overrides: Any) -> Settings:
    """Settings aimed at `fake`. Overrides use the environment variable names (e.g. HTTP_READ_TIMEOUT=2)."""
    env: dict[str, Any] = {**upstream_env(fake), **overrides}
    return Settings.model_validate(env)


@pytest.fixture(scope="session")
def fake_upstream_server() -> Iterator[FakeUpstream]:
    fake = FakeUpstream(api_keys=[TEST_TWELVE_DATA_API_KEY]).start()
    try:
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_upstream(fake_upstream_server: FakeUpstream) -> Iterator[FakeUpstream]:
    fake_upstream_server.reset()
    yield fake_upstream_server
    fake_upstream_server.reset()


@pytest.fixture
def upstream_settings(fake_upstream: FakeUpstream) -> Settings:
    return settings_for(fake_upstream)
