"""What the clients share: validate_bar, page assembly and merging, the HTTP client, the factory."""

from __future__ import annotations

import logging
import math
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.config import Settings
from marketdata.errors import ConfigurationError, UpstreamAuthError, UpstreamBadResponse, UpstreamUnavailable
from marketdata.intervals import Interval
from marketdata.providers import get_provider, provider_for_symbol, reset_providers
from marketdata.providers.base import (
    MarketDataProvider,
    Page,
    ProviderClient,
    RangePlan,
    assemble_page,
    merge_pages,
    plan_range,
    upstream_number,
    validate_bar,
)
from marketdata.providers.binance import BinanceClient
from marketdata.providers.http import USER_AGENT, build_http_client, retry_after_seconds
from marketdata.providers.twelve_data import TwelveDataClient
from marketdata.schemas import AssetClass, Candle
from tests.providers.helpers import API_KEY, FakeTime, Recorder, json_response, make_settings, utc
from tests.support.upstream_fixtures import settings_for

H = 3600

# --- validate_bar -----------------------------------------------------------------------------


def test_a_sane_bar_becomes_a_candle() -> None:
    assert validate_bar(Interval.H1, 7200, 1.0, 2.0, 0.5, 1.5, 3.0) == Candle(7200, 1.0, 2.0, 0.5, 1.5, 3.0)
    assert validate_bar(Interval.H1, 7200.0, 1, 1, 1, 1, 0) == Candle(7200, 1.0, 1.0, 1.0, 1.0, 0.0)
    assert validate_bar(Interval.W1, utc("2025-01-06"), 1, 2, 0.5, 1.5) is not None  # a Monday
    assert validate_bar(Interval.MO1, utc("2024-02-01"), 1, 2, 0.5, 1.5) is not None


@pytest.mark.parametrize(
    ("interval", "values", "reason"),
    [
        (Interval.H1, (7200, math.nan, 2, 0.5, 1.5, 3), "non-finite"),
        (Interval.H1, (7200, 1, math.inf, 0.5, 1.5, 3), "non-finite"),
        (Interval.H1, (7200, 1, 2, 0.5, 1.5, -math.inf), "non-finite"),
        (Interval.H1, (7200, 1, 2, 1.2, 1.5, 3), "low above"),  # low > open
        (Interval.H1, (7200, 1.8, 2, 1.6, 1.5, 3), "low above"),  # low > close
        (Interval.H1, (7200, 1, 1.4, 0.5, 1.5, 3), "high below"),  # high < close
        (Interval.H1, (7200, 2.5, 2, 0.5, 1.5, 3), "high below"),  # high < open
        (Interval.H1, (7200, 1, 2, 0.5, 1.5, -0.1), "negative volume"),
        (Interval.H1, (7200, -1, 2, -1.5, 1.5, 3), "negative price"),  # the cache refuses these rows
        (Interval.H1, (7260, 1, 2, 0.5, 1.5, 3), "not aligned"),
        (Interval.H1, (7200.5, 1, 2, 0.5, 1.5, 3), "whole"),
        (Interval.W1, (utc("2025-01-05"), 1, 2, 0.5, 1.5, 3), "not aligned"),  # a Sunday
        (Interval.MO1, (utc("2024-02-02"), 1, 2, 0.5, 1.5, 3), "not aligned"),
        (Interval.D1, (-86400, 1, 2, 0.5, 1.5, 3), "non-negative"),
    ],
)
def test_bad_bars_are_refused_with_a_warning(
    caplog: pytest.LogCaptureFixture, interval: Interval, values: tuple[float, ...], reason: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="marketdata.providers.base"):
        assert validate_bar(interval, *values, source="test EURUSD") is None
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert reason in record.getMessage() and "test EURUSD" in record.getMessage()


@pytest.mark.parametrize("value", ["1.5", 1.5, 2, "NaN", "-3e2"])
def test_upstream_numbers(value: object) -> None:
    number = upstream_number(value, provider="p", what="row 0")
    assert number == float(value) or math.isnan(number)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["abc", "", None, True, [1], {"a": 1}])
def test_upstream_numbers_that_are_not_numbers(value: object) -> None:
    with pytest.raises(UpstreamBadResponse, match="row 0"):
        upstream_number(value, provider="p", what="row 0")


# --- plan_range, assemble_page, merge_pages ---------------------------------------------------


