"""The TradingView UDF datafeed (functions/udf): every endpoint through real API Gateway v2 events, against
a real Postgres and the fake upstream, compared with /v1/candles and with the fake's own truth."""

from __future__ import annotations

import calendar
import itertools
import time

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.udf import MAX_BARS, SUPPORTED_RESOLUTIONS
from tests.functions.conftest import Answer, Api
from tests.support.truth import service_truth

JAN_1_2024 = 1704067200  # a Monday
HOUR = 3600
DAY = 86400
KLINES = "/api/v3/klines"
#: UDF resolution -> the /v1/candles interval it is.
RESOLUTION_INTERVALS = {
    "1": "1m", "5": "5m", "15": "15m", "30": "30m", "60": "1H", "240": "4H",
    "1D": "1D", "1W": "1W", "1M": "1M",
}  # fmt: skip
INTERVAL_SECONDS = {
    "1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1H": HOUR, "4H": 4 * HOUR,
    "1D": DAY, "1W": 7 * DAY, "1M": 31 * DAY,
}  # fmt: skip
#: The fake's BTCUSDT outage (no bar lies entirely inside it), as Binance's 2018-02-08 maintenance.
OUTAGE_FROM = calendar.timegm((2018, 2, 8, 8, 0, 0))
OUTAGE_TO = calendar.timegm((2018, 2, 9, 10, 0, 0))
BTC_LISTED = calendar.timegm((2017, 8, 17, 0, 0, 0))


def udf_bars(answer: Answer) -> list[dict]:
    body = answer.json()
    assert body["s"] == "ok", body
    keys = ("t", "o", "h", "l", "c", "v")
    assert all(len(body[k]) == len(body["t"]) for k in keys)
    return [
        {"time": t, "open": o, "high": h, "low": lo, "close": c, "volume": v}
        for t, o, h, lo, c, v in zip(*(body[k] for k in keys), strict=True)
    ]


def as_rows(candles: list) -> list[dict]:
    return [
        {"time": c.time, "open": c.open, "high": c.high, "low": c.low, "close": c.close, "volume": c.volume}
        for c in candles
    ]


def udf_error(answer: Answer, status: int) -> str:
    assert answer.status == status, answer.body
    body = answer.json()
    assert set(body) == {"s", "errmsg"} and body["s"] == "error", body
    assert answer.headers["cache-control"] == "no-store"
    assert "Traceback" not in body["errmsg"]
    return body["errmsg"]


def newest_before(fake: FakeUpstream, symbol: str, interval: str, t: int, *, back: int = 60 * DAY) -> int:
    """The truth: open time of the newest bar of `symbol` opening before t."""
    bars = service_truth(fake, symbol, interval, t - back, t - 1)
    assert bars, "the test needs a bar before t"
    return bars[-1].time


# --- config, symbols, search, time ---------------------------------------------------------------


def test_config_offers_the_nine_resolutions_search_and_time(api: Api):
    answer = api.udf("config")

    assert answer.status == 200
    body = answer.json()
    assert body["supported_resolutions"] == ["1", "5", "15", "30", "60", "240", "1D", "1W", "1M"]
    assert (body["supports_search"], body["supports_time"]) == (True, True)
    assert (body["supports_group_request"], body["supports_marks"], body["supports_timescale_marks"]) == (
        False,
        False,
        False,
    )
    assert {e["value"] for e in body["exchanges"]} == {"", "BINANCE", "TWELVEDATA"}
    assert {t["value"] for t in body["symbols_types"]} == {"", "crypto", "forex"}
    assert answer.headers["cache-control"] == "public, max-age=3600"


