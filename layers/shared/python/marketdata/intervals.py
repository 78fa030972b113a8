"""The nine app intervals and their time arithmetic.

All instants are Unix seconds, UTC. A bar is identified by its open time. Fixed-width intervals
(minutes to weeks) are aligned to the Unix epoch, except weeks, which start on Monday 00:00 UTC
(the epoch was a Thursday). Months are calendar months, so they never use fixed widths: that is
why paging everywhere advances by returned open times and this module's `next_open`, never by
"start + n * width".
"""

from __future__ import annotations

import calendar
import time
from enum import StrEnum

from marketdata.errors import InvalidInterval

_MINUTE = 60
_HOUR = 3600
_DAY = 86400
_WEEK = 7 * _DAY
# 1970-01-05 was the first Monday after the epoch.
_FIRST_MONDAY = 4 * _DAY


class Interval(StrEnum):
    """An app interval. The value is the name the API accepts (case matters: 1m minute, 1M month)."""

    M1 = "1m"
    M5 = "5m"
    M15 = "15m"
    M30 = "30m"
    H1 = "1H"
    H4 = "4H"
    D1 = "1D"
    W1 = "1W"
    MO1 = "1M"

    @property
    def binance(self) -> str:
        return _BINANCE[self]

    @property
    def twelve_data(self) -> str:
        return _TWELVE_DATA[self]

    @property
    def seconds(self) -> int | None:
        """Fixed width in seconds, or None for calendar months."""
        return _WIDTH.get(self)

    @property
    def nominal_seconds(self) -> int:
        """Width for estimates (cache lifetimes, window sizing); 31 days for a month."""
        return _WIDTH.get(self, 31 * _DAY)


_BINANCE = {
    Interval.M1: "1m",
    Interval.M5: "5m",
    Interval.M15: "15m",
    Interval.M30: "30m",
    Interval.H1: "1h",
    Interval.H4: "4h",
    Interval.D1: "1d",
    Interval.W1: "1w",
    Interval.MO1: "1M",
}
_TWELVE_DATA = {
    Interval.M1: "1min",
    Interval.M5: "5min",
    Interval.M15: "15min",
    Interval.M30: "30min",
    Interval.H1: "1h",
    Interval.H4: "4h",
    Interval.D1: "1day",
    Interval.W1: "1week",
    Interval.MO1: "1month",
}
_WIDTH = {
    Interval.M1: _MINUTE,
    Interval.M5: 5 * _MINUTE,
    Interval.M15: 15 * _MINUTE,
    Interval.M30: 30 * _MINUTE,
    Interval.H1: _HOUR,
    Interval.H4: 4 * _HOUR,
    Interval.D1: _DAY,
    Interval.W1: _WEEK,
}

ALL_INTERVALS: tuple[Interval, ...] = tuple(Interval)


def parse_interval(value: object) -> Interval:
    """The app interval named `value`, or InvalidInterval with the accepted names."""
    if isinstance(value, Interval):
        return value
    if isinstance(value, str):
        try:
            return Interval(value)
        except ValueError:
            pass
    accepted = ", ".join(i.value for i in Interval)
    hint = ""
    if isinstance(value, str) and value.lower() in {"1h", "4h", "1d", "1w"}:
        hint = f" (did you mean {value[:-1] + value[-1].upper()!r}? hours, days and weeks are upper case)"
    shown = value if isinstance(value, str) and len(value) <= 20 else type(value).__name__
    raise InvalidInterval(f"unsupported interval {shown!r}: use one of {accepted}{hint}")


# --- calendar months -------------------------------------------------------------------------


def _month_index(t: int) -> int:
    """Months since 1970-01 for the instant t (floor)."""
    tm = time.gmtime(t)
    return (tm.tm_year - 1970) * 12 + (tm.tm_mon - 1)


def _month_start(index: int) -> int:
    year, month0 = divmod(index, 12)
    return calendar.timegm((1970 + year, month0 + 1, 1, 0, 0, 0))


# --- the arithmetic --------------------------------------------------------------------------


def fixed_grid(interval: Interval) -> tuple[int, int] | None:
    """(width, offset) of a fixed-width interval: its bars open at offset + k * width (Unix seconds).

    None for calendar months. The one definition of the grid: `bar_open` and the store's SQL bucketing
    (bars resampled in Postgres) both read it.
    """
    width = _WIDTH.get(interval)
    if width is None:
        return None
    return width, _FIRST_MONDAY if interval is Interval.W1 else 0


def bar_open(interval: Interval, t: int) -> int:
    """Open time of the bar that contains the instant t."""
    t = int(t)
    grid = fixed_grid(interval)
    if grid is None:
        return _month_start(_month_index(t))
    width, offset = grid
    return t - (t - offset) % width


def is_aligned(interval: Interval, t: int) -> bool:
    """Whether t is the open time of a bar."""
    return bar_open(interval, t) == t


def next_open(interval: Interval, open_time: int) -> int:
    """Open time of the bar after the one containing open_time."""
    if interval is Interval.MO1:
        return _month_start(_month_index(open_time) + 1)
    return bar_open(interval, open_time) + _WIDTH[interval]


def prev_open(interval: Interval, open_time: int) -> int:
    """Open time of the bar before the one containing open_time."""
    if interval is Interval.MO1:
        return _month_start(_month_index(open_time) - 1)
    return bar_open(interval, open_time) - _WIDTH[interval]


