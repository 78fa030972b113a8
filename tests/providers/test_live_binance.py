"""BinanceKlineStream against the fake's kline streams (real sockets, the REST fake's model and clock)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from devtools.fake_streams import BINANCE_PATH, FakeStreams
from devtools.fake_upstream import FakeUpstream
from marketdata.intervals import Interval
from marketdata.providers.binance import BinanceClient
from marketdata.providers.binance_live import MAX_STREAMS_PER_CONNECTION, BinanceKlineStream, stream_name
from marketdata.providers.streams import LiveStream
from marketdata.schemas import Candle
from tests.providers.helpers import utc
from tests.providers.live_helpers import Collector, package_logs
from tests.support.upstream_fixtures import settings_for, stream_settings_for

T = utc("2026-01-14 12:00")  # a Wednesday
BTC = "BTCUSDT"


@pytest.fixture
def make_stream(fake_upstream: FakeUpstream, fake_streams: FakeStreams) -> Iterator[Any]:
    streams: list[BinanceKlineStream] = []

    def make(**overrides: Any) -> tuple[BinanceKlineStream, Collector]:
        settings = stream_settings_for(fake_upstream, fake_streams, **overrides)
        stream = BinanceKlineStream(settings, clock=fake_upstream.clock)
        streams.append(stream)
        return stream, Collector(stream)

    yield make
    for stream in streams:
        stream.close()


def rest_bar(fake: FakeUpstream, symbol: str, interval: Interval, open_time: int) -> Candle:
    """What the REST client serves for that bar at the fake's clock."""
    client = BinanceClient(settings_for(fake), clock=fake.clock)
    try:
        result = client.fetch_candles(symbol, interval, open_time, open_time)
    finally:
        client.close()
    assert [c.time for c in result.candles] == [open_time]
    return result.candles[0]


def follow_btc(fake_upstream: FakeUpstream, make_stream: Any) -> tuple[BinanceKlineStream, Collector]:
    """A client following BTCUSDT 1m, 5 s into a minute, once its first update has come."""
    fake_upstream.now = T + 5
    stream, events = make_stream()
    stream.follow([(BTC, Interval.M1)])
    events.wait_bar(BTC, Interval.M1)
    return stream, events


def as_candle(bar: Any) -> Candle:
    return Candle(*bar)


def test_forming_bar_moves_and_the_closed_bar_comes_once_equal_to_rest(
    fake_upstream: FakeUpstream, make_stream: Any
) -> None:
    fake_upstream.now = T + 10
    stream, events = make_stream()
    assert isinstance(stream, LiveStream)
    stream.follow([(BTC, Interval.M1)])
    events.wait_status("connected")
    first = events.wait_bar(BTC, Interval.M1, closed=False, time_=T)
    assert first.candle == as_candle(fake_upstream.open_bar(BTC, "1m"))

    fake_upstream.now = T + 40
    moved = events.wait_bar(BTC, Interval.M1, closed=False, time_=T)
    while moved.candle != as_candle(fake_upstream.open_bar(BTC, "1m")):
        moved = events.wait_bar(BTC, Interval.M1, closed=False, time_=T)
    assert moved.candle.open == first.candle.open and moved.candle.close != first.candle.close

    fake_upstream.now = T + 65
    closed = events.wait_bar(BTC, Interval.M1, closed=True)
    assert closed.candle.time == T
    assert closed.candle == rest_bar(fake_upstream, BTC, Interval.M1, T)
    events.wait_bar(BTC, Interval.M1, closed=False, time_=T + 60)
    events.drain(0.3)  # the fake keeps pushing: the closed bar must not come again
    assert [b.candle.time for b in events.bars(BTC) if b.is_closed] == [T]
    # After the close, no update of the closed bar as if it were still forming.
    after = events.events[events.events.index(closed) + 1 :]
    assert all(getattr(e, "candle", None) is None or e.candle.time == T + 60 for e in after)


