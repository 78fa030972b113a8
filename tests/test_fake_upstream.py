"""Tests of the fake upstream itself: the provider-client tests only mean something if it is right.

Checked against the real payloads in tests/data/provider-samples and against the facts in
docs/providers.md: Binance paging semantics and caps, row shapes, calendar months and Monday weeks,
the open last bar, Twelve Data's ordering, timezone, outputsize and end_date behaviour, the real forex
model (bars of 2h and longer anchored at 17:00 New York, every coarse bar the aggregate of its hours,
days dated by the New York trading date, weekends with bars), the simple model behind its switch, the
2026 error bodies in both transports, weight and credit headers, and every fault the tests inject.
"""

from __future__ import annotations

import bisect
import calendar
import json
import random
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import httpx
import pytest

from devtools import fake_upstream as fu
from devtools.fake_upstream import FakeUpstream, expected_bars
from marketdata import intervals as app_intervals
from tests.support.upstream_fixtures import TEST_TWELVE_DATA_API_KEY

SAMPLES = Path(__file__).parent / "data" / "provider-samples"
KEY = TEST_TWELVE_DATA_API_KEY
HOUR, DAY = 3600, 86400
SERIES_PATH = "/time_series"


def ts(text: str) -> int:
    """'2024-01-05 21:00' or '2024-01-05' as Unix seconds UTC."""
    fmt = "%Y-%m-%d %H:%M" if " " in text else "%Y-%m-%d"
    return calendar.timegm(datetime.strptime(text, fmt).timetuple())


def day(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


@pytest.fixture
def http(fake_upstream: FakeUpstream) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=fake_upstream.url, timeout=5.0) as client:
        yield client


def klines(http: httpx.Client, **params: object) -> httpx.Response:
    return http.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h", **params})


def series(http: httpx.Client, **params: object) -> httpx.Response:
    return http.get("/time_series", params={"symbol": "EUR/USD", "interval": "1h", "apikey": KEY, **params})


def opens_ms(resp: httpx.Response) -> list[int]:
    return [row[0] for row in resp.json()]


# --- Binance klines ------------------------------------------------------------------------------


def test_mid_bar_start_skips_to_next_bar_like_the_real_capture(http: httpx.Client) -> None:
    sample = json.loads((SAMPLES / "binance_klines_BTCUSDT_1h_limit3.json").read_text())
    resp = klines(http, startTime=1706628191000, limit=3)
    assert resp.status_code == 200
    rows = resp.json()
    assert [r[0] for r in rows] == [r[0] for r in sample]  # 16:00, 17:00, 18:00 (not the 15:00 bar)
    assert [r[6] for r in rows] == [r[6] for r in sample]  # closeTime = next open - 1 ms
    # Same shape as the real rows: 12 fields, the same JSON type in each position.
    for fake_row, real_row in zip(rows, sample, strict=True):
        assert [type(v) for v in fake_row] == [type(v) for v in real_row]
        assert all(len(v.split(".")[1]) == 8 for v in fake_row[1:6])