@pytest.mark.parametrize("symbol", ["BTCUSDT", "BINANCE:BTCUSDT", "binance:btcusdt", " btcusdt "])
def test_symbol_info_for_a_binance_symbol_plain_or_prefixed(api: Api, symbol: str):
    answer = api.udf("symbols", symbol=symbol)

    assert answer.status == 200, answer.body
    info = answer.json()
    assert (info["name"], info["ticker"], info["full_name"]) == (
        "BTCUSDT",
        "BINANCE:BTCUSDT",
        "BINANCE:BTCUSDT",
    )
    assert (info["type"], info["exchange"], info["listed_exchange"]) == ("crypto", "BINANCE", "BINANCE")
    assert (info["session"], info["timezone"], info["minmov"]) == ("24x7", "Etc/UTC", 1)
    assert info["description"] == "BTC / USDT"
    assert info["pricescale"] == 100  # the fake's BTCUSDT tickSize is 0.01
    assert (info["has_intraday"], info["has_daily"], info["has_weekly_and_monthly"]) == (True, True, True)
    assert info["intraday_multipliers"] == ["1", "5", "15", "30", "60", "240"]
    assert info["supported_resolutions"] == list(SUPPORTED_RESOLUTIONS)
    assert info["volume_precision"] == 8
    assert info["data_status"] == "streaming"


@pytest.mark.parametrize(
    ("symbol", "pricescale"),
    [("DOGEUSDT", 10**5), ("BNBBTC", 10**7), ("BNBBUSD", 10), ("ETHBTC", 10**5)],
)
def test_binance_pricescale_follows_the_symbols_tick_size(
    api: Api, fake_upstream: FakeUpstream, symbol: str, pricescale: int
):
    # The fake's exchangeInfo tickSize: DOGEUSDT 0.00001, BNBBTC 0.0000001, BNBBUSD 0.1, ETHBTC 0.00001.
    answer = api.udf("symbols", symbol=symbol)

    assert answer.status == 200, answer.body
    assert answer.json()["pricescale"] == pricescale
    # Straight from exchangeInfo (one request for the symbol), not read off bars.
    info_requests = [r for r in fake_upstream.requests if r.path == "/api/v3/exchangeInfo"]
    assert any(r.query.get("symbol") == symbol for r in info_requests)
    assert fake_upstream.count(KLINES) == 0


def test_symbol_info_without_bars_to_read_falls_back_to_eight_decimals(api: Api, fake_upstream: FakeUpstream):
    api.udf("symbols", symbol="BTCUSDT")  # the symbol list is cached: only the price step can fail below
    fake_upstream.fail_next(100, 500, "/api/v3/")  # exchangeInfo and klines down: nothing to read it from
    answer = api.udf("symbols", symbol="SOLUSDT")
    assert answer.status == 200 and answer.json()["pricescale"] == 10**8

    fake_upstream.reset()  # not remembered: the next answer asks exchangeInfo again
    assert api.udf("symbols", symbol="SOLUSDT").json()["pricescale"] == 100


@pytest.mark.parametrize(
    ("symbol", "name", "pricescale"),
    [
        ("EUR/USD", "EUR/USD", 10**5),
        ("TWELVEDATA:eur/usd", "EUR/USD", 10**5),
        ("USD/JPY", "USD/JPY", 10**3),
        ("TWELVEDATA:GBP/JPY", "GBP/JPY", 10**3),
    ],
)
def test_symbol_info_for_a_forex_pair(api: Api, fake_upstream: FakeUpstream, symbol, name, pricescale):
    answer = api.udf("symbols", symbol=symbol)

    assert answer.status == 200, answer.body
    info = answer.json()
    assert (info["name"], info["ticker"], info["type"]) == (name, f"TWELVEDATA:{name}", "forex")
    assert info["pricescale"] == pricescale  # 5 decimals, 3 for JPY pairs
    assert (info["volume_precision"], info["visible_plots_set"]) == (0, "ohlc")
    assert fake_upstream.count("/time_series") == 0  # forex precision costs no Twelve Data credit


@pytest.mark.parametrize(
    "symbol",
    ["NOSUCHUSDT", "BINANCE:NOSUCHUSDT", "TWELVEDATA:BTCUSDT", "BINANCE:EUR/USD", "ABC/XYZ", "NYSE:BTCUSDT"],
)
def test_unknown_symbols_are_unknown_symbol(api: Api, symbol: str):
    assert udf_error(api.udf("symbols", symbol=symbol), 404) == "unknown_symbol"
    history = api.udf("history", symbol=symbol, resolution="60", to=JAN_1_2024, countback=5)
    assert udf_error(history, 404) == "unknown_symbol"


