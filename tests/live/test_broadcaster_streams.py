"""The broadcaster with the providers' real WebSocket clients (STREAM_FACTORIES) against the fake upstream's
streams (real sockets), posting through boto3 to the local Management API stand-in. The fake's clock is
frozen and moved by the tests, so bars close without waiting for real minutes."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.fake_streams import BINANCE_PATH, TWELVE_DATA_PATH, FakeStreams
from devtools.fake_upstream import FakeUpstream
from marketdata.broadcast import Broadcaster, ManagementApiPoster, build_streams
from marketdata.intervals import Interval
from marketdata.live_sources import RestClosedBars
from marketdata.providers.streams import BarUpdate
from marketdata.schemas import Candle
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from marketdata.subscriptions import Subscriptions
from scripts.local_live import ManagementStandIn
from tests.cache.service_helpers import real_service
from tests.live.conftest import NOW, FakeStream, subscribe
from tests.support.upstream_fixtures import stream_settings_for

KLINES = "/api/v3/klines"
TIME_SERIES = "/time_series"
MINUTE = 60
FORMING = NOW - NOW % MINUTE  # the 1m bar forming at NOW
FIELDS = ("time", "open", "high", "low", "close", "volume")


@pytest.fixture
def stream_service(
    fake: FakeUpstream, fake_streams: FakeStreams, database_url: str
) -> Iterator[MarketDataService]:
    settings = stream_settings_for(fake, fake_streams, DATABASE_URL=database_url)
    service = real_service(settings, CandleStore(settings), fake.clock)
    yield service
    service.close()
    for provider in service.providers.values():
        provider.close()


@pytest.fixture
def subs(stream_service: MarketDataService) -> Subscriptions:
    assert stream_service.store is not None
    return Subscriptions(stream_service.store)


@pytest.fixture
def live_broadcaster(
    stream_service: MarketDataService, standin: ManagementStandIn
) -> Iterator[Callable[..., Broadcaster]]:
    made: list[Broadcaster] = []

    def build(streams: dict[str, Any] | None = None) -> Broadcaster:
        poster = ManagementApiPoster(standin.url, timeout=5.0, pool=8, unsigned=True)
        broadcaster = Broadcaster(stream_service, poster, streams or build_streams(stream_service), threads=8)
        made.append(broadcaster)
        return broadcaster

    yield build
    for broadcaster in made:
        broadcaster.close()


def tick_until(
    broadcaster: Broadcaster, condition: Callable[[], bool], what: str, seconds: float = 30.0
) -> None:
    """Tick (each waiting up to 0.2 s for the streams) until `condition` holds: a generous bound that
    proves it happens, not how fast."""
    import time

    deadline = time.monotonic() + seconds
    while True:
        broadcaster.tick(wait=0.2)
        broadcaster.flush(timeout=10)
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {seconds:g} s")


def prices(standin: ManagementStandIn, connection: str) -> list[dict[str, Any]]:
    return [m for m in standin.messages(connection) if m["type"] == "price"]


def closed_of(standin: ManagementStandIn, connection: str) -> list[dict[str, Any]]:
    return [m for m in prices(standin, connection) if m["is_closed"]]


def rest_row(fake: FakeUpstream, symbol: str, time: int) -> dict[str, Any]:
    (bar,) = fake.expected_candles(symbol, "1m", time, time)
    return {name: getattr(bar, name) for name in FIELDS}


def test_the_real_clients_are_wired_and_a_run_without_subscribers_connects_nowhere(
    live_broadcaster, fake_streams, fake
) -> None:
    broadcaster = live_broadcaster()
    assert type(broadcaster.streams["binance"]).__name__ == "BinanceKlineStream"
    assert isinstance(broadcaster.streams["twelve_data"], RestClosedBars)
    for _ in range(3):
        broadcaster.tick(wait=0.2)
    broadcaster.flush()
    assert fake_streams.connections == [] and fake_streams.open_connections() == 0
    assert broadcaster.stats.posts == 0


def test_every_subscriber_gets_each_update_through_one_upstream_subscription_per_pair(
    live_broadcaster, subs, standin, fake_streams, fake
) -> None:
    btc, eth, fx = ["b1=", "b2=", "b3="], ["e1=", "e2="], ["f1=", "f2="]
    subscribe(subs, btc, "BTCUSDT", "1m")
    subscribe(subs, eth, "ETHUSDT", "5m")
    subscribe(subs, fx, "EUR/USD", "1m")
    broadcaster = live_broadcaster()
    for step in range(3):  # the forming bars move with the fake's clock
        if step:
            fake.advance(7)
        moved_to = fake.now
        tick_until(
            broadcaster,
            lambda: [m["candle"] for m in prices(standin, btc[0])[-1:]] == [_open_row(fake, "BTCUSDT", "1m")],
            f"BTCUSDT's forming bar at {moved_to}",
        )
    tick_until(broadcaster, lambda: all(prices(standin, c) for c in eth + fx), "ETHUSDT and EUR/USD bars")
    broadcaster.flush()

    for group in (btc, eth, fx):  # each subscriber of a pair got the same updates, in the same order
        first = prices(standin, group[0])
        assert first and all(prices(standin, c) == first for c in group[1:]), group
    assert len({m["candle"]["close"] for m in prices(standin, btc[0])}) >= 2  # it moved
    assert {m["symbol"] for m in prices(standin, fx[0])} == {"EUR/USD"}
    # One upstream stream per pair, whatever the number of subscribers: counted at the fake.
    binance_streams = Counter(
        name
        for path in fake_streams.connections
        if path.startswith(BINANCE_PATH)
        for name in path.partition("streams=")[2].split("/")
        if name
    )
    for message in fake_streams.received_actions(BINANCE_PATH):
        if message.get("method") == "SUBSCRIBE":
            binance_streams.update(message["params"])
    assert binance_streams == {"btcusdt@kline_1m": 1, "ethusdt@kline_5m": 1}
    td = [m for m in fake_streams.received_actions(TWELVE_DATA_PATH) if m.get("action") == "subscribe"]
    assert [m["params"]["symbols"] for m in td] == ["EUR/USD"]


def _open_row(fake: FakeUpstream, symbol: str, interval: str) -> dict[str, Any]:
    bar = fake.open_bar(symbol, interval)
    assert bar is not None
    return {name: getattr(bar, name) for name in FIELDS}


def test_a_binance_closed_bar_arrives_once_closed_and_is_stored(
    live_broadcaster, subs, standin, stream_service, fake
) -> None:
    subscribe(subs, ["a=", "b="], "BTCUSDT", "1m")
    broadcaster = live_broadcaster()
    tick_until(broadcaster, lambda: bool(prices(standin, "b=")), "the forming bar")
    fake.now = FORMING + MINUTE + 1  # the minute boundary: the stream sends the bar with x=true
    tick_until(broadcaster, lambda: bool(closed_of(standin, "b=")), "the closed bar")
    tick_until(
        broadcaster,
        lambda: prices(standin, "b=")[-1]["candle"]["time"] == FORMING + MINUTE,
        "the next forming bar",
    )
    for connection in ("a=", "b="):
        closed = closed_of(standin, connection)
        assert [m["candle"] for m in closed] == [rest_row(fake, "BTCUSDT", FORMING)], connection
    assert broadcaster.stats.closed_stored == 1
    fake.forget_requests()
    answer = stream_service.get_historical_candles("BTCUSDT", "1m", FORMING, FORMING)
    assert answer.cache.value == "hit" and fake.count(KLINES) == 0
    assert [_row(c) for c in answer.candles] == [rest_row(fake, "BTCUSDT", FORMING)]


def test_a_forex_closed_bar_is_rests_copy_not_the_tick_aggregate(
    live_broadcaster, subs, standin, stream_service, fake
) -> None:
    subscribe(subs, ["fx="], "EUR/USD", "1m")
    broadcaster = live_broadcaster()
    tick_until(broadcaster, lambda: bool(prices(standin, "fx=")), "the forming forex bar")
    ticks = prices(standin, "fx=")[-1]["candle"]
    assert ticks["time"] == FORMING
    fake.now = FORMING + MINUTE + 1  # a tick in the next minute: the stream's bar is over
    tick_until(broadcaster, lambda: bool(closed_of(standin, "fx=")), "the closed forex bar")
    tick_until(
        broadcaster, lambda: prices(standin, "fx=")[-1]["candle"]["time"] == FORMING + MINUTE, "the next bar"
    )
    (closed,) = closed_of(standin, "fx=")
    rest = rest_row(fake, "EUR/USD", FORMING)
    assert closed["candle"] == rest
    assert ticks != rest  # the fake's minute bars are not built from its ticks: REST's copy was posted
    fake.forget_requests()
    answer = stream_service.get_historical_candles("EUR/USD", "1m", FORMING, FORMING)
    assert answer.cache.value == "hit" and fake.count(TIME_SERIES) == 0
    assert [_row(c) for c in answer.candles] == [rest]


def test_a_stream_drop_is_reconnecting_then_connected_and_updates_resume(
    live_broadcaster, subs, standin, fake_streams, fake
) -> None:
    subscribe(subs, ["a="], "BTCUSDT", "1m")
    broadcaster = live_broadcaster()
    tick_until(broadcaster, lambda: bool(prices(standin, "a=")), "the forming bar")
    fake_streams.drop_connections()

    def statuses() -> list[str]:
        return [m["status"] for m in standin.messages("a=") if m["type"] == "status"]

    tick_until(
        broadcaster, lambda: statuses()[-2:] == ["reconnecting", "connected"], "reconnecting, connected"
    )
    seen = len(standin.messages("a="))
    fake.advance(7)
    tick_until(broadcaster, lambda: any(m["type"] == "price" for m in standin.messages("a=")[seen:]),
               "a bar after the reconnect")  # fmt: skip
    after = [m for m in standin.messages("a=")[seen:] if m["type"] == "price"]
    assert after[-1]["candle"] == _open_row(fake, "BTCUSDT", "1m")
    assert all(m["provider"] == "binance" for m in standin.messages("a=") if m["type"] == "status")


# --- RestClosedBars on its own: which bar is REST's, and on which grid -----------------------------


def _bar(time: int, close: float) -> Candle:
    return Candle(time, 1.07, max(1.08, close), min(1.06, close), close, 0.0)


def _row(candle: Candle) -> dict[str, Any]:
    return {name: getattr(candle, name) for name in FIELDS}


def test_rest_closed_bars_drops_the_streams_closed_bar_and_posts_rests_once(stream_service, fake) -> None:
    inner = FakeStream()
    stream = RestClosedBars(stream_service, inner)
    stream.follow([("EUR/USD", Interval.M1)])
    inner.push(BarUpdate("EUR/USD", Interval.M1, _bar(FORMING, 1.0712), is_closed=False))
    assert [e.candle.close for e in stream.events(0)] == [1.0712]  # type: ignore[union-attr]
    fake.now = FORMING + MINUTE + 1
    inner.push(
        BarUpdate("EUR/USD", Interval.M1, _bar(FORMING, 1.0799), is_closed=True),  # a tick aggregate
        BarUpdate("EUR/USD", Interval.M1, _bar(FORMING + MINUTE, 1.0701), is_closed=False),
    )
    got = stream.events(0)
    closed = [e for e in got if isinstance(e, BarUpdate) and e.is_closed]
    assert [_row(e.candle) for e in closed] == [rest_row(fake, "EUR/USD", FORMING)]
    inner.push(BarUpdate("EUR/USD", Interval.M1, _bar(FORMING, 1.0755), is_closed=False))  # a late tick
    assert stream.events(0) == [] and stream.events(0) == []  # announced once; the late tick dropped


def test_a_forex_day_closed_at_17_new_york_reaches_subscribers_as_v1_candles_dates_it(
    stream_service, fake
) -> None:
    day = 1715731200  # Wednesday 2024-05-15 00:00 UTC; its trading day ends 21:00 UTC (17:00 New York, EDT)
    fake.now = day + 20 * 3600
    inner = FakeStream()
    stream = RestClosedBars(stream_service, inner)
    stream.follow([("EUR/USD", Interval.D1)])
    inner.push(BarUpdate("EUR/USD", Interval.D1, _bar(day, 1.0811), is_closed=False))
    assert [e.candle.time for e in stream.events(0)] == [day]  # type: ignore[union-attr]
    # 22:00 UTC: the stream's next trading day (dated the 16th) has begun; the service's 1D bar of the
    # 15th is open until midnight UTC, so the 16th's bar is held, not posted ahead of /v1/candles.
    fake.now = day + 22 * 3600
    inner.push(
        BarUpdate("EUR/USD", Interval.D1, _bar(day, 1.0899), is_closed=True),  # the ticks' day, not REST's
        BarUpdate("EUR/USD", Interval.D1, _bar(day + 86400, 1.0822), is_closed=False),
    )
    assert stream.events(0) == []
    fake.now = day + 86400 + 60  # midnight UTC passed: the 15th closes (REST's copy), then the 16th forms
    got = [e for e in stream.events(0) if isinstance(e, BarUpdate)]
    assert [(e.candle.time, e.is_closed) for e in got] == [(day, True), (day + 86400, False)]
    answer = stream_service.get_historical_candles("EUR/USD", "1D", day, day)
    assert answer.candles == [got[0].candle] and answer.cache.value == "hit"