def test_plan_range_clamps_to_now_and_skips_mid_bar_starts() -> None:
    now = utc("2026-01-14 12:30")
    plan = plan_range(Interval.H1, utc("2026-01-14 09:15"), utc("2026-01-20"), now)
    assert plan == RangePlan(
        first=utc("2026-01-14 10:00"),
        last=utc("2026-01-14 12:00"),
        last_closed=utc("2026-01-14 11:00"),
        open_time=utc("2026-01-14 12:00"),
        interval=Interval.H1,
        now=now,
    )
    assert plan_range(Interval.H1, utc("2026-01-14 13:00"), utc("2026-01-15"), now) is None  # future
    assert (
        plan_range(Interval.H1, utc("2026-01-14 09:15"), utc("2026-01-14 09:45"), now) is None
    )  # no open time
    assert plan_range(Interval.H1, 10, 5, now) is None


def test_assemble_page_splits_clamps_and_dedupes() -> None:
    plan = RangePlan(
        first=0, last=5 * H, last_closed=4 * H, open_time=5 * H, interval=Interval.H1, now=5 * H + 60
    )

    def c(t: int, x: float = 1.0) -> Candle:
        return Candle(t, x, x, x, x, 0.0)

    page = assemble_page(plan, H, 5 * H, [c(3 * H), c(H), c(3 * H, 2.0), c(0), c(5 * H), c(6 * H)], dropped=1)
    assert page == Page(start=H, end=4 * H, candles=[c(H), c(3 * H)], open_bar=c(5 * H), dropped=1)
    assert page.covers_closed_bars
    only_open = assemble_page(plan, 5 * H, 5 * H, [c(5 * H)])
    assert only_open.end < only_open.start and not only_open.covers_closed_bars
    assert only_open.open_bar == c(5 * H)


def test_settling_keeps_recent_missing_bars_out_of_coverage() -> None:
    now = utc("2026-01-14 12:00:30")
    plan = plan_range(Interval.M1, utc("2026-01-14 11:00"), utc("2026-01-14 12:00"), now)
    assert plan is not None and plan.last_closed == utc("2026-01-14 11:59")

    def bars(until: str) -> list[Candle]:
        return [Candle(t, 1, 1, 1, 1, 0) for t in range(utc("2026-01-14 11:00"), utc(until) + 1, 60)]

    start, end = utc("2026-01-14 11:00"), utc("2026-01-14 12:00")
    # The newest closed bar is there: nothing to hold back.
    assert (
        assemble_page(plan, start, end, bars("2026-01-14 11:59"), settle_seconds=120).end == plan.last_closed
    )
    # 11:59 (closed 30 s ago) is missing: it may not be published yet, so it is not covered.
    assert assemble_page(plan, start, end, bars("2026-01-14 11:58"), settle_seconds=120).end == utc(
        "2026-01-14 11:58"
    )
    # Bars missing for longer than the settle time are real gaps (covered); only the recent tail is not.
    page = assemble_page(plan, start, end, bars("2026-01-14 11:30"), settle_seconds=120)
    assert page.end == utc("2026-01-14 11:57")
    # Without settling (Binance), coverage goes to the last closed bar.
    assert assemble_page(plan, start, end, bars("2026-01-14 11:30")).end == plan.last_closed
    # A window holding only unsettled bars, none returned, covers nothing.
    recent = assemble_page(plan, utc("2026-01-14 11:59"), end, [], settle_seconds=120)
    assert not recent.covers_closed_bars


def _page(start: int, end: int, times: list[int], *, open_at: int | None = None, dropped: int = 0) -> Page:
    return Page(
        start=start,
        end=end,
        candles=[Candle(t, 1, 1, 1, 1, 0) for t in times],
        open_bar=Candle(open_at, 1, 1, 1, 1, 0) if open_at is not None else None,
        dropped=dropped,
    )


def test_merge_pages() -> None:
    pages = [_page(0, 2, [0, 1, 2]), _page(2, 4, [2, 3, 4], dropped=1), _page(5, 6, [5, 6], open_at=7)]
    result = merge_pages(pages)
    assert [c.time for c in result.candles] == [0, 1, 2, 3, 4, 5, 6]
    assert result.open_bar is not None and result.open_bar.time == 7
    assert (result.pages, result.dropped) == (3, 1)
    assert result.covered == [(0, 2), (5, 6)]  # the page with a dropped bar is not covered