def test_search_ranks_exact_matches_first_and_filters(api: Api):
    everything = api.udf("search", query="btc")
    assert everything.status == 200
    found = everything.json()
    names = [r["symbol"] for r in found]
    assert set(names) >= {"BTCUSDT", "ETHBTC", "BNBBTC"}
    assert names.index("BTCUSDT") < names.index("ETHBTC")  # a prefix match before a suffix match
    first = found[names.index("BTCUSDT")]
    assert first == {
        "symbol": "BTCUSDT", "full_name": "BINANCE:BTCUSDT", "description": "BTC / USDT",
        "exchange": "BINANCE", "ticker": "BINANCE:BTCUSDT", "type": "crypto",
    }  # fmt: skip

    exact = api.udf("search", query="BINANCE:btcusdt").json()
    assert exact[0]["symbol"] == "BTCUSDT"
    forex = api.udf("search", query="eurusd").json()
    assert forex[0]["ticker"] == "TWELVEDATA:EUR/USD"
    only_forex = api.udf("search", query="usd", type="forex", limit=3).json()
    assert len(only_forex) == 3 and {r["type"] for r in only_forex} == {"forex"}
    only_binance = api.udf("search", query="usd", exchange="BINANCE").json()
    assert only_binance and {r["exchange"] for r in only_binance} == {"BINANCE"}
    assert api.udf("search", query="zzzz").json() == []


def test_time_is_the_server_time_as_text(api: Api):
    answer = api.udf("time")

    assert answer.status == 200
    assert answer.headers["content-type"].startswith("text/plain")
    assert answer.headers["cache-control"] == "no-store"
    assert abs(int(answer.body.decode()) - time.time()) < 5


# --- history ---------------------------------------------------------------------------------------


def test_a_range_is_to_exclusive_and_equals_v1_candles(api: Api, fake_upstream: FakeUpstream):
    answer = api.udf(
        "history", symbol="BINANCE:BTCUSDT", resolution="60", from_=JAN_1_2024, to=JAN_1_2024 + DAY
    )

    bars = udf_bars(answer)
    assert [b["time"] for b in bars] == list(range(JAN_1_2024, JAN_1_2024 + DAY, HOUR))  # not the bar at `to`
    candles = api.candles(symbol="BTCUSDT", interval="1H", start=JAN_1_2024, end=JAN_1_2024 + DAY - HOUR)
    assert bars == candles.json()["candles"]
    assert bars == as_rows(fake_upstream.expected_candles("BTCUSDT", "1H", JAN_1_2024, JAN_1_2024 + DAY - 1))
    assert answer.headers["cache-control"] == "public, max-age=86400, immutable"  # the closed past
    assert answer.headers["x-cache"] == "miss"
    # A `to` inside a bar keeps that bar (it opens before `to`); `from` inside one skips it.
    inside = api.udf(
        "history", symbol="BTCUSDT", resolution="60", from_=JAN_1_2024 + 1, to=JAN_1_2024 + 5 * HOUR + 1
    )
    assert [b["time"] for b in udf_bars(inside)] == [JAN_1_2024 + h * HOUR for h in range(1, 6)]
    assert inside.headers["x-cache"] == "hit"


def test_countback_gives_the_bars_before_to_ignoring_from(api: Api, fake_upstream: FakeUpstream):
    to = JAN_1_2024 + 100 * HOUR
    answer = api.udf("history", symbol="ETHUSDT", resolution="60", from_=to - HOUR, to=to, countback=10)

    bars = udf_bars(answer)
    assert [b["time"] for b in bars] == [to - k * HOUR for k in range(10, 0, -1)]
    assert bars == as_rows(fake_upstream.expected_candles("ETHUSDT", "1H", to - 10 * HOUR, to - 1))
    same = api.candles(symbol="ETHUSDT", interval="1H", end=to - 1, limit=10)
    assert bars == same.json()["candles"]


