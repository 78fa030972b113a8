"""Scheduled backfill: the target of an EventBridge Scheduler schedule (SAM event type ScheduleV2).

The scheduler delivers the schedule's Input as the event itself, a jobs document:

    {"jobs": [{"symbol": "BTCUSDT", "interval": "1m", "since": "2024-01-01"},
              {"symbol": "EUR/USD", "interval": "1H"}]}

Each run fills what coverage lacks, page by page, and stops starting pages BACKFILL_SAFETY_MARGIN_SECONDS
before the invocation's timeout; the next scheduled run resumes from coverage (see marketdata.backfill).
The per-job summary is logged (one JSON line per job and one for the run), returned, and counted as EMF
metrics in the "MarketData" namespace:

    BackfillPages, BackfillRowsWritten        work done this run
    BackfillJobsFailed                        failed + invalid jobs (need an operator; alarm on it)
    BackfillJobsDeferred                      partial + deferred jobs (resume on the next run)
    BackfillJobsComplete                      jobs covered up to the newest closed bar
    BackfillInputRejected                     1 when the event is not a jobs document (the run fails)

An event that is not a jobs document is logged and raised (the invocation fails, visibly).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from marketdata.backfill import JobStatus, run_scheduled_backfill
from marketdata.errors import InvalidRequest
from marketdata.http import instrumented, logger, metrics


def backfill(event: Any, context: Any) -> dict[str, Any]:
    try:
        summary = run_scheduled_backfill(
            event, remaining_seconds=context.get_remaining_time_in_millis() / 1000
        )
    except InvalidRequest as exc:
        logger.error("backfill input rejected", extra={"error": exc.message})
        metrics.add_metric(name="BackfillInputRejected", unit=MetricUnit.Count, value=1)
        raise
    metrics.add_metric(name="BackfillPages", unit=MetricUnit.Count, value=summary.pages)
    metrics.add_metric(name="BackfillRowsWritten", unit=MetricUnit.Count, value=summary.rows_written)
    metrics.add_metric(
        name="BackfillJobsFailed",
        unit=MetricUnit.Count,
        value=summary.count(JobStatus.FAILED, JobStatus.INVALID),
    )
    metrics.add_metric(
        name="BackfillJobsDeferred",
        unit=MetricUnit.Count,
        value=summary.count(JobStatus.PARTIAL, JobStatus.DEFERRED),
    )
    metrics.add_metric(
        name="BackfillJobsComplete", unit=MetricUnit.Count, value=summary.count(JobStatus.COMPLETE)
    )
    result = summary.to_dict()
    logger.info(
        "backfill run finished",
        extra={"totals": result["totals"], "elapsed_seconds": result["elapsed_seconds"]},
    )
    return result


lambda_handler = instrumented(backfill, operation="backfill")
