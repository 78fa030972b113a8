"""Bars of an app interval built from a provider's finer bars, on the service's grid.

Every symbol is served on one grid (see `marketdata.intervals`), whatever grid its provider cuts bars
on. Where a provider's own bars of an interval lie elsewhere (Twelve Data anchors bars of 2h and longer
at 17:00 New York), the provider's table of `derived_intervals` names a finer base interval whose bars
nest inside ours, and the bar is built from them: open of the first base bar, highest high, lowest low,
close of the last, volume summed. A provider bar is never relabelled onto our grid: its prices belong
to other hours.

The cache stores base bars only; coverage follows the base. An `interval` bar is known once every base
bar it spans is covered (`intervals.whole_bars_through`), and is built only from closed base bars; the
still-open bar from the closed base bars plus the open one. The same aggregation runs in Postgres for
cache reads (`CandleStore.read_candles(..., base=...)`); tests hold the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Iterable

from marketdata.intervals import Interval, bar_open
from marketdata.schemas import Candle


def resample(interval: Interval, bars: Iterable[Candle]) -> list[Candle]:
    """`bars` (ascending by time, unique) aggregated into `interval` bars, ascending.

    A bar exists where at least one base bar does. Volume is added in time order, term by term, the
    way Postgres' sum(volume ORDER BY open_time) does, so both give the same double.
    """
    out: list[Candle] = []
    bucket: int | None = None
    open_ = high = low = close = volume = 0.0
    for bar in bars:
        t = bar_open(interval, bar.time)
        if t != bucket:
            if bucket is not None:
                out.append(Candle(bucket, open_, high, low, close, volume))
            bucket, open_, high, low, volume = t, bar.open, bar.high, bar.low, 0.0
        else:
            high = max(high, bar.high)
            low = min(low, bar.low)
        close = bar.close
        volume += bar.volume
    if bucket is not None:
        out.append(Candle(bucket, open_, high, low, close, volume))
    return out
