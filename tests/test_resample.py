"""Derived intervals: the capability tables, the range translation and the aggregation itself.

Expectations are computed with datetime and plain loops here, not with the functions under test.
"""

from __future__ import annotations

import calendar
import datetime as dt
import random

import pytest

from marketdata.intervals import (
    ALL_INTERVALS,
    Interval,
    bar_open,
    base_span,
    fixed_grid,
    nests_in,
    next_open,
    whole_bars_through,
)
from marketdata.providers.binance import BinanceClient
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.resample import resample
from marketdata.schemas import Candle

H = 3600
D = 86400


def ts(*args: int) -> int:
    return calendar.timegm(dt.datetime(*args, tzinfo=dt.UTC).utctimetuple())


# --- the capability tables ---------------------------------------------------------------------


@pytest.mark.parametrize("provider", [BinanceClient, TwelveDataClient], ids=lambda p: p.name)
def test_every_derived_interval_is_built_from_a_finer_interval_that_nests_in_it(provider) -> None:
    for interval, base in provider.derived_intervals.items():
        assert base is not interval and base not in provider.derived_intervals  # one level, base native
        assert nests_in(base, interval)
        # Independently: every base bar over five years lies inside one interval bar.
        t = ts(2019, 1, 1)
        while t < ts(2024, 1, 1):
            assert bar_open(interval, t) == bar_open(interval, next_open(base, t) - 1)
            t = next_open(base, t)


def test_the_twelve_data_table_is_what_the_readme_promises() -> None:
    assert dict(TwelveDataClient.derived_intervals) == {
        Interval.H4: Interval.H1,
        Interval.W1: Interval.D1,
        Interval.MO1: Interval.D1,
    }
    assert dict(BinanceClient.derived_intervals) == {}


@pytest.mark.parametrize(
    ("base", "interval", "nests"),
    [
        (Interval.H1, Interval.H4, True),
        (Interval.M15, Interval.H1, True),
        (Interval.D1, Interval.W1, True),
        (Interval.D1, Interval.MO1, True),
        (Interval.W1, Interval.MO1, False),  # weeks straddle month ends
        (Interval.H4, Interval.H1, False),  # coarser cannot build finer
        (Interval.H1, Interval.H1, True),
    ],
)
def test_nests_in(base: Interval, interval: Interval, nests: bool) -> None:
    assert nests_in(base, interval) is nests


def test_fixed_grid_is_the_grid_bar_open_uses() -> None:
    for interval in ALL_INTERVALS:
        grid = fixed_grid(interval)
        if interval is Interval.MO1:
            assert grid is None
            continue
        assert grid is not None
        width, offset = grid
        for t in (0, offset, ts(2024, 2, 29, 13, 7), ts(2031, 12, 31, 23, 59)):
            assert bar_open(interval, t) == t - (t - offset) % width
    assert fixed_grid(Interval.W1) == (7 * D, 4 * D)  # 1970-01-05, a Monday


# --- range translation -------------------------------------------------------------------------


def test_base_span_of_4h_bars() -> None:
    lo, hi = ts(2024, 1, 8), ts(2024, 1, 8, 20)
    assert base_span(Interval.H4, Interval.H1, lo, hi) == (lo, ts(2024, 1, 8, 23))
    # A mid-bar start skips to the next 4H bar; an end inside a bar takes that whole bar.
    assert base_span(Interval.H4, Interval.H1, lo + 1, hi + 5) == (ts(2024, 1, 8, 4), ts(2024, 1, 8, 23))


def test_base_span_of_months_and_weeks() -> None:
    assert base_span(Interval.MO1, Interval.D1, ts(2024, 2, 1), ts(2024, 2, 1)) == (
        ts(2024, 2, 1),
        ts(2024, 2, 29),
    )
    assert base_span(Interval.W1, Interval.D1, ts(2024, 1, 1), ts(2024, 1, 8)) == (
        ts(2024, 1, 1),
        ts(2024, 1, 14),
    )


