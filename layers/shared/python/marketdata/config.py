"""Settings: one pydantic model of the environment, read once per process.

Every knob the service has is a field here, named after its environment variable (the alias).
`get_settings()` caches the object for the life of the Lambda execution environment; tests call
`get_settings.cache_clear()` after changing the environment. Nothing here fails at import: a
missing Twelve Data key, for instance, only matters on the first forex call
(`Settings.require_twelve_data_api_key`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import lru_cache

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from marketdata.errors import ConfigurationError


class Settings(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    # --- providers ---
    binance_rest_url: str = Field("https://api.binance.com", validation_alias="BINANCE_REST_URL")
    twelve_data_rest_url: str = Field("https://api.twelvedata.com", validation_alias="TWELVE_DATA_REST_URL")
    twelve_data_api_key: SecretStr | None = Field(None, validation_alias="TWELVE_DATA_API_KEY")
    # Where the deployed functions find the key when it is not in the environment (template.yaml sets one).
    twelve_data_api_key_secret_arn: str | None = Field(None, validation_alias="TWELVE_DATA_API_KEY_SECRET_ARN")
    twelve_data_api_key_parameter: str | None = Field(None, validation_alias="TWELVE_DATA_API_KEY_PARAMETER")
    binance_quote_assets: tuple[str, ...] = Field(("USDT", "BUSD", "BTC"), validation_alias="BINANCE_QUOTE_ASSETS")

    # HTTP timeouts (seconds) and retry budget: all well inside API Gateway's 30 s.
    http_connect_timeout: float = Field(3.0, gt=0, validation_alias="HTTP_CONNECT_TIMEOUT")
    http_read_timeout: float = Field(10.0, gt=0, validation_alias="HTTP_READ_TIMEOUT")
    upstream_retry_budget_seconds: float = Field(8.0, ge=0, validation_alias="UPSTREAM_RETRY_BUDGET_SECONDS")
    upstream_max_attempts: int = Field(4, ge=1, le=10, validation_alias="UPSTREAM_MAX_ATTEMPTS")
    # Binance allows 6000 request weight per minute per IP; stop before this share of it is used.
    binance_weight_limit: int = Field(6000, gt=0, validation_alias="BINANCE_WEIGHT_LIMIT")
    binance_weight_safety_share: float = Field(0.8, gt=0, le=1, validation_alias="BINANCE_WEIGHT_SAFETY_SHARE")

    # --- database ---
    database_url: SecretStr | None = Field(None, validation_alias="DATABASE_URL")
    db_host: str | None = Field(None, validation_alias="DB_HOST")
    db_port: int = Field(5432, validation_alias="DB_PORT")
    db_name: str = Field("marketdata", validation_alias="DB_NAME")
    db_user: str | None = Field(None, validation_alias="DB_USER")
    db_secret_arn: str | None = Field(None, validation_alias="DB_SECRET_ARN")
    db_iam_auth: bool = Field(False, validation_alias="DB_IAM_AUTH")
    db_connect_timeout: float = Field(5.0, gt=0, validation_alias="DB_CONNECT_TIMEOUT")
    db_statement_timeout_ms: int = Field(10_000, gt=0, validation_alias="DB_STATEMENT_TIMEOUT_MS")
    # How long a Lambda waits for another one that is already fetching the same gap.
    single_flight_wait_seconds: float = Field(10.0, ge=0, validation_alias="SINGLE_FLIGHT_WAIT_SECONDS")

    # --- service ---
    symbols_ttl_seconds: int = Field(3600, ge=0, validation_alias="SYMBOLS_TTL_SECONDS")
    backfill_default_lookback_days: int = Field(30, ge=1, validation_alias="BACKFILL_DEFAULT_LOOKBACK_DAYS")

    @field_validator("binance_quote_assets", mode="before")
    @classmethod
    def _split_assets(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().upper() for part in value.split(",") if part.strip())
        return value

    @field_validator("binance_rest_url", "twelve_data_rest_url")
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
                f"{err['loc'][0] if err['loc'] else '?'}: {err['msg']}" for err in exc.errors(include_input=False)
            )
            raise ConfigurationError(f"invalid configuration: {problems}") from None

    def require_twelve_data_api_key(self) -> str:
        """The Twelve Data key, or ConfigurationError naming the variable to set."""
        if self.twelve_data_api_key is None or not self.twelve_data_api_key.get_secret_value():
            raise ConfigurationError(
                "Twelve Data API key missing: set TWELVE_DATA_API_KEY "
                "(or TWELVE_DATA_API_KEY_SECRET_ARN / TWELVE_DATA_API_KEY_PARAMETER when deployed)"
            )
        return self.twelve_data_api_key.get_secret_value()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
