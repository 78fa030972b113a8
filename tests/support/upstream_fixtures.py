"""pytest fixtures for the fake upstream server (registered in tests/conftest.py).

- `fake_upstream_server` (session): one FakeUpstream per test process (per xdist worker) on a free
  loopback port.
- `fake_upstream` (function): the same server, reset before the test (requests, faults, clock,
  weight and credit counters), so every test starts clean.
- `upstream_settings` (function): a `Settings` pointing both providers at the fake, with a test Twelve
  Data key and small timeouts and retry budgets so injected faults resolve quickly.
- `settings_for(fake, **overrides)`: the same as a plain function, for tests that need other knobs.
- `fake_streams_server` (session) / `fake_streams` (function, reset around the test): the fake's
  WebSocket streams (devtools/fake_streams.py) on the same model and clock as `fake_upstream`.
- `stream_settings_for(fake, streams, **overrides)`: `settings_for` plus both stream URLs aimed at
  `streams`, with reconnect back-off, keepalive and heartbeat cut to fractions of a second.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from devtools.fake_streams import FakeStreams
from devtools.fake_upstream import FakeUpstream
from marketdata.config import Settings

__all__ = [
    "TEST_TWELVE_DATA_API_KEY",
    "fake_streams",
    "fake_streams_server",
    "fake_upstream",
    "fake_upstream_server",
    "settings_for",
    "stream_settings_for",
    "upstream_env",
    "upstream_settings",
]

#: The only Twelve Data key the test fake accepts (any other gets the 401 body).
TEST_TWELVE_DATA_API_KEY = "test-td-key-0123456789"
#: Where the live clients point unless a test gives them the fake streams (port 9: discard, refused).
NO_STREAMS_URL = "ws://127.0.0.1:9"


def upstream_env(fake: FakeUpstream) -> dict[str, str]:
    """The environment aiming the service at `fake`, as a deployed function or a subprocess would get it."""
    return {
        "BINANCE_REST_URL": fake.url,
        "TWELVE_DATA_REST_URL": fake.url,
        "TWELVE_DATA_API_KEY": TEST_TWELVE_DATA_API_KEY,
        # The live clients never reach the real providers: a port nothing listens on, unless a test
        # aims them at the fake streams (stream_settings_for, tests/functions' service_env).
        "BINANCE_WS_URL": NO_STREAMS_URL,
        "TWELVE_DATA_WS_URL": NO_STREAMS_URL,
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


# --- the live streams ---------------------------------------------------------------------------


def stream_settings_for(fake: FakeUpstream, streams: FakeStreams, **overrides: Any) -> Settings:
    """Settings aimed at `fake` and its `streams`, with every live timer short enough for tests."""
    live = {
        "BINANCE_WS_URL": streams.url,
        "TWELVE_DATA_WS_URL": streams.url,
        "LIVE_RECONNECT_BASE_SECONDS": "0.05",
        "LIVE_RECONNECT_MAX_SECONDS": "0.2",
        "LIVE_PING_INTERVAL_SECONDS": "0.2",
        "LIVE_PING_TIMEOUT_SECONDS": "0.4",
        "TWELVE_DATA_WS_HEARTBEAT_SECONDS": "0.3",
    }
    return settings_for(fake, **{**live, **overrides})


@pytest.fixture(scope="session")
def fake_streams_server(fake_upstream_server: FakeUpstream) -> Iterator[FakeStreams]:
    streams = FakeStreams(fake_upstream_server).start()
    try:
        yield streams
    finally:
        streams.stop()


@pytest.fixture
def fake_streams(fake_streams_server: FakeStreams, fake_upstream: FakeUpstream) -> Iterator[FakeStreams]:
    fake_streams_server.reset()
    yield fake_streams_server
    fake_streams_server.reset()
