"""marketdata.http without the handlers: the error mapping and the caching policy, case by case."""

from __future__ import annotations

import pytest

from marketdata import http
from marketdata.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidInterval,
    InvalidRequest,
    SymbolNotFound,
    SymbolNotInPlan,
    UpstreamAuthError,
    UpstreamBadResponse,
    UpstreamRateLimited,
    UpstreamUnavailable,
)
from marketdata.intervals import Interval
from marketdata.schemas import AssetClass, CacheStatus, Candle, HistoryQuery, SymbolsQuery
from marketdata.service import HistoryResult, SymbolsResult

NOON = 1704110400  # 2024-01-01T12:00:00Z


def history(cache=CacheStatus.HIT, reaches_present=False, interval=Interval.H1, candles=()):
    return HistoryResult(
        symbol="BTCUSDT",
        interval=interval,
        asset_class=AssetClass.CRYPTO,
        provider="binance",
        candles=list(candles),
        next_start=None,
        cache=cache,
        reaches_present=reaches_present,
    )


def test_typed_errors_map_to_statuses():
    cases = [
        (InvalidRequest("limit must be 1..5000", param="limit"), 400, "limit"),
        (InvalidInterval("unsupported interval '2H'"), 400, "interval"),
        (SymbolNotFound("NOPE", "binance"), 404, "symbol"),
        (SymbolNotInPlan("USD/TRY", "twelve_data", display_name="Twelve Data"), 403, "symbol"),
        (UpstreamRateLimited("Binance rate limit", provider="binance", retry_after=3), 503, None),
        (UpstreamUnavailable("Binance did not answer in time", provider="binance"), 502, None),
        (UpstreamBadResponse("Binance sent HTML", provider="binance"), 502, None),
        (UpstreamAuthError("401 apikey abc", provider="twelve_data"), 502, None),
        (ConfigurationError("Twelve Data API key missing: set TWELVE_DATA_API_KEY"), 503, None),
        (DatabaseUnavailable("connection refused to db.internal:5432"), 503, None),
        (RuntimeError("a bug"), 503, None),
    ]
    for exc, status, param in cases:
        error = http.error_for_exception(exc, request_id="r-1")
        assert (error.status, error.param) == (status, param), exc
        assert error.status != 500


def test_a_pair_outside_the_plan_says_it_needs_a_higher_twelve_data_plan():
    exc = SymbolNotInPlan("USD/TRY", "twelve_data", display_name="Twelve Data", plan="Grow or Venture")
    error = http.error_for_exception(exc, request_id="r-1")
    assert (error.status, error.param) == (403, "symbol")
    assert error.message == (
        "'USD/TRY' needs a higher Twelve Data plan than the service's API key has "
        "(available starting with the Grow or Venture plan)"
    )


def test_operator_details_never_reach_the_caller():
    for exc in [
        ConfigurationError("Twelve Data API key missing: set TWELVE_DATA_API_KEY"),
        DatabaseUnavailable("connection refused to db.internal:5432"),
        UpstreamAuthError("apikey abc123 is incorrect", provider="twelve_data"),
        RuntimeError("secret=hunter2"),
    ]:
        message = http.error_for_exception(exc, request_id="r-1").message
        for leak in ("TWELVE_DATA_API_KEY", "db.internal", "abc123", "hunter2"):
            assert leak not in message


def test_retry_after_is_whole_seconds_rounded_up_with_a_default():
    def header(retry_after):
        exc = UpstreamRateLimited("limited", provider="binance", retry_after=retry_after)
        return http.error_for_exception(exc).headers["Retry-After"]

    assert header(0.2) == "1"
    assert header(0) == "1"
    assert header(30.01) == "31"
    assert header(120) == "120"
    assert header(None) == str(http.DEFAULT_RETRY_AFTER_SECONDS)
    assert header(float("inf")) == str(http.DEFAULT_RETRY_AFTER_SECONDS)


def test_validation_errors_name_the_first_parameter():
    missing = [{"loc": ("symbol",), "type": "missing", "msg": "Field required"}]
    too_big = [
        {"loc": ("limit",), "type": "less_than_equal", "msg": "Input should be <= 5000"},
        {"loc": ("start",), "type": "int_parsing", "msg": "bad"},
    ]

    assert http.error_for_validation(missing) == http.ApiError(
        400, "symbol is required: a symbol such as BTCUSDT or EUR/USD", "symbol"
    )
    error = http.error_for_validation(too_big)
    assert (error.status, error.param) == (400, "limit")
    assert "1 to 5000" in error.message and "1 more problem" in error.message
    assert http.error_for_validation([]).status == 400