def test_the_service_intervals_map_to_binance_streams_and_back(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T + 3599
    stream, events = make_stream()
    stream.follow([(BTC, Interval.H1), (BTC, Interval.MO1)])
    events.wait_bar(BTC, Interval.H1, closed=False, time_=T)
    events.wait_bar(BTC, Interval.MO1, closed=False, time_=utc("2026-01-01"))
    assert fake_streams.connections[-1] == f"{BINANCE_PATH}?streams=btcusdt@kline_1M/btcusdt@kline_1h"
    assert stream_name(BTC, Interval.H4) == "btcusdt@kline_4h"
    fake_upstream.now = T + 3601
    closed = events.wait_bar(BTC, Interval.H1, closed=True)
    assert closed.candle == rest_bar(fake_upstream, BTC, Interval.H1, T)


def test_follow_changes_go_out_as_subscribe_and_unsubscribe_requests_with_ids(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    stream, events = follow_btc(fake_upstream, make_stream)
    stream.follow([(BTC, Interval.M1), ("ETHUSDT", Interval.M5)])
    events.wait_bar("ETHUSDT", Interval.M5, closed=False, time_=T)
    stream.follow([("ETHUSDT", Interval.M5)])
    events.until(
        lambda: any(m.get("method") == "UNSUBSCRIBE" for m in fake_streams.received_actions(BINANCE_PATH)),
        "an UNSUBSCRIBE sent",
    )
    events.drain(0.3)
    tail = events.drain(0.4)
    assert [e for e in tail if getattr(e, "symbol", None) == BTC] == []
    assert any(getattr(e, "symbol", None) == "ETHUSDT" for e in tail)
    requests = fake_streams.received_actions(BINANCE_PATH)
    assert [(m["method"], m["params"]) for m in requests] == [
        ("SUBSCRIBE", ["ethusdt@kline_5m"]),
        ("UNSUBSCRIBE", ["btcusdt@kline_1m"]),
    ]
    ids = [m["id"] for m in requests]
    assert len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids)
    # One connection throughout: live changes do not reconnect.
    assert len(fake_streams.connections) == 1

    stream.follow([])
    events.until(lambda: fake_streams.open_connections() == 0, "the connection closed")


def test_many_follow_changes_stay_within_binance_request_rate(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    # The fake closes a connection that sends more than 5 requests within a second, as Binance does.
    fake_upstream.now = T + 5
    stream, events = make_stream()
    symbols = ["BTCUSDT", "ETHUSDT", "BNBUSDT", "SOLUSDT", "DOGEUSDT", "ETHBTC", "BNBBTC", "BNBBUSD"]
    stream.follow([(symbols[0], Interval.M1)])
    events.wait_bar(symbols[0], Interval.M1)
    for n in range(2, len(symbols) + 1):
        stream.follow([(s, Interval.M1) for s in symbols[:n]])
        events.drain(0.05)
    for symbol in symbols:
        events.wait_bar(symbol, Interval.M1, time_=T)
    assert [s.status for s in events.statuses()] == ["connected"]
    assert len(fake_streams.connections) == 1


def test_more_than_1024_pairs_are_cut_to_the_limit_with_an_error_status(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T + 5
    stream, events = make_stream()
    pairs = [(BTC, Interval.M1)] + [
        (f"X{i:04d}USDT", Interval.M1) for i in range(MAX_STREAMS_PER_CONNECTION + 5)
    ]
    stream.follow(pairs)
    error = events.wait_status("error")
    assert "1024" in error.message
    events.until(
        lambda: (
            sum(len(m["params"]) for m in fake_streams.received_actions(BINANCE_PATH)) + 100
            >= MAX_STREAMS_PER_CONNECTION
        ),
        "every stream subscribed",
    )
    events.wait_bar(BTC, Interval.M1)
    events.drain(0.5)
    subscribed = 100 + sum(len(m["params"]) for m in fake_streams.received_actions(BINANCE_PATH))
    assert subscribed == MAX_STREAMS_PER_CONNECTION
    # The fake drops a connection past 1024 streams: there was none.
    assert "reconnecting" not in [s.status for s in events.statuses()]


def test_a_bad_bar_is_dropped_like_a_rest_bar(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.now = T + 5
    fake_streams.bad_bars = 1
    stream, events = make_stream()
    with package_logs(caplog, logging.WARNING):
        stream.follow([(BTC, Interval.M1)])
        events.wait_bar(BTC, Interval.M1)
    assert fake_streams.bad_bars == 0
    assert any("dropping bad bar" in r.getMessage() and "stream" in r.getMessage() for r in caplog.records)
    assert all(b.candle.low <= b.candle.high for b in events.bars())


def test_a_drop_reports_reconnecting_then_connected_and_updates_resume(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    _, events = follow_btc(fake_upstream, make_stream)
    fake_streams.drop_connections()
    reconnecting = events.wait_status("reconnecting")
    assert reconnecting.message
    events.wait_status("connected")
    fake_upstream.now = T + 30
    resumed = events.wait_bar(BTC, Interval.M1, closed=False, time_=T)
    while resumed.candle != as_candle(fake_upstream.open_bar(BTC, "1m")):
        resumed = events.wait_bar(BTC, Interval.M1, closed=False, time_=T)
    assert len(fake_streams.connections) == 2


def test_unanswered_pings_drop_the_connection_and_it_comes_back(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    _, events = follow_btc(fake_upstream, make_stream)
    fake_streams.answer_pings = False
    events.wait_status("reconnecting")
    fake_streams.answer_pings = True
    events.wait_status("connected")
    events.wait_bar(BTC, Interval.M1)


def test_the_connection_is_rolled_over_before_its_maximum_age_without_a_gap(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T + 5
    stream, events = make_stream(BINANCE_WS_MAX_CONNECTION_SECONDS="3600")
    stream.follow([(BTC, Interval.H1)])
    events.wait_bar(BTC, Interval.H1)
    assert len(fake_streams.connections) == 1
    fake_upstream.now = T + 3602  # the hour closes on the first connection, not yet an hour old
    closed = events.wait_bar(BTC, Interval.H1, closed=True)
    assert closed.candle == rest_bar(fake_upstream, BTC, Interval.H1, T)
    fake_upstream.now = T + 3606  # now it is (the fake's clock is the client's)
    events.until(lambda: len(fake_streams.connections) == 2, "a second connection")
    events.until(lambda: fake_streams.open_connections() == 1, "the old connection closed")
    events.wait_bar(BTC, Interval.H1, closed=False, time_=T + 3600)
    # A planned rollover is not a drop: subscribers see no status change.
    assert [s.status for s in events.statuses()] == ["connected"]


def test_a_server_shutdown_notice_moves_to_a_new_connection_at_once(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    _, events = follow_btc(fake_upstream, make_stream)
    fake_streams.announce_shutdown()
    events.until(lambda: len(fake_streams.connections) == 2, "a second connection")
    events.until(lambda: fake_streams.open_connections() == 1, "the old connection closed")
    fake_upstream.now = T + 30
    events.wait_bar(BTC, Interval.M1, closed=False, time_=T)
    assert [s.status for s in events.statuses()] == ["connected"]
