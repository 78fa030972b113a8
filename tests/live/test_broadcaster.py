"""The broadcaster (marketdata.broadcast) against a fake LiveStream and the polled open-bar source, posting
through boto3 to the local Management API stand-in (an HTTP server recording posts, 410 for gone ids)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from marketdata.broadcast import build_streams
from marketdata.intervals import Interval
from marketdata.live_sources import PolledOpenBarStream
from marketdata.providers.streams import BarUpdate, StreamStatus
from marketdata.schemas import Candle
from tests.live.conftest import NOW, FakeStream, subscribe, wait_for

KLINES = "/api/v3/klines"
MINUTE = 60
FORMING = NOW - NOW % MINUTE  # the 1m bar forming at NOW


def bar(time: int, close: float) -> Candle:
    return Candle(time, 100.0, max(101.0, close), min(99.0, close), close, 5.0)


def prices(standin: Any, connection: str) -> list[dict[str, Any]]:
    return [m for m in standin.messages(connection) if m["type"] == "price"]


def test_every_subscriber_gets_each_update_of_its_pair_and_only_its_pair(
    subscriptions, make_broadcaster, standin
) -> None:
    subscribe(subscriptions, ["a=", "b=", "c="], "BTCUSDT", "1m")
    subscribe(subscriptions, ["d="], "ETHUSDT", "5m")
    stream = FakeStream()
    broadcaster = make_broadcaster({"binance": stream, "twelve_data": FakeStream()})
    for close in (100.5, 101.5, 99.5):
        stream.push(BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, close), is_closed=False))
        broadcaster.tick()
        broadcaster.flush()

    assert stream.followed[-1] == {("BTCUSDT", Interval.M1), ("ETHUSDT", Interval.M5)}
    for connection in ("a=", "b=", "c="):
        got = prices(standin, connection)
        assert [m["candle"]["close"] for m in got] == [100.5, 101.5, 99.5]
        assert all(m["symbol"] == "BTCUSDT" and m["interval"] == "1m" and not m["is_closed"] for m in got)
        assert set(got[0]["candle"]) == {"time", "open", "high", "low", "close", "volume"}
    assert standin.messages("d=") == []
    assert broadcaster.stats.posts == 9


def test_a_newer_forming_bar_of_the_same_tick_supersedes_the_older_and_closed_bars_all_go(
    subscriptions, make_broadcaster, standin
) -> None:
    subscribe(subscriptions, ["a="], "BTCUSDT", "1m")
    stream = FakeStream()
    broadcaster = make_broadcaster({"binance": stream})
    stream.push(
        BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, 100.1), is_closed=False),
        BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, 100.2), is_closed=True),
        BarUpdate("BTCUSDT", Interval.M1, bar(FORMING + MINUTE, 100.3), is_closed=False),
        BarUpdate("BTCUSDT", Interval.M1, bar(FORMING + MINUTE, 100.4), is_closed=False),
    )
    broadcaster.tick()
    broadcaster.flush()
    got = [(m["candle"]["close"], m["is_closed"]) for m in prices(standin, "a=")]
    assert got == [(100.2, True), (100.4, False)]


def test_a_new_subscriber_gets_the_latest_bar_at_once(subscriptions, make_broadcaster, standin) -> None:
    subscribe(subscriptions, ["early="], "BTCUSDT", "1m")
    stream = FakeStream()
    broadcaster = make_broadcaster({"binance": stream})
    stream.push(BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, 100.7), is_closed=False))
    broadcaster.tick()
    subscribe(subscriptions, ["late="], "BTCUSDT", "1m")
    broadcaster.tick()  # the bar did not move
    broadcaster.flush()
    assert [m["candle"]["close"] for m in prices(standin, "late=")] == [100.7]
    assert [m["candle"]["close"] for m in prices(standin, "early=")] == [100.7]


def test_a_closed_bar_from_a_stream_is_posted_closed_and_stored_so_candles_need_no_fetch(
    subscriptions, make_broadcaster, standin, service, fake
) -> None:
    subscribe(subscriptions, ["a="], "BTCUSDT", "1m")
    stream = FakeStream()
    broadcaster = make_broadcaster({"binance": stream})
    closed = bar(FORMING - MINUTE, 100.9)
    stream.push(BarUpdate("BTCUSDT", Interval.M1, closed, is_closed=True))
    broadcaster.tick()
    broadcaster.flush()

    (message,) = prices(standin, "a=")
    assert message["is_closed"] is True and message["candle"]["time"] == closed.time
    store = service.store
    assert store.read_candles("BTCUSDT", "1m", closed.time - MINUTE, closed.time + MINUTE) == [closed]
    (covered,) = store.read_coverage("BTCUSDT", "1m", closed.time, closed.time)
    assert covered[0] <= closed.time <= covered[1]
    assert broadcaster.stats.closed_stored == 1
    fake.forget_requests()
    answer = service.get_historical_candles("BTCUSDT", "1m", closed.time, closed.time)
    assert answer.candles == [closed] and answer.cache.value == "hit"
    assert fake.count(KLINES) == 0


def test_a_gone_connection_is_removed_and_the_others_still_get_their_bars(
    subscriptions, make_broadcaster, standin
) -> None:
    subscribe(subscriptions, ["alive=", "dead="], "BTCUSDT", "1m")
    standin.mark_gone("dead=")
    stream = FakeStream()
    broadcaster = make_broadcaster({"binance": stream})
    stream.push(BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, 100.5), is_closed=False))
    broadcaster.tick()
    broadcaster.flush()

    assert subscriptions.of_connection("dead=") == []
    assert subscriptions.of_connection("alive=") == [("BTCUSDT", Interval.M1)]
    assert broadcaster.stats.gone == 1
    stream.push(BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, 100.6), is_closed=False))
    broadcaster.tick()
    broadcaster.flush()
    assert [m["candle"]["close"] for m in prices(standin, "alive=")] == [100.5, 100.6]


def test_a_slow_connection_never_holds_up_the_others_or_the_next_tick(
    subscriptions, make_broadcaster, standin
) -> None:
    subscribe(subscriptions, ["fast=", "slow="], "BTCUSDT", "1m")
    standin.make_slow("slow=", 3.0)
    stream = FakeStream()
    broadcaster = make_broadcaster({"binance": stream}, timeout=0.5)
    for close in (100.1, 100.2):
        stream.push(BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, close), is_closed=False))
        broadcaster.tick()  # no flush: a tick never waits for posts
        wait_for(lambda c=close: [m["candle"]["close"] for m in prices(standin, "fast=")][-1:] == [c],
                 f"the fast connection's bar {close}")  # fmt: skip
    # The slow connection's first post is still hanging: its second bar waits in its outbox, not in a thread.
    assert "slow=" in broadcaster._in_flight
    broadcaster.flush()
    assert broadcaster.stats.failed >= 1  # the slow post timed out (the client gave up after 0.5 s)


def test_a_reconnecting_stream_reaches_its_providers_subscribers_then_recovery(
    subscriptions, make_broadcaster, standin
) -> None:
    subscribe(subscriptions, ["crypto="], "BTCUSDT", "1m")
    subscribe(subscriptions, ["forex="], "EUR/USD", "1m")
    binance = FakeStream()
    broadcaster = make_broadcaster({"binance": binance, "twelve_data": FakeStream()})
    binance.push(StreamStatus("reconnecting", "binance: connection dropped; reconnecting in 1 s"))
    broadcaster.tick()
    binance.push(
        StreamStatus("connected", "binance: connected"),
        BarUpdate("BTCUSDT", Interval.M1, bar(FORMING, 100.5), is_closed=False),
    )
    broadcaster.tick()
    broadcaster.flush()

    got = [(m["type"], m.get("status")) for m in standin.messages("crypto=")]
    assert got == [("status", "reconnecting"), ("status", "connected"), ("price", None)]
    first = standin.messages("crypto=")[0]
    assert first["provider"] == "binance" and "dropped" in first["message"]
    assert standin.messages("forex=") == []


def test_a_stream_in_error_is_replaced_by_the_polled_source(subscriptions, make_broadcaster, standin) -> None:
    subscribe(subscriptions, ["a="], "BTCUSDT", "1m")
    binance = FakeStream()
    broadcaster = make_broadcaster({"binance": binance})
    binance.push(StreamStatus("error", "binance: refused"))
    broadcaster.tick()
    assert binance.closed and isinstance(broadcaster.streams["binance"], PolledOpenBarStream)
    broadcaster.tick()  # now polled: the forming bar comes from the service
    broadcaster.flush()
    kinds = [m["type"] for m in standin.messages("a=")]
    assert kinds[0] == "status" and "price" in kinds


# --- the polled source: the service's shared open bar and cache -----------------------------------


def test_polled_pairs_cost_one_fetch_per_pair_per_tick_whatever_the_subscribers(
    subscriptions, make_broadcaster, standin, service, fake
) -> None:
    many = [f"c{i}=" for i in range(25)]
    subscribe(subscriptions, many, "BTCUSDT", "1m")
    subscribe(subscriptions, many[:5], "ETHUSDT", "1m")
    broadcaster = make_broadcaster(build_streams(service, {}))
    broadcaster.tick()  # warm: the closed bars are filled into the cache once
    broadcaster.flush()
    fake.forget_requests()
    ticks = 3
    for _ in range(ticks):
        fake.advance(3)  # past BINANCE_OPEN_BAR_TTL_SECONDS (2): the forming bar is fetched again
        broadcaster.tick()
        broadcaster.flush()

    per_symbol = Counter(r.query["symbol"] for r in fake.requests if r.path == KLINES)
    assert per_symbol == {"BTCUSDT": ticks, "ETHUSDT": ticks}
    for connection in many:
        got = prices(standin, connection)
        assert Counter(m["symbol"] for m in got)["BTCUSDT"] == ticks + 1  # the warm tick's, then one a tick
    assert all(not m["is_closed"] for c in many for m in prices(standin, c))


def test_polled_closed_bar_arrives_closed_at_the_minute_and_is_in_the_cache(
    subscriptions, make_broadcaster, standin, service, fake
) -> None:
    subscribe(subscriptions, ["a="], "BTCUSDT", "1m")
    broadcaster = make_broadcaster(build_streams(service, {}))
    broadcaster.tick()
    broadcaster.flush()
    forming = prices(standin, "a=")
    assert forming[-1]["candle"]["time"] == FORMING and not forming[-1]["is_closed"]
    fake.now = FORMING + MINUTE + 1  # the minute boundary: FORMING's bar closes
    broadcaster.tick()
    broadcaster.flush()

    after = prices(standin, "a=")[len(forming):]
    closed = [m for m in after if m["is_closed"]]
    assert [m["candle"]["time"] for m in closed] == [FORMING]
    assert closed[0]["candle"] == _row(fake.expected_candles("BTCUSDT", "1m", FORMING, FORMING)[0])
    assert after[-1]["candle"]["time"] == FORMING + MINUTE and not after[-1]["is_closed"]
    fake.forget_requests()
    again = service.get_historical_candles("BTCUSDT", "1m", FORMING, FORMING)
    assert again.cache.value == "hit" and fake.count(KLINES) == 0


def test_polled_provider_failure_is_reconnecting_then_recovery(
    subscriptions, make_broadcaster, standin, service, fake
) -> None:
    subscribe(subscriptions, ["a="], "BTCUSDT", "1m")
    broadcaster = make_broadcaster(build_streams(service, {}))
    broadcaster.tick()
    fake.advance(3)
    fake.fail_next(10, 500, KLINES)  # outlasts the client's retries
    broadcaster.tick()
    _drain_faults(fake)
    fake.advance(3)
    broadcaster.tick()
    broadcaster.flush()

    statuses = [m["status"] for m in standin.messages("a=") if m["type"] == "status"]
    assert statuses == ["reconnecting", "connected"]
    assert prices(standin, "a=")[-1]["candle"]["time"] == FORMING


def _drain_faults(fake: Any) -> None:
    """Use up injected faults that the failing tick did not consume."""
    import httpx

    while fake.pending_faults():
        httpx.get(f"{fake.url}{KLINES}", params={"symbol": "BTCUSDT", "interval": "1m", "limit": 1})


def _row(fake_bar: Any) -> dict[str, Any]:
    return {"time": fake_bar.time, "open": fake_bar.open, "high": fake_bar.high, "low": fake_bar.low,
            "close": fake_bar.close, "volume": fake_bar.volume}  # fmt: skip


def test_a_polled_forex_pair_is_read_once_per_open_bar_ttl_and_right_after_its_bar_closes(
    subscriptions, make_broadcaster, standin, service, fake
) -> None:
    subscribe(subscriptions, ["fx="], "EUR/USD", "1m")
    broadcaster = make_broadcaster(build_streams(service, {}))
    broadcaster.tick()
    broadcaster.flush()
    fake.forget_requests()
    for _ in range(5):  # five ticks inside the minute: the shared open bar has not moved, no credit spent
        fake.advance(5)
        broadcaster.tick()
    assert fake.count("/time_series") == 0
    fake.now = FORMING + MINUTE + 1  # its bar closed: read at once (the final bar, the new forming bar)
    broadcaster.tick()
    broadcaster.flush()
    assert fake.count("/time_series") >= 1
    closed = [m for m in prices(standin, "fx=") if m["is_closed"]]
    assert [m["candle"]["time"] for m in closed] == [FORMING]
