"""TwelveDataPriceStream against the fake's price stream (real sockets, the REST fake's model and clock).

The fake's ticks trace its hour bars (open at :00, high at :15, low at :30, close at :45), so the
ticks of a whole hour aggregate to REST's 1h bar, and those of whole 4H and New York days to the
service's 4H bar and Twelve Data's daily bar. Tests that jump the fake's clock by hours give the
client a clock of its own that stays behind: a bar is then closed by the next tick only, never by the
clock while the jump's ticks are still on their way (closing by the clock has its own test).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from devtools.fake_streams import SERVER_LOGGER, TWELVE_DATA_PATH, FakeStreams
from devtools.fake_upstream import FakeUpstream, expected_bars
from marketdata.intervals import Interval
from marketdata.providers.streams import BarUpdate, LiveStream
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.providers.twelve_data_live import (
    TwelveDataPriceStream,
    _KeyScrubbingLogger,
    forex_bar_end,
    forex_bar_open,
)
from marketdata.schemas import Candle
from tests.providers.helpers import utc
from tests.providers.live_helpers import Collector, package_logs
from tests.support.upstream_fixtures import TEST_TWELVE_DATA_API_KEY, settings_for, stream_settings_for

T = utc("2026-01-14 12:00")  # a Wednesday, winter: New York is UTC-5
EUR = "EUR/USD"


class _Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_stream(fake_upstream: FakeUpstream, fake_streams: FakeStreams) -> Iterator[Any]:
    streams: list[TwelveDataPriceStream] = []

    def make(
        clock: Callable[[], float] | None = None, **overrides: Any
    ) -> tuple[TwelveDataPriceStream, Collector]:
        settings = stream_settings_for(fake_upstream, fake_streams, **overrides)
        stream = TwelveDataPriceStream(settings, clock=clock or fake_upstream.clock)
        streams.append(stream)
        return stream, Collector(stream)

    yield make
    for stream in streams:
        stream.close()


def final_hour(symbol: str, hour: int) -> Candle:
    """The hour bar as it will close (the fake's truth, before the fake's clock gets there)."""
    (bar,) = expected_bars(symbol, "1h", hour, hour, now=hour + 3600)
    return Candle(*bar)


def rest_bars(
    fake: FakeUpstream, symbol: str, interval: Interval, start: int, end: int, *, now: float | None = None
) -> list[Candle]:
    """What the REST client serves for those bars at the fake's clock (or at `now`, both sides)."""
    if now is not None:
        fake.now = now
    client = TwelveDataClient(settings_for(fake), clock=fake.clock)
    try:
        return client.fetch_candles(symbol, interval, start, end).candles
    finally:
        client.close()


