"""Migration entry point: applies migrations/*.sql (shipped in the layer) to the cache database.

Two ways in:
- Direct invocation (`aws lambda invoke --function-name <MigrateFunctionName> --payload '{}' out.json`,
  or `sam local invoke MigrateFunction -e events/migrate.json`): returns
  `{"applied": ["0002", ...], "latest": "0002"}` (`applied` is empty when the database was up to date);
  a failure is raised, so the invocation reports a FunctionError with the message.
- CloudFormation custom resource (template.yaml `DatabaseMigrations`, when RunMigrationsOnDeploy is
  true): Create/Update apply the migrations, Delete does nothing (dropping the cache is never automatic).
  The outcome is always PUT to the pre-signed ResponseURL - also on failure - so a broken migration
  fails the deployment within seconds instead of leaving the stack waiting for an hour.

Migrations serialise on an advisory lock and skip what is recorded (marketdata.migrate), so a manual
run during a deploy, or two deploys at once, is harmless.
"""

from __future__ import annotations

import json
import os
import urllib.request
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers

from marketdata.config import get_settings
from marketdata.errors import ConfigurationError, MarketDataError
from marketdata.migrate import apply_migrations, load_migrations
from marketdata.store import CandleStore

logger = Logger(service=os.environ.get("POWERTOOLS_SERVICE_NAME") or "marketdata")
# marketdata.migrate logs each applied file through stdlib logging: same JSON stream.
copy_config_to_registered_loggers(source_logger=logger, include={"marketdata", "marketdata.migrate"})

PHYSICAL_RESOURCE_ID = "marketdata-database-migrations"
# A CloudFormation response body is limited to 4 KiB; the reason is the part that can grow.
MAX_REASON_CHARS = 1000
RESPONSE_TIMEOUT_SECONDS = 10


def run_migrations() -> dict[str, Any]:
    """Apply pending migrations; the versions applied now and the newest version the files define."""
    store = CandleStore.from_settings(get_settings())
    if store is None:
        raise ConfigurationError(
            "no database configured: set DB_HOST (the RDS Proxy endpoint) or DATABASE_URL"
        )
    try:
        applied = apply_migrations(store)
    finally:
        store.close()
    known = load_migrations()
    latest = known[-1].version if known else None
    logger.info("migrations done", extra={"applied": applied, "latest": latest})
    return {"applied": applied, "latest": latest}


def is_custom_resource_event(event: object) -> bool:
    return isinstance(event, dict) and "RequestType" in event and "ResponseURL" in event


def _respond(event: dict[str, Any], status: str, reason: str, data: dict[str, str]) -> None:
    body = json.dumps(
        {
            "Status": status,
            "Reason": reason[:MAX_REASON_CHARS],
            "PhysicalResourceId": event.get("PhysicalResourceId") or PHYSICAL_RESOURCE_ID,
            "StackId": event["StackId"],
            "RequestId": event["RequestId"],
            "LogicalResourceId": event["LogicalResourceId"],
            "Data": data,
        }
    ).encode("utf-8")
    # The pre-signed S3 URL is signed for an empty content type.
    headers = {"Content-Type": "", "Content-Length": str(len(body))}
    request = urllib.request.Request(event["ResponseURL"], data=body, method="PUT", headers=headers)
    with urllib.request.urlopen(request, timeout=RESPONSE_TIMEOUT_SECONDS) as response:
        response.read()


def handle_custom_resource(event: dict[str, Any], context: Any) -> dict[str, Any]:
    request_type = event["RequestType"]
    stream = getattr(context, "log_stream_name", None) or "the function's log group"
    data: dict[str, str] = {}
    try:
        if request_type in ("Create", "Update"):
            outcome = run_migrations()
            data = {"Applied": ",".join(outcome["applied"]), "Latest": outcome["latest"] or ""}
            status, reason = "SUCCESS", f"applied: {data['Applied'] or 'nothing (up to date)'}"
        else:
            # Delete: the cache (and its schema) outlive the stack; dropping data is a human decision.
            status, reason = "SUCCESS", "nothing to do on delete"
    except MarketDataError as exc:
        logger.exception("migrations failed")
        status, reason = "FAILED", f"migrations failed: {exc.message} (see {stream})"
    except Exception as exc:
        logger.exception("migrations failed unexpectedly")
        status, reason = "FAILED", f"migrations failed: {type(exc).__name__} (see {stream})"
    _respond(event, status, reason, data)
    return {"Status": status, "Reason": reason, "Data": data}


@logger.inject_lambda_context(log_event=False)
def lambda_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    if is_custom_resource_event(event):
        return handle_custom_resource(event, context)
    return run_migrations()