def test_merge_pages_stops_pulling_pages_at_the_limit() -> None:
    pulled: list[int] = []

    def pages() -> Iterator[Page]:
        for i in range(5):
            pulled.append(i)
            yield _page(i * 10, i * 10 + 9, list(range(i * 10, i * 10 + 10)), open_at=50 if i == 4 else None)

    result = merge_pages(pages(), limit=15)
    assert pulled == [0, 1]
    assert [c.time for c in result.candles] == list(range(15))
    assert result.pages == 2 and result.open_bar is None
    # The open bar survives a limit that does not cut the closed bars.
    exact = merge_pages([_page(0, 1, [0, 1], open_at=2)], limit=2)
    assert exact.open_bar is not None and [c.time for c in exact.candles] == [0, 1]
    cut = merge_pages([_page(0, 2, [0, 1, 2], open_at=3)], limit=2)
    assert cut.open_bar is None and [c.time for c in cut.candles] == [0, 1]


# --- http -------------------------------------------------------------------------------------


def test_http_client_carries_timeouts_and_user_agent() -> None:
    settings = make_settings(http_connect_timeout=1.5, http_read_timeout=6.0)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return json_response([])

    client = build_http_client(settings, settings.binance_rest_url, transport=httpx.MockTransport(handler))
    client.get("/api/v3/klines")
    [request] = seen
    assert request.headers["user-agent"] == USER_AGENT and USER_AGENT.startswith("marketdata-service/")
    assert str(request.url) == "https://binance.test/api/v3/klines"
    timeout = request.extensions["timeout"]
    assert timeout["connect"] == 1.5 and timeout["read"] == 6.0
    assert client.follow_redirects is False


@pytest.mark.parametrize(
    ("value", "seconds"), [("3", 3.0), (" 2.5 ", 2.5), ("0", 0.0), ("soon", None), ("-1", None)]
)
def test_retry_after_parsing(value: str, seconds: float | None) -> None:
    assert retry_after_seconds(httpx.Headers({"Retry-After": value})) == seconds
    assert retry_after_seconds(httpx.Headers({})) is None


def test_clients_are_constructible_from_settings_alone() -> None:
    settings = make_settings(twelve_data_api_key=None)
    for client in (BinanceClient(settings), TwelveDataClient(settings)):
        assert isinstance(client, MarketDataProvider)
        client.close()
    assert (BinanceClient.name, BinanceClient.asset_class, BinanceClient.max_page_bars) == (
        "binance",
        AssetClass.CRYPTO,
        1000,
    )
    assert (TwelveDataClient.name, TwelveDataClient.asset_class, TwelveDataClient.max_page_bars) == (
        "twelve_data",
        AssetClass.FOREX,
        4999,  # 5000 rows per request: 4999 wanted bars and the one past them
    )


@pytest.mark.parametrize("cls", [BinanceClient, TwelveDataClient])
def test_both_clients_take_construction_fetch_candles_and_close_from_the_base(cls: type) -> None:
    """One definition (ProviderClient): a client overrides only what differs from the other."""
    assert issubclass(cls, ProviderClient)
    assert not {"fetch_candles", "close"} & set(vars(cls)), f"{cls.__name__} redefines the shared methods"
    settings = make_settings()
    own = cls(settings)  # its own httpx client on its provider's base URL, closed by close()
    base_url = getattr(settings, cls.base_url_field)
    assert str(own._http.client.base_url).rstrip("/") == base_url.rstrip("/")
    own.close()
    assert own._http.client.is_closed
    given = httpx.Client()
    borrowed = cls(settings, http=given)
    borrowed.close()
    assert not given.is_closed, "close() closed an HTTP client the caller owns"
    given.close()


def test_a_closed_bar_request_with_a_dead_host_is_unavailable(fake_time: FakeTime) -> None:
    # Real transport, nothing listening: connection errors are retried, then UpstreamUnavailable.
    settings = make_settings(binance_rest_url="http://127.0.0.1:9", upstream_max_attempts=2)
    client = BinanceClient(
        settings, clock=fake_time.time, sleep=fake_time.sleep, monotonic=fake_time.monotonic
    )
    with pytest.raises(UpstreamUnavailable, match="could not be reached"):
        client.fetch_klines("BTCUSDT", Interval.H1, utc("2026-01-13"), utc("2026-01-13 03:00"))
    assert len(fake_time.sleeps) == 1
    client.close()


