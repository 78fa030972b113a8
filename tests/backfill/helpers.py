"""Shared pieces of the backfill tests: a frozen instant, the service wired to the fake upstream, truths."""

from __future__ import annotations

import calendar
from dataclasses import dataclass, field

from devtools.fake_upstream import FakeUpstream
from marketdata.backfill import PlannedJob
from marketdata.config import Settings
from marketdata.intervals import Interval, first_open_at_or_after, last_closed_open
from marketdata.providers.binance import BinanceClient
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.schemas import AssetClass, Candle
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.support.upstream_fixtures import settings_for

# Wednesday 2024-05-15 10:37:20 UTC: 20 s into a minute, so advancing the fake clock by a second or two
# never closes a new 1m bar.
NOW = calendar.timegm((2024, 5, 15, 10, 37, 20))
KLINES = "/api/v3/klines"
TIME_SERIES = "/time_series"


def job(symbol: str, interval: str, since: int) -> PlannedJob:
    return PlannedJob(symbol, Interval(interval), since)


def backfill_settings(fake: FakeUpstream, database_url: str, **overrides: object) -> Settings:
    return settings_for(fake, DATABASE_URL=database_url, **overrides)


@dataclass
class Wiring:
    """The service as the backfill builds it, on the fake's clock; sleeps advance that clock."""

    service: MarketDataService
    fake: FakeUpstream
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.fake.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.fake.advance(seconds)


def wire(
    fake: FakeUpstream, store: CandleStore, settings: Settings, *, credits_per_minute: int | None = None
) -> Wiring:
    """The service on the fake's clock. credits_per_minute: the Twelve Data plan's credits, all of them
    the backfill's (no share reserved for API requests). The symbol lists /v1/candles and the backfill
    check symbols against are read first, and the fake's request log emptied after, so a test counts
    only the requests its jobs make."""
    if credits_per_minute is not None:
        settings = settings.model_copy(
            update={
                "twelve_data_credits_per_minute": credits_per_minute,
                "twelve_data_reserved_credits_per_minute": 0,
            }
        )
    clock = fake.clock
    binance = BinanceClient(settings, clock=clock, sleep=fake.advance)
    twelve = TwelveDataClient(settings, clock=clock, sleep=fake.advance)
    providers = {AssetClass.CRYPTO: binance, AssetClass.FOREX: twelve}
    service = MarketDataService(store, providers, settings, clock=clock)
    for asset_class in AssetClass:
        service.get_symbols(asset_class)
    fake.forget_requests()
    return Wiring(service, fake)


def stored(store: CandleStore, symbol: str, interval: str, start: int, end: int) -> list[Candle]:
    return store.read_candles(symbol, Interval(interval), start, end)


def truth(fake: FakeUpstream, symbol: str, interval: str, start: int, end: int) -> list[Candle]:
    return fake.expected_candles(symbol, interval, start, end)


def span(interval: str, since: int, now: float) -> tuple[int, int]:
    """The closed-bar range a job from `since` covers at `now`."""
    iv = Interval(interval)
    return first_open_at_or_after(iv, since), last_closed_open(iv, now)