def test_countback_beyond_one_service_read_is_whole_and_in_order(api: Api, fake_upstream: FakeUpstream):
    to = JAN_1_2024 + 2 * DAY
    answer = api.udf("history", symbol="BTCUSDT", resolution="1", to=to, countback=9000)

    bars = udf_bars(answer)
    assert len(bars) == 9000
    assert [b["time"] for b in bars] == list(range(to - 9000 * 60, to, 60))
    assert bars == as_rows(fake_upstream.expected_candles("BTCUSDT", "1m", to - 9000 * 60, to - 1))


def test_the_largest_range_is_answered_whole_and_one_bar_more_is_refused(
    api: Api, fake_upstream: FakeUpstream
):
    start = JAN_1_2024
    whole = api.udf("history", symbol="SOLUSDT", resolution="1", from_=start, to=start + MAX_BARS * 60)
    bars = udf_bars(whole)
    assert len(bars) == MAX_BARS
    assert (bars[0]["time"], bars[-1]["time"]) == (start, start + (MAX_BARS - 1) * 60)

    calls = fake_upstream.count()
    too_wide = api.udf(
        "history", symbol="SOLUSDT", resolution="1", from_=start, to=start + (MAX_BARS + 1) * 60
    )
    message = udf_error(too_wide, 400)
    assert "from" in message and "narrow the range" in message and str(MAX_BARS) in message
    too_many = api.udf("history", symbol="SOLUSDT", resolution="1", to=start, countback=MAX_BARS + 1)
    assert "countback" in udf_error(too_many, 400)
    assert fake_upstream.count() == calls  # refused before any provider request


@pytest.mark.parametrize("resolution", SUPPORTED_RESOLUTIONS)
@pytest.mark.parametrize("symbol", ["BTCUSDT", "EUR/USD"])
def test_every_resolution_is_its_app_interval(
    api: Api, fake_upstream: FakeUpstream, resolution: str, symbol: str
):
    interval = RESOLUTION_INTERVALS[resolution]
    answer = api.udf("history", symbol=symbol, resolution=resolution, to=JAN_1_2024, countback=3)

    bars = udf_bars(answer)
    assert len(bars) == 3
    # The same bars as /v1/candles serves for their range.
    same = api.candles(symbol=symbol, interval=interval, start=bars[0]["time"], end=bars[-1]["time"])
    assert bars == same.json()["candles"]
    back = max(40 * INTERVAL_SECONDS[interval], 7 * DAY)  # past any weekend
    assert bars == as_rows(
        service_truth(fake_upstream, symbol, interval, JAN_1_2024 - back, JAN_1_2024 - 1)[-3:]
    )


@pytest.mark.parametrize(("old", "new"), [("D", "1D"), ("W", "1W"), ("M", "1M")])
def test_older_library_spellings_of_days_weeks_and_months(api: Api, old: str, new: str):
    query = {"symbol": "BTCUSDT", "to": JAN_1_2024, "countback": 2}
    assert udf_bars(api.udf("history", resolution=old, **query)) == udf_bars(
        api.udf("history", resolution=new, **query)
    )


def test_the_forming_bar_is_included_when_the_range_reaches_it(api: Api, fake_upstream: FakeUpstream):
    answer = api.udf("history", symbol="BTCUSDT", resolution="1", to=int(time.time()) + 60, countback=3)

    bars = udf_bars(answer)
    open_bar = fake_upstream.open_bar("BTCUSDT", "1m")
    assert open_bar is not None and len(bars) == 3
    assert bars[-1]["time"] == open_bar.time
    assert [b["time"] for b in bars] == [open_bar.time - 120, open_bar.time - 60, open_bar.time]
    assert "immutable" not in answer.headers["cache-control"]
    assert 5 <= answer.max_age() <= 60


# --- no_data ---------------------------------------------------------------------------------------


def test_no_data_before_a_listing_has_no_next_time(api: Api):
    for resolution, start in (("1D", BTC_LISTED - 60 * DAY), ("60", BTC_LISTED - 10 * DAY), ("1W", 0)):
        answer = api.udf("history", symbol="BTCUSDT", resolution=resolution, from_=start, to=start + 7 * DAY)
        assert answer.status == 200, answer.body
        assert answer.json() == {"s": "no_data"}, resolution
    countback = api.udf("history", symbol="BTCUSDT", resolution="60", to=BTC_LISTED - DAY, countback=300)
    assert countback.json() == {"s": "no_data"}


