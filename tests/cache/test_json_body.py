"""The /v1/candles body built by Postgres (warm path) against the body pydantic builds from the same rows.

Parsed JSON must be equal with every number bit-exact (the same double), field names and order as the
contract says, ascending, the same next_start: native and derived intervals, forward and backward,
with and without the open bar, partial answers, the bypass and a server whose float text would not
round-trip (extra_float_digits < 1: the service falls back to objects).
"""

from __future__ import annotations

import json
import struct
from typing import Any

import pg8000.native
import pytest

from marketdata import http
from marketdata.intervals import Interval, add_bars, bar_open, last_closed_open
from marketdata.schemas import CacheStatus, Candle, HistoryResponse
from marketdata.service import HistoryResult, MarketDataService
from marketdata.store import CandleStore, connection_kwargs
from tests.cache.service_helpers import NOW

H1, H4, M1, D1, W1 = Interval.H1, Interval.H4, Interval.M1, Interval.D1, Interval.W1
T0 = 1_699_999_200  # 2023-11-14 22:00 UTC
FIELDS = ["time", "open", "high", "low", "close", "volume"]
# Doubles whose text is easy to get wrong: not exact in binary, tiny, huge, subnormal, integral.
AWKWARD = [
    0.1 + 0.2,
    1e-05,
    1e16,
    5e-324,
    100.0,
    1.7976931348623157e308,
    123456789.12345679,
    2.5e15,
    0.0,
    1e-300,
    98765.4321,
    1 / 3,
    2.0**53 + 2,
    1e21,
    1e22,
    9.999999999999999e-5,
]


def _bits(value: Any) -> bytes:
    assert type(value) in (int, float) and not isinstance(value, bool), value
    return struct.pack("<d", float(value))


def assert_same_json(built: str, reference: str) -> None:
    """Equal as parsed JSON, every candle's fields in contract order, every number the same double."""
    got, want = json.loads(built), json.loads(reference)
    assert list(got) == list(want)
    assert {k: v for k, v in got.items() if k != "candles"} == {
        k: v for k, v in want.items() if k != "candles"
    }
    assert len(got["candles"]) == len(want["candles"])
    for a, b in zip(got["candles"], want["candles"], strict=True):
        assert list(a) == FIELDS and list(b) == FIELDS
        assert type(a["time"]) is int and a["time"] == b["time"]
        assert [_bits(a[f]) for f in FIELDS[1:]] == [_bits(b[f]) for f in FIELDS[1:]], (a, b)
    times = [c["time"] for c in got["candles"]]
    assert times == sorted(set(times))


def reference_body(result: HistoryResult, candles: list[Candle]) -> str:
    return HistoryResponse(
        symbol=result.symbol,
        interval=result.interval,
        asset_class=result.asset_class,
        provider=result.provider,  # type: ignore[arg-type]
        candles=candles,
        next_start=result.next_start,
    ).model_dump_json()


# --- the store: one statement builds the array ---------------------------------------------------


def _awkward_bars(n: int, start: int, step: int) -> list[Candle]:
    def pick(i: int) -> float:
        return AWKWARD[i % len(AWKWARD)]

    out = []
    for i in range(n):
        o, c = pick(i), pick(i + 3)
        high, low = max(o, c, pick(i + 5)), min(o, c, pick(i + 7))
        out.append(Candle(start + i * step, o, high, low, c, pick(i + 11)))
    return out


def _array_of(candles: list[Candle]) -> str:
    """A body serialized by pydantic around `candles`."""
    return HistoryResponse(
        symbol="X", interval=H1, asset_class="crypto", provider="binance", candles=candles, next_start=None
    ).model_dump_json()


def _wrap(text: str) -> str:
    return (
        HistoryResponse(
            symbol="X", interval=H1, asset_class="crypto", provider="binance", candles=[], next_start=None
        )
        .model_dump_json()
        .replace('"candles":[]', f'"candles":{text}')
    )


@pytest.mark.parametrize(
    ("limit", "newest", "peek"),
    [(5, False, True), (5, True, False), (100, False, False), (100, True, False), (1, False, True)],
)
def test_native_array_is_the_stored_doubles(store: CandleStore, limit: int, newest: bool, peek: bool) -> None:
    bars = _awkward_bars(40, T0, 3600)
    store.store_candles("binance", "BTCUSDT", H1, bars)
    lo, hi = T0 + 3 * 3600, T0 + 30 * 3600
    objects = store.read_candles("BTCUSDT", H1, lo, hi, limit=limit, newest=newest)
    built = store.read_candles_json("BTCUSDT", H1, lo, hi, limit=limit, newest=newest, peek=peek)
    assert built is not None
    assert_same_json(_wrap(built.text), _array_of(objects))
    assert built.count == len(objects) and built.last_time == objects[-1].time
    inside = [b for b in bars if lo <= b.time <= hi]
    expected_next = inside[limit].time if peek and len(inside) > limit else None
    assert built.next_time == expected_next


def test_empty_range_is_an_empty_array(store: CandleStore) -> None:
    built = store.read_candles_json("BTCUSDT", H1, T0, T0 + 10 * 3600, limit=10, peek=True)
    assert built is not None and (built.text, built.count, built.last_time, built.next_time) == (
        "[]",
        0,
        None,
        None,
    )