def test_rows_equal_the_truth_and_are_consistent(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    start = ts("2024-02-27")
    rows = klines(http, interval="1d", startTime=start * 1000, limit=10).json()
    truth = fake_upstream.expected_bars("BTCUSDT", "1D", start, start + 9 * DAY)
    assert len(rows) == len(truth) == 10
    for row, bar in zip(rows, truth, strict=True):
        o, h, lo, c, v = (float(x) for x in row[1:6])
        assert (row[0] // 1000, o, h, lo, c, v) == tuple(bar)
        assert 0 < lo <= min(o, c) <= max(o, c) <= h and v > 0
        assert float(row[7]) > 0 and row[8] >= 1 and 0 <= float(row[9]) <= v


def test_bars_are_a_pure_function_of_symbol_interval_and_open_time(fake_upstream: FakeUpstream) -> None:
    a = expected_bars("ETHUSDT", "1h", ts("2023-05-01"), ts("2023-05-02"))
    b = expected_bars("ETHUSDT", "1H", ts("2023-05-01"), ts("2023-05-02"))
    c = expected_bars("BTCUSDT", "1h", ts("2023-05-01"), ts("2023-05-02"))
    assert a == b and len(a) == 25
    assert [x.close for x in a] != [x.close for x in c]


def test_start_only_returns_oldest_end_only_newest_both_oldest_within(http: httpx.Client) -> None:
    t0 = ts("2024-01-01")
    start_only = opens_ms(klines(http, startTime=t0 * 1000, limit=5))
    assert start_only == [(t0 + i * HOUR) * 1000 for i in range(5)]
    end = t0 + 100 * HOUR
    end_only = opens_ms(klines(http, endTime=end * 1000, limit=5))
    assert end_only == [(end - (4 - i) * HOUR) * 1000 for i in range(5)]  # includes openTime == endTime
    end_mid = opens_ms(klines(http, endTime=end * 1000 + 1800_000, limit=2))
    assert end_mid == [(end - HOUR) * 1000, end * 1000]
    both = opens_ms(klines(http, startTime=t0 * 1000, endTime=end * 1000, limit=3))
    assert both == start_only[:3]
    window = opens_ms(klines(http, startTime=t0 * 1000, endTime=(t0 + 2 * HOUR) * 1000, limit=1000))
    assert window == [t0 * 1000, (t0 + HOUR) * 1000, (t0 + 2 * HOUR) * 1000]


def test_limit_default_500_max_1000_and_1001_is_an_error(http: httpx.Client) -> None:
    t0 = ts("2023-01-01") * 1000
    assert len(klines(http, startTime=t0).json()) == 500
    assert len(klines(http, startTime=t0, limit=1000).json()) == 1000
    resp = klines(http, startTime=t0, limit=1001)
    assert resp.status_code == 400 and resp.json()["code"] == -1130
    assert len(klines(http).json()) == 500  # no bounds: the newest 500


def test_seconds_instead_of_milliseconds_give_an_empty_array(http: httpx.Client) -> None:
    resp = klines(http, startTime=ts("2024-01-01"), endTime=ts("2024-01-02"))
    assert resp.status_code == 200 and resp.json() == []


def test_listing_time_bounds_the_history(http: httpx.Client) -> None:
    first_day = klines(http, interval="1d", startTime=0, limit=2).json()
    assert first_day[0][0] == ts("2017-08-17") * 1000
    first_month = klines(http, interval="1M", startTime=0, limit=1).json()
    assert first_month[0][0] == ts("2017-08-01") * 1000  # the month containing the listing
    before = klines(http, interval="1d", startTime=0, endTime=ts("2017-08-16") * 1000).json()
    assert before == []


def test_btcusdt_outage_is_a_hole_in_intraday_bars_only(http: httpx.Client) -> None:
    rows = klines(http, startTime=ts("2018-02-08 06:00") * 1000, endTime=ts("2018-02-09 11:00") * 1000).json()
    assert [r[0] // 1000 for r in rows] == [
        ts("2018-02-08 06:00"),
        ts("2018-02-08 07:00"),
        ts("2018-02-09 10:00"),
        ts("2018-02-09 11:00"),
    ]
    days = klines(http, interval="1d", startTime=ts("2018-02-07") * 1000, limit=3).json()
    assert [r[0] // 1000 for r in days] == [ts("2018-02-07"), ts("2018-02-08"), ts("2018-02-09")]


def test_months_are_calendar_months_across_a_leap_february(http: httpx.Client) -> None:
    rows = klines(http, interval="1M", startTime=ts("2023-11-15") * 1000, limit=5).json()
    expected = ["2023-12-01", "2024-01-01", "2024-02-01", "2024-03-01", "2024-04-01"]
    assert [r[0] for r in rows] == [ts(d) * 1000 for d in expected]
    assert rows[2][6] == ts("2024-03-01") * 1000 - 1  # February 2024 has 29 days
    assert rows[2][6] - rows[2][0] == 29 * DAY * 1000 - 1


def test_weeks_start_on_monday(http: httpx.Client) -> None:
    rows = klines(http, interval="1w", startTime=ts("2024-12-25") * 1000, limit=3).json()
    assert [r[0] for r in rows] == [ts(d) * 1000 for d in ("2024-12-30", "2025-01-06", "2025-01-13")]
    assert all(datetime.fromtimestamp(r[0] / 1000, UTC).weekday() == 0 for r in rows)
    assert rows[0][6] == ts("2025-01-06") * 1000 - 1


@pytest.mark.parametrize("interval", ["1m", "5m", "15m", "30m", "1H", "4H", "1D", "1W", "1M"])
def test_time_arithmetic_agrees_with_the_package(interval: str) -> None:
    """Two independent implementations (the fake's and marketdata.intervals) must agree."""
    app = app_intervals.parse_interval(interval)
    key = fu.canonical_interval(interval)
    rng = random.Random(interval)
    for t in [0, ts("2024-02-29 23:59"), ts("2000-02-29"), ts("2023-12-31 23:59")] + [
        rng.randrange(0, 4_102_444_800) for _ in range(200)
    ]:
        b = fu.bar_open(key, t)
        assert b == app_intervals.bar_open(app, t)
        assert fu.next_open(key, b) == app_intervals.next_open(app, b)
        assert fu.prev_open(key, b) == app_intervals.prev_open(app, b)


def test_open_last_bar_changes_with_now_and_closed_bars_do_not(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.now = ts("2024-03-10 12:00") + 1234  # 20 min 34 s into the 12:00 bar
    rows = klines(http, limit=3).json()
    assert rows[-1][0] == ts("2024-03-10 12:00") * 1000
    assert rows[-1][6] == ts("2024-03-10 13:00") * 1000 - 1  # closeTime in the future, as Binance does
    fake_upstream.advance(600)
    later = klines(http, limit=3).json()
    assert later[:2] == rows[:2]  # closed bars are final
    assert later[-1][0] == rows[-1][0] and later[-1][4:6] != rows[-1][4:6]  # the open bar moved
    closed = fake_upstream.expected_bars("BTCUSDT", "1h", ts("2024-03-10 10:00"), ts("2024-03-10 12:00"))
    assert [b.time for b in closed] == [ts("2024-03-10 10:00"), ts("2024-03-10 11:00")]
    with_open = fake_upstream.expected_bars(
        "BTCUSDT", "1h", ts("2024-03-10 10:00"), ts("2024-03-10 12:00"), include_open=True
    )
    assert with_open[:2] == closed and with_open[-1] == fake_upstream.open_bar("BTCUSDT", "1h")
    assert float(later[-1][4]) == with_open[-1].close
    # The open bar at the next full hour is closed and final.
    fake_upstream.now = ts("2024-03-10 13:00")
    assert fake_upstream.last_closed_open("BTCUSDT", "1h") == ts("2024-03-10 12:00")
    final = klines(http, endTime=ts("2024-03-10 12:00") * 1000, limit=1).json()[0]
    (bar,) = fake_upstream.expected_bars("BTCUSDT", "1h", ts("2024-03-10 12:00"), ts("2024-03-10 12:00"))
    assert float(final[4]) == bar.close


def test_nothing_after_now(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.now = ts("2024-03-10 12:30")
    rows = klines(http, startTime=ts("2024-03-10 10:00") * 1000, limit=100).json()
    assert [r[0] for r in rows] == [ts(f"2024-03-10 {h}:00") * 1000 for h in (10, 11, 12)]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"symbol": "NOPEUSDT"}, -1121),
        ({"symbol": "btcusdt"}, -1100),
        ({"interval": "1H"}, -1120),
        ({"interval": "1min"}, -1120),
        ({"limit": 0}, -1130),
        ({"startTime": "abc"}, -1100),
        ({"startTime": 2000, "endTime": 1000}, -1128),
        ({"foo": "bar"}, -1104),
    ],
)
def test_binance_errors(http: httpx.Client, params: dict[str, object], code: int) -> None:
    resp = klines(http, **params)
    assert resp.status_code == 400
    body = resp.json()
    assert body["code"] == code and isinstance(body["msg"], str)
    if code == -1121:
        assert body == {"code": -1121, "msg": "Invalid symbol."}


def test_weight_header_accumulates_per_fake_minute_and_429_past_the_limit(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.now = ts("2024-01-01 10:00") + 5
    assert klines(http, limit=1).headers["X-MBX-USED-WEIGHT-1M"] == "2"
    assert klines(http, limit=1).headers["X-MBX-USED-WEIGHT-1M"] == "4"
    assert http.get("/api/v3/exchangeInfo").headers["X-MBX-USED-WEIGHT-1M"] == "24"
    assert klines(http, symbol="NOPE").headers["X-MBX-USED-WEIGHT-1M"] == "26"  # errors weigh too
    fake_upstream.advance(60)
    assert klines(http, limit=1).headers["X-MBX-USED-WEIGHT-1M"] == "2"
    fake_upstream.binance_used_weight = 5999
    resp = klines(http, limit=1)
    assert resp.status_code == 429 and resp.json()["code"] == -1003
    assert 1 <= int(resp.headers["Retry-After"]) <= 60


def test_exchange_info_shape_and_statuses(http: httpx.Client) -> None:
    sample = json.loads((SAMPLES / "binance_testnet_exchangeInfo_BTCUSDT.json").read_text())
    body = http.get("/api/v3/exchangeInfo").json()
    assert set(sample) <= set(body)
    symbols = body["symbols"]
    assert {s["status"] for s in symbols} >= {"TRADING", "BREAK", "HALT"}
    assert {s["quoteAsset"] for s in symbols} >= {"USDT", "BTC", "BUSD", "EUR"}
    for s in symbols:
        assert s["permissions"] == [] and s["permissionSets"]
        assert {"symbol", "status", "baseAsset", "quoteAsset"} <= set(s)
    one = http.get("/api/v3/exchangeInfo", params={"symbol": "ETHBTC"}).json()
    assert [s["symbol"] for s in one["symbols"]] == ["ETHBTC"]
    assert http.get("/api/v3/exchangeInfo", params={"symbol": "NOPE"}).json()["code"] == -1121


# --- Twelve Data time_series ---------------------------------------------------------------------


def test_time_series_defaults_desc_30_rows_exchange_timezone(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.now = ts("2024-01-10 15:30")  # a Wednesday
    body = series(http).json()
    assert body["status"] == "ok" and body["meta"]["symbol"] == "EUR/USD"
    values = body["values"]
    assert len(values) == 30
    assert all("volume" not in row for row in values)  # forex has no volume key
    local = [datetime.strptime(v["datetime"], "%Y-%m-%d %H:%M:%S") for v in values]
    assert local == sorted(local, reverse=True)  # default order: newest first
    # New York is UTC-5 in January: the newest (open) bar 15:00 UTC is shown as 10:00.
    assert values[0]["datetime"] == "2024-01-10 10:00:00"
    utc = series(http, timezone="UTC").json()["values"]
    assert utc[0]["datetime"] == "2024-01-10 15:00:00"
    assert [v["close"] for v in utc[1:]] == [v["close"] for v in values[1:]]


def test_utc_rows_equal_the_truth(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.now = ts("2024-06-01")
    values = series(
        http, timezone="UTC", order="asc", start_date="2024-05-20 00:00:00", end_date="2024-05-20 05:00:00"
    ).json()["values"]
    truth = fake_upstream.expected_bars("EUR/USD", "1h", ts("2024-05-20"), ts("2024-05-20 05:00"))
    assert len(truth) == 6  # end_date inclusive for intraday
    got = [
        (ts(v["datetime"][:16]), float(v["open"]), float(v["high"]), float(v["low"]), float(v["close"]), 0.0)
        for v in values
    ]
    assert got == [tuple(b) for b in truth]


def test_dates_are_read_in_the_request_timezone(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.now = ts("2024-06-01")
    params = {"order": "asc", "start_date": "2024-05-20 09:00:00", "end_date": "2024-05-20 10:00:00"}
    exchange = series(http, **params).json()["values"]  # 09:00 New York (EDT) = 13:00 UTC
    assert [v["datetime"] for v in exchange] == ["2024-05-20 09:00:00", "2024-05-20 10:00:00"]
    utc = series(http, timezone="UTC", **params).json()["values"]
    assert [v["datetime"] for v in utc] == ["2024-05-20 09:00:00", "2024-05-20 10:00:00"]
    assert exchange[0]["close"] == next(
        v["close"]
        for v in series(
            http, timezone="UTC", start_date="2024-05-20 13:00:00", end_date="2024-05-20 13:00:00"
        ).json()["values"]
    )


def test_daily_bars_are_dates_with_exclusive_date_end(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    resp = series(http, interval="1day", order="asc", start_date="2024-01-01", end_date="2024-01-15")
    dates = [v["datetime"] for v in resp.json()["values"]]
    truth = fake_upstream.expected_bars("EUR/USD", "1day", ts("2024-01-01"), ts("2024-01-14"))
    assert dates == [day(b.time) for b in truth]  # (the 15th is excluded: date-only end_date is exclusive)
    weekdays = [d for d in dates if datetime.strptime(d, "%Y-%m-%d").weekday() < 5]
    assert weekdays == [f"2024-01-{d:02d}" for d in (1, 2, 3, 4, 5, 8, 9, 10, 11, 12)]
    monthly = series(http, interval="1month", order="asc", start_date="2023-12-01", end_date="2024-04-01")
    assert [v["datetime"] for v in monthly.json()["values"]] == [
        "2023-12-01",
        "2024-01-01",
        "2024-02-01",
        "2024-03-01",
    ]
    weekly = series(http, interval="1week", order="asc", start_date="2024-01-01", end_date="2024-01-22")
    assert [v["datetime"] for v in weekly.json()["values"]] == ["2024-01-01", "2024-01-08", "2024-01-15"]


def test_simple_model_daily_bars_are_weekdays_only(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.forex_model = "simple"
    resp = series(http, interval="1day", order="asc", start_date="2024-01-01", end_date="2024-01-15")
    dates = [v["datetime"] for v in resp.json()["values"]]
    assert dates == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
        "2024-01-04",
        "2024-01-05",
        "2024-01-08",
        "2024-01-09",
        "2024-01-10",
        "2024-01-11",
        "2024-01-12",
    ]


def test_simple_model_intraday_weekend_gap_is_friday_22_to_sunday_22_utc(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.forex_model = "simple"
    resp = series(
        http, timezone="UTC", order="asc", start_date="2024-01-05 20:00:00", end_date="2024-01-07 23:00:00"
    )
    times = [v["datetime"] for v in resp.json()["values"]]
    assert times == [
        "2024-01-05 20:00:00",
        "2024-01-05 21:00:00",
        "2024-01-07 22:00:00",
        "2024-01-07 23:00:00",
    ]
    four = series(
        http,
        interval="4h",
        timezone="UTC",
        order="asc",
        start_date="2024-01-05 16:00:00",
        end_date="2024-01-08 00:00:00",
    )
    # On the epoch grid; a 4h bar that overlaps trading hours exists (Fri 20:00-24:00, Sun 20:00-24:00).
    assert [v["datetime"] for v in four.json()["values"]] == [
        "2024-01-05 16:00:00",
        "2024-01-05 20:00:00",
        "2024-01-07 20:00:00",
        "2024-01-08 00:00:00",
    ]
    minutes = fu.expected_bars(
        "EUR/USD", "1m", ts("2024-01-05 21:58"), ts("2024-01-07 22:01"), model="simple"
    )
    assert [b.time for b in minutes] == [
        ts("2024-01-05 21:58"),
        ts("2024-01-05 21:59"),
        ts("2024-01-07 22:00"),
        ts("2024-01-07 22:01"),
    ]
    assert (
        fake_upstream.expected_bars("EUR/USD", "1m", ts("2024-01-05 21:58"), ts("2024-01-07 22:01"))
        == minutes
    )


@pytest.mark.parametrize("code_as", ["number", "string"])
@pytest.mark.parametrize("real_status", [False, True])
def test_no_data_is_the_2026_code_400_body(
    http: httpx.Client, fake_upstream: FakeUpstream, real_status: bool, code_as: str
) -> None:
    fake_upstream.twelve_data_real_status = real_status
    fake_upstream.twelve_data_string_codes = code_as == "string"
    code: int | str = 400 if code_as == "number" else "400"
    before_history = series(http, interval="1day", start_date="1990-01-01", end_date="1990-02-01")
    assert before_history.status_code == (400 if real_status else 200)
    assert before_history.json() == {"code": code, "message": fu.TD_NO_DATA_MESSAGE, "status": "error"}
    # A weekend without bars (the simple model has no weekend bars at all): the same body.
    fake_upstream.forex_model = "simple"
    weekend = series(http, timezone="UTC", start_date="2024-01-06 00:00:00", end_date="2024-01-07 21:00:00")
    assert weekend.status_code == (400 if real_status else 200) and weekend.json()["code"] == code


def test_outputsize_keeps_the_newest_rows_of_the_range(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.now = ts("2024-03-01")
    newest = series(http, timezone="UTC", start_date="2024-01-01 00:00:00", outputsize=3).json()["values"]
    assert [v["datetime"] for v in newest] == [
        "2024-03-01 00:00:00",  # the open bar (now is its open time) comes too
        "2024-02-29 23:00:00",
        "2024-02-29 22:00:00",
    ]
    asc = series(
        http,
        timezone="UTC",
        order="asc",
        start_date="2024-01-01 00:00:00",
        end_date="2024-01-31 00:00:00",
        outputsize=2,
    ).json()["values"]
    assert [v["datetime"] for v in asc] == ["2024-01-30 23:00:00", "2024-01-31 00:00:00"]
    # With dates and no outputsize: the maximum, 5000, still the newest of a longer range.
    big = series(
        http,
        interval="1min",
        timezone="UTC",
        order="asc",
        start_date="2024-02-01 00:00:00",
        end_date="2024-02-08 23:59:00",
    ).json()["values"]
    assert len(big) == 5000 and big[-1]["datetime"] == "2024-02-08 23:59:00"
    assert series(http, outputsize=5001).json()["code"] == 400
    assert series(http, outputsize=0).json()["code"] == 400


@pytest.mark.parametrize(
    ("params", "code", "needle"),
    [
        ({"symbol": "ABC/XYZ"}, 404, "**symbol** or **figi** parameter is missing or invalid"),
        ({"symbol": "BTCUSDT"}, 404, "**symbol** or **figi** parameter is missing or invalid"),
        ({"symbol": ""}, 404, "**symbol** or **figi** parameter is missing or invalid"),
        ({"symbol": "USD/TRY"}, 404, "available starting with the Grow or Venture plan"),
        ({"interval": "1H"}, 400, "Invalid **interval** provided: 1H"),
        ({"apikey": "wrong"}, 401, "**apikey**"),
        ({"apikey": ""}, 401, "**apikey**"),
        ({"start_date": "2024-01-01T00:00:00"}, 400, "**start_date**"),
        ({"timezone": "Mars/Olympus"}, 400, "**timezone**"),
        ({"order": "sideways"}, 400, "**order**"),
    ],
)
def test_twelve_data_errors_come_with_http_200(
    http: httpx.Client, params: dict[str, str], code: int, needle: str
) -> None:
    resp = series(http, **params)
    assert resp.status_code == 200
    body = resp.json()
    assert body["status"] == "error" and body["code"] == code and needle in body["message"]


def test_api_key_in_authorization_header_and_key_never_echoed(http: httpx.Client) -> None:
    resp = http.get(
        "/time_series",
        params={"symbol": "EUR/USD", "interval": "1h"},
        headers={"Authorization": f"apikey {KEY}"},
    )
    assert resp.json()["status"] == "ok"
    assert resp.headers["api-credits-used"] == "1"
    wrong = series(http, apikey="secret-wrong-key")
    assert "secret-wrong-key" not in wrong.text


def test_credits_per_minute_emulates_the_free_tier(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.now = ts("2024-01-10 10:00")
    fake_upstream.twelve_data_credits_per_minute = 2
    assert series(http).json()["status"] == "ok"
    assert series(http).json()["status"] == "ok"
    out = series(http).json()
    assert out["code"] == 429 and "run out of API credits" in out["message"]
    fake_upstream.advance(60)
    assert series(http).json()["status"] == "ok"


def test_forex_pairs_lists_the_25_pairs_with_full_currency_names(http: httpx.Client) -> None:
    body = http.get("/forex_pairs").json()
    assert body["status"] == "ok"
    symbols = {row["symbol"] for row in body["data"]}
    assert set(fu.FOREX_PAIRS) <= symbols and len(fu.FOREX_PAIRS) == 25
    eur_usd = next(row for row in body["data"] if row["symbol"] == "EUR/USD")
    assert eur_usd == {
        "symbol": "EUR/USD",
        "currency_group": "Major",
        "currency_base": "Euro",
        "currency_quote": "US Dollar",
    }


def test_forex_truth_has_no_volume_and_positive_prices() -> None:
    bars = expected_bars("USD/JPY", "15min", ts("2024-04-29"), ts("2024-04-30"))
    assert len(bars) == 97
    assert all(
        b.volume == 0.0 and 0 < b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high for b in bars
    )


# --- Twelve Data: the real forex model ----------------------------------------------------------

NY = ZoneInfo("America/New_York")
#: A fixed "now" for the module-level truth functions (a Wednesday).
NOW = ts("2026-01-14 12:00") + 30


def ny(t: int) -> datetime:
    return datetime.fromtimestamp(t, NY)


def trading_date(t: int) -> int:
    """00:00 UTC of the New York trading date of the instant t (a forex day starts at 17:00 New York)."""
    local = ny(t)
    date = local.date() + timedelta(days=1) if local.hour >= 17 else local.date()
    return calendar.timegm(date.timetuple())


def monday_of(t: int) -> int:
    return t - datetime.fromtimestamp(t, UTC).weekday() * DAY


def first_of_month(t: int) -> int:
    d = datetime.fromtimestamp(t, UTC)
    return calendar.timegm((d.year, d.month, 1, 0, 0, 0))


def label_bucket(bars: list[fu.FakeBar]) -> Callable[[int], int]:
    """The bucket of an hour: the newest bar label at or before it (a bar's hours lie between its label
    and the next existing bar's, since a bar exists exactly when one of its hours does)."""
    labels = [b.time for b in bars]
    return lambda t: labels[bisect.bisect_right(labels, t) - 1]


@pytest.mark.parametrize(
    ("monday", "utc_hours"),
    [("2024-01-08", {22, 2, 6, 10, 14, 18}), ("2023-07-10", {21, 1, 5, 9, 13, 17})],
    ids=["winter", "summer"],
)
def test_2h_4h_8h_bars_are_anchored_at_17_new_york(
    http: httpx.Client, fake_upstream: FakeUpstream, monday: str, utc_hours: set[int]
) -> None:
    start, end = ts(monday), ts(monday) + 5 * DAY - 1  # Monday to Friday
    four = expected_bars("EUR/USD", "4h", start, end, now=NOW)
    assert {datetime.fromtimestamp(b.time, UTC).hour for b in four} == utc_hours
    assert {ny(b.time).hour for b in four} == {17, 21, 1, 5, 9, 13}
    assert {ny(b.time).hour for b in expected_bars("EUR/USD", "8h", start, end, now=NOW)} == {17, 1, 9}
    two = expected_bars("EUR/USD", "2h", start, end, now=NOW)
    assert {ny(b.time).hour for b in two} == set(range(1, 24, 2))
    # 1min to 1h bars stay on the UTC clock.
    assert {
        datetime.fromtimestamp(b.time, UTC).hour for b in expected_bars("EUR/USD", "1h", start, end)
    } == set(range(24))
    # Over HTTP: in UTC, and in New York time (the default timezone).
    window = {"interval": "4h", "order": "asc", "start_date": f"{monday} 00:00:00"}
    utc_rows = series(http, timezone="UTC", end_date=f"{monday} 23:59:00", **window).json()["values"]
    assert [int(v["datetime"][11:13]) for v in utc_rows] == sorted(utc_hours)
    local = series(http, end_date=f"{monday} 23:59:00", **window).json()["values"]
    assert [v["datetime"][11:] for v in local] == [
        "01:00:00",
        "05:00:00",
        "09:00:00",
        "13:00:00",
        "17:00:00",
        "21:00:00",
    ]


@pytest.mark.parametrize("interval", ["2h", "4h", "8h"])
def test_each_intraday_coarse_bar_is_the_aggregate_of_its_hours(interval: str) -> None:
    # February and March 2024: populated and sporadic weekends, and the DST switch of Sunday 10 March.
    start, end = ts("2024-02-12"), ts("2024-03-13")
    coarse = expected_bars("GBP/USD", interval, start, end, now=NOW)
    assert len(coarse) > 60
    built = fu.aggregate_hours("GBP/USD", label_bucket(coarse), coarse[0].time, end, now=NOW)
    assert built[:-1] == coarse[:-1]  # (the last bar's hours run past `end`)
    assert {ny(b.time).hour for b in coarse} == {h % 24 for h in range(17, 17 + 24, int(interval[0]))}


@pytest.mark.parametrize(
    ("start", "end"),
    [("2024-01-08", "2024-01-21"), ("2023-07-10", "2023-07-23"), ("2024-02-12", "2024-02-25")],
    ids=["winter", "summer", "populated-weekends"],
)
def test_daily_bars_are_dated_by_the_new_york_trading_date(start: str, end: str) -> None:
    days = expected_bars("EUR/USD", "1day", ts(start), ts(end), now=NOW)
    built = fu.aggregate_hours("EUR/USD", trading_date, ts(start) - DAY, ts(end) + DAY, now=NOW)
    assert days == [b for b in built if ts(start) <= b.time <= ts(end)]
    assert all(b.time % DAY == 0 for b in days)


def test_a_daily_bar_spans_17_to_17_new_york() -> None:
    for date, first_hour in (("2024-01-09", "2024-01-08 22:00"), ("2023-07-12", "2023-07-11 21:00")):
        (bar,) = expected_bars("EUR/USD", "1day", ts(date), ts(date), now=NOW)
        hours = expected_bars("EUR/USD", "1h", ts(first_hour), ts(first_hour) + 23 * HOUR, now=NOW)
        assert len(hours) == 24  # a weekday: every hour of the trading day
        assert (bar.time, bar.open, bar.close, bar.volume) == (ts(date), hours[0].open, hours[-1].close, 0.0)
        assert (bar.high, bar.low) == (max(h.high for h in hours), min(h.low for h in hours))


def test_weeks_and_months_aggregate_the_days_dated_in_them(http: httpx.Client) -> None:
    start, end = ts("2023-12-04"), ts("2024-06-30")
    weeks = expected_bars("EUR/USD", "1week", start, end, now=NOW)
    assert len(weeks) == 30 and all(datetime.fromtimestamp(b.time, UTC).weekday() == 0 for b in weeks)
    by_week = fu.aggregate_hours(
        "EUR/USD", lambda t: monday_of(trading_date(t)), start - DAY, end + DAY, now=NOW
    )
    assert weeks == [b for b in by_week if start <= b.time <= end]
    months = expected_bars("EUR/USD", "1month", ts("2023-12-01"), ts("2024-06-01"), now=NOW)
    assert [datetime.fromtimestamp(b.time, UTC).strftime("%m-%d") for b in months] == [
        "12-01",
        "01-01",
        "02-01",
        "03-01",
        "04-01",
        "05-01",
        "06-01",
    ]
    by_month = fu.aggregate_hours(
        "EUR/USD",
        lambda t: first_of_month(trading_date(t)),
        ts("2023-12-01") - DAY,
        ts("2024-07-01"),
        now=NOW,
    )
    assert months == [b for b in by_month if ts("2023-12-01") <= b.time <= ts("2024-06-01")]
    monthly = series(http, interval="1month", order="asc", start_date="2023-12-01", end_date="2024-01-01")
    (row,) = monthly.json()["values"]
    assert row["datetime"] == "2023-12-01" and float(row["high"]) == months[0].high


def test_weekends_are_not_empty() -> None:
    mondays = list(range(ts("2024-01-01"), ts("2026-01-05"), 7 * DAY))  # two years of weeks
    populated = [m for m in mondays if fu.weekend_populated(m)]
    assert 0.15 < len(populated) / len(mondays) < 0.35
    # The closure is Friday 17:00 to Sunday 17:00 New York, with daylight saving.
    for m in mondays[:60]:
        fri, sun = datetime.fromtimestamp(m + 4 * DAY, UTC), datetime.fromtimestamp(m + 6 * DAY, UTC)
        closes = int(datetime(fri.year, fri.month, fri.day, 17, tzinfo=NY).timestamp())
        reopens = int(datetime(sun.year, sun.month, sun.day, 17, tzinfo=NY).timestamp())
        assert fu.weekend_closure(m) == (closes, reopens)
    # A populated weekend has bars throughout: 96 GBP/USD 15min bars on the Saturday and on the Sunday,
    # and Saturday- and Sunday-dated daily bars.
    saturday = populated[0] + 5 * DAY
    assert len(expected_bars("GBP/USD", "15min", saturday, saturday + DAY - 1, now=NOW)) == 96
    assert len(expected_bars("GBP/USD", "15min", saturday + DAY, saturday + 2 * DAY - 1, now=NOW)) == 96
    days = expected_bars("GBP/USD", "1day", saturday, saturday + DAY, now=NOW)
    assert [b.time for b in days] == [saturday, saturday + DAY]
    # The other weekends: a few percent of the closed hours still have a bar, here and there.
    closed = with_bar = 0
    sporadic_weekends = 0
    for m in mondays:
        if fu.weekend_populated(m):
            continue
        closes, reopens = fu.weekend_closure(m)
        hours = expected_bars("GBP/USD", "1h", closes, reopens - 1, now=NOW)
        closed += (reopens - closes) // HOUR
        with_bar += len(hours)
        sporadic_weekends += bool(hours)
    assert 0.01 < with_bar / closed < 0.1
    assert sporadic_weekends > len(mondays) // 4


def test_minute_bars_exist_only_where_their_hour_exists() -> None:
    m = next(
        m
        for m in range(ts("2024-01-01"), ts("2025-01-01"), 7 * DAY)
        if not fu.weekend_populated(m) and expected_bars("AUD/USD", "1h", *fu.weekend_closure(m), now=NOW)
    )
    closes, reopens = fu.weekend_closure(m)
    lo, hi = closes - 2 * HOUR, reopens + 2 * HOUR - 1  # the weekend and two open hours either side
    hours = [b.time for b in expected_bars("AUD/USD", "1h", lo, hi, now=NOW)]
    assert hours[:2] == [lo, lo + HOUR] and hours[-2:] == [reopens, reopens + HOUR] and len(hours) < 10
    for key, width in (("1min", 60), ("5min", 300), ("15min", 900), ("30min", 1800), ("45min", 2700)):
        bars = expected_bars("AUD/USD", key, lo, hi, now=NOW)
        assert {b.time - b.time % HOUR for b in bars} == set(hours)
        if HOUR % width == 0:
            assert len(bars) == len(hours) * HOUR // width


def test_open_coarse_bars_are_built_from_the_closed_hours_and_the_open_hour(
    fake_upstream: FakeUpstream,
) -> None:
    fake_upstream.now = ts("2024-05-15 10:37") + 20  # a Wednesday in summer
    four = fake_upstream.open_bar("EUR/USD", "4h")
    assert four is not None and four.time == ts("2024-05-15 09:00")  # 05:00 New York
    hours = fake_upstream.expected_bars("EUR/USD", "1h", four.time, ts("2024-05-15 12:00"), include_open=True)
    assert [h.time for h in hours] == [ts("2024-05-15 09:00"), ts("2024-05-15 10:00")]
    assert fake_upstream.aggregate_hours(
        "EUR/USD", lambda t: four.time, four.time, ts("2024-05-15 12:00"), include_open=True
    ) == [four]
    assert four.close == fake_upstream.open_bar("EUR/USD", "1h").close  # type: ignore[union-attr]
    # The open trading day began at 17:00 New York the evening before (21:00 UTC in summer).
    today = fake_upstream.open_bar("EUR/USD", "1day")
    assert today is not None and today.time == ts("2024-05-15")
    assert [today] == fake_upstream.aggregate_hours(
        "EUR/USD",
        lambda t: ts("2024-05-15"),
        ts("2024-05-14 21:00"),
        ts("2024-05-15 12:00"),
        include_open=True,
    )
    assert fake_upstream.last_closed_open("EUR/USD", "1day") == ts("2024-05-14")
    # After 17:00 New York, the day dated tomorrow is open and today's is final.
    fake_upstream.now = ts("2024-05-15 21:30")
    assert fake_upstream.open_bar("EUR/USD", "1day").time == ts("2024-05-16")  # type: ignore[union-attr]
    assert fake_upstream.last_closed_open("EUR/USD", "1day") == ts("2024-05-15")
    assert fake_upstream.last_closed_open("EUR/USD", "4h") == ts("2024-05-15 17:00")


def test_the_open_day_dated_tomorrow_is_served_without_an_end_date(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.now = ts("2024-05-15 21:30")
    values = series(http, interval="1day", outputsize=2).json()["values"]
    assert [v["datetime"] for v in values] == ["2024-05-16", "2024-05-15"]


@pytest.mark.parametrize("code_as", ["number", "string"])
@pytest.mark.parametrize("real_status", [False, True], ids=["http-200", "http-status"])
def test_2026_error_bodies_in_both_transports(
    http: httpx.Client, fake_upstream: FakeUpstream, real_status: bool, code_as: str
) -> None:
    fake_upstream.twelve_data_real_status = real_status
    fake_upstream.twelve_data_string_codes = code_as == "string"

    def recorded(name: str) -> dict[str, object]:
        body = json.loads((SAMPLES / name).read_text())
        return {**body, "code": str(body["code"]) if code_as == "string" else body["code"]}

    def check(resp: httpx.Response, code: int) -> dict[str, object]:
        assert resp.status_code == (code if real_status else 200)
        return resp.json()

    empty = series(http, interval="1day", start_date="1990-01-01", end_date="1990-02-01")
    assert check(empty, 400) == recorded("td_err_400_empty_window.json")
    assert check(series(http, symbol="ABC/XYZ"), 404) == recorded("td_err_404_bad_ticker.json")
    gated = series(http, symbol="USD/TRY")  # /forex_pairs lists it; "our" plan does not include it
    assert check(gated, 404) == recorded("td_err_404_plan_gated.json")
    assert "USD/TRY" in {row["symbol"] for row in http.get("/forex_pairs").json()["data"]}
    assert "USD/TRY" not in fu.FOREX_PAIRS
    fake_upstream.advance(60)  # a fresh fake minute: none of its credits spent yet
    fake_upstream.twelve_data_credits_per_minute = 1
    assert series(http).json()["status"] == "ok"
    throttled = check(series(http), 429)
    assert throttled["code"] == ("429" if code_as == "string" else 429)
    assert throttled["message"] == (
        "You have run out of API credits for the current minute. 2 API credits were used, with the current "
        "limit of 1."
    )
    fake_upstream.fail_next(1, "error_body", SERIES_PATH, code=500)
    assert check(series(http), 200)["code"] == ("500" if code_as == "string" else 500)


def test_plan_gated_symbols_are_settable_and_reset(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    assert fake_upstream.plan_gated_symbols == {"USD/TRY"}
    fake_upstream.plan_gated_symbols = {"EUR/USD"}
    assert "Grow or Venture plan" in series(http).json()["message"]
    assert series(http, symbol="USD/TRY").json()["status"] == "ok"
    fake_upstream.reset()
    assert series(http).json()["status"] == "ok" and fake_upstream.plan_gated_symbols == {"USD/TRY"}
    assert (fake_upstream.twelve_data_string_codes, fake_upstream.forex_model) == (False, "real")


def test_the_simple_model_switch(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    assert fake_upstream.forex_model == "real"
    fake_upstream.forex_model = "simple"
    four = series(
        http,
        interval="4h",
        timezone="UTC",
        order="asc",
        start_date="2023-07-10 00:00:00",
        end_date="2023-07-10 23:59:00",
    ).json()["values"]
    assert [v["datetime"][11:13] for v in four] == ["00", "04", "08", "12", "16", "20"]  # the epoch grid
    # No weekend bars at all, even on a weekend the real model fills.
    m = next(m for m in range(ts("2024-01-01"), ts("2025-01-01"), 7 * DAY) if fu.weekend_populated(m))
    saturday = m + 5 * DAY
    weekend = (saturday, saturday + DAY + 21 * HOUR)  # Saturday 00:00 to Sunday 21:00 UTC
    assert fake_upstream.expected_bars("EUR/USD", "1h", *weekend) == []
    assert expected_bars("EUR/USD", "1h", *weekend, model="real")
    assert expected_bars("EUR/USD", "1h", *weekend, model="simple") == []
    # Each interval with its own bars: a simple-model day is not the aggregate of its hours.
    (simple_day,) = fu.expected_bars("EUR/USD", "1D", ts("2024-01-09"), ts("2024-01-09"), model="simple")
    hours = fu.expected_bars("EUR/USD", "1h", ts("2024-01-09"), ts("2024-01-09") + 23 * HOUR, model="simple")
    assert len(hours) == 24 and simple_day.open != hours[0].open
    fake_upstream.reset()
    assert fake_upstream.forex_model == "real"
    with pytest.raises(ValueError, match="forex model"):
        expected_bars("EUR/USD", "1h", 0, 1, model="fancy")
    with pytest.raises(ValueError, match="no '6h' bars"):
        expected_bars("EUR/USD", "6h", 0, 1)


def test_crypto_ignores_the_forex_model(fake_upstream: FakeUpstream) -> None:
    real = fake_upstream.expected_bars("BTCUSDT", "4h", ts("2024-01-06"), ts("2024-01-08"))
    fake_upstream.forex_model = "simple"
    assert fake_upstream.expected_bars("BTCUSDT", "4h", ts("2024-01-06"), ts("2024-01-08")) == real
    assert all(b.time % (4 * HOUR) == 0 for b in real) and len(real) == 13


def test_the_hour_table_has_exactly_the_hours_that_exist() -> None:
    # _closed_hours inlines _hour_exists for speed (minute bars ask _hour_exists): both must agree.
    for symbol in ("EUR/USD", "USD/JPY", "GBP/NZD"):
        inst = fu.TWELVE_DATA_SYMBOLS[symbol]
        for day in range(ts("2024-01-29"), ts("2024-03-18"), DAY):  # populated and sporadic weekends
            hours = [h for h in range(day, day + DAY, HOUR) if fu._hour_exists(inst, h)]
            assert list(fu._closed_hours(symbol, day)) == hours
            assert [b.time for b in expected_bars(symbol, "1h", day, day + DAY - 1, now=NOW)] == hours


@pytest.mark.parametrize(
    ("interval", "start_date", "end_date"),
    [("1day", "2005-01-01", "2026-01-01"), ("1h", "2024-01-01 00:00:00", "2024-12-31 00:00:00")],
)
def test_5000_row_answers_are_cheap(
    http: httpx.Client, fake_upstream: FakeUpstream, interval: str, start_date: str, end_date: str
) -> None:
    # About 0.35 s for 5000 daily bars with nothing cached (120k hours), 0.05-0.1 s otherwise; the
    # bound only catches a regression by an order of magnitude on a loaded machine.
    fake_upstream.now = NOW
    params = {"interval": interval, "timezone": "UTC", "start_date": start_date, "end_date": end_date}
    started = time.perf_counter()
    values = series(http, outputsize=5000, **params).json()["values"]
    assert len(values) == 5000
    assert time.perf_counter() - started < 3.0
    started = time.perf_counter()
    assert series(http, outputsize=5000, **params).json()["values"] == values
    assert time.perf_counter() - started < 1.0


# --- faults, log, concurrency, standalone ----------------------------------------------------------


def test_status_faults_have_provider_bodies_and_retry_after(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    sample_418 = json.loads((SAMPLES / "binance_error_418_ip_banned.json").read_text())
    fake_upstream.fail_next(1, 429, retry_after=3)
    resp = klines(http)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "3" and resp.json()["code"] == -1003
    fake_upstream.fail_next(1, 418, retry_after=120)
    resp = klines(http)
    assert resp.status_code == 418 and resp.headers["Retry-After"] == "120"
    assert resp.json()["code"] == sample_418["code"] and "IP banned until" in resp.json()["msg"]
    fake_upstream.fail_next(1, 500)
    assert klines(http).status_code == 500
    fake_upstream.fail_next(1, 503)
    resp = klines(http)
    assert resp.status_code == 503 and resp.headers["Content-Type"].startswith("text/html")
    fake_upstream.fail_next(1, 429, path_prefix="/time_series")
    resp = series(http)
    assert resp.status_code == 429 and resp.json()["code"] == 429
    assert klines(http).status_code == 200
    assert fake_upstream.pending_faults() == 0


def test_body_faults(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail_next(1, "malformed")
    resp = klines(http)
    assert resp.status_code == 200
    with pytest.raises(ValueError):
        resp.json()
    fake_upstream.fail_next(1, "html")
    resp = series(http)
    assert (
        resp.status_code == 200
        and resp.headers["Content-Type"] == "text/html"
        and resp.text.startswith("<!DOCTYPE")
    )
    fake_upstream.fail_next(1, "truncated")
    resp = klines(http, limit=50)
    assert resp.status_code == 200 and int(resp.headers["Content-Length"]) == len(resp.content)
    with pytest.raises(ValueError):
        resp.json()
    fake_upstream.fail_next(1, "error_body", path_prefix="/time_series", code=500)
    resp = series(http)
    assert resp.status_code == 200 and resp.json()["status"] == "error" and resp.json()["code"] == 500
    fake_upstream.fail_next(1, "td_credits")
    assert series(http).json()["code"] == 429
    fake_upstream.fail_next(1, "wrong_shape")
    assert isinstance(klines(http).json(), dict)
    fake_upstream.fail_next(2, "bad_bar")
    row = klines(http, limit=3).json()[0]
    assert float(row[2]) < float(row[3])  # high below low
    value = series(http).json()["values"][0]
    assert float(value["high"]) < float(value["low"])
    fake_upstream.fail_next(2, "duplicate")
    rows = klines(http, limit=3).json()
    assert len(rows) == 4 and rows[0][0] == rows[1][0] and rows[0][4] != rows[1][4]
    values = series(http, outputsize=3).json()["values"]
    assert len(values) == 4 and values[0]["datetime"] == values[1]["datetime"]


def test_transport_faults(fake_upstream: FakeUpstream) -> None:
    with httpx.Client(base_url=fake_upstream.url, timeout=httpx.Timeout(5.0, read=0.3)) as client:
        fake_upstream.fail_next(1, "timeout", delay=1.0)
        with pytest.raises(httpx.ReadTimeout):
            client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h"})
        fake_upstream.fail_next(1, "reset")
        with pytest.raises(httpx.TransportError):
            client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h"})
        fake_upstream.fail_next(1, "truncated_transport")
        with pytest.raises(httpx.RemoteProtocolError):
            client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h"})
        ok = client.get("/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1h", "limit": 2})
        assert ok.status_code == 200 and len(ok.json()) == 2
    assert fake_upstream.count("/api/v3/klines") == 4


def test_faults_target_by_path_and_count_down(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    fake_upstream.fail_next(2, 502, path_prefix="/api/v3/klines")
    assert series(http).status_code == 200
    assert klines(http).status_code == 502
    assert http.get("/api/v3/exchangeInfo").status_code == 200
    assert klines(http).status_code == 502
    assert klines(http).status_code == 200
    with pytest.raises(ValueError):
        fake_upstream.fail_next(1, "explode")


def test_request_log_counts_and_reset(http: httpx.Client, fake_upstream: FakeUpstream) -> None:
    klines(http, limit=1)
    series(http)
    http.get("/forex_pairs")
    assert fake_upstream.count() == 3 and fake_upstream.count("/api/v3/klines") == 1
    path, query = fake_upstream.requests[1]
    assert path == "/time_series" and query["symbol"] == "EUR/USD" and query["apikey"] == KEY
    assert "user-agent" in fake_upstream.requests[0].headers
    fake_upstream.fail_next(5, 500)
    fake_upstream.now = 1
    fake_upstream.reset()
    assert fake_upstream.count() == 0 and fake_upstream.pending_faults() == 0
    assert fake_upstream.now > ts("2024-01-01")


def test_concurrent_requests_are_all_answered_and_counted(fake_upstream: FakeUpstream) -> None:
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            with httpx.Client(base_url=fake_upstream.url, timeout=10) as client:
                for _ in range(10):
                    assert (
                        client.get(
                            "/api/v3/klines", params={"symbol": "ETHUSDT", "interval": "1m", "limit": 5}
                        ).status_code
                        == 200
                    )
        except BaseException as exc:  # collected and re-raised in the test thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert fake_upstream.count("/api/v3/klines") == 60


def test_standalone_runs_without_the_package_on_the_path() -> None:
    script = Path(__file__).resolve().parent.parent / "devtools" / "fake_upstream.py"
    # -S: no site-packages, so neither marketdata nor httpx is importable: the server is stdlib only.
    proc = subprocess.Popen(
        [sys.executable, "-S", str(script), "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        resp = httpx.get(f"{url}/api/v3/klines", params={"symbol": "BTCUSDT", "interval": "1d", "limit": 2})
        assert resp.status_code == 200 and len(resp.json()) == 2
    finally:
        proc.terminate()
        proc.wait(timeout=10)