@pytest.mark.parametrize(("resolution", "interval"), [("1", "1m"), ("60", "1H"), ("240", "4H")])
def test_no_data_inside_an_outage_points_at_the_last_bar_before_it(
    api: Api, fake_upstream: FakeUpstream, resolution: str, interval: str
):
    start, to = OUTAGE_FROM + 4 * HOUR, OUTAGE_FROM + 12 * HOUR
    answer = api.udf("history", symbol="BTCUSDT", resolution=resolution, from_=start, to=to)

    assert answer.status == 200, answer.body
    expected = newest_before(fake_upstream, "BTCUSDT", interval, start)
    assert expected < OUTAGE_FROM
    assert answer.json() == {"s": "no_data", "nextTime": expected}
    # The gap is covered now: the same question costs no provider request.
    calls = fake_upstream.count()
    assert (
        api.udf("history", symbol="BTCUSDT", resolution=resolution, from_=start, to=to).json()["nextTime"]
        == expected
    )
    assert fake_upstream.count() == calls


def test_countback_reaches_across_a_gap_of_any_length(api: Api, fake_upstream: FakeUpstream):
    # Bars before a `to` 10 hours into the outage: nothing near, so the bars before the outage.
    to = OUTAGE_FROM + 10 * HOUR
    answer = api.udf("history", symbol="BTCUSDT", resolution="1", to=to, countback=5)

    last = newest_before(fake_upstream, "BTCUSDT", "1m", OUTAGE_FROM)
    assert [b["time"] for b in udf_bars(answer)] == [last - 60 * k for k in range(4, -1, -1)]
    # Ten bars straddling the gap's far end: the ones after it and, without a hole, those before it.
    after = OUTAGE_TO + 3 * 60
    straddling = udf_bars(api.udf("history", symbol="BTCUSDT", resolution="1", to=after, countback=10))
    truth = service_truth(fake_upstream, "BTCUSDT", "1m", OUTAGE_FROM - DAY, after - 1)[-10:]
    assert straddling == as_rows(truth)
    assert straddling[0]["time"] < OUTAGE_FROM < OUTAGE_TO <= straddling[-1]["time"]


def _forex_gap(fake: FakeUpstream, interval: str, width: int, at_least: int) -> tuple[int, int]:
    """(from, to): a range of at least `at_least` seconds inside a weekend with no EUR/USD bar."""
    bars = service_truth(fake, "EUR/USD", interval, JAN_1_2024, JAN_1_2024 + 28 * DAY)
    for before, after in itertools.pairwise(bars):
        if after.time - before.time - width >= at_least:
            return before.time + width, after.time
    raise AssertionError("no gap in four weeks of EUR/USD")


@pytest.mark.parametrize(("resolution", "interval", "width"), [("1", "1m", 60), ("60", "1H", HOUR)])
def test_no_data_in_a_forex_weekend_points_at_the_bar_before_it(
    api: Api, fake_upstream: FakeUpstream, resolution: str, interval: str, width: int
):
    start, to = _forex_gap(fake_upstream, interval, width, 12 * HOUR)
    answer = api.udf("history", symbol="EUR/USD", resolution=resolution, from_=start, to=to)

    assert answer.status == 200, answer.body
    assert answer.json() == {"s": "no_data", "nextTime": start - width}
    assert time.gmtime(start).tm_wday in (4, 5, 6)  # a weekend (Friday evening on)


# --- errors ----------------------------------------------------------------------------------------

_Q = {"symbol": "BTCUSDT", "resolution": "60", "from": str(JAN_1_2024), "to": str(JAN_1_2024 + DAY)}

