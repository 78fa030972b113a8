"""Fixtures of the live tests: a service on this test's database with the fake upstream's frozen clock, the
Management API stand-in (scripts/local_live.py) and a broadcaster posting to it through boto3."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.broadcast import Broadcaster, ManagementApiPoster
from marketdata.intervals import Interval
from marketdata.providers.streams import LiveEvent
from marketdata.schemas import AssetClass
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from marketdata.subscriptions import Subscriptions
from scripts.local_live import ManagementStandIn
from tests.cache.service_helpers import real_service
from tests.support.upstream_fixtures import settings_for

#: Wednesday 2024-05-15 10:37:20 UTC: 20 s into a minute, forex open.
NOW = 1715769440


class FakeStream:
    """A LiveStream whose events the test queues; records what it was told to follow."""

    def __init__(self) -> None:
        self.queued: list[LiveEvent] = []
        self.followed: list[frozenset[tuple[str, Interval]]] = []
        self.closed = False
        self._lock = threading.Lock()

    def push(self, *events: LiveEvent) -> None:
        with self._lock:
            self.queued.extend(events)

    def follow(self, pairs: Collection[tuple[str, Interval]]) -> None:
        self.followed.append(frozenset(pairs))

    def events(self, timeout: float) -> list[LiveEvent]:
        with self._lock:
            out, self.queued = self.queued, []
        return out

    def close(self) -> None:
        self.closed = True


@pytest.fixture
def fake(fake_upstream: FakeUpstream) -> FakeUpstream:
    fake_upstream.now = NOW
    return fake_upstream


@pytest.fixture
def make_service(fake: FakeUpstream, database_url: str) -> Iterator[Callable[..., MarketDataService]]:
    made: list[MarketDataService] = []

    def build(**overrides: Any) -> MarketDataService:
        settings = settings_for(fake, DATABASE_URL=database_url, **overrides)
        service = real_service(settings, CandleStore(settings), fake.clock)
        made.append(service)
        return service

    yield build
    for service in made:
        service.close()
        for provider in service.providers.values():
            provider.close()


@pytest.fixture
def service(make_service: Callable[..., MarketDataService]) -> MarketDataService:
    return make_service()


@pytest.fixture
def standin() -> Iterator[ManagementStandIn]:
    server = ManagementStandIn().start()
    yield server
    server.stop()


@pytest.fixture
def subscriptions(service: MarketDataService) -> Subscriptions:
    assert service.store is not None
    return Subscriptions(service.store)


def subscribe(subscriptions: Subscriptions, connections: Collection[str], symbol: str, interval: str) -> None:
    kind = AssetClass.FOREX if "/" in symbol else AssetClass.CRYPTO
    for connection in connections:
        subscriptions.connect(connection, NOW)
        subscriptions.subscribe(connection, symbol, Interval(interval), kind, NOW, limit=100)


@pytest.fixture
def make_broadcaster(
    service: MarketDataService, standin: ManagementStandIn
) -> Iterator[Callable[..., Broadcaster]]:
    made: list[Broadcaster] = []

    def build(streams: dict[str, Any], *, timeout: float = 2.0) -> Broadcaster:
        poster = ManagementApiPoster(standin.url, timeout=timeout, pool=8, unsigned=True)
        broadcaster = Broadcaster(service, poster, streams, threads=8)
        made.append(broadcaster)
        return broadcaster

    yield build
    for broadcaster in made:
        broadcaster.close()


def wait_for(condition: Callable[[], bool], what: str, seconds: float = 10.0) -> None:
    """Wait until `condition` holds (a generous bound: this proves it happens, not how fast)."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