@pytest.mark.parametrize(
    ("query", "param", "words"),
    [
        # A domain parser's message, hints included, reaches the user as it is.
        ({"symbol": "BTCUSDT", "interval": "1d"}, "interval", "'1D'"),
        ({"symbol": "BTC USDT", "interval": "1H"}, "symbol", "a crypto pair like BTCUSDT"),
        ({"symbol": "BTCUSDT", "interval": "1H", "include_open": "yes"}, "include_open", "true or false"),
        ({"symbol": "BTCUSDT", "interval": "1H", "start": "5", "end": "4"}, "start", "not be after end"),
        ({"symbol": "BTCUSDT", "interval": "1H", "limit": "5001"}, "limit", "1 to 5000"),
    ],
)
def test_the_query_models_errors_become_400s_naming_the_parameter(query, param, words):
    try:
        http.parse_params(HistoryQuery, query)
    except Exception as exc:
        error = http.error_for_exception(exc)
    else:
        pytest.fail("accepted")
    assert (error.status, error.param) == (400, param)
    assert words in error.message and "pydantic" not in error.message.lower()


def test_the_query_models_take_what_the_readme_says():
    query = http.parse_params(HistoryQuery, {"symbol": "btcusdt", "interval": "1H", "include_open": "true"})
    assert query.include_open is True and query.symbol == "BTCUSDT" and query.limit == 500
    assert http.parse_params(HistoryQuery, {"symbol": "X", "interval": "1H", "other": "1"}).symbol == "X"
    for spelling in ("yes", "1", "TRUE", "on", ""):
        with pytest.raises(http.QueryInvalid):
            http.parse_params(HistoryQuery, {"symbol": "X", "interval": "1H", "include_open": spelling})
    for spelling in ("FOREX", "Forex", " forex "):
        assert http.parse_params(SymbolsQuery, {"asset_class": spelling}).asset_class is AssetClass.FOREX


def test_closed_past_answers_are_cached_for_a_day():
    assert http.history_cache_control(history(), now=NOON) == http.LONG_CACHE_CONTROL
    assert http.history_cache_control(history(cache=CacheStatus.MISS), now=NOON) == http.LONG_CACHE_CONTROL
    assert http.history_cache_control(history(cache=CacheStatus.BYPASS), now=NOON) == http.LONG_CACHE_CONTROL


def test_partial_answers_are_cached_only_seconds():
    assert http.history_cache_control(history(cache=CacheStatus.PARTIAL), now=NOON) == "public, max-age=5"


def test_answers_reaching_the_present_live_until_the_bar_closes_at_most():
    def max_age(interval, now, candles=()):
        value = http.history_cache_control(
            history(reaches_present=True, interval=interval, candles=candles), now=now
        )
        assert value.startswith("public, max-age=")
        return int(value.rsplit("=", 1)[1])

    assert max_age(Interval.H1, NOON + 10) == 360  # a tenth of an hour
    assert max_age(Interval.H1, NOON + 3590) == 10  # the bar closes in 10 s
    assert max_age(Interval.H1, NOON + 3599) == 5  # never below 5 s
    assert max_age(Interval.M1, NOON + 1) == 6
    assert max_age(Interval.D1, NOON) == 600  # capped
    open_bar = Candle(NOON, 1, 1, 1, 1)  # still open at NOON + 10
    assert max_age(Interval.H1, NOON + 10, [open_bar]) == 60  # a sixtieth of an hour
    assert max_age(Interval.M1, NOON + 10, [Candle(NOON, 1, 1, 1, 1)]) == 5
    assert max_age(Interval.D1, NOON + 10, [open_bar]) == 60  # a minute at most, whatever the interval


def test_symbol_lists_follow_their_ttl():
    fresh = SymbolsResult(AssetClass.CRYPTO, ["BTCUSDT"], CacheStatus.HIT, stale=False)
    stale = SymbolsResult(AssetClass.CRYPTO, ["BTCUSDT"], CacheStatus.PARTIAL, stale=True)
    assert http.symbols_cache_control(fresh, ttl_seconds=3600) == "public, max-age=3600"
    assert http.symbols_cache_control(fresh, ttl_seconds=86400) == "public, max-age=3600"
    assert http.symbols_cache_control(fresh, ttl_seconds=0) == "public, max-age=5"
    assert http.symbols_cache_control(stale, ttl_seconds=3600) == "public, max-age=60"


def test_accept_encoding_parsing():
    assert http.accepts_gzip("gzip")
    assert http.accepts_gzip("deflate, gzip;q=0.5")
    assert http.accepts_gzip("*")
    assert not http.accepts_gzip("")
    assert not http.accepts_gzip("br, deflate")
    assert not http.accepts_gzip("gzip;q=0")
    assert not http.accepts_gzip("gzip;q=zero")


def test_tracing_is_opt_in():
    assert not http.tracing_enabled({})
    assert http.tracing_enabled({"TRACING_ENABLED": "true"})
    assert not http.tracing_enabled({"TRACING_ENABLED": "true", "POWERTOOLS_TRACE_DISABLED": "1"})


def test_error_results_outside_the_resolver_are_json():
    result = http.raw_error_result(http.ApiError(503, "busy", headers={"Retry-After": "3"}))
    assert result["statusCode"] == 503
    assert result["headers"]["Cache-Control"] == "no-store"
    assert result["headers"]["Retry-After"] == "3"
    assert result["body"] == '{"message":"busy","param":null}'
