"""Interval arithmetic: alignment, next/previous bar, closedness, counting, for every app interval.

The truth here is computed independently with datetime (calendar months, ISO weeks), not with the
module under test.
"""

from __future__ import annotations

import calendar
import datetime as dt

import pytest

from marketdata.errors import InvalidInterval, InvalidRequest
from marketdata.intervals import (
    ALL_INTERVALS,
    Interval,
    add_bars,
    bar_open,
    count_bars,
    first_open_at_or_after,
    is_aligned,
    is_closed,
    last_closed_open,
    next_open,
    parse_interval,
    prev_open,
)

UTC = dt.UTC


def ts(*args: int) -> int:
    return calendar.timegm(dt.datetime(*args, tzinfo=UTC).utctimetuple())


def utc(t: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, UTC)


FIXED = {
    Interval.M1: dt.timedelta(minutes=1),
    Interval.M5: dt.timedelta(minutes=5),
    Interval.M15: dt.timedelta(minutes=15),
    Interval.M30: dt.timedelta(minutes=30),
    Interval.H1: dt.timedelta(hours=1),
    Interval.H4: dt.timedelta(hours=4),
    Interval.D1: dt.timedelta(days=1),
}


def reference_bar_open(interval: Interval, t: int) -> dt.datetime:
    """Independent truth: floor t to its bar with datetime arithmetic."""
    d = utc(t)
    if interval is Interval.MO1:
        return d.replace(day=1, hour=0, minute=0, second=0)
    if interval is Interval.W1:
        day = d.replace(hour=0, minute=0, second=0)
        return day - dt.timedelta(days=day.weekday())  # Monday = 0
    width = FIXED[interval]
    midnight = d.replace(hour=0, minute=0, second=0)
    steps = (d - midnight) // width
    return midnight + steps * width


# A spread of instants: leap days, month ends, year ends, DST-irrelevant (UTC), epoch-ish, far future.
INSTANTS = [
    ts(2024, 2, 29, 23, 59, 59),
    ts(2024, 3, 1, 0, 0, 0),
    ts(2023, 2, 28, 12, 30, 1),
    ts(2023, 12, 31, 23, 59, 59),
    ts(2024, 1, 1, 0, 0, 0),
    ts(2020, 2, 29, 3, 17, 45),
    ts(2000, 2, 29, 10, 0, 0),
    ts(2100, 3, 1, 0, 0, 1),  # 2100 is not a leap year
    ts(1970, 1, 5, 0, 0, 0),  # first Monday after the epoch
    ts(2026, 11, 24, 9, 3, 7),
    1706628191,  # the Binance capture's mid-bar start (2024-01-30 15:23:11Z)
]


@pytest.mark.parametrize("interval", ALL_INTERVALS, ids=str)
@pytest.mark.parametrize("t", INSTANTS)
def test_bar_open_matches_calendar_truth(interval: Interval, t: int) -> None:
    got = bar_open(interval, t)
    assert utc(got) == reference_bar_open(interval, t)
    assert got <= t < next_open(interval, got)
    assert is_aligned(interval, got)


@pytest.mark.parametrize("interval", ALL_INTERVALS, ids=str)
@pytest.mark.parametrize("t", INSTANTS)
def test_next_and_prev_are_inverse_and_aligned(interval: Interval, t: int) -> None:
    b = bar_open(interval, t)
    n = next_open(interval, b)
    p = prev_open(interval, b)
    assert is_aligned(interval, n) and is_aligned(interval, p)
    assert prev_open(interval, n) == b
    assert next_open(interval, p) == b
    assert p < b < n


def test_weeks_start_monday_midnight_utc() -> None:
    # 2024-01-03 is a Wednesday; its week opened Monday 2024-01-01 00:00 UTC.
    assert bar_open(Interval.W1, ts(2024, 1, 3, 15, 0, 0)) == ts(2024, 1, 1)
    # Sunday 23:59:59 still belongs to the week that started six days earlier.
    assert bar_open(Interval.W1, ts(2024, 1, 7, 23, 59, 59)) == ts(2024, 1, 1)
    assert next_open(Interval.W1, ts(2024, 1, 1)) == ts(2024, 1, 8)
    # A week spanning a year end.
    assert bar_open(Interval.W1, ts(2025, 1, 1, 8)) == ts(2024, 12, 30)


