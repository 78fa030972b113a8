"""Settings: one pydantic model of the environment, read once per process.

Every knob the service has is a field here, named after its environment variable (the alias).
`get_settings()` caches the object for the life of the Lambda execution environment; tests call
`get_settings.cache_clear()` after changing the environment. Nothing here fails at import: a
missing Twelve Data key, for instance, only matters on the first forex call
(`Settings.require_twelve_data_api_key`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from marketdata.errors import ConfigurationError

#: The forex pairs served by default (Twelve Data symbols): the majors and the main crosses.
DEFAULT_FOREX_PAIRS: tuple[str, ...] = (
    "EUR/USD",
    "GBP/USD",
    "USD/JPY",
    "USD/CHF",
    "AUD/USD",
    "NZD/USD",
    "USD/CAD",
    "EUR/GBP",
    "EUR/JPY",
    "GBP/JPY",
    "AUD/JPY",
    "EUR/AUD",
    "GBP/AUD",
    "EUR/CAD",
    "GBP/CAD",
    "AUD/NZD",
    "EUR/NZD",
    "CHF/JPY",
    "CAD/JPY",
    "NZD/JPY",
    "EUR/CHF",
    "GBP/CHF",
    "AUD/CAD",
    "NZD/CAD",
    "GBP/NZD",
)


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # --- providers ---
    binance_rest_url: str = Field("https://api.binance.com", validation_alias="BINANCE_REST_URL")
    twelve_data_rest_url: str = Field("https://api.twelvedata.com", validation_alias="TWELVE_DATA_REST_URL")
    twelve_data_api_key: SecretStr | None = Field(None, validation_alias="TWELVE_DATA_API_KEY")
    # Where the deployed functions find the key when it is not in the environment (template.yaml sets one).
    twelve_data_api_key_secret_arn: str | None = Field(
        None, validation_alias="TWELVE_DATA_API_KEY_SECRET_ARN"
    )
    twelve_data_api_key_parameter: str | None = Field(None, validation_alias="TWELVE_DATA_API_KEY_PARAMETER")
    binance_quote_assets: tuple[str, ...] = Field(
        ("USDT", "BUSD", "BTC"), validation_alias="BINANCE_QUOTE_ASSETS"
    )
    # The forex pairs the service serves (/v1/symbols, and the only ones /v1/candles accepts).
    forex_pairs: tuple[str, ...] = Field(DEFAULT_FOREX_PAIRS, validation_alias="FOREX_PAIRS")

    # HTTP timeouts (seconds) and retry budget: all well inside API Gateway's 30 s. The read timeout is
    # below the retry budget so a timed-out request can be retried; both are cut further to what is left
    # of the request's deadline (marketdata.limits).
    http_connect_timeout: float = Field(3.0, gt=0, validation_alias="HTTP_CONNECT_TIMEOUT")
    http_read_timeout: float = Field(5.0, gt=0, validation_alias="HTTP_READ_TIMEOUT")
    upstream_retry_budget_seconds: float = Field(8.0, ge=0, validation_alias="UPSTREAM_RETRY_BUDGET_SECONDS")
    upstream_max_attempts: int = Field(4, ge=1, le=10, validation_alias="UPSTREAM_MAX_ATTEMPTS")
    # A Binance kline read in the first moments after its close may not hold the last trades yet: it counts
    # as still open (never stored) until this long after its close, so no cached bar is ever a draft.
    binance_close_grace_seconds: float = Field(
        2.0, ge=0, le=60, validation_alias="BINANCE_CLOSE_GRACE_SECONDS"
    )
    # Binance allows 6000 request weight per minute per IP; stop before this share of it is used.
    binance_weight_limit: int = Field(6000, gt=0, validation_alias="BINANCE_WEIGHT_LIMIT")
    binance_weight_safety_share: float = Field(
        0.8, gt=0, le=1, validation_alias="BINANCE_WEIGHT_SAFETY_SHARE"
    )

    # --- the providers' live (WebSocket) clients (marketdata.providers.*_live) ---
    binance_ws_url: str = Field("wss://stream.binance.com:9443", validation_alias="BINANCE_WS_URL")
    twelve_data_ws_url: str = Field("wss://ws.twelvedata.com", validation_alias="TWELVE_DATA_WS_URL")
    # Binance closes every stream connection at the 24-hour mark: the client opens a new one and then
    # closes the old one this long after it connected, so no update is lost to that limit.
    binance_ws_max_connection_seconds: float = Field(
        23 * 3600.0, gt=0, le=24 * 3600.0, validation_alias="BINANCE_WS_MAX_CONNECTION_SECONDS"
    )
    # Twelve Data closes a connection that sends no heartbeat for a while; its documentation asks for one
    # every 10 seconds. A connection that delivers nothing for three of these is taken as dead.
    twelve_data_ws_heartbeat_seconds: float = Field(
        10.0, gt=0, validation_alias="TWELVE_DATA_WS_HEARTBEAT_SECONDS"
    )
    # A forex bar is closed by the clock, without a tick in the next bar, this long after its end: ticks
    # of the bar that are still under way may arrive until then (later ones are dropped).
    twelve_data_ws_close_grace_seconds: float = Field(
        2.0, ge=0, le=60, validation_alias="TWELVE_DATA_WS_CLOSE_GRACE_SECONDS"
    )
    # Reconnecting after a drop: capped exponential back-off with jitter, from the first to the last step.
    live_reconnect_base_seconds: float = Field(1.0, gt=0, validation_alias="LIVE_RECONNECT_BASE_SECONDS")
    live_reconnect_max_seconds: float = Field(60.0, gt=0, validation_alias="LIVE_RECONNECT_MAX_SECONDS")
    # WebSocket keepalive of both clients: a ping this often, and a connection whose pong does not come
    # back within the timeout is dropped (and reconnected).
    live_ping_interval_seconds: float = Field(20.0, gt=0, validation_alias="LIVE_PING_INTERVAL_SECONDS")
    live_ping_timeout_seconds: float = Field(20.0, gt=0, validation_alias="LIVE_PING_TIMEOUT_SECONDS")

    # --- database ---
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")
    db_host: str | None = Field(None, validation_alias="DB_HOST")
    db_port: int = Field(5432, validation_alias="DB_PORT")
    db_name: str = Field("marketdata", validation_alias="DB_NAME")
    db_user: str | None = Field(None, validation_alias="DB_USER")
    db_secret_arn: str | None = Field(None, validation_alias="DB_SECRET_ARN")
    db_iam_auth: bool = Field(False, validation_alias="DB_IAM_AUTH")
    # CA bundle for verifying the database's TLS certificate when the system store is not enough (direct
    # RDS connections need the RDS CA bundle; RDS Proxy certificates chain to public roots).
    db_ssl_root_cert: str | None = Field(None, validation_alias="DB_SSL_ROOT_CERT")
    db_connect_timeout: float = Field(5.0, gt=0, validation_alias="DB_CONNECT_TIMEOUT")
    # Enforced client-side as the socket timeout (+1 s) so no query holds a Lambda past it; the server-side
    # statement_timeout belongs in the RDS Proxy InitQuery or ALTER ROLE (a SET here would pin the proxy).
    db_statement_timeout_ms: int = Field(10_000, gt=0, validation_alias="DB_STATEMENT_TIMEOUT_MS")
    # A request that finds another one filling the same series waits for it as long as that one makes
    # progress (coverage grows at least this often), up to its own deadline; then it answers from what is
    # stored (partial). It never fetches the same pages itself.
    single_flight_wait_seconds: float = Field(10.0, ge=0, validation_alias="SINGLE_FLIGHT_WAIT_SECONDS")
    # After a database failure, the store is skipped (answers bypass at once) for this long instead of
    # every request waiting out the connect timeout again.
    db_retry_after_seconds: float = Field(10.0, ge=0, validation_alias="DB_RETRY_AFTER_SECONDS")

    # --- what one request may cost (marketdata.limits) ---
    # Provider requests one API request may make: Binance pages (1000 bars each: 5 fill the largest
    # answer, limit=5000), Twelve Data credits (4999 bars each). Past it the answer is what was filled,
    # partial, with next_start to continue.
    binance_max_requests_per_call: int = Field(
        5, ge=1, le=100, validation_alias="BINANCE_MAX_REQUESTS_PER_CALL"
    )
    twelve_data_max_requests_per_call: int = Field(
        2, ge=1, le=100, validation_alias="TWELVE_DATA_MAX_REQUESTS_PER_CALL"
    )
    # Provider pages of one range fetched at once (a cold answer's pages after the first, the backfill's),
    # each inside the request's limits and the provider budgets (Binance weight, Twelve Data credits). At
    # most 8: each provider client's HTTP pool holds 10 connections (providers/http.py).
    fill_parallel_pages: int = Field(4, ge=1, le=8, validation_alias="FILL_PARALLEL_PAGES")
    # Time one request may take when the caller does not say (a Lambda says: its remaining time), and the
    # margin kept free before a Lambda's timeout for the answer itself.
    request_timeout_seconds: float = Field(25.0, gt=0, validation_alias="REQUEST_TIMEOUT_SECONDS")
    request_deadline_margin_seconds: float = Field(
        3.0, ge=0, validation_alias="REQUEST_DEADLINE_MARGIN_SECONDS"
    )
    # The still-open bar is fetched at most once per symbol and interval per this many seconds, for all
    # callers together (Twelve Data's credits are scarce).
    binance_open_bar_ttl_seconds: float = Field(2.0, ge=0, validation_alias="BINANCE_OPEN_BAR_TTL_SECONDS")
    twelve_data_open_bar_ttl_seconds: float = Field(
        60.0, ge=0, validation_alias="TWELVE_DATA_OPEN_BAR_TTL_SECONDS"
    )
    # A symbol the provider rejects is answered 404 without asking again for this long.
    unknown_symbol_ttl_seconds: int = Field(3600, ge=0, validation_alias="UNKNOWN_SYMBOL_TTL_SECONDS")

    # --- service ---
    symbols_ttl_seconds: int = Field(3600, ge=0, validation_alias="SYMBOLS_TTL_SECONDS")
    backfill_default_lookback_days: int = Field(30, ge=1, validation_alias="BACKFILL_DEFAULT_LOOKBACK_DAYS")
    # Twelve Data's free tier grants 8 API credits per minute and 800 per day (1 credit per time_series
    # page). Every Lambda and the backfill count them together in Postgres and stop before the plan's
    # limit (no 429 is ever provoked); the backfill leaves the reserved share to interactive requests.
    # Raise them on a paid plan.
    twelve_data_credits_per_minute: int = Field(8, ge=1, validation_alias="TWELVE_DATA_CREDITS_PER_MINUTE")
    twelve_data_credits_per_day: int = Field(800, ge=1, validation_alias="TWELVE_DATA_CREDITS_PER_DAY")
    twelve_data_reserved_credits_per_minute: int = Field(
        2, ge=0, validation_alias="TWELVE_DATA_RESERVED_CREDITS_PER_MINUTE"
    )
    twelve_data_reserved_credits_per_day: int = Field(
        100, ge=0, validation_alias="TWELVE_DATA_RESERVED_CREDITS_PER_DAY"
    )
    # Time kept free at the end of a backfill Lambda run: no page starts later than this before the
    # timeout, so the last page (one upstream request + one transaction) always finishes cleanly.
    backfill_safety_margin_seconds: float = Field(
        20.0, ge=0, validation_alias="BACKFILL_SAFETY_MARGIN_SECONDS"
    )

    # --- live candles over WebSocket (marketdata.live, marketdata.broadcast) ---
    # Subscriptions one WebSocket connection may hold at once; the next subscribe is an error message.
    live_max_subscriptions_per_connection: int = Field(
        10, ge=1, le=1000, validation_alias="LIVE_MAX_SUBSCRIPTIONS_PER_CONNECTION"
    )
    # The API Gateway Management API the broadcaster posts to (https://<api-id>.execute-api.<region>.
    # amazonaws.com/<stage>; template.yaml sets it), or the local stand-in of `dev.py serve` and the tests.
    live_management_endpoint: str | None = Field(None, validation_alias="LIVE_MANAGEMENT_ENDPOINT")
    # The wss:// URL clients connect to, handed to the chart page (empty: the page polls).
    live_websocket_url: str | None = Field(None, validation_alias="LIVE_WEBSOCKET_URL")
    # The broadcaster's tick, the time it keeps free before its Lambda timeout, and its fan-out: posts
    # run on this many threads, each post given at most this long (a slow connection delays nobody).
    live_tick_seconds: float = Field(1.0, gt=0, le=30, validation_alias="LIVE_TICK_SECONDS")
    live_stop_margin_seconds: float = Field(8.0, ge=0, validation_alias="LIVE_STOP_MARGIN_SECONDS")
    live_fanout_threads: int = Field(32, ge=1, le=256, validation_alias="LIVE_FANOUT_THREADS")
    live_post_timeout_seconds: float = Field(2.0, gt=0, le=30, validation_alias="LIVE_POST_TIMEOUT_SECONDS")

    @field_validator("binance_quote_assets", "forex_pairs", mode="before")
    @classmethod
    def _split_list(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().upper() for part in value.split(",") if part.strip())
        return value

    @field_validator("forex_pairs")
    @classmethod
    def _pairs(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        bad = [pair for pair in value if not re.fullmatch(r"[A-Z0-9]{2,10}/[A-Z0-9]{2,10}", pair)]
        if bad:
            raise ValueError(f"forex pairs are written BASE/QUOTE (EUR/USD), not {', '.join(bad)}")
        return value

    @field_validator("binance_rest_url", "twelve_data_rest_url", "binance_ws_url", "twelve_data_ws_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        # Empty strings mean "unset": SAM passes "" for optional parameters.
        cleaned = {k: v for k, v in env.items() if v != ""}
        try:
            return cls.model_validate(cleaned)
        except ValidationError as exc:
            problems = "; ".join(
                f"{err['loc'][0] if err['loc'] else '?'}: {err['msg']}"
                for err in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid configuration: {problems}") from None

    def require_twelve_data_api_key(self) -> str:
        """The Twelve Data key, or ConfigurationError naming what to set.

        TWELVE_DATA_API_KEY wins (local use, tests). Deployed functions get the key from Secrets
        Manager (TWELVE_DATA_API_KEY_SECRET_ARN) or SSM Parameter Store (TWELVE_DATA_API_KEY_PARAMETER)
        instead, read through Powertools Parameters so it is cached for a few minutes per execution
        environment and a rotated key is picked up without a redeploy. Callers may call this per
        request: the cache makes that cheap.
        """
        if self.twelve_data_api_key is not None and self.twelve_data_api_key.get_secret_value():
            return self.twelve_data_api_key.get_secret_value()
        if self.twelve_data_api_key_secret_arn or self.twelve_data_api_key_parameter:
            return fetch_twelve_data_api_key(
                secret_arn=self.twelve_data_api_key_secret_arn,
                parameter_name=self.twelve_data_api_key_parameter,
            )
        raise ConfigurationError(
            "Twelve Data API key missing: set TWELVE_DATA_API_KEY "
            "(or TWELVE_DATA_API_KEY_SECRET_ARN / TWELVE_DATA_API_KEY_PARAMETER when deployed)"
        )


# How long a secret read from Secrets Manager or SSM (the Twelve Data key, the database secret) is reused
# before asking again. Short enough that a rotated value is in use within minutes, long enough that warm
# invocations never pay for the lookup.
SECRET_MAX_AGE_SECONDS = 300

# Field names accepted when the secret is a JSON object rather than the bare key.
_SECRET_KEY_FIELDS = ("apikey", "api_key", "TWELVE_DATA_API_KEY")


def fetch_twelve_data_api_key(
    *,
    secret_arn: str | None,
    parameter_name: str | None,
    max_age: int = SECRET_MAX_AGE_SECONDS,
) -> str:
    """Read the Twelve Data key from Secrets Manager (preferred when both are set) or SSM.

    The secret may hold the bare key or a JSON object with an `apikey` field; the SSM parameter
    holds the bare key (a SecureString, decrypted here). Failures become ConfigurationError naming
    the source, never the value.
    """
    # Imported here, not at module level: Powertools Parameters pulls in boto3 (~100 ms of cold
    # start), and only forex calls of a deployed function come this way.
    from aws_lambda_powertools.utilities import parameters

    if secret_arn:
        source = f"Secrets Manager secret {secret_arn}"
    elif parameter_name:
        source = f"SSM parameter {parameter_name}"
    else:
        raise ConfigurationError(
            "Twelve Data API key source missing: "
            "set TWELVE_DATA_API_KEY_SECRET_ARN or TWELVE_DATA_API_KEY_PARAMETER"
        )
    try:
        if secret_arn:
            key = _key_from_secret_value(read_secret(secret_arn, max_age=max_age), source)
        else:
            assert parameter_name  # for the type checker: one of the two is set (checked above)
            key = _text(parameters.get_parameter(parameter_name, decrypt=True, max_age=max_age))
    except parameters.exceptions.GetParameterError as exc:
        # The SDK's message names the error (AccessDenied, not found, KMS) but never the value.
        raise ConfigurationError(f"cannot read the Twelve Data API key from {source}: {exc}") from None
    if not key:
        raise ConfigurationError(f"the Twelve Data API key in {source} is empty")
    return key


def read_secret(arn: str, *, max_age: int = SECRET_MAX_AGE_SECONDS, refresh: bool = False) -> str:
    """The SecretString of a Secrets Manager secret, through Powertools Parameters: cached per process
    (execution environment) for max_age seconds; refresh fetches it now (a rotated database password).
    Failures raise Powertools' GetParameterError (its message names the error, never the value)."""
    # Lazy for the reason given in fetch_twelve_data_api_key.
    from aws_lambda_powertools.utilities import parameters

    return _text(parameters.get_secret(arn, max_age=max_age, force_fetch=refresh))