@pytest.mark.parametrize(("interval", "base", "step"), [(H4, H1, 3600), (W1, D1, 86400)])
def test_derived_array_is_the_resampled_doubles(
    store: CandleStore, interval: Interval, base: Interval, step: int
) -> None:
    bars = [b for i, b in enumerate(_awkward_bars(200, T0 - T0 % 86400, step)) if i % 5 != 2]
    store.store_candles("twelve_data", "EUR/USD", base, bars)
    lo, hi = bar_open(interval, bars[0].time), bar_open(interval, bars[-1].time)
    for limit, newest, peek in ((3, False, True), (3, True, False), (1000, False, True)):
        objects = store.read_candles("EUR/USD", interval, lo, hi, limit=limit, newest=newest, base=base)
        built = store.read_candles_json(
            "EUR/USD", interval, lo, hi, limit=limit, newest=newest, peek=peek, base=base
        )
        assert built is not None and built.count == len(objects)
        assert_same_json(_wrap(built.text), _array_of(objects))
        everything = store.read_candles("EUR/USD", interval, lo, hi, base=base)
        assert built.next_time == (everything[limit].time if peek and len(everything) > limit else None)


def test_float_text_that_would_not_round_trip_is_refused(db_settings) -> None:
    def connect() -> Any:
        conn = pg8000.native.Connection(**connection_kwargs(db_settings))
        conn.run("SET extra_float_digits = 0")  # 15 significant digits: 0.1 + 0.2 would read as 0.3
        return conn

    store = CandleStore(db_settings, connect=connect)
    try:
        store.store_candles("binance", "BTCUSDT", H1, _awkward_bars(3, T0, 3600))
        assert store.read_candles_json("BTCUSDT", H1, T0, T0 + 7200, limit=3) is None
    finally:
        store.close()


# --- the service end to end: the same body either way -------------------------------------------------


CASES = [
    # symbol, interval, start offset in bars before the last closed bar (None: latest), limit
    ("BTCUSDT", "1H", None, 300),
    ("BTCUSDT", "1H", 700, 250),  # forward, more remain: next_start from the peeked bar
    ("BTCUSDT", "1m", 40, 500),  # forward up to the present
    ("EUR/USD", "1H", None, 200),
    ("EUR/USD", "4H", None, 120),  # derived, built in Postgres
    ("EUR/USD", "4H", 300, 100),  # derived, forward, more remain
    ("EUR/USD", "1W", None, 20),
]


@pytest.mark.parametrize("include_open", [False, True])
@pytest.mark.parametrize(("symbol", "interval", "back", "limit"), CASES)
def test_body_from_postgres_equals_body_from_objects(
    service: MarketDataService, symbol: str, interval: str, back: int | None, limit: int, include_open: bool
) -> None:
    iv = Interval(interval)
    start = None if back is None else add_bars(iv, last_closed_open(iv, NOW), -back)

    def ask(as_json: bool) -> HistoryResult:
        return service.get_historical_candles(
            symbol, iv, start, None, limit, include_open, candles_json=as_json
        )

    # Fills the cache: the miss is answered from the pages just fetched (objects), the same body.
    cold = ask(True)
    assert cold.cache is CacheStatus.MISS
    objects, built = ask(False), ask(True)
    assert objects.cache is built.cache is CacheStatus.HIT and objects.candles_json is None
    assert built.candles_json is not None and built.candles == []
    for answer in (cold, built):
        assert_same_json(http.history_body(answer), http.history_body(objects))
        assert answer.next_start == objects.next_start and answer.last_time == objects.candles[-1].time
        assert answer.reaches_present == objects.reaches_present
        assert http.history_cache_control(answer, now=NOW) == http.history_cache_control(objects, now=NOW)
    if back == 700 or back == 300:
        assert objects.next_start is not None
    has_open = objects.candles[-1].time > last_closed_open(iv, NOW)
    assert has_open == (include_open and objects.next_start is None)


def test_partial_answer_from_postgres_equals_the_same_rows(make_service) -> None:
    # One Twelve Data page per request (4999 hours): a 4H answer of 5000 bars from far back stops part
    # way, with next_start where the rest begins.
    svc = make_service(TWELVE_DATA_MAX_REQUESTS_PER_CALL=1)
    start = add_bars(H4, last_closed_open(H4, NOW), -4000)
    result = svc.get_historical_candles("EUR/USD", "4H", start, None, 5000, candles_json=True)
    assert result.cache is CacheStatus.PARTIAL and result.next_start is not None
    assert result.candles_json is not None
    rows = svc.store.read_candles("EUR/USD", H4, start, result.next_start - 1, base=H1)
    assert rows and len(json.loads(result.candles_json)) == len(rows)
    assert_same_json(http.history_body(result), reference_body(result, rows))


@pytest.mark.parametrize("include_open", [False, True])
def test_bypass_body_is_unchanged(make_service, include_open: bool) -> None:
    """Without a database the answer carries objects, and its body is pydantic's, as before."""
    cached, live = make_service(), make_service(url=None)
    warm = cached.get_historical_candles("BTCUSDT", "1H", None, None, 400, include_open, candles_json=True)
    direct = live.get_historical_candles("BTCUSDT", "1H", None, None, 400, include_open, candles_json=True)
    assert direct.cache is CacheStatus.BYPASS and direct.candles_json is None and len(direct.candles) >= 400
    assert http.history_body(direct) == reference_body(direct, direct.candles)
    assert_same_json(http.history_body(warm), http.history_body(direct))
