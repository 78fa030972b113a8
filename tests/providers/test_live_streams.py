"""What the live clients share: settings, back-off, the event queue and life cycle, the lazy import,
and the forex trading-day arithmetic the Twelve Data stream cuts days with.

The clients themselves are tested against the fake streams in test_live_binance.py and
test_live_twelve_data.py.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

from devtools.fake_streams import FakeStreams
from devtools.fake_upstream import FakeUpstream, _day_label, _day_span
from marketdata.config import Settings
from marketdata.intervals import Interval, forex_day, forex_day_end, new_york_offset
from marketdata.providers.binance_live import BinanceKlineStream
from marketdata.providers.streams import BarUpdate, EventQueue, StreamStatus, backoff_seconds
from marketdata.providers.twelve_data_live import TwelveDataPriceStream
from marketdata.schemas import Candle
from tests.providers.helpers import utc
from tests.support.upstream_fixtures import stream_settings_for


def test_live_settings_defaults_and_environment_names() -> None:
    defaults = Settings.from_env({})
    assert defaults.binance_ws_url == "wss://stream.binance.com:9443"
    assert defaults.twelve_data_ws_url == "wss://ws.twelvedata.com"
    assert defaults.binance_ws_max_connection_seconds < 24 * 3600  # before Binance's own cut
    assert defaults.twelve_data_ws_heartbeat_seconds == 10
    assert defaults.live_reconnect_base_seconds < defaults.live_reconnect_max_seconds
    env = Settings.from_env(
        {
            "BINANCE_WS_URL": "ws://127.0.0.1:9/",
            "TWELVE_DATA_WS_URL": "ws://127.0.0.1:8/",
            "BINANCE_WS_MAX_CONNECTION_SECONDS": "3600",
            "TWELVE_DATA_WS_HEARTBEAT_SECONDS": "5",
            "TWELVE_DATA_WS_CLOSE_GRACE_SECONDS": "1",
            "LIVE_RECONNECT_BASE_SECONDS": "0.5",
            "LIVE_RECONNECT_MAX_SECONDS": "30",
            "LIVE_PING_INTERVAL_SECONDS": "15",
            "LIVE_PING_TIMEOUT_SECONDS": "10",
        }
    )
    assert (env.binance_ws_url, env.twelve_data_ws_url) == ("ws://127.0.0.1:9", "ws://127.0.0.1:8")
    assert env.binance_ws_max_connection_seconds == 3600
    assert env.twelve_data_ws_heartbeat_seconds == 5 and env.twelve_data_ws_close_grace_seconds == 1
    assert (env.live_reconnect_base_seconds, env.live_reconnect_max_seconds) == (0.5, 30)
    assert (env.live_ping_interval_seconds, env.live_ping_timeout_seconds) == (15, 10)


def test_backoff_doubles_up_to_the_cap_with_half_of_each_step_random() -> None:
    lowest = [backoff_seconds(n, 1.0, 60.0, lambda: 0.0) for n in range(9)]
    highest = [backoff_seconds(n, 1.0, 60.0, lambda: 1.0) for n in range(9)]
    assert highest == [1, 2, 4, 8, 16, 32, 60, 60, 60]
    assert lowest == [h / 2 for h in highest]
    assert backoff_seconds(10_000, 1.0, 60.0, lambda: 0.5) == 45.0  # no overflow for long outages


def test_the_event_queue_waits_for_the_first_event_and_hands_out_everything_in_order() -> None:
    queue = EventQueue()
    assert queue.drain(0.05) == []
    bar = BarUpdate("BTCUSDT", Interval.M1, Candle(time=60, open=1, high=2, low=1, close=2, volume=0), False)
    threading.Timer(0.05, lambda: [queue.put(StreamStatus("connected")), queue.put(bar)]).start()
    got = queue.drain(5.0)
    while len(got) < 2:
        got += queue.drain(5.0)
    assert got == [StreamStatus("connected"), bar]
    assert queue.drain(0) == []


def test_nothing_connects_before_a_pair_is_followed_and_close_is_idempotent(
    fake_upstream: FakeUpstream, fake_streams: FakeStreams
) -> None:
    settings = stream_settings_for(fake_upstream, fake_streams)
    clients = [BinanceKlineStream(settings), TwelveDataPriceStream(settings)]
    assert [c.events(0.3) for c in clients] == [[], []]
    assert fake_streams.connections == []
    for client in clients:
        client.follow([("BTCUSDT" if isinstance(client, BinanceKlineStream) else "EUR/USD", Interval.M1)])
    deadline = time.monotonic() + 10
    while len(fake_streams.connections) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(fake_streams.connections) == 2
    for client in clients:
        client.close()
        client.close()
        client.follow([("BTCUSDT", Interval.M1)])  # after close: ignored, no new connection
    deadline = time.monotonic() + 10
    while fake_streams.open_connections() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fake_streams.open_connections() == 0
    assert len(fake_streams.connections) == 2


def test_the_live_modules_do_not_import_websockets_until_they_connect() -> None:
    code = (
        "import sys\n"
        "import marketdata.providers.binance_live, marketdata.providers.twelve_data_live\n"
        "assert 'websockets' not in sys.modules, 'websockets imported at module level'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_forex_days_match_the_new_york_trading_day_for_every_hour_across_daylight_saving() -> None:
    # The fake cuts days with the system's time zone database; the layer computes the US rule itself.
    start, end = utc("2024-01-01"), utc("2027-01-01")
    for t in range(start, end, 3600):
        assert forex_day(t) == _day_label(t), time.strftime("%Y-%m-%d %H:%M", time.gmtime(t))
        assert forex_day(t + 3599) == _day_label(t + 3599)
    for day in range(start, end, 86400):
        assert forex_day_end(day) == _day_span(day)[1]


def test_new_york_switches_to_daylight_time_at_two_in_the_morning_local() -> None:
    # 2026: daylight time from Sunday 8 March 02:00 EST (07:00 UTC) to Sunday 1 November 02:00 EDT.
    assert new_york_offset(utc("2026-03-08 06:59:59")) == -5 * 3600
    assert new_york_offset(utc("2026-03-08 07:00")) == -4 * 3600
    assert new_york_offset(utc("2026-11-01 05:59:59")) == -4 * 3600
    assert new_york_offset(utc("2026-11-01 06:00")) == -5 * 3600