# --- the factory ------------------------------------------------------------------------------


@pytest.fixture
def clean_providers() -> Iterator[None]:
    reset_providers()
    yield
    reset_providers()


def test_get_provider_is_cached_per_asset_class(clean_providers: None) -> None:
    settings = make_settings()
    crypto = get_provider(AssetClass.CRYPTO, settings)
    forex = get_provider("forex", settings)
    assert isinstance(crypto, BinanceClient) and isinstance(forex, TwelveDataClient)
    assert get_provider("crypto", settings) is crypto
    assert provider_for_symbol("ETHBTC", settings) is crypto
    assert provider_for_symbol("EUR/USD", settings) is forex
    other = make_settings(binance_rest_url="https://elsewhere.test")
    assert get_provider("crypto", other) is not crypto
    with pytest.raises(ValueError):
        get_provider("stocks", settings)


def test_get_provider_defaults_to_process_settings(
    clean_providers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from marketdata.config import get_settings

    monkeypatch.setenv("BINANCE_REST_URL", "https://from-env.test/")
    get_settings.cache_clear()
    try:
        client = get_provider("crypto")
        assert isinstance(client, BinanceClient)
        assert client is provider_for_symbol("BTCUSDT")
        assert client._http.base_url == "https://from-env.test"
    finally:
        get_settings.cache_clear()


def test_importing_the_package_imports_no_client() -> None:
    code = (
        "import sys, marketdata.providers, marketdata.providers.base; "
        "heavy = [m for m in ('httpx', 'marketdata.providers.binance', 'marketdata.providers.twelve_data') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- the key through the real httpx/httpcore stack ---------------------------------------------


def test_key_stays_out_of_debug_logs_over_real_http(
    fake_upstream: FakeUpstream, upstream_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    key = upstream_settings.require_twelve_data_api_key()
    fake_upstream.now = utc("2026-01-14 12:00:30")
    client = TwelveDataClient(upstream_settings, clock=fake_upstream.clock)
    fake_upstream.fail_next(1, 500, "/time_series")
    try:
        with caplog.at_level(logging.DEBUG):
            result = client.fetch_timeseries(
                "EUR/USD", Interval.H1, utc("2026-01-12"), utc("2026-01-12 05:00")
            )
    finally:
        client.close()
    assert len(result.candles) == 6
    assert any(r.name.startswith("httpx") for r in caplog.records)  # httpx did log the requests
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    for record in caplog.records:
        assert key not in record.getMessage()


def test_fake_upstream_rejects_a_wrong_key(fake_upstream: FakeUpstream) -> None:
    # The key travels in the Authorization header; a wrong one is an operator problem, not the caller's.
    client = TwelveDataClient(settings_for(fake_upstream, TWELVE_DATA_API_KEY="wrong-" + API_KEY))
    try:
        with pytest.raises(UpstreamAuthError):
            client.fetch_timeseries("EUR/USD", Interval.H1, utc("2026-01-12"), utc("2026-01-12 05:00"))
    finally:
        client.close()


def test_a_base_url_without_scheme_is_a_configuration_error(fake_time: FakeTime) -> None:
    settings = make_settings(binance_rest_url="api.binance.com")
    client = BinanceClient(
        settings, clock=fake_time.time, sleep=fake_time.sleep, monotonic=fake_time.monotonic
    )
    with pytest.raises(ConfigurationError, match="BINANCE_REST_URL"):
        client.get_available_symbols()
    assert fake_time.sleeps == []  # not retried
    client.close()


def test_a_body_with_broken_compression_is_a_bad_response(fake_time: FakeTime) -> None:
    broken = httpx.Response(
        200, stream=httpx.ByteStream(b"definitely not gzip"), headers={"content-encoding": "gzip"}
    )
    recorder = Recorder(broken)
    client = TwelveDataClient(
        make_settings(),
        http=recorder.client(),
        clock=fake_time.time,
        sleep=fake_time.sleep,
        monotonic=fake_time.monotonic,
    )
    with pytest.raises(UpstreamBadResponse, match="decoded"):
        client.fetch_timeseries("EUR/USD", Interval.H1, utc("2025-03-03"), utc("2025-03-04"))
    assert recorder.count == 1