def test_ticks_build_the_forming_hour_and_the_whole_hour_closes_equal_to_rest(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    stream, events = make_stream()
    assert isinstance(stream, LiveStream)
    stream.follow([(EUR, Interval.H1)])
    events.wait_status("connected")
    first = events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    assert first.candle.open == first.candle.close == first.candle.high == first.candle.low
    assert fake_streams.received_actions(TWELVE_DATA_PATH)[0] == {
        "action": "subscribe",
        "params": {"symbols": EUR},
    }
    fake_upstream.now = T + 1000  # past the :15 tick (the hour's high)
    moved = events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    assert moved.candle.high > first.candle.open and moved.candle.volume == 0
    fake_upstream.now = T + 3000  # past the :30 and :45 ticks
    events.wait_for(
        lambda e: (
            isinstance(e, BarUpdate)
            and e.candle.close == final_hour(EUR, T).close
            and e.candle.low < first.candle.open
        ),
        "the hour's close",
    )
    fake_upstream.now = T + 3600  # the next hour's first tick closes the hour
    closed = events.wait_bar(EUR, Interval.H1, closed=True)
    assert closed.candle == rest_bars(fake_upstream, EUR, Interval.H1, T, T)[0]
    events.wait_bar(EUR, Interval.H1, closed=False, time_=T + 3600)
    events.drain(0.2)
    assert [b.candle.time for b in events.bars() if b.is_closed] == [T]


def test_4h_is_aggregated_on_the_service_utc_grid_not_twelve_datas(
    fake_upstream: FakeUpstream, make_stream: Any
) -> None:
    fake_upstream.now = (
        T  # 12:00 UTC: a 4H bar of the service opens; Twelve Data's 4h bars open at 10, 14 UTC
    )
    stream, events = make_stream(clock=_Clock(T))
    stream.follow([(EUR, Interval.H4)])
    events.wait_bar(EUR, Interval.H4, closed=False, time_=T)
    for hours in (1, 2, 3):
        fake_upstream.now = T + hours * 3600 + 1
        events.wait_bar(EUR, Interval.H4, closed=False, time_=T)
    fake_upstream.now = T + 4 * 3600
    closed = events.wait_bar(EUR, Interval.H4, closed=True)
    expected = fake_upstream.aggregate_hours(EUR, lambda t: t - t % 14400, T, T + 3 * 3600)
    assert [closed.candle] == [Candle(*b) for b in expected]
    # The service builds forex 4H from REST 1h bars: the same four hours.
    hours = rest_bars(fake_upstream, EUR, Interval.H1, T, T + 3 * 3600)
    assert closed.candle.open == hours[0].open and closed.candle.close == hours[-1].close
    assert closed.candle.high == max(h.high for h in hours) and closed.candle.low == min(h.low for h in hours)
    assert T not in [b.time for b in fake_upstream.expected_bars(EUR, "4h", T - 14400, T + 14400)]


def test_a_day_runs_from_17_00_new_york_and_is_dated_by_its_trading_date(
    fake_upstream: FakeUpstream, make_stream: Any
) -> None:
    day_start = utc("2026-01-13 22:00")  # 17:00 New York on Tuesday: the day dated Wednesday 14th begins
    label = utc("2026-01-14")
    fake_upstream.now = day_start
    stream, events = make_stream(clock=_Clock(day_start))
    stream.follow([(EUR, Interval.D1)])
    # Ticks on the 13th (UTC) already belong to the day dated the 14th.
    events.wait_bar(EUR, Interval.D1, closed=False, time_=label)
    for hours in (6, 12, 18, 23):
        fake_upstream.now = day_start + hours * 3600 + 1
        events.wait_bar(EUR, Interval.D1, closed=False, time_=label)
    fake_upstream.now = day_start + 24 * 3600  # 17:00 New York on the 14th: the next day's first tick
    closed = events.wait_bar(EUR, Interval.D1, closed=True)
    events.wait_bar(EUR, Interval.D1, closed=False, time_=utc("2026-01-15"))
    # The REST client counts the day dated the 14th as open until 00:00 UTC of the 15th: ask it then.
    assert closed.candle == rest_bars(fake_upstream, EUR, Interval.D1, label, label, now=label + 86400)[0]


def test_the_forex_grid_functions_follow_new_york_across_daylight_saving() -> None:
    summer_day_start = utc("2026-07-14 21:00")  # 17:00 EDT
    assert forex_bar_open(Interval.D1, summer_day_start - 1) == utc("2026-07-14")
    assert forex_bar_open(Interval.D1, summer_day_start) == utc("2026-07-15")
    assert forex_bar_end(Interval.D1, utc("2026-07-15")) == summer_day_start + 86400
    assert forex_bar_end(Interval.D1, utc("2026-01-14")) == utc("2026-01-14 22:00")
    # A week is the days dated Monday to Sunday; a month the days dated in it.
    assert forex_bar_open(Interval.W1, utc("2026-01-11 22:30")) == utc(
        "2026-01-12"
    )  # Sunday evening NY-dated Monday
    assert forex_bar_end(Interval.W1, utc("2026-01-12")) == utc("2026-01-18 22:00")
    assert forex_bar_open(Interval.MO1, utc("2026-01-31 22:30")) == utc("2026-02-01")
    assert forex_bar_end(Interval.MO1, utc("2026-02-01")) == utc("2026-02-28 22:00")
    assert forex_bar_open(Interval.M15, utc("2026-01-14 12:44:59")) == utc("2026-01-14 12:30")


def test_a_bar_followed_part_way_is_never_emitted_closed(
    fake_upstream: FakeUpstream, make_stream: Any
) -> None:
    fake_upstream.now = T + 1200  # 20 minutes into the hour: its open and high are already past
    stream, events = make_stream(clock=_Clock(T + 1200))
    stream.follow([(EUR, Interval.H1)])
    events.wait_status("connected")
    fake_upstream.now = T + 2000
    events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    fake_upstream.now = T + 2 * 3600
    closed = events.wait_bar(EUR, Interval.H1, closed=True)
    assert closed.candle.time == T + 3600  # the first whole hour; the partial one only ever formed
    assert closed.candle == rest_bars(fake_upstream, EUR, Interval.H1, T + 3600, T + 3600)[0]
    assert [b.candle.time for b in events.bars() if b.is_closed] == [T + 3600]


def test_the_clock_closes_a_bar_without_ticks_after_the_grace(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    stream, events = make_stream(TWELVE_DATA_WS_CLOSE_GRACE_SECONDS="2")
    stream.follow([(EUR, Interval.H1)])
    events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    close = final_hour(EUR, T).close
    fake_upstream.now = T + 2800  # the :45 close tick has come
    events.wait_for(lambda e: isinstance(e, BarUpdate) and e.candle.close == close, "the close tick")
    fake_streams.paused = True  # no ticks from now on
    fake_upstream.now = T + 3601  # past the end, within the grace: still open
    assert [b for b in events.drain(0.5) if isinstance(b, BarUpdate) and b.is_closed] == []
    fake_upstream.now = T + 3603
    closed = events.wait_bar(EUR, Interval.H1, closed=True)
    assert closed.candle == rest_bars(fake_upstream, EUR, Interval.H1, T, T)[0]


def test_a_refused_pair_is_an_error_status_naming_it_and_the_others_go_on(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    fake_streams.refuse("EUR/GBP")
    stream, events = make_stream()
    stream.follow([(EUR, Interval.M1), ("EUR/GBP", Interval.M1), ("XXX/YYY", Interval.M1)])
    error = events.wait_status("error")
    assert "EUR/GBP" in error.message and "XXX/YYY" in error.message and EUR not in error.message
    events.wait_bar(EUR, Interval.M1, closed=False, time_=T)
    events.drain(0.5)  # several follow checks: the refused pairs are not asked for again
    subscribes = [m for m in fake_streams.received_actions(TWELVE_DATA_PATH) if m["action"] == "subscribe"]
    assert len(subscribes) == 1
    assert sorted(subscribes[0]["params"]["symbols"].split(",")) == ["EUR/GBP", EUR, "XXX/YYY"]
    # Unfollowed and followed anew, a refused pair is asked for again.
    stream.follow([(EUR, Interval.M1)])
    events.drain(0.3)
    stream.follow([(EUR, Interval.M1), ("EUR/GBP", Interval.M1)])
    events.wait_status("error")
    assert [
        m["params"]["symbols"]
        for m in fake_streams.received_actions(TWELVE_DATA_PATH)
        if m["action"] == "subscribe"
    ][-1] == "EUR/GBP"


def test_unfollowing_unsubscribes_and_stops_the_updates(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    stream, events = make_stream()
    stream.follow([(EUR, Interval.M1), ("USD/JPY", Interval.M1)])
    events.wait_bar("USD/JPY", Interval.M1)
    stream.follow([(EUR, Interval.M1)])
    events.until(
        lambda: (
            {"action": "unsubscribe", "params": {"symbols": "USD/JPY"}}
            in fake_streams.received_actions(TWELVE_DATA_PATH)
        ),
        "an unsubscribe sent",
    )
    events.drain(0.2)
    fake_upstream.now = T + 1000
    tail = events.drain(0.5)
    assert [e for e in tail if getattr(e, "symbol", None) == "USD/JPY"] == []
    assert any(getattr(e, "symbol", None) == EUR for e in tail)


def test_heartbeats_are_sent_and_a_silent_connection_is_replaced(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    stream, events = make_stream()  # heartbeat every 0.3 s in tests
    stream.follow([(EUR, Interval.H1)])
    events.wait_bar(EUR, Interval.H1)
    events.until(
        lambda: fake_streams.received_actions(TWELVE_DATA_PATH).count({"action": "heartbeat"}) >= 2,
        "two heartbeats sent",
    )
    fake_streams.silent = True  # nothing at all from the server: not even heartbeat replies
    reconnecting = events.wait_status("reconnecting")
    assert "no message" in reconnecting.message
    fake_streams.silent = False
    events.wait_status("connected")
    events.wait_bar(EUR, Interval.H1)


def test_a_drop_reconnects_and_the_bar_across_the_gap_is_not_emitted_closed(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    stream, events = make_stream(clock=_Clock(T))
    stream.follow([(EUR, Interval.H1)])
    events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    fake_streams.drop_connections()
    events.wait_status("reconnecting")
    events.wait_status("connected")
    fake_upstream.now = T + 1000
    events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    fake_upstream.now = T + 2 * 3600
    closed = events.wait_bar(EUR, Interval.H1, closed=True)
    assert closed.candle.time == T + 3600
    assert closed.candle == rest_bars(fake_upstream, EUR, Interval.H1, T + 3600, T + 3600)[0]


def test_the_api_key_is_in_no_log_status_or_error(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any, caplog: pytest.LogCaptureFixture
) -> None:
    fake_upstream.now = T
    wrong = "wrong-secret-key-5f1e9a"
    with package_logs(caplog):
        stream, events = make_stream()
        stream.follow([(EUR, Interval.H1)])
        events.wait_bar(EUR, Interval.H1)
        fake_streams.drop_connections()
        events.wait_status("connected")
        refused, refused_events = make_stream(TWELVE_DATA_API_KEY=wrong)
        refused.follow([(EUR, Interval.H1)])
        error = refused_events.wait_status("error")
        refused_events.drain(0.3)  # a retry or two
    assert "401" in error.message
    # The websockets library logged the request lines (they hold the key) at DEBUG: scrubbed.
    client_records = [r for r in caplog.records if r.name != SERVER_LOGGER]  # the fake logs what it got
    assert any("GET /v1/quotes/price?apikey=***" in r.getMessage() for r in client_records)
    texts = [r.getMessage() for r in client_records] + [
        str(e) for e in events.statuses() + refused_events.statuses()
    ]
    texts += [r.exc_text or "" for r in client_records]
    for key in (TEST_TWELVE_DATA_API_KEY, wrong):
        assert not [t for t in texts if key in t]


def test_a_missing_key_is_an_error_status_not_a_crash(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams
) -> None:
    settings = stream_settings_for(fake_upstream, fake_streams).model_copy(
        update={"twelve_data_api_key": None}
    )
    stream = TwelveDataPriceStream(settings, clock=fake_upstream.clock)
    try:
        stream.follow([(EUR, Interval.H1)])
        error = Collector(stream).wait_status("error")
        assert "TWELVE_DATA_API_KEY" in error.message
    finally:
        stream.close()


def test_ticks_in_milliseconds_or_with_string_prices_land_in_the_same_bar(
    fake_upstream: FakeUpstream,
) -> None:
    # Unverified details of the real stream, handled either way (no socket: the message handler alone).
    stream = TwelveDataPriceStream(settings_for(fake_upstream), clock=lambda: T)
    stream._pairs = frozenset({(EUR, Interval.M1)})  # followed, without starting the connection thread
    stream._since[EUR] = stream._followed_since[(EUR, Interval.M1)] = T
    for body in (
        {"event": "price", "symbol": EUR, "timestamp": T + 1, "price": 1.1},
        {"event": "price", "symbol": EUR, "timestamp": (T + 2) * 1000, "price": "1.2"},
        {"event": "price", "symbol": EUR, "timestamp": T + 3, "price": "NaN"},
        {"event": "price", "symbol": EUR, "timestamp": T + 4, "price": -1},
        {"event": "price", "symbol": EUR, "timestamp": T + 61, "price": 1.15},
    ):
        stream._on_message(None, json.dumps(body))  # type: ignore[arg-type]
    bars = [e for e in stream.events(0) if isinstance(e, BarUpdate)]
    assert [(b.candle.time, b.candle.close, b.is_closed) for b in bars] == [
        (T, 1.1, False),
        (T, 1.2, False),
        (T, 1.2, True),
        (T + 60, 1.15, False),
    ]
    assert bars[2].candle == Candle(time=T, open=1.1, high=1.2, low=1.1, close=1.2, volume=0.0)


def test_a_day_subscribed_after_17_00_new_york_is_partial_though_before_its_utc_label(
    fake_upstream: FakeUpstream,
) -> None:
    # Subscribed at 23:00 UTC on the 13th: after the day dated the 14th began (22:00 UTC), before
    # 00:00 UTC of its date. The day missed an hour of ticks; the hours after it did not.
    stream = TwelveDataPriceStream(settings_for(fake_upstream), clock=lambda: T)
    subscribed = utc("2026-01-13 23:00")
    stream._pairs = frozenset({(EUR, Interval.D1), (EUR, Interval.H1)})
    stream._since[EUR] = subscribed
    stream._followed_since.update({(EUR, Interval.D1): subscribed, (EUR, Interval.H1): subscribed})
    for t, price in ((utc("2026-01-14 01:00"), 1.1), (utc("2026-01-14 22:00:01"), 1.2)):
        stream._on_message(
            None, json.dumps({"event": "price", "symbol": EUR, "timestamp": t, "price": price})
        )  # type: ignore[arg-type]
    closed = [
        (e.interval, e.candle.time) for e in stream.events(0) if isinstance(e, BarUpdate) and e.is_closed
    ]
    assert closed == [(Interval.H1, utc("2026-01-14 01:00"))]


def test_an_interval_added_for_a_subscribed_pair_starts_with_a_partial_bar(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams, make_stream: Any
) -> None:
    fake_upstream.now = T
    clock = _Clock(T)
    stream, events = make_stream(clock=clock)
    stream.follow([(EUR, Interval.H1)])
    events.wait_bar(EUR, Interval.H1, closed=False, time_=T)
    clock.now = T + 600  # 4H followed ten minutes into its bar (12:00 UTC), on the same subscription
    stream.follow([(EUR, Interval.H1), (EUR, Interval.H4)])
    fake_upstream.now = T + 1000
    events.wait_bar(EUR, Interval.H4, closed=False, time_=T)
    fake_upstream.now = T + 4 * 3600
    events.wait_bar(EUR, Interval.H1, closed=True, time_=T + 3 * 3600)
    events.drain(0.3)
    assert (T + 4 * 3600, False) in [(b.candle.time, b.is_closed) for b in events.bars(EUR, Interval.H4)]
    assert [b.interval for b in events.bars() if b.is_closed] == [Interval.H1] * 4


def test_the_websockets_logger_scrubs_the_key_from_messages_and_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "k/ey+42"  # URL-encoded in the connection URL: k%2Fey%2B42
    log = _KeyScrubbingLogger(logging.getLogger("tests.scrub"), lambda: secret)
    with caplog.at_level(logging.DEBUG, logger="tests.scrub"):
        log.debug("> GET %s HTTP/1.1", "/v1/quotes/price?apikey=k%2Fey%2B42")
        try:
            raise ValueError(f"bad uri wss://h/v1/quotes/price?apikey={secret}")
        except ValueError:
            log.debug("! failed", exc_info=True)
        log.info("unrelated %d", 7)
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "> GET /v1/quotes/price?apikey=*** HTTP/1.1"
    assert "ValueError: bad uri wss://h/v1/quotes/price?apikey=***" in messages[1]
    assert messages[2] == "unrelated 7"
    assert not [m for m in messages if secret in m or "k%2Fey%2B42" in m]
