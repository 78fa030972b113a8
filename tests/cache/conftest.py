"""Fixtures shared by the cache tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.cache.service_helpers import NOW, FrozenClock, connect, real_service
from tests.support.upstream_fixtures import settings_for


@pytest.fixture
def raw_conn(database_url: str) -> Iterator[Any]:
    """A plain pg8000 connection to this test's database, for looking at the tables directly."""
    conn = connect(database_url)
    yield conn
    conn.close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    """The fake upstream with its clock frozen at NOW."""
    fake_upstream.now = NOW
    return fake_upstream


@pytest.fixture
def make_service(fake: FakeUpstream, database_url: str) -> Iterator[Callable[..., MarketDataService]]:
    """Build services as a Lambda does (the real clients against the fake, the real store) on this
    test's database, or another (url=...), or none (url=None: bypass); settings overrides by their
    environment names. Each service has its own connections (another Lambda); all are closed after."""
    made: list[MarketDataService] = []

    def build(url: str | None = database_url, **overrides: Any) -> MarketDataService:
        settings = settings_for(fake, **({"DATABASE_URL": url} if url else {}), **overrides)
        service = real_service(settings, CandleStore(settings) if url else None, fake.clock)
        made.append(service)
        return service

    yield build
    for service in made:
        service.close()
        for provider in service.providers.values():
            provider.close()


@pytest.fixture
def service(make_service: Callable[..., MarketDataService]) -> MarketDataService:
    """One service on this test's database with the default settings."""
    return make_service()
