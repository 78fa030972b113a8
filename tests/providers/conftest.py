"""Fixtures for the provider unit tests: clients wired to an httpx.MockTransport and a fake clock."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from marketdata.providers.binance import BinanceClient
from marketdata.providers.twelve_data import TwelveDataClient
from tests.providers.helpers import FakeTime, Recorder, make_settings, utc


@pytest.fixture
def fake_time() -> FakeTime:
    # 2026-01-14 12:00:30 UTC: a Wednesday, 30 s into a minute.
    return FakeTime(now=utc("2026-01-14 12:00:30"))


@pytest.fixture
def binance(fake_time: FakeTime) -> Callable[..., tuple[BinanceClient, Recorder]]:
    def make(recorder: Recorder, **settings: Any) -> tuple[BinanceClient, Recorder]:
        client = BinanceClient(
            make_settings(**settings),
            http=recorder.client(),
            clock=fake_time.time,
            sleep=fake_time.sleep,
            monotonic=fake_time.monotonic,
            rng=lambda: 1.0,  # the full backoff ceiling, so waits are predictable
        )
        return client, recorder

    return make


@pytest.fixture
def twelve(fake_time: FakeTime) -> Callable[..., tuple[TwelveDataClient, Recorder]]:
    def make(recorder: Recorder, **settings: Any) -> tuple[TwelveDataClient, Recorder]:
        client = TwelveDataClient(
            make_settings(**settings),
            http=recorder.client(),
            clock=fake_time.time,
            sleep=fake_time.sleep,
            monotonic=fake_time.monotonic,
            rng=lambda: 1.0,
        )
        return client, recorder

    return make
