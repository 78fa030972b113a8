"""What the service must answer, computed from the fake upstream's own bars with the fake's arithmetic.

The service serves every symbol on one grid (UTC, weeks from Monday, calendar months). Where the
provider's own bars lie elsewhere, the README promises bars built from a finer base interval. This
module states that promise independently of `marketdata` (a second opinion, like the fake itself):
the intervals built, their base, and the aggregation (open of the first base bar, highest high, lowest
low, close of the last, volume summed in time order), on the fake's own UTC grid functions.
"""

from __future__ import annotations

from typing import Any

from devtools.fake_upstream import FakeUpstream, bar_open, canonical_interval, next_open
from marketdata.schemas import Candle

#: Forex (Twelve Data): app interval -> the Twelve Data interval it is built from, as the README says.
FOREX_BUILT_FROM: dict[str, str] = {"4H": "1h", "1W": "1day", "1M": "1day"}


def built_from(symbol: str, interval: object) -> str | None:
    """The provider interval the service builds `interval` of `symbol` from, None when served natively."""
    key = str(getattr(interval, "value", interval))
    return FOREX_BUILT_FROM.get(key) if "/" in symbol else None


def aggregate(bars: list[Any], key: str) -> list[Candle]:
    """Ascending bars (FakeBar or Candle) grouped into the fake's `key` grid buckets."""
    out: list[Candle] = []
    for bar in bars:
        bucket = bar_open(key, bar.time)
        if out and out[-1].time == bucket:
            last = out[-1]
            out[-1] = Candle(
                bucket,
                last.open,
                max(last.high, bar.high),
                min(last.low, bar.low),
                bar.close,
                last.volume + bar.volume,
            )
        else:
            out.append(Candle(bucket, bar.open, bar.high, bar.low, bar.close, bar.volume))
    return out


def service_truth(
    fake: FakeUpstream, symbol: str, interval: object, start: int, end: int, *, include_open: bool = False
) -> list[Candle]:
    """The bars the service must return for `interval` bars opening in [start, end] (closed ones only,
    plus the still-open one when include_open), ascending."""
    base = built_from(symbol, interval)
    if base is None:
        return fake.expected_candles(symbol, interval, start, end, include_open=include_open)
    key = canonical_interval(interval)
    first = bar_open(key, start)
    if first < start:
        first = next_open(key, first)
    last = next_open(key, bar_open(key, end)) - 1
    bars = fake.expected_bars(symbol, base, first, last, include_open=include_open)
    now = fake.now
    # A bucket still open at now is a closed bar of the service only once it closes.
    return [
        c
        for c in aggregate(bars, key)
        if first <= c.time <= end and (include_open or next_open(key, c.time) <= now)
    ]
