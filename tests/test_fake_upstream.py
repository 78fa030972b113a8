"""Tests of the fake upstream itself: the provider-client tests only mean something if it is right.

Checked against the real payloads in tests/data/provider-samples and against the facts in
PROVIDERS.md: Binance paging semantics and caps, row shapes, calendar months and Monday weeks,
the open last bar, Twelve Data's ordering, timezone, outputsize and end_date behaviour, forex
weekends, error bodies, weight and credit headers, and every fault the tests inject.
"""

from __future__ import annotations

import calendar
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from marketdata import intervals as app_intervals
from tests.support import fake_upstream as fu
from tests.support.fake_upstream import FakeUpstream, expected_bars
from tests.support.upstream_fixtures import TEST_TWELVE_DATA_API_KEY

SAMPLES = Path(__file__).parent / "data" / "provider-samples"
KEY = TEST_TWELVE_DATA_API_KEY
HOUR, DAY = 3600, 86400


def ts(text: str) -> int:
    """'2024-01-05 21:00' or '2024-01-05' as Unix seconds UTC."""
    fmt = "%Y-%m-%d %H:%M" if " " in text else "%Y-%m-%d"
    return calendar.timegm(datetime.strptime(text, fmt).timetuple())


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


def test_daily_bars_are_dates_with_exclusive_date_end_and_no_weekends(http: httpx.Client) -> None:
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
    ]  # (the 15th is excluded: date-only end_date is exclusive for 1day)
    monthly = series(http, interval="1month", order="asc", start_date="2023-12-01", end_date="2024-04-01")
    assert [v["datetime"] for v in monthly.json()["values"]] == [
        "2023-12-01",
        "2024-01-01",
        "2024-02-01",
        "2024-03-01",
    ]
    weekly = series(http, interval="1week", order="asc", start_date="2024-01-01", end_date="2024-01-22")
    assert [v["datetime"] for v in weekly.json()["values"]] == ["2024-01-01", "2024-01-08", "2024-01-15"]


def test_intraday_weekend_gap_is_friday_22_to_sunday_22_utc(http: httpx.Client) -> None:
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
    # A 4h bar that overlaps trading hours exists (Fri 20:00-24:00, Sun 20:00-24:00).
    assert [v["datetime"] for v in four.json()["values"]] == [
        "2024-01-05 16:00:00",
        "2024-01-05 20:00:00",
        "2024-01-07 20:00:00",
        "2024-01-08 00:00:00",
    ]
    minutes = fu.expected_bars("EUR/USD", "1m", ts("2024-01-05 21:58"), ts("2024-01-07 22:01"))
    assert [b.time for b in minutes] == [
        ts("2024-01-05 21:58"),
        ts("2024-01-05 21:59"),
        ts("2024-01-07 22:00"),
        ts("2024-01-07 22:01"),
    ]


def test_no_data_is_a_404_body_with_http_200_or_real_status(
    http: httpx.Client, fake_upstream: FakeUpstream
) -> None:
    params = {"timezone": "UTC", "start_date": "2024-01-06 00:00:00", "end_date": "2024-01-07 21:00:00"}
    resp = series(http, **params)
    assert resp.status_code == 200
    assert resp.json() == {"code": 404, "message": fu.TD_NO_DATA_MESSAGE, "status": "error"}
    before_history = series(http, interval="1day", start_date="1990-01-01", end_date="1990-02-01")
    assert before_history.json()["code"] == 404
    fake_upstream.twelve_data_real_status = True
    assert series(http, **params).status_code == 404


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
        ({"symbol": "ABC/XYZ"}, 400, "**symbol** not found: ABC/XYZ"),
        ({"symbol": "BTCUSDT"}, 400, "**symbol** not found"),
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
    script = Path(__file__).parent / "support" / "fake_upstream.py"
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
