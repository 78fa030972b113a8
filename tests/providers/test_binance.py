"""BinanceClient: real payloads, paging, closed/open split, validation and every error path."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from marketdata.config import Settings
from marketdata.errors import (
    InvalidRequest,
    SymbolNotFound,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from marketdata.intervals import Interval, add_bars, last_closed_open, next_open
from marketdata.providers.binance import BinanceClient
from marketdata.schemas import Candle
from tests.providers.helpers import (
    FakeTime,
    Recorder,
    binance_klines,
    json_response,
    kline_row,
    raw_response,
    sample_bytes,
    sample_json,
    utc,
)

Make = Callable[..., tuple[BinanceClient, Recorder]]
GRACE = Settings.from_env({}).binance_close_grace_seconds


# --- real payloads ----------------------------------------------------------------------------


def test_mid_bar_start_capture_parses_and_skips_to_the_next_bar(binance: Make, fake_time: FakeTime) -> None:
    # Recorded with startTime=1706628191000 (15:23:11Z); Binance answered from the 16:00 bar.
    client, rec = binance(Recorder(raw_response(sample_bytes("binance_klines_BTCUSDT_1h_limit3.json"))))
    start = 1706628191
    result = client.fetch_klines("BTCUSDT", Interval.H1, start, utc("2024-01-30 18:00"))

    assert rec.count == 1
    params = rec.params()
    assert params["symbol"] == "BTCUSDT"
    assert params["interval"] == "1h"
    assert params["limit"] == "1000"
    # The client skips the partial bar exactly as Binance does, in milliseconds.
    assert params["startTime"] == str(utc("2024-01-30 16:00") * 1000)
    assert params["endTime"] == str(utc("2024-01-30 18:00") * 1000)
    assert [c.time for c in result.candles] == [
        utc("2024-01-30 16:00"),
        utc("2024-01-30 17:00"),
        utc("2024-01-30 18:00"),
    ]
    assert result.candles[0] == Candle(1706630400, 43519.34, 43936.0, 43171.0, 43488.71, 20.55495)
    assert result.candles[2] == Candle(1706637600, 43374.81, 44048.0, 43062.0, 43361.11, 23.66547)
    assert result.open_bar is None
    assert result.dropped == 0
    assert result.covered == [(utc("2024-01-30 16:00"), utc("2024-01-30 18:00"))]


def test_testnet_daily_sample_splits_off_the_open_last_bar(binance: Make, fake_time: FakeTime) -> None:
    rows = sample_json("binance_testnet_klines_BTCUSDT_1d.json")
    last_open = rows[-1][0] // 1000
    fake_time.now = last_open + 5 * 3600  # 05:00 inside the last (still open) day
    client, rec = binance(Recorder(raw_response(sample_bytes("binance_testnet_klines_BTCUSDT_1d.json"))))

    pages = list(client.iter_pages("BTCUSDT", Interval.D1, rows[0][0] // 1000, last_open + 86400 * 10))

    assert rec.count == 1
    # The range reaches past now: the request stops at the open bar, not in the future.
    assert rec.params()["endTime"] == str(last_open * 1000)
    [page] = pages
    assert [c.time for c in page.candles] == [r[0] // 1000 for r in rows[:3]]
    assert page.candles[0] == Candle(1780444800, 67101.71, 76707.8, 802.04, 64463.6, 677.36109)
    assert page.open_bar == Candle(last_open, 65754.22, 66322.08, 54000.0, 65861.65, 233.36842)
    # Coverage stops at the last closed bar: the open day is never claimed.
    assert page.start == rows[0][0] // 1000
    assert page.end == last_open - 86400
    assert page.dropped == 0


def test_testnet_daily_sample_with_the_day_over_has_no_open_bar(binance: Make, fake_time: FakeTime) -> None:
    rows = sample_json("binance_testnet_klines_BTCUSDT_1d.json")
    last_open = rows[-1][0] // 1000
    # The last day closed and the default grace after its close has passed.
    fake_time.now = last_open + 86400 + GRACE
    client, _ = binance(Recorder(raw_response(sample_bytes("binance_testnet_klines_BTCUSDT_1d.json"))))
    result = client.fetch_klines("BTCUSDT", Interval.D1, rows[0][0] // 1000, last_open)
    assert result.open_bar is None
    assert result.candles[-1].time == last_open
    assert len(result.candles) == 4


def test_a_bar_read_right_after_its_close_is_not_final_yet(binance: Make, fake_time: FakeTime) -> None:
    """Within the grace after the close, Binance may not have folded the last trades in: never stored."""
    rows = sample_json("binance_testnet_klines_BTCUSDT_1d.json")
    last_open = rows[-1][0] // 1000
    fake_time.now = last_open + 86400 + GRACE / 2
    client, _ = binance(Recorder(raw_response(sample_bytes("binance_testnet_klines_BTCUSDT_1d.json"))))
    result = client.fetch_klines("BTCUSDT", Interval.D1, rows[0][0] // 1000, last_open)
    assert result.open_bar is not None and result.open_bar.time == last_open
    assert [c.time for c in result.candles] == [r[0] // 1000 for r in rows[:-1]]
    assert result.covered and result.covered[-1][1] < last_open


def test_exchange_info_sample(binance: Make) -> None:
    client, rec = binance(Recorder(raw_response(sample_bytes("binance_testnet_exchangeInfo_BTCUSDT.json"))))
    assert client.get_available_symbols() == ["BTCUSDT"]
    assert rec.requests[0].url.path == "/api/v3/exchangeInfo"


def test_exchange_info_filters_status_and_quote_and_sorts(binance: Make) -> None:
    def entry(symbol: str, quote: str, status: str = "TRADING", **extra: Any) -> dict[str, Any]:
        return {
            "symbol": symbol,
            "status": status,
            "baseAsset": "X",
            "quoteAsset": quote,
            "permissions": [],
            **extra,
        }

    body = {
        "timezone": "UTC",
        "newTopLevelKey": {"anything": 1},
        "symbols": [
            entry("ETHUSDT", "USDT", permissionSets=[["SPOT", "MARGIN"]]),
            entry("ETHBTC", "BTC"),
            entry("BNBBUSD", "BUSD"),
            entry("ADAEUR", "EUR"),
            entry("LUNAUSDT", "USDT", status="BREAK"),
            entry("XRPUSDT", "USDT", status="HALT"),
            entry("币安人生USDT", "USDT"),
            entry("BAD SYMBOLUSDT", "USDT"),
            entry("AAVEUSDT", "USDT", someFutureField=True),
            "not an object",
            {"status": "TRADING", "quoteAsset": "USDT"},
        ],
    }
    client, _ = binance(Recorder(json_response(body)))
    assert client.get_available_symbols() == ["AAVEUSDT", "BNBBUSD", "ETHBTC", "ETHUSDT", "币安人生USDT"]

    client, _ = binance(Recorder(json_response(body)), binance_quote_assets="EUR,BTC")
    assert client.get_available_symbols() == ["ADAEUR", "ETHBTC"]


@pytest.mark.parametrize("body", [[], {"symbols": {"BTCUSDT": {}}}, {"timezone": "UTC"}])
def test_exchange_info_wrong_shape(binance: Make, body: Any) -> None:
    client, _ = binance(Recorder(json_response(body)))
    with pytest.raises(UpstreamBadResponse):
        client.get_available_symbols()


# --- paging -----------------------------------------------------------------------------------


def test_2500_bars_take_exactly_three_requests(binance: Make, fake_time: FakeTime) -> None:
    start = utc("2025-06-01")
    end = add_bars(Interval.H1, start, 2499)
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))

    pages = list(client.iter_pages("BTCUSDT", Interval.H1, start, end))

    assert rec.count == 3
    starts = [int(p["startTime"]) for p in (rec.params(i) for i in range(3))]
    assert starts == [
        start * 1000,
        add_bars(Interval.H1, start, 999) * 1000 + 1,
        add_bars(Interval.H1, start, 1999) * 1000 + 1,
    ]
    assert all(rec.params(i)["endTime"] == str(end * 1000) for i in range(3))
    times = [c.time for p in pages for c in p.candles]
    assert len(times) == 2500 == len(set(times))
    assert times == sorted(times)
    assert times[0] == start and times[-1] == end
    # Pages tile the range: each starts at the bar after the previous page's end.
    assert [(p.start, p.end) for p in pages] == [
        (start, add_bars(Interval.H1, start, 999)),
        (add_bars(Interval.H1, start, 1000), add_bars(Interval.H1, start, 1999)),
        (add_bars(Interval.H1, start, 2000), end),
    ]


def test_fetch_klines_merges_the_pages(binance: Make, fake_time: FakeTime) -> None:
    start = utc("2025-06-01")
    end = add_bars(Interval.M5, start, 2499)
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))
    result = client.fetch_klines("ETHUSDT", Interval.M5, start, end)
    assert rec.count == 3
    assert result.pages == 3
    assert len(result.candles) == 2500
    assert [c.time for c in result.candles] == [add_bars(Interval.M5, start, i) for i in range(2500)]
    assert result.covered == [
        (start, add_bars(Interval.M5, start, 999)),
        (add_bars(Interval.M5, start, 1000), add_bars(Interval.M5, start, 1999)),
        (add_bars(Interval.M5, start, 2000), end),
    ]


def test_a_full_page_reaching_the_end_makes_no_extra_request(binance: Make, fake_time: FakeTime) -> None:
    start = utc("2025-06-01")
    end = add_bars(Interval.H1, start, 1999)  # exactly two full pages
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))
    result = client.fetch_klines("BTCUSDT", Interval.H1, start, end)
    assert rec.count == 2
    assert len(result.candles) == 2000


def test_limit_stops_paging_early(binance: Make, fake_time: FakeTime) -> None:
    start = utc("2025-01-01")
    end = add_bars(Interval.M1, start, 9999)
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))
    result = client.fetch_klines("BTCUSDT", Interval.M1, start, end, limit=1500)
    assert rec.count == 2
    assert len(result.candles) == 1500
    assert result.candles[-1].time == add_bars(Interval.M1, start, 1499)


def test_monthly_paging_advances_by_returned_open_times(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))
    client.max_page_bars = 12  # a small page cap, so calendar months span several pages
    start = utc("2019-11-01")
    end = utc("2022-03-01")  # 29 monthly bars incl. a leap February (2020)
    result = client.fetch_klines("BTCUSDT", Interval.MO1, start, end)

    assert rec.count == 3
    assert [int(rec.params(i)["startTime"]) for i in range(3)] == [
        start * 1000,
        utc("2020-10-01") * 1000 + 1,
        utc("2021-10-01") * 1000 + 1,
    ]
    times = [c.time for c in result.candles]
    assert len(times) == 29
    assert utc("2020-02-01") in times and utc("2020-03-01") in times
    assert all(next_open(Interval.MO1, a) == b for a, b in itertools.pairwise(times))


def test_weekly_bars_start_on_monday(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))
    result = client.fetch_klines("BTCUSDT", Interval.W1, utc("2025-01-01"), utc("2025-03-01"))
    assert rec.params()["interval"] == "1w"
    assert rec.params()["startTime"] == str(utc("2025-01-06") * 1000)  # first Monday at or after Jan 1
    assert [c.time for c in result.candles][:2] == [utc("2025-01-06"), utc("2025-01-13")]


def test_empty_array_is_a_covered_empty_page(binance: Make) -> None:
    client, rec = binance(Recorder(json_response([])))
    start, end = utc("2010-01-01"), utc("2010-02-01")
    [page] = list(client.iter_pages("BTCUSDT", Interval.D1, start, end))
    assert rec.count == 1
    assert (page.start, page.end, page.candles, page.open_bar) == (start, end, [], None)


def test_history_starting_inside_the_range(binance: Make, fake_time: FakeTime) -> None:
    listed = utc("2017-08-17")
    client, rec = binance(Recorder(fallback=binance_klines(listed=listed, now=fake_time.time)))
    pages = list(client.iter_pages("BTCUSDT", Interval.D1, utc("2017-01-01"), utc("2017-09-01")))
    assert rec.count == 1
    assert pages[0].start == utc("2017-01-01")
    assert pages[0].candles[0].time == listed
    assert len(pages[0].candles) == 16


def test_range_in_the_future_makes_no_request(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(Recorder())
    assert (
        list(client.iter_pages("BTCUSDT", Interval.H1, int(fake_time.now) + 7200, int(fake_time.now) + 9000))
        == []
    )
    assert client.fetch_klines("BTCUSDT", Interval.H1, 10, 5).candles == []  # start after end
    assert rec.count == 0


def test_range_holding_only_the_open_bar(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time)))
    open_time = utc("2026-01-14 12:00")
    [page] = list(client.iter_pages("BTCUSDT", Interval.H1, open_time, open_time + 3599))
    assert rec.count == 1
    assert page.candles == []
    assert page.open_bar is not None and page.open_bar.time == open_time
    assert not page.covers_closed_bars and page.end < page.start
    result = client.fetch_klines("BTCUSDT", Interval.H1, open_time - 7200, open_time)
    assert [c.time for c in result.candles] == [open_time - 7200, open_time - 3600]
    assert result.open_bar is not None and result.open_bar.time == open_time
    assert result.covered == [(open_time - 7200, last_closed_open(Interval.H1, fake_time.now))]


# --- validation -------------------------------------------------------------------------------


def _row(t: int, o: str, h: str, low: str, c: str, v: str = "1.0") -> list[Any]:
    return [t * 1000, o, h, low, c, v, (t + 3600) * 1000 - 1, "0", 1, "0", "0", "0"]


def test_bad_bars_are_dropped_with_a_warning(binance: Make, caplog: pytest.LogCaptureFixture) -> None:
    t0 = utc("2025-03-03 00:00")
    rows = [
        _row(t0, "10", "11", "9", "10.5"),
        _row(t0 + 3600, "NaN", "11", "9", "10"),  # not finite
        _row(t0 + 7200, "10", "9.5", "9", "10"),  # high below open
        _row(t0 + 10800, "10", "11", "10.2", "10.5"),  # low above open
        _row(t0 + 14400, "10", "11", "9", "10", "-1"),  # negative volume
        _row(t0 + 18000 + 60, "10", "11", "9", "10"),  # not aligned to 1h
        [
            (t0 + 21600) * 1000 + 500,
            "10",
            "11",
            "9",
            "10",
            "1",
            0,
            "0",
            1,
            "0",
            "0",
            "0",
        ],  # fractional second
        _row(t0 + 25200, "10", "Infinity", "9", "10"),
        _row(t0 + 28800, "10", "10", "10", "10", "0"),  # a flat bar with no trades is fine
    ]
    client, _ = binance(Recorder(json_response(rows)))
    with caplog.at_level(logging.WARNING, logger="marketdata"):
        [page] = list(client.iter_pages("BTCUSDT", Interval.H1, t0, t0 + 28800))
    assert [c.time for c in page.candles] == [t0, t0 + 28800]
    assert page.dropped == 7
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and "dropping bad bar" in r.getMessage()
    ]
    assert len(warnings) == 7
    assert any("high below" in r.getMessage() for r in warnings)
    assert any("not aligned" in r.getMessage() for r in warnings)
    # Merged, the page's drops are counted and its range is not reported as covered.
    client, _ = binance(Recorder(json_response(rows)))
    fetched = client.fetch_klines("BTCUSDT", Interval.H1, t0, t0 + 28800)
    assert fetched.dropped == 7 and fetched.covered == []
    assert len(fetched.candles) == 2


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'[[1706630400000, "43519.34", "43936.0"', "application/json"),  # truncated
        (b"", "application/json"),
        (b"<html><body>Service temporarily down</body></html>", "text/html; charset=utf-8"),
        (b'{"symbol": "BTCUSDT"}', "application/json"),  # a dict where the list of rows belongs
        (b'[{"openTime": 1706630400000}]', "application/json"),  # rows as objects
        (b'[[1706630400000, "1", "2", "0.5", "1.5"]]', "application/json"),  # 5 fields
        (b'[[1706630400000, "1", "abc", "0.5", "1.5", "3"]]', "application/json"),  # non-numeric string
        (b'[[1706630400000, "1", null, "0.5", "1.5", "3"]]', "application/json"),
        (b'[["1706630400000", "1", "2", "0.5", "1.5", "3"]]', "application/json"),  # open time as text
        (b'[[true, "1", "2", "0.5", "1.5", "3"]]', "application/json"),
    ],
)
def test_unreadable_bodies_are_bad_responses(binance: Make, content: bytes, content_type: str) -> None:
    client, rec = binance(Recorder(raw_response(content, content_type=content_type)))
    with pytest.raises(UpstreamBadResponse) as info:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2024-01-30 16:00"), utc("2024-01-30 18:00"))
    assert info.value.provider == "binance"
    assert rec.count == 1  # not retried


def test_a_full_page_that_does_not_advance_is_a_bad_response(binance: Make) -> None:
    start = utc("2025-06-01")
    stale = [kline_row(Interval.M1, start - 60 * (1000 - i)) for i in range(1000)]  # all before startTime
    client, rec = binance(Recorder(json_response(stale)))
    with pytest.raises(UpstreamBadResponse):
        list(client.iter_pages("BTCUSDT", Interval.M1, start, start + 86400 * 3))
    assert rec.count == 1


# --- errors -----------------------------------------------------------------------------------


def _err(code: int, msg: str, status: int = 400, headers: dict[str, str] | None = None) -> httpx.Response:
    return json_response({"code": code, "msg": msg}, status=status, headers=headers)


def test_unknown_symbol(binance: Make) -> None:
    client, rec = binance(Recorder(_err(-1121, "Invalid symbol.")))
    with pytest.raises(SymbolNotFound) as info:
        client.fetch_klines("NOPEUSDT", Interval.H1, utc("2025-01-01"), utc("2025-01-02"))
    assert info.value.symbol == "NOPEUSDT" and info.value.provider == "binance"
    assert rec.count == 1


@pytest.mark.parametrize(
    ("code", "msg", "param"),
    [
        (-1120, "Invalid interval.", "interval"),
        (
            -1100,
            "Illegal characters found in parameter 'symbol'; legal range is '^[A-Z0-9-_.]{1,20}$'.",
            "symbol",
        ),
        (-1102, "Mandatory parameter 'interval' was not sent, was empty/null, or malformed.", "interval"),
        (-1104, "Not all sent parameters were read; read '4' parameter(s) but was sent '5'.", None),
        (-1105, "Parameter 'startTime' was empty.", "start"),
        (-1128, "Combination of optional parameters invalid.", None),
        (-1130, "Invalid data sent for a parameter.", None),
    ],
)
def test_parameter_errors_are_invalid_requests(binance: Make, code: int, msg: str, param: str | None) -> None:
    client, rec = binance(Recorder(_err(code, msg)))
    with pytest.raises(InvalidRequest) as info:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2025-01-01"), utc("2025-01-02"))
    assert info.value.param == param
    assert msg in info.value.message
    assert rec.count == 1


def test_other_client_errors_are_not_retried(binance: Make) -> None:
    client, rec = binance(
        Recorder(_err(-2015, "Invalid API-key, IP, or permissions for action.", status=401))
    )
    with pytest.raises(UpstreamUnavailable) as info:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2025-01-01"), utc("2025-01-02"))
    assert "401" in info.value.message
    assert rec.count == 1
    client, rec = binance(Recorder(raw_response(b"not found", status=404, content_type="text/plain")))
    with pytest.raises(UpstreamUnavailable):
        client.get_available_symbols()
    assert rec.count == 1


def test_waf_block_and_restricted_location(binance: Make) -> None:
    client, rec = binance(
        Recorder(raw_response(b"<html>403 Forbidden</html>", status=403, content_type="text/html"))
    )
    with pytest.raises(UpstreamUnavailable, match="firewall"):
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2025-01-01"), utc("2025-01-02"))
    assert rec.count == 1
    client, rec = binance(Recorder(_err(0, "Service unavailable from a restricted location", status=451)))
    with pytest.raises(UpstreamUnavailable, match="location"):
        client.get_available_symbols()
    assert rec.count == 1


def test_429_retry_after_within_budget_is_honoured(binance: Make, fake_time: FakeTime) -> None:
    klines = binance_klines(now=fake_time.time)
    client, rec = binance(
        Recorder(_err(-1003, "Too many requests.", status=429, headers={"Retry-After": "3"}), fallback=klines)
    )
    result = client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert rec.count == 2
    assert fake_time.sleeps == [3.0]
    assert len(result.candles) == 6


def test_429_retry_after_too_long_raises_and_pauses_the_client(binance: Make, fake_time: FakeTime) -> None:
    klines = binance_klines(now=fake_time.time)
    client, rec = binance(
        Recorder(
            _err(-1003, "Too many requests.", status=429, headers={"Retry-After": "30"}), fallback=klines
        )
    )
    with pytest.raises(UpstreamRateLimited) as info:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert info.value.retry_after == 30
    assert rec.count == 1 and fake_time.sleeps == []
    # Until the 30 s are over, the client does not call Binance at all (that is how IP bans start).
    fake_time.advance(10)
    with pytest.raises(UpstreamRateLimited) as again:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert again.value.retry_after == 20
    assert rec.count == 1
    fake_time.advance(21)
    assert (
        len(client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00")).candles)
        == 6
    )
    assert rec.count == 2


def test_429_without_retry_after_waits_for_the_next_minute(binance: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:55")
    client, rec = binance(
        Recorder(_err(-1003, "Too many requests.", status=429), fallback=binance_klines(now=fake_time.time))
    )
    client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert fake_time.sleeps == [pytest.approx(5.0)]
    assert rec.count == 2

    fake_time.now = utc("2026-01-14 12:10:10")
    client, rec = binance(Recorder(_err(-1003, "Too many requests.", status=429)))
    with pytest.raises(UpstreamRateLimited) as info:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert info.value.retry_after == 50


def test_418_ban_is_not_retried(binance: Make, fake_time: FakeTime) -> None:
    body = sample_bytes("binance_error_418_ip_banned.json")
    client, rec = binance(
        Recorder(
            httpx.Response(
                418, content=body, headers={"Retry-After": "7200", "content-type": "application/json"}
            )
        )
    )
    with pytest.raises(UpstreamRateLimited) as info:
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert info.value.retry_after == 7200
    assert "banned" in info.value.message
    assert rec.count == 1 and fake_time.sleeps == []
    with pytest.raises(UpstreamRateLimited):
        client.get_available_symbols()
    assert rec.count == 1  # still banned: no request


def test_418_without_header_reads_the_ban_end_from_the_message(binance: Make, fake_time: FakeTime) -> None:
    fake_time.now = 1660090423.228 - 600  # the sample says "banned until 1660090423228"
    client, _rec = binance(
        Recorder(raw_response(sample_bytes("binance_error_418_ip_banned.json"), status=418))
    )
    with pytest.raises(UpstreamRateLimited) as info:
        client.get_available_symbols()
    assert info.value.retry_after == 600


def test_5xx_is_retried_with_backoff_then_succeeds(binance: Make, fake_time: FakeTime) -> None:
    html = raw_response(b"<html>502 Bad Gateway</html>", status=502, content_type="text/html")
    client, rec = binance(
        Recorder(
            _err(-1007, "Timeout waiting for response from backend server.", status=503),
            html,
            fallback=binance_klines(now=fake_time.time),
        )
    )
    result = client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert rec.count == 3
    assert fake_time.sleeps == [0.25, 0.5]  # exponential (jitter pinned to its ceiling in these tests)
    assert len(result.candles) == 6


def test_5xx_until_attempts_run_out(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(
        Recorder(fallback=lambda r: raw_response(b"oops", status=500, content_type="text/plain"))
    )
    with pytest.raises(UpstreamUnavailable, match="HTTP 500"):
        client.get_available_symbols()
    assert rec.count == 4  # upstream_max_attempts
    assert fake_time.sleeps == [0.25, 0.5, 1.0]


def test_retries_stop_when_the_budget_is_spent(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(
        Recorder(fallback=lambda r: raw_response(b"", status=503)), upstream_retry_budget_seconds=0.6
    )
    with pytest.raises(UpstreamUnavailable):
        client.get_available_symbols()
    assert rec.count == 2  # 0.25 s fits, the next 0.5 s does not
    assert fake_time.sleeps == [0.25]


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("timed out"),
        httpx.ConnectTimeout("timed out"),
        httpx.ConnectError("connection refused"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
)
def test_transport_errors_are_retried(binance: Make, fake_time: FakeTime, error: Exception) -> None:
    client, rec = binance(Recorder(error, fallback=binance_klines(now=fake_time.time)))
    result = client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert rec.count == 2
    assert len(result.candles) == 6


def test_timeouts_until_attempts_run_out(binance: Make) -> None:
    client, rec = binance(Recorder(*[httpx.ReadTimeout("timed out")] * 4))
    with pytest.raises(UpstreamUnavailable, match="did not answer in time"):
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert rec.count == 4


def test_every_request_carries_the_configured_timeouts(binance: Make, fake_time: FakeTime) -> None:
    client, rec = binance(
        Recorder(httpx.ReadTimeout("slow"), fallback=binance_klines(now=fake_time.time)),
        http_connect_timeout=2.5,
        http_read_timeout=7.0,
        upstream_retry_budget_seconds=4.0,
    )
    client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    first, retry = (r.extensions["timeout"] for r in rec.requests)
    assert first["connect"] == 2.5 and first["read"] == 7.0
    # A retry only gets what is left of the budget (4 s - 0.25 s backoff), so the total stays bounded.
    assert retry["connect"] == 2.5 and retry["read"] == pytest.approx(3.75)


# --- request weight ---------------------------------------------------------------------------


def test_weight_is_read_and_the_guard_waits_for_the_next_minute(binance: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:56")
    start = utc("2025-06-01")
    end = add_bars(Interval.H1, start, 2499)
    # 4800 = 0.8 * 6000: after the first page the next request (weight 2) would cross the line.
    klines = binance_klines(now=fake_time.time, weight=[4799, 10, 12])
    client, rec = binance(Recorder(fallback=klines))
    result = client.fetch_klines("BTCUSDT", Interval.H1, start, end)
    assert rec.count == 3
    assert fake_time.sleeps == [pytest.approx(4.0)]
    assert len(result.candles) == 2500


def test_weight_guard_refuses_when_the_wait_exceeds_the_budget(binance: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:15")
    start = utc("2025-06-01")
    klines = binance_klines(now=fake_time.time, weight=[5990])
    client, rec = binance(Recorder(fallback=klines))
    pages = client.iter_pages("BTCUSDT", Interval.H1, start, add_bars(Interval.H1, start, 2499))
    first = next(pages)
    assert len(first.candles) == 1000
    with pytest.raises(UpstreamRateLimited) as info:
        next(pages)
    assert info.value.retry_after == 45
    assert rec.count == 1  # the refused request was never sent
    assert fake_time.sleeps == []


def test_weight_from_a_past_minute_does_not_block(binance: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:15")
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time, weight=[5990, 5, 5])))
    client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    fake_time.advance(60)  # a new minute: Binance's counter has been reset
    client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    assert rec.count == 2 and fake_time.sleeps == []


def test_the_guard_applies_to_exchange_info_weight(binance: Make, fake_time: FakeTime) -> None:
    fake_time.now = utc("2026-01-14 12:00:15")
    client, rec = binance(Recorder(fallback=binance_klines(now=fake_time.time, weight=[4785])))
    client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 05:00"))
    # klines (weight 2) would still fit under 4800, exchangeInfo (weight 20) would not.
    with pytest.raises(UpstreamRateLimited):
        client.get_available_symbols()
    assert rec.count == 1
