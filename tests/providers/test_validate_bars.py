"""validate_bars (a page's bars checked in one pass) agrees with validate_bar bar by bar."""

from __future__ import annotations

import math
import random

import pytest

from marketdata.intervals import Interval, add_bars
from marketdata.providers.base import validate_bar, validate_bars

T0 = 1_700_006_400  # a UTC midnight, a Wednesday


def rows(interval: Interval, n: int, seed: int) -> list[tuple[float, float, float, float, float, float]]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        t: float = add_bars(interval, T0, k)
        o, c = rng.uniform(1, 100), rng.uniform(1, 100)
        h, low, v = max(o, c) + rng.uniform(0, 5), min(o, c) - rng.uniform(0, 0.9), rng.uniform(0, 10)
        broken = rng.randrange(12)
        if broken == 0:
            h = min(o, c) - 1  # high below open or close
        elif broken == 1:
            low = max(o, c) + 1  # low above open or close
        elif broken == 2:
            v = -1.0
        elif broken == 3:
            o = math.nan
        elif broken == 4:
            t += 7  # off the grid
        elif broken == 5:
            t += 0.5  # not a whole second
        elif broken == 6:
            low = -0.5  # negative price
        elif broken == 7:
            h = math.inf
        out.append((t, o, h, low, c, v))
    return out


@pytest.mark.parametrize("interval", [Interval.M1, Interval.H4, Interval.W1, Interval.MO1])
def test_validate_bars_keeps_and_drops_exactly_what_validate_bar_does(interval: Interval) -> None:
    page = rows(interval, 400, seed=len(interval.value))
    one_by_one = [validate_bar(interval, *row) for row in page]
    kept, dropped = validate_bars(interval, page)
    assert kept == [c for c in one_by_one if c is not None]
    assert dropped == one_by_one.count(None) > 0
    assert all(type(c.time) is int for c in kept)