@pytest.mark.parametrize(
    ("year", "month", "days"),
    [
        (2024, 2, 29),
        (2023, 2, 28),
        (2100, 2, 28),
        (2000, 2, 29),
        (2024, 4, 30),
        (2024, 12, 31),
        (2024, 1, 31),
    ],
)
def test_months_are_calendar_months(year: int, month: int, days: int) -> None:
    start = ts(year, month, 1)
    assert next_open(Interval.MO1, start) - start == days * 86400
    assert bar_open(Interval.MO1, start + days * 86400 - 1) == start


def test_month_arithmetic_across_years() -> None:
    assert next_open(Interval.MO1, ts(2023, 12, 1)) == ts(2024, 1, 1)
    assert prev_open(Interval.MO1, ts(2024, 1, 1)) == ts(2023, 12, 1)
    assert add_bars(Interval.MO1, ts(2024, 1, 15), 14) == ts(2025, 3, 1)
    assert add_bars(Interval.MO1, ts(2024, 1, 15), -13) == ts(2022, 12, 1)
    assert count_bars(Interval.MO1, ts(2023, 12, 15), ts(2024, 3, 1)) == 3  # Jan, Feb, Mar


@pytest.mark.parametrize("interval", [i for i in ALL_INTERVALS if i is not Interval.MO1], ids=str)
def test_fixed_width_add_and_count(interval: Interval) -> None:
    start = bar_open(interval, ts(2024, 2, 27, 5, 6, 7))
    end = add_bars(interval, start, 2499)
    assert count_bars(interval, start, end) == 2500
    assert count_bars(interval, start, end - 1) == 2499
    assert count_bars(interval, start + 1, end) == 2499  # a mid-bar start skips that bar
    assert add_bars(interval, end, -2499) == start


def test_count_bars_empty_and_single() -> None:
    t = ts(2024, 1, 1)
    assert count_bars(Interval.H1, t, t) == 1
    assert count_bars(Interval.H1, t + 1, t + 3599) == 0
    assert count_bars(Interval.H1, t + 10, t) == 0


def test_first_open_at_or_after_skips_a_started_bar() -> None:
    # The Binance capture: startTime 15:23:11 returns the 16:00 bar first.
    assert first_open_at_or_after(Interval.H1, 1706628191) == 1706630400
    assert first_open_at_or_after(Interval.H1, 1706630400) == 1706630400


@pytest.mark.parametrize("interval", ALL_INTERVALS, ids=str)
def test_closedness_at_the_boundary(interval: Interval) -> None:
    b = bar_open(interval, ts(2024, 2, 29, 13, 45, 10))
    n = next_open(interval, b)
    assert not is_closed(interval, b, n - 1)
    assert is_closed(interval, b, n)
    assert last_closed_open(interval, n) == b
    assert last_closed_open(interval, n - 0.5) == prev_open(interval, b)


def test_interval_provider_names() -> None:
    assert [i.binance for i in ALL_INTERVALS] == ["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w", "1M"]
    assert [i.twelve_data for i in ALL_INTERVALS] == [
        "1min",
        "5min",
        "15min",
        "30min",
        "1h",
        "4h",
        "1day",
        "1week",
        "1month",
    ]


def test_case_matters_minute_versus_month() -> None:
    assert parse_interval("1m") is Interval.M1
    assert parse_interval("1M") is Interval.MO1
    assert Interval.M1.seconds == 60 and Interval.MO1.seconds is None


@pytest.mark.parametrize("bad", ["1h", "1d", "2H", "", "1 m", "1min", "60", None, 5, "x" * 500])
def test_unknown_intervals_are_rejected_clearly(bad: object) -> None:
    with pytest.raises(InvalidInterval) as info:
        parse_interval(bad)
    err = info.value
    assert isinstance(err, InvalidRequest)
    assert err.param == "interval"
    assert "1m, 5m, 15m, 30m, 1H, 4H, 1D, 1W, 1M" in err.message
    assert len(err.message) < 200  # a huge input is not echoed back


def test_lowercase_hour_gets_a_hint() -> None:
    with pytest.raises(InvalidInterval, match="'1H'"):
        parse_interval("1h")
