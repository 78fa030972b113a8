"""Schemas (symbols, asset classes, request models) and settings from the environment."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from marketdata.config import Settings, get_settings
from marketdata.errors import ConfigurationError, InvalidRequest
from marketdata.intervals import Interval
from marketdata.schemas import (
    AssetClass,
    Candle,
    HistoryQuery,
    HistoryResponse,
    detect_asset_class,
    normalize_symbol,
)


def test_asset_class_detection() -> None:
    assert detect_asset_class("BTCUSDT") is AssetClass.CRYPTO
    assert detect_asset_class("EUR/USD") is AssetClass.FOREX


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("btcusdt", "BTCUSDT"),
        (" EUR/USD ", "EUR/USD"),
        ("eur/jpy", "EUR/JPY"),
        ("币安人生USDT", "币安人生USDT"),
    ],
)
def test_symbols_are_normalized(raw: str, norm: str) -> None:
    assert normalize_symbol(raw) == norm


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        None,
        42,
        "BTC'; DROP TABLE ohlcv_cache;--",
        "EUR/USD/JPY",
        "EUR/",
        "/USD",
        "A" * 21,
        "BTC USDT",
        "ÉUR/USD",
        "BTC\nUSDT",
        'BTC"USDT',
        "BTC%USDT",
    ],
)
def test_bad_symbols_are_rejected_naming_the_parameter(bad: object) -> None:
    with pytest.raises(InvalidRequest) as info:
        normalize_symbol(bad)
    assert info.value.param == "symbol"
    assert len(info.value.message) < 200


def test_history_query_validates_range_and_limit() -> None:
    q = HistoryQuery(symbol="ethusdt", interval="1H", start=10, end=20)
    assert q.symbol == "ETHUSDT" and q.interval is Interval.H1 and q.limit == 500
    assert q.asset_class is AssetClass.CRYPTO
    with pytest.raises(InvalidRequest, match="start must not be after end") as info:
        HistoryQuery(symbol="BTCUSDT", interval="1m", start=20, end=10)
    assert info.value.param == "start"
    for limit in (0, 5001, -1):
        with pytest.raises(ValidationError):
            HistoryQuery(symbol="BTCUSDT", interval="1m", limit=limit)
    with pytest.raises(ValidationError):
        HistoryQuery(symbol="BTCUSDT", interval="1h")


def test_history_response_serializes_candles_as_objects() -> None:
    body = HistoryResponse(
        symbol="BTCUSDT",
        interval=Interval.H1,
        asset_class=AssetClass.CRYPTO,
        provider="binance",
        candles=[Candle(3600, 1.0, 2.0, 0.5, 1.5, 10.0)],
        next_start=None,
    ).model_dump(mode="json")
    assert body["interval"] == "1H"
    assert body["candles"] == [
        {"time": 3600, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 10.0}
    ]


def test_settings_defaults_and_names() -> None:
    s = Settings.from_env({})
    assert s.binance_rest_url == "https://api.binance.com"
    assert s.twelve_data_rest_url == "https://api.twelvedata.com"
    assert s.binance_quote_assets == ("USDT", "BUSD", "BTC")
    assert s.http_read_timeout < 30 and s.upstream_retry_budget_seconds < 30


def test_settings_read_from_environment() -> None:
    s = Settings.from_env(
        {
            "BINANCE_REST_URL": "http://127.0.0.1:9/",
            "TWELVE_DATA_REST_URL": "http://127.0.0.1:8",
            "TWELVE_DATA_API_KEY": "k-123",
            "BINANCE_QUOTE_ASSETS": "usdt, eur",
            "DB_PORT": "6432",
            "DB_IAM_AUTH": "true",
            "DB_SECRET_ARN": "",  # SAM passes empty strings for unset parameters
        }
    )
    assert s.binance_rest_url == "http://127.0.0.1:9"
    assert s.binance_quote_assets == ("USDT", "EUR")
    assert s.db_port == 6432 and s.db_iam_auth is True and s.db_secret_arn is None
    assert s.require_twelve_data_api_key() == "k-123"
    assert "k-123" not in repr(s)  # secrets do not leak through repr or logs


def test_invalid_settings_raise_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="DB_PORT"):
        Settings.from_env({"DB_PORT": "not-a-port"})


def test_missing_twelve_data_key_fails_on_use_not_on_load(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("TWELVE_DATA_API_KEY", "TWELVE_DATA_API_KEY_SECRET_ARN", "TWELVE_DATA_API_KEY_PARAMETER"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()
    try:
        s = get_settings()  # loading works
        with pytest.raises(ConfigurationError, match="TWELVE_DATA_API_KEY"):
            s.require_twelve_data_api_key()
    finally:
        get_settings.cache_clear()