def add_bars(interval: Interval, open_time: int, n: int) -> int:
    """Open time n bars after (n < 0: before) the bar containing open_time."""
    start = bar_open(interval, open_time)
    if interval is Interval.MO1:
        return _month_start(_month_index(start) + n)
    return start + n * _WIDTH[interval]


def first_open_at_or_after(interval: Interval, t: int) -> int:
    """The first bar opening at or after t (a mid-bar t skips to the next bar, as Binance does)."""
    b = bar_open(interval, t)
    return b if b == t else next_open(interval, b)


def is_closed(interval: Interval, open_time: int, now: float) -> bool:
    """Whether the bar opening at open_time has closed by the instant now."""
    return next_open(interval, open_time) <= now


def last_closed_open(interval: Interval, now: float) -> int:
    """Open time of the newest bar that is closed at the instant now."""
    return prev_open(interval, bar_open(interval, int(now)))


def count_bars(interval: Interval, start: int, end: int) -> int:
    """Number of bar open times in the inclusive range [start, end] (0 if none)."""
    first = first_open_at_or_after(interval, start)
    if first > end:
        return 0
    last = bar_open(interval, end)
    if interval is Interval.MO1:
        return _month_index(last) - _month_index(first) + 1
    return (last - first) // _WIDTH[interval] + 1


# --- one interval built from a finer one -----------------------------------------------------


def nests_in(base: Interval, interval: Interval) -> bool:
    """Whether every `base` bar lies inside one `interval` bar, so `interval` can be built from `base`
    (1H in 4H, 1D in 1W and 1M; not 1W in 1M). Checked over a few years of base bars, which covers
    every calendar case (month lengths, leap years, weekdays)."""
    if base is interval:
        return True
    if base.nominal_seconds >= interval.nominal_seconds:
        return False
    base_grid, grid = fixed_grid(base), fixed_grid(interval)
    if base_grid is not None and grid is not None:
        (bw, bo), (w, o) = base_grid, grid
        return w % bw == 0 and (o - bo) % bw == 0
    # Calendar months: every month start must be a base bar open (true for days, false for weeks).
    return all(is_aligned(base, _month_start(index)) for index in range(12 * 8))


def base_span(interval: Interval, base: Interval, start: int, end: int) -> tuple[int, int]:
    """The `base` open times making up the `interval` bars that open in [start, end] (inclusive).

    The first is the first `interval` bar at or after start; the last is the last base bar inside the
    `interval` bar containing end. With base == interval: the aligned range itself.
    """
    first = first_open_at_or_after(interval, start)
    last = bar_open(base, next_open(interval, bar_open(interval, end)) - 1)
    return first, last


def whole_bars_through(interval: Interval, base: Interval, base_end: int) -> int:
    """Open time of the newest `interval` bar lying entirely at or before the base bar `base_end`.

    What base coverage through `base_end` makes known of `interval`: a bar is known only once every
    base bar it spans is. With base == interval: base_end's own bar.
    """
    if base is interval:
        return bar_open(interval, base_end)
    return prev_open(interval, bar_open(interval, next_open(base, base_end)))


# --- forex trading days (New York, 17:00 to 17:00) -------------------------------------------
#
# Twelve Data dates a forex day D by its New York trading date: it runs from 17:00 New York on D-1 to
# 17:00 New York on D, and the service serves it at D 00:00 UTC (docs/providers.md). The REST client
# takes Twelve Data's own daily bars; the live client builds days (and the weeks and months made of
# them) from ticks, so it needs the cut itself. New York's offset follows the US rule in force since
# 2007 (daylight time from the second Sunday of March, 02:00 local, to the first Sunday of November,
# 02:00 local): computed here rather than read from a time zone database, which a Lambda image need
# not ship.

_FOREX_DAY_START_HOUR = 17


def _nth_sunday(year: int, month: int, n: int) -> int:
    """00:00 UTC of the n-th Sunday of the month."""
    first = calendar.timegm((year, month, 1, 0, 0, 0))
    to_sunday = (6 - time.gmtime(first).tm_wday) % 7  # tm_wday: Monday 0 .. Sunday 6
    return first + (to_sunday + 7 * (n - 1)) * _DAY


def new_york_offset(t: int) -> int:
    """New York's offset from UTC at the instant t, in seconds (-4 h in daylight time, else -5 h)."""
    year = time.gmtime(t).tm_year
    dst_start = _nth_sunday(year, 3, 2) + 7 * _HOUR  # 02:00 EST = 07:00 UTC
    dst_end = _nth_sunday(year, 11, 1) + 6 * _HOUR  # 02:00 EDT = 06:00 UTC
    return -4 * _HOUR if dst_start <= t < dst_end else -5 * _HOUR


def forex_day(t: int) -> int:
    """00:00 UTC of the New York trading date of the instant t (from 17:00 New York the day before)."""
    local = int(t) + new_york_offset(int(t))
    date = local - local % _DAY
    return date + _DAY if local - date >= _FOREX_DAY_START_HOUR * _HOUR else date


def forex_day_end(day: int) -> int:
    """The instant the forex day dated `day` (00:00 UTC of its date) ends: 17:00 New York that date."""
    # The offset at noon UTC of the date: after a 02:00 daylight switch, so the one in force at 17:00.
    return day + _FOREX_DAY_START_HOUR * _HOUR - new_york_offset(day + 12 * _HOUR)