BAD_HISTORY = [
    pytest.param({k: v for k, v in _Q.items() if k != "symbol"}, "symbol", id="missing-symbol"),
    pytest.param({k: v for k, v in _Q.items() if k != "resolution"}, "resolution", id="missing-resolution"),
    pytest.param({k: v for k, v in _Q.items() if k != "to"}, "to", id="missing-to"),
    pytest.param({k: v for k, v in _Q.items() if k != "from"}, "from", id="missing-from-without-countback"),
    pytest.param({**_Q, "resolution": "2"}, "resolution", id="unsupported-resolution"),
    pytest.param({**_Q, "resolution": "1h"}, "resolution", id="app-interval-name"),
    pytest.param({**_Q, "from": "yesterday"}, "from", id="from-word"),
    pytest.param({**_Q, "to": "-5"}, "to", id="to-negative"),
    pytest.param({**_Q, "from": _Q["to"]}, "from", id="from-equals-to"),
    pytest.param({**_Q, "countback": "0"}, "countback", id="countback-zero"),
    pytest.param({**_Q, "countback": "ten"}, "countback", id="countback-word"),
    pytest.param({**_Q, "symbol": "BTC'; DROP TABLE x; --"}, "symbol", id="sql"),
    pytest.param({**_Q, "symbol": "BINANCE:"}, "symbol", id="prefix-only"),
    pytest.param({**_Q, "symbol": "A" * 200}, "symbol", id="very-long-symbol"),
]


@pytest.mark.parametrize(("query", "param"), BAD_HISTORY)
def test_bad_history_parameters_are_udf_errors_naming_the_parameter(
    api: Api, fake_upstream: FakeUpstream, query: dict, param: str
):
    message = udf_error(api.get("/udf/history", query), 400)
    assert param in message
    assert fake_upstream.count() == 0


@pytest.mark.parametrize(
    ("query", "param"),
    [({"limit": "0"}, "limit"), ({"limit": "101"}, "limit"), ({"type": "stock"}, "type"),
     ({"exchange": "NYSE"}, "exchange"), ({"query": "x" * 65}, "query")],
)  # fmt: skip
def test_bad_search_parameters_are_udf_errors(api: Api, query: dict, param: str):
    assert param in udf_error(api.get("/udf/search", query), 400)


def test_missing_symbol_info_parameter_and_unknown_udf_path(api: Api):
    assert "symbol" in udf_error(api.get("/udf/symbols", {}), 400)
    # A path the function has no route for (API Gateway never sends one; the resolver still answers UDF).
    assert "no route" in udf_error(api.invoke(api.event("/udf/marks"), route="GET /udf/config"), 404)


def test_a_provider_failure_part_way_is_an_error_to_retry_never_a_part(api: Api, fake_upstream: FakeUpstream):
    fake_upstream.fail_next(50, 500, KLINES)
    answer = api.udf("history", symbol="BTCUSDT", resolution="60", from_=JAN_1_2024, to=JAN_1_2024 + DAY)

    assert answer.status in (502, 503)
    assert udf_error(answer, answer.status)
    fake_upstream.reset()
    again = api.udf("history", symbol="BTCUSDT", resolution="60", from_=JAN_1_2024, to=JAN_1_2024 + DAY)
    assert len(udf_bars(again)) == 24


def test_an_answer_cut_short_by_the_request_budget_asks_to_retry(
    api: Api, fake_upstream: FakeUpstream, monkeypatch: pytest.MonkeyPatch
):
    from tests.functions.conftest import reset_process_singletons

    # One Binance page per service read, but a range whose reads the UDF sizes for the default budget.
    monkeypatch.setenv("BINANCE_MAX_REQUESTS_PER_CALL", "1")
    reset_process_singletons()
    ok = api.udf("history", symbol="BTCUSDT", resolution="1", from_=JAN_1_2024, to=JAN_1_2024 + 1000 * 60)
    assert len(udf_bars(ok)) == 1000  # what one page holds is answered whole
    # A countback reaching over a gap the service must widen across, page by page: cut short, refused.
    answer = api.udf("history", symbol="BTCUSDT", resolution="1", to=OUTAGE_TO + 30 * 60, countback=900)
    message = udf_error(answer, 503)
    assert "retry" in message
    assert answer.headers["retry-after"] == "5"
