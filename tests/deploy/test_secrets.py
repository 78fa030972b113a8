"""The Twelve Data key from Secrets Manager or SSM (moto), as the deployed functions read it."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import boto3
import pytest
from aws_lambda_powertools.utilities import parameters

from marketdata.config import Settings, fetch_twelve_data_api_key
from marketdata.errors import ConfigurationError
from tests.support.aws_fixtures import AWS_REGION

REGION = AWS_REGION
KEY = "td-key-0123456789abcdef"


def _secret(value: str, name: str = "marketdata/twelve-data") -> str:
    client = boto3.client("secretsmanager", region_name=REGION)
    return client.create_secret(Name=name, SecretString=value)["ARN"]


def _secure_parameter(value: str, name: str = "/marketdata/twelve-data-api-key") -> str:
    boto3.client("ssm", region_name=REGION).put_parameter(Name=name, Value=value, Type="SecureString")
    return name


def test_plain_string_secret(aws) -> None:
    arn = _secret(KEY)
    assert Settings.from_env({"TWELVE_DATA_API_KEY_SECRET_ARN": arn}).require_twelve_data_api_key() == KEY


def test_json_secret_with_apikey_field(aws) -> None:
    arn = _secret(json.dumps({"apikey": f"  {KEY}\n", "note": "rotated monthly"}))
    assert Settings.from_env({"TWELVE_DATA_API_KEY_SECRET_ARN": arn}).require_twelve_data_api_key() == KEY


def test_ssm_securestring_is_decrypted(aws) -> None:
    name = _secure_parameter(KEY)
    assert Settings.from_env({"TWELVE_DATA_API_KEY_PARAMETER": name}).require_twelve_data_api_key() == KEY


def test_secret_preferred_over_parameter_when_both_set(aws) -> None:
    arn = _secret(KEY)
    name = _secure_parameter("the-other-key")
    settings = Settings.from_env(
        {"TWELVE_DATA_API_KEY_SECRET_ARN": arn, "TWELVE_DATA_API_KEY_PARAMETER": name}
    )
    assert settings.require_twelve_data_api_key() == KEY


def test_environment_key_wins_without_calling_aws(aws) -> None:
    # The ARN does not exist: any call to Secrets Manager would fail.
    missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-AbCdEf"
    settings = Settings.from_env(
        {"TWELVE_DATA_API_KEY": "from-env", "TWELVE_DATA_API_KEY_SECRET_ARN": missing}
    )
    assert settings.require_twelve_data_api_key() == "from-env"


def test_value_is_cached_until_max_age_then_rotation_is_seen(aws) -> None:
    arn = _secret(KEY)
    settings = Settings.from_env({"TWELVE_DATA_API_KEY_SECRET_ARN": arn})
    assert settings.require_twelve_data_api_key() == KEY
    boto3.client("secretsmanager", region_name=REGION).put_secret_value(SecretId=arn, SecretString="rotated")
    # Within max_age the cached value is served (warm invocations never call Secrets Manager) ...
    assert settings.require_twelve_data_api_key() == KEY
    # ... and once the cache lapses the rotated key is read.
    parameters.clear_caches()
    assert settings.require_twelve_data_api_key() == "rotated"
    assert fetch_twelve_data_api_key(secret_arn=arn, parameter_name=None, max_age=0) == "rotated"


def test_missing_everywhere_names_the_variables() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({}).require_twelve_data_api_key()
    message = str(info.value)
    for name in ("TWELVE_DATA_API_KEY", "TWELVE_DATA_API_KEY_SECRET_ARN", "TWELVE_DATA_API_KEY_PARAMETER"):
        assert name in message


def test_unknown_secret_is_a_configuration_error_naming_the_source(aws) -> None:
    missing = f"arn:aws:secretsmanager:{REGION}:123456789012:secret:nope-AbCdEf"
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"TWELVE_DATA_API_KEY_SECRET_ARN": missing}).require_twelve_data_api_key()
    assert missing in str(info.value)


def test_unknown_parameter_is_a_configuration_error_naming_the_source(aws) -> None:
    with pytest.raises(ConfigurationError) as info:
        settings = Settings.from_env({"TWELVE_DATA_API_KEY_PARAMETER": "/no/such/parameter"})
        settings.require_twelve_data_api_key()
    assert "/no/such/parameter" in str(info.value)


def test_json_secret_without_apikey_is_rejected_without_echoing_it(aws) -> None:
    arn = _secret(json.dumps({"username": "someone", "password": KEY}))
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"TWELVE_DATA_API_KEY_SECRET_ARN": arn}).require_twelve_data_api_key()
    assert "apikey" in str(info.value)
    assert KEY not in str(info.value)


def test_empty_parameter_is_rejected(aws) -> None:
    name = _secure_parameter(" ")
    with pytest.raises(ConfigurationError, match="empty"):
        Settings.from_env({"TWELVE_DATA_API_KEY_PARAMETER": name}).require_twelve_data_api_key()


def test_key_never_logged(aws, caplog: pytest.LogCaptureFixture) -> None:
    arn = _secret(json.dumps({"apikey": KEY}))
    caplog.set_level(logging.DEBUG, logger="marketdata")
    caplog.set_level(logging.DEBUG, logger="aws_lambda_powertools")
    settings = Settings.from_env({"TWELVE_DATA_API_KEY_SECRET_ARN": arn})
    assert settings.require_twelve_data_api_key() == KEY
    assert KEY not in caplog.text
    assert KEY not in repr(settings)


def test_config_import_does_not_load_boto3() -> None:
    # The secret path imports Powertools Parameters (and boto3) lazily: cold starts must not pay for it.
    code = "import sys, marketdata.config; print('boto3' in sys.modules, 'botocore' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]
