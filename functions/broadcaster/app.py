"""The broadcaster, started every minute by EventBridge Scheduler: posts the live bars of every subscribed
pair to its subscribers until just before the next run (marketdata.broadcast does the work)."""

from __future__ import annotations

import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit

from marketdata import http
from marketdata.broadcast import Broadcaster, ManagementApiPoster, build_streams, run_window
from marketdata.errors import ConfigurationError
from marketdata.service import get_service


def broadcast(event: dict[str, Any], context: Any) -> dict[str, Any]:
    started = time.time()
    service = get_service()
    settings = service.settings
    if not settings.live_management_endpoint:
        raise ConfigurationError("LIVE_MANAGEMENT_ENDPOINT is not set: nowhere to post the live bars")
    poster = ManagementApiPoster(
        settings.live_management_endpoint, timeout=settings.live_post_timeout_seconds,
        pool=settings.live_fanout_threads,
    )
    broadcaster = Broadcaster(service, poster, build_streams(service))
    stats = broadcaster.run(
        run_window(lambda: context.get_remaining_time_in_millis() / 1000, settings, started=started)
    )
    counts = {"Posts": stats.posts, "PostFailures": stats.failed, "GoneConnections": stats.gone,
              "Ticks": stats.ticks, "ClosedBarsStored": stats.closed_stored}
    for name, value in counts.items():
        http.metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)
    summary = {"ticks": stats.ticks, "posts": stats.posts, "failed": stats.failed, "gone": stats.gone,
               "pairs": stats.pairs, "connections": stats.connections, "closed_stored": stats.closed_stored}
    http.logger.info("broadcast run done", extra=summary)
    return summary


lambda_handler = http.instrumented(broadcast, operation="broadcast")