def test_base_span_of_a_native_interval_is_the_range_itself() -> None:
    assert base_span(Interval.H1, Interval.H1, ts(2024, 1, 1, 1), ts(2024, 1, 1, 5)) == (
        ts(2024, 1, 1, 1),
        ts(2024, 1, 1, 5),
    )


@pytest.mark.parametrize(
    ("base_end", "known"),
    [
        ((2024, 1, 8, 3), (2024, 1, 8, 0)),  # hours 00-03 covered: the 00:00 bar is whole
        ((2024, 1, 8, 2), (2024, 1, 7, 20)),  # hour 03 missing: 00:00 is not known yet
        ((2024, 1, 8, 7), (2024, 1, 8, 4)),
    ],
)
def test_whole_bars_through_4h(base_end, known) -> None:
    assert whole_bars_through(Interval.H4, Interval.H1, ts(*base_end)) == ts(*known)


def test_whole_bars_through_months() -> None:
    assert whole_bars_through(Interval.MO1, Interval.D1, ts(2024, 2, 29)) == ts(2024, 2, 1)
    assert whole_bars_through(Interval.MO1, Interval.D1, ts(2024, 2, 28)) == ts(2024, 1, 1)
    assert whole_bars_through(Interval.H1, Interval.H1, ts(2024, 2, 28, 5)) == ts(2024, 2, 28, 5)


# --- the aggregation ---------------------------------------------------------------------------


def _bars(times: list[int], seed: int = 7) -> list[Candle]:
    rng = random.Random(seed)
    out = []
    for t in times:
        o, c = rng.uniform(1, 2), rng.uniform(1, 2)
        out.append(
            Candle(t, o, max(o, c) + rng.random() / 10, min(o, c) - rng.random() / 10, c, rng.random() * 1e3)
        )
    return out


def _expected(bars: list[Candle], key) -> list[Candle]:
    groups: dict[int, list[Candle]] = {}
    for bar in bars:
        groups.setdefault(key(bar.time), []).append(bar)
    out = []
    for t in sorted(groups):
        g = groups[t]
        volume = 0.0
        for bar in g:
            volume = volume + bar.volume
        out.append(Candle(t, g[0].open, max(b.high for b in g), min(b.low for b in g), g[-1].close, volume))
    return out


def test_4h_from_hours_with_missing_hours_and_a_lone_hour() -> None:
    day = ts(2024, 1, 5)  # a Friday: the forex week closes at 22:00 UTC in winter
    hours = [day + h * H for h in range(22) if h not in (5, 6)] + [day + 2 * D + 22 * H]  # Sunday 22:00
    bars = _bars(hours)
    built = resample(Interval.H4, bars)
    assert built == _expected(bars, lambda t: t - t % (4 * H))
    assert [c.time for c in built][-2:] == [day + 20 * H, day + 2 * D + 20 * H]  # 20:00 holds 20-21 only


def test_weeks_and_months_from_days_including_weekend_dated_days() -> None:
    days = [ts(2024, 1, 29) + i * D for i in range(40)]  # Monday 2024-01-29 .. 2024-03-08, every day
    bars = _bars(days, seed=3)
    weeks = resample(Interval.W1, bars)
    monday = lambda t: t - (dt.datetime.fromtimestamp(t, dt.UTC).weekday()) * D  # noqa: E731
    assert weeks == _expected(bars, monday)
    months = resample(Interval.MO1, bars)
    first = lambda t: calendar.timegm(dt.datetime.fromtimestamp(t, dt.UTC).replace(day=1).utctimetuple())  # noqa: E731
    assert months == _expected(bars, first)
    assert [c.time for c in months] == [ts(2024, 1, 1), ts(2024, 2, 1), ts(2024, 3, 1)]
    # A Saturday- or Sunday-dated day belongs to the week of the Monday before it.
    sunday = ts(2024, 2, 4)
    assert bar_open(Interval.W1, sunday) == ts(2024, 1, 29)


def test_resampling_a_native_interval_changes_nothing_and_empty_is_empty() -> None:
    bars = _bars([ts(2024, 1, 1) + i * H for i in range(10)])
    assert resample(Interval.H1, bars) == bars
    assert resample(Interval.H4, []) == []