def reset_secrets() -> None:
    """Forget every secret and parameter read so far, with its age, and the boto3 clients that read them
    (their connection pools): the next read asks AWS again. Imports nothing: when Powertools Parameters
    was never loaded, nothing was read. Called after a SnapStart restore (marketdata.snapstart)."""
    import sys

    constants = sys.modules.get("aws_lambda_powertools.utilities.parameters.constants")
    if constants is None:
        return
    for provider in list(constants.DEFAULT_PROVIDERS.values()):
        provider.clear_cache()
    constants.DEFAULT_PROVIDERS.clear()


def _text(raw: object) -> str:
    if isinstance(raw, bytes | bytearray):
        raw = raw.decode("utf-8", errors="replace")
    return str(raw).strip() if raw is not None else ""


def _key_from_secret_value(raw: object, source: str) -> str:
    text = _text(raw)
    if not text.startswith("{"):
        return text
    import json

    try:
        document = json.loads(text)
    except ValueError:
        # Not valid JSON after all; do not echo it (it is a secret).
        raise ConfigurationError(f"{source} looks like JSON but cannot be parsed") from None
    for field in _SECRET_KEY_FIELDS:
        value = document.get(field) if isinstance(document, dict) else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    raise ConfigurationError(f"{source} is a JSON object without an 'apikey' field")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
