"""Backfills: fill the cache for a list of (symbol, interval, since) jobs within a time and rate budget.

Two callers run the same code:
- the scheduled Lambda (functions/backfill/app.py): EventBridge Scheduler delivers the schedule's Input
  as the event itself, a jobs document such as
  ``{"jobs": [{"symbol": "BTCUSDT", "interval": "1m", "since": "2024-01-01"}]}``;
- developers: ``python -m marketdata.backfill BTCUSDT:1m:2024-01-01 EUR/USD:1H`` (progress bar on stderr,
  drawn by rich when it is installed: a dev/CLI dependency, imported only by the command line).

Each job is one `MarketDataService.fill_gaps(symbol, interval, start=since)` call: it reads coverage,
fetches only what coverage lacks, oldest first, FILL_PARALLEL_PAGES provider pages in flight, storing
each page's bars and coverage together as it arrives (committed every few pages), up to the newest
closed bar. Coverage is therefore the only state a backfill has:
a run stopped anywhere (deadline, crash, Lambda timeout, Ctrl-C) leaves the cache valid, and the next run
resumes where it stopped without refetching anything. Runs are idempotent; a second run of a finished job
makes no provider call.

Time budget: `deadline` (a `clock()` value) is passed to fill_gaps, which starts no page after it; jobs
not started by then are reported "deferred". The Lambda sets it to its remaining time minus
BACKFILL_SAFETY_MARGIN_SECONDS, so the last page always finishes before the timeout.

Rate budget: the Binance client guards its own request weight (UpstreamRateLimited with retry_after
when the minute's budget is spent), and a Binance ban seen by any Lambda stops every one. Twelve Data's
credits (TWELVE_DATA_CREDITS_PER_MINUTE / _PER_DAY) are counted in Postgres for every Lambda and the
backfill together (marketdata.limits); the backfill may not use the share reserved for API requests, and a
page that would exceed its share is refused *before* it spends a credit, as UpstreamRateLimited with the
wait. Either way `run_backfill` sleeps when the wait fits the time left and continues (fill_gaps resumes
from coverage), and otherwise defers the job to the next run.

A failing job (unknown symbol, a pair outside the Twelve Data plan, provider down, database down) is
reported with its reason and the next job runs.
"""

from __future__ import annotations

import calendar
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from enum import StrEnum
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Protocol, TextIO

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from marketdata.config import Settings, get_settings
from marketdata.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    InvalidRequest,
    MarketDataError,
    UpstreamRateLimited,
)
from marketdata.intervals import (
    Interval,
    count_bars,
    first_open_at_or_after,
    last_closed_open,
)
from marketdata.providers.base import Page
from marketdata.schemas import MAX_UNIX_SECONDS, IntervalField, SymbolField

if TYPE_CHECKING:
    from pathlib import Path

    from marketdata.service import MarketDataService

logger = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], None]

# Unix seconds stay below 1e11 until the year 5138: a bigger number is almost surely milliseconds.
_MILLISECONDS_FROM = 10**11
# Rate-limit waits in a row with no page stored in between, after which the job is deferred: a limit
# that does not clear after this many honest waits will not clear within this run.
_MAX_IDLE_WAITS = 3
_SINCE_FORMS = '"2024-01-01", "2024-01-01T12:00:00Z", "2024-01-01T12:00:00+00:00" or Unix seconds'


# --- the jobs document -----------------------------------------------------------------------------


def parse_since(value: object) -> int:
    """Unix seconds (UTC) for a job's `since`, or ValueError saying what is accepted.

    Accepted: an ISO date ("2024-01-01", midnight UTC), an ISO date-time with "Z" or an offset, or without
    one (then UTC), Unix seconds as an int, a whole float or a string of digits.
    """
    if isinstance(value, bool):
        raise ValueError(f"since must be {_SINCE_FORMS}, not a boolean")
    if isinstance(value, int):
        seconds = _unix_seconds(value)
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"since must be whole Unix seconds or {_SINCE_FORMS}")
        seconds = _unix_seconds(int(value))
    elif isinstance(value, str):
        text = value.strip()
        seconds = _unix_seconds(int(text)) if re.fullmatch(r"[0-9]+", text) else _parse_iso(text)
    else:
        raise ValueError(f"since must be {_SINCE_FORMS}, not {type(value).__name__}")
    if not 0 <= seconds <= MAX_UNIX_SECONDS:
        raise ValueError(f"since must be between 1970-01-01 and 3000-01-01, got {seconds}")
    return seconds


def _unix_seconds(number: int) -> int:
    if number >= _MILLISECONDS_FROM:
        raise ValueError(f"since {number} looks like milliseconds: give Unix seconds ({number // 1000})")
    return number


def _parse_iso(text: str) -> int:
    shown = text if len(text) <= 40 else text[:40] + "..."
    try:
        if re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", text):
            day = date.fromisoformat(text)
            return calendar.timegm((day.year, day.month, day.day, 0, 0, 0))
        moment = datetime.fromisoformat(text)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # naive means UTC, as everywhere in this service
        return math.floor(moment.timestamp())
    except (ValueError, OverflowError):
        raise ValueError(f"since {shown!r} is not a date: use {_SINCE_FORMS}") from None


def iso_utc(seconds: int | None) -> str | None:
    """Unix seconds as ISO 8601 UTC text, e.g. 2024-01-01T00:00:00Z (None stays None)."""
    if seconds is None:
        return None
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


class BackfillJob(BaseModel):
    """One job of the document, validated. `since` is Unix seconds; None means "the default lookback"."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    symbol: SymbolField
    interval: IntervalField
    since: int | None = None

    @field_validator("since", mode="before")
    @classmethod
    def _since(cls, value: object) -> int | None:
        return None if value is None else parse_since(value)


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """A valid job with its start resolved (the default lookback applied).

    interval: what is filled. For an interval the provider serves derived (forex 4H, 1W, 1M) that is
    the base the cache stores for it (`MarketDataService.storage_interval`), and `named` keeps the
    interval the job asked for, for the reports.
    """

    symbol: str
    interval: Interval
    since: int
    since_given: bool = True
    asked: Interval | None = None

    @property
    def named(self) -> str:
        """The interval as the job named it."""
        return (self.asked or self.interval).value

    @property
    def label(self) -> str:
        if self.asked is None or self.asked is self.interval:
            return f"{self.symbol} {self.interval.value}"
        return f"{self.symbol} {self.asked.value} (filled as {self.interval.value})"

    def as_stored(self, service: MarketDataService) -> PlannedJob:
        """This job filling what the cache stores for its interval."""
        try:
            stored = service.storage_interval(self.symbol, self.interval)
        except MarketDataError:
            return self  # no provider for it: the fill itself reports why
        if stored is self.interval:
            return self
        return replace(self, interval=stored, asked=self.asked or self.interval)


@dataclass(frozen=True, slots=True)
class InvalidJob:
    """A job that failed validation: reported in the summary, never run. symbol/interval as given."""

    symbol: str
    interval: str
    error: str


def parse_jobs(document: object, *, now: float, lookback_days: int) -> list[PlannedJob | InvalidJob]:
    """The jobs of a schedule Input / jobs file, in order, each either planned or invalid.

    A document that is not ``{"jobs": [...]}`` raises InvalidRequest (nothing could run); a bad job is
    reported as InvalidJob and does not affect the others.
    """
    if not isinstance(document, Mapping) or "jobs" not in document:
        shape = type(document).__name__ if not isinstance(document, Mapping) else f"keys {sorted(document)!r}"
        raise InvalidRequest(
            'backfill input must be a JSON object {"jobs": [{"symbol": "BTCUSDT", "interval": "1m", '
            f'"since": "2024-01-01"}}, ...]}}; got {shape}',
            param="jobs",
        )
    jobs = document["jobs"]
    if not isinstance(jobs, list):
        raise InvalidRequest(f'"jobs" must be a list of jobs, got {type(jobs).__name__}', param="jobs")
    default_since = int(now) - lookback_days * 86400
    planned: list[PlannedJob | InvalidJob] = []
    for position, raw in enumerate(jobs, start=1):
        planned.append(_plan_job(position, raw, now=now, default_since=default_since))
    return planned


def _plan_job(position: int, raw: object, *, now: float, default_since: int) -> PlannedJob | InvalidJob:
    if not isinstance(raw, Mapping):
        return InvalidJob("?", "?", f"job {position}: expected an object with symbol, interval and since")
    symbol = str(raw.get("symbol", "?"))[:32]
    interval = str(raw.get("interval", "?"))[:16]
    try:
        job = BackfillJob.model_validate(raw)
    except ValidationError as exc:
        return InvalidJob(symbol, interval, f"job {position}: {_validation_message(exc)}")
    if job.since is None:
        return PlannedJob(job.symbol, job.interval, max(0, default_since), since_given=False)
    if job.since > now:
        return InvalidJob(
            job.symbol, job.interval.value, f"job {position}: since {iso_utc(job.since)} is in the future"
        )
    return PlannedJob(job.symbol, job.interval, job.since)


def _validation_message(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_input=False, include_url=False):
        where = ".".join(str(part) for part in err["loc"]) or "job"
        if err["type"] == "extra_forbidden":
            problems.append(f"unknown field {where!r} (a job has symbol, interval and since)")
        elif err["type"] == "missing":
            problems.append(f"{where} is required")
        else:
            ctx_error = (err.get("ctx") or {}).get("error")
            problems.append(str(ctx_error) if ctx_error is not None else f"{where}: {err['msg']}")
    return "; ".join(problems)


def build_backfill_service(settings: Settings, *, clock: Clock = time.time) -> MarketDataService:
    """A MarketDataService over the configured database (its fills count against the shared provider
    budgets as the backfill's: see marketdata.limits).

    Raises ConfigurationError when no database is configured: a backfill has nowhere to write.
    """
    from marketdata.service import MarketDataService, lazy_providers
    from marketdata.store import CandleStore

    store = CandleStore.from_settings(settings)
    if store is None:
        raise ConfigurationError(
            "no cache database configured: set DATABASE_URL (or DB_HOST, DB_NAME, DB_USER with "
            "DB_SECRET_ARN or DB_IAM_AUTH=true)"
        )
    return MarketDataService(store, lazy_providers(settings), settings, clock=clock)


@lru_cache(maxsize=1)
def get_backfill_service() -> MarketDataService:
    """The process-wide backfill service (database connections and HTTP pools survive warm starts)."""
    return build_backfill_service(get_settings())


# --- results ---------------------------------------------------------------------------------------


class JobStatus(StrEnum):
    COMPLETE = "complete"  # everything from since to the newest closed bar is covered
    PARTIAL = "partial"  # pages were stored, then the time or rate budget ran out: the next run resumes
    DEFERRED = "deferred"  # nothing done this run (no time left, or rate-limited): the next run does it
    FAILED = "failed"  # an error (unknown symbol, provider or database failure); pages stored before stay
    INVALID = "invalid"  # the job itself is wrong; never run


@dataclass(frozen=True, slots=True)
class JobResult:
    symbol: str
    interval: str
    status: JobStatus
    since: int | None = None
    pages: int = 0
    # Rows the database inserted (from fill_gaps' report; when fill_gaps raised, the bars of the pages it
    # stored before, which is the same number unless another process stored some of them concurrently).
    rows_written: int = 0
    # End of the covered run that contains the first bar from since: the next run resumes after it.
    covered_until: int | None = None
    error: str | None = None  # why the job is not complete (None when it is)

    def to_dict(self) -> dict[str, Any]:
        return {
            "symbol": self.symbol,
            "interval": self.interval,
            "status": self.status.value,
            "since": iso_utc(self.since),
            "pages": self.pages,
            "rows_written": self.rows_written,
            "covered_until": iso_utc(self.covered_until),
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class BackfillSummary:
    jobs: list[JobResult]
    elapsed_seconds: float

    def count(self, *statuses: JobStatus) -> int:
        return sum(1 for job in self.jobs if job.status in statuses)

    @property
    def pages(self) -> int:
        return sum(job.pages for job in self.jobs)

    @property
    def rows_written(self) -> int:
        return sum(job.rows_written for job in self.jobs)

    @property
    def ok(self) -> bool:
        """No job failed or was invalid (complete, partial and deferred jobs are fine: they resume)."""
        return self.count(JobStatus.FAILED, JobStatus.INVALID) == 0

    def totals(self) -> dict[str, int]:
        counts = {status.value: self.count(status) for status in JobStatus}
        return {"jobs": len(self.jobs), **counts, "pages": self.pages, "rows_written": self.rows_written}

    def to_dict(self) -> dict[str, Any]:
        return {
            "jobs": [job.to_dict() for job in self.jobs],
            "totals": self.totals(),
            "elapsed_seconds": round(self.elapsed_seconds, 3),
        }


# --- progress ----------------------------------------------------------------------------------------


@dataclass(slots=True)
class JobProgress:
    """Live figures of the running job, handed to the progress reporter after each page.

    Bar counts are bar *slots* between since and the newest closed bar (forex weekend slots included):
    what coverage measures, so a resumed run starts from what earlier runs covered.
    """

    index: int  # 1-based position in the run
    total_jobs: int
    job: PlannedJob
    bars_needed: int  # slots from since to the newest closed bar
    started: float  # clock() when the job started
    now: float = 0.0
    covered_before: int = 0  # slots already covered when the job started
    covered_now: int = 0  # slots covered by the pages of this run
    pages: int = 0
    bars_fetched: int = 0  # closed bars received (what rows/s counts)
    reached: int | None = None  # end of the newest page stored
    # The provider budget the backfill may use (MarketDataService.backfill_pace): bar slots per page and
    # pages per minute (None: not bounded by a budget), so the ETA includes the pauses still ahead.
    bars_per_page: int = 0
    pages_per_minute: float | None = None
    waited: float = 0.0  # seconds slept in rate-limit waits so far
    waiting_until: float | None = None  # clock() when the current wait ends, while waiting

    @property
    def bars_covered(self) -> int:
        return min(self.bars_needed, self.covered_before + self.covered_now)

    @property
    def elapsed(self) -> float:
        return max(0.0, self.now - self.started)

    @property
    def rows_per_second(self) -> float:
        return self.bars_fetched / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Time left (None until there is a pace): the bars left at this run's fetching pace (waits left
        out), or, when slower, at the pace the provider budget allows (the rate-limit pauses it will
        force), plus what is left of a wait in progress."""
        fetching = self.elapsed - self.waited
        if self.covered_now <= 0 or fetching <= 0:
            return None
        left = max(0, self.bars_needed - self.bars_covered)
        eta = left * fetching / self.covered_now
        if self.pages_per_minute and self.bars_per_page:
            eta = max(eta, math.ceil(left / self.bars_per_page) / self.pages_per_minute * 60.0)
        if self.waiting_until is not None:
            eta += max(0.0, self.waiting_until - self.now)
        return eta


class BackfillProgress(Protocol):
    def job_started(self, progress: JobProgress) -> None: ...

    def page_stored(self, progress: JobProgress) -> None: ...

    def waiting(self, progress: JobProgress, seconds: float, reason: str) -> None: ...

    def job_finished(self, progress: JobProgress | None, result: JobResult) -> None: ...


# --- running -----------------------------------------------------------------------------------------


def run_backfill(
    jobs: Sequence[PlannedJob | InvalidJob],
    service: MarketDataService,
    *,
    clock: Clock = time.time,
    deadline: float = math.inf,
    progress: BackfillProgress | None = None,
    sleep: Sleep = time.sleep,
) -> BackfillSummary:
    """Run the jobs in order until done or `deadline` (a clock() value): no page starts after it.

    `clock` must be the service's clock (fill_gaps compares it to the deadline); `sleep` is used for
    rate-limit waits only. Never raises for a job's failure: every job gets a JobResult.
    """
    started = clock()
    results: list[JobResult] = []
    total = len(jobs)
    for index, job in enumerate(jobs, start=1):
        live: JobProgress | None = None
        if isinstance(job, InvalidJob):
            result = JobResult(job.symbol, job.interval, JobStatus.INVALID, error=job.error)
        elif clock() >= deadline:
            result = JobResult(
                job.symbol,
                job.named,
                JobStatus.DEFERRED,
                since=job.since,
                error="not started: the time budget of this run is used up; the next run does it",
            )
        else:
            job = job.as_stored(service)
            live = _new_progress(index, total, job, clock(), service)
            result = _JobRun(
                job, service, live, clock=clock, deadline=deadline, progress=progress, sleep=sleep
            ).run()
        results.append(result)
        _log_result(result)
        if progress is not None:
            progress.job_finished(live, result)
    return BackfillSummary(results, elapsed_seconds=max(0.0, clock() - started))


def _new_progress(
    index: int, total: int, job: PlannedJob, now: float, service: MarketDataService
) -> JobProgress:
    needed = count_bars(job.interval, job.since, last_closed_open(job.interval, now))
    try:
        bars_per_page, pages_per_minute = service.backfill_pace(job.symbol)
    except MarketDataError:
        bars_per_page, pages_per_minute = 0, None  # no provider for it: the fill itself reports why
    return JobProgress(index, total, job, needed, started=now, now=now, bars_per_page=bars_per_page,
                       pages_per_minute=pages_per_minute)


def _covered_slots(service: MarketDataService, job: PlannedJob, bars_needed: int, now: float) -> int:
    """Bar slots of the job's range already covered (for the progress figures; fill_gaps reads coverage
    itself). Raises DatabaseUnavailable like fill_gaps would."""
    store = getattr(service, "store", None)
    if store is None or not bars_needed:
        return 0
    last_closed = last_closed_open(job.interval, now)
    return sum(
        count_bars(job.interval, max(start, job.since), min(end, last_closed))
        for start, end in store.read_coverage(job.symbol, job.interval, job.since, last_closed)
    )


def _covered_until(service: MarketDataService, job: PlannedJob, live: JobProgress) -> int | None:
    """End of the covered run that contains the job's first bar (what FillReport.covered_until says), for
    the paths where fill_gaps raised. Best effort: the end of the last page stored when the database
    cannot tell."""
    store = getattr(service, "store", None)
    if store is None:
        return live.reached
    first = first_open_at_or_after(job.interval, job.since)
    try:
        covered = store.read_coverage(job.symbol, job.interval, first, first)
    except DatabaseUnavailable:
        return live.reached
    return next((end for start, end in covered if start <= first <= end), None)


class _JobRun:
    """One job of a run: `fill_gaps` called until the job is complete, the deadline passes, a rate limit
    does not clear in time, or it fails. Rate-limit waits are slept here and the fill resumes from
    coverage; every outcome is a JobResult."""

    def __init__(
        self,
        job: PlannedJob,
        service: MarketDataService,
        live: JobProgress,
        *,
        clock: Clock,
        deadline: float,
        progress: BackfillProgress | None,
        sleep: Sleep,
    ) -> None:
        self.job = job
        self.service = service
        self.live = live
        self.clock = clock
        self.deadline = deadline
        self.progress = progress
        self.sleep = sleep
        self.rows = 0  # rows of the fill_gaps calls that returned a report, and of those that raised
        self.attempt_rows = 0  # bars of the current call's pages (its report is lost if it raises)
        self.idle_waits = 0  # rate-limit waits in a row with no page stored in between

    def run(self) -> JobResult:
        try:
            self.live.covered_before = _covered_slots(self.service, self.job, self.live.bars_needed,
                                                      self.live.started)
        except DatabaseUnavailable as exc:  # fill_gaps would fail the same way: do not wait for it twice
            return self._result(JobStatus.FAILED, None, _failure_message(exc, 0))
        if self.progress is not None:
            self.progress.job_started(self.live)
        while True:
            result = self._attempt()
            if result is not None:
                return result

    def _attempt(self) -> JobResult | None:
        """One fill_gaps call: its JobResult, or None after a rate-limit wait (call again)."""
        job, live = self.job, self.live
        pages_before, self.attempt_rows = live.pages, 0
        try:
            report = self.service.fill_gaps(
                job.symbol, job.interval, job.since, None, deadline=self.deadline, on_page=self._on_page
            )
        except UpstreamRateLimited as exc:
            self.rows += self.attempt_rows
            return self._rate_limited(exc, stored_pages=live.pages > pages_before)
        except MarketDataError as exc:
            # SymbolNotFound, SymbolNotInPlan, Upstream*, DatabaseUnavailable, ConfigurationError...
            self.rows += self.attempt_rows
            return self._result(JobStatus.FAILED, self._covered_until(), _failure_message(exc, live.pages))
        except Exception as exc:  # a bug must not cost the other jobs their run
            self.rows += self.attempt_rows
            logger.exception(
                "backfill job crashed", extra={"symbol": job.symbol, "interval": job.interval.value}
            )
            return self._result(JobStatus.FAILED, live.reached, f"internal error ({type(exc).__name__})")
        self.rows += report.rows_written
        if report.complete:
            return self._result(JobStatus.COMPLETE, report.covered_until)
        if self.clock() >= self.deadline:
            why = "stopped at the deadline" if live.pages else "no time left to start a page"
        else:
            # fill_gaps also stops early when another process holds this symbol and interval (single
            # flight) or when the provider has nothing more for the range right now.
            why = "stopped early: another process is filling this range, or the provider had nothing more"
        return self._result(self._unfinished(), report.covered_until, f"{why}; the next run resumes")

    def _on_page(self, page: Page) -> None:
        live = self.live
        live.now = self.clock()
        live.pages += 1
        live.bars_fetched += len(page.candles)
        self.attempt_rows += len(page.candles)
        if page.covers_closed_bars:
            live.covered_now += count_bars(self.job.interval, page.start, page.end)
            live.reached = page.end if live.reached is None else max(live.reached, page.end)
        if self.progress is not None:
            self.progress.page_stored(live)

    def _rate_limited(self, exc: UpstreamRateLimited, *, stored_pages: bool) -> JobResult | None:
        """Sleep the wait when it fits the time left (None: go on), else end the job for this run."""
        self.idle_waits = 0 if stored_pages else self.idle_waits + 1
        wait = exc.retry_after
        if wait is not None and self.idle_waits <= _MAX_IDLE_WAITS and self.clock() + wait < self.deadline:
            logger.info(
                "rate limited; waiting before the next page",
                extra={"symbol": self.job.symbol, "interval": self.job.interval.value,
                       "wait_seconds": round(wait, 1)},
            )
            self.live.now = self.clock()
            self.live.waiting_until = self.live.now + wait
            if self.progress is not None:
                self.progress.waiting(self.live, wait, exc.message)
            self.sleep(wait)
            self.live.waited += wait
            self.live.waiting_until = None
            return None
        return self._result(self._unfinished(), self._covered_until(),
                            f"rate limited, resumes next run: {exc.message}")

    def _unfinished(self) -> JobStatus:
        return JobStatus.PARTIAL if self.live.pages else JobStatus.DEFERRED

    def _covered_until(self) -> int | None:
        return _covered_until(self.service, self.job, self.live)

    def _result(self, status: JobStatus, covered_until: int | None, error: str | None = None) -> JobResult:
        self.live.now = self.clock()
        return JobResult(
            self.job.symbol,
            self.job.named,
            status,
            since=self.job.since,
            pages=self.live.pages,
            rows_written=self.rows,
            covered_until=covered_until,
            error=error,
        )


def _failure_message(exc: MarketDataError, pages: int) -> str:
    kept = f" ({pages} page(s) stored before the failure are kept)" if pages else ""
    return f"{type(exc).__name__}: {exc.message}{kept}"


def _log_result(result: JobResult) -> None:
    level = logging.WARNING if result.status in (JobStatus.FAILED, JobStatus.INVALID) else logging.INFO
    logger.log(
        level,
        "backfill job %s %s: %s",
        result.symbol,
        result.interval,
        result.status.value,
        extra={"backfill_job": result.to_dict()},
    )


def run_scheduled_backfill(
    event: object,
    *,
    remaining_seconds: float,
    service: MarketDataService | None = None,
    clock: Clock = time.time,
    sleep: Sleep = time.sleep,
) -> BackfillSummary:
    """The Lambda's work: the event is the schedule's Input (the jobs document).

    The deadline leaves BACKFILL_SAFETY_MARGIN_SECONDS of the invocation's remaining time free.
    Raises InvalidRequest when the event is not a jobs document.
    """
    now = clock()
    service = service if service is not None else get_backfill_service()
    settings = service.settings
    jobs = parse_jobs(event, now=now, lookback_days=settings.backfill_default_lookback_days)
    deadline = now + remaining_seconds - settings.backfill_safety_margin_seconds
    return run_backfill(jobs, service, clock=clock, deadline=deadline, sleep=sleep)


# --- command line ------------------------------------------------------------------------------------


def _duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "--:--"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _figures(p: JobProgress) -> str:
    share = p.bars_covered / p.bars_needed if p.bars_needed else 1.0
    return (
        f"{share * 100:5.1f}% {p.bars_covered:,}/{p.bars_needed:,} bars  {p.pages} pages  "
        f"{p.rows_per_second:,.0f} rows/s  ETA {_duration(p.eta_seconds)}"
    )


def _label(p: JobProgress) -> str:
    return f"[{p.index}/{p.total_jobs}] {p.job.label}"


def _result_line(result: JobResult) -> str:
    tail = f": {result.error}" if result.error else ""
    return f"    {result.symbol} {result.interval}: {result.status.value}{tail}"


class TerminalProgress:
    """The command line's progress display: a `rich` progress bar on a terminal, one plain line per
    update elsewhere (CI logs) or when rich is not installed. rich is a dev/CLI dependency, imported only
    here (never on the Lambda path: the backfill Lambda reports through its log lines)."""

    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        tty = self.stream.isatty() if tty is None else tty
        self._bar = _RichBar.create(self.stream) if tty else None
        self._task: Any = None

    @property
    def rich(self) -> bool:
        """Whether the rich progress bar is shown (else plain lines)."""
        return self._bar is not None

    def _plain(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def job_started(self, progress: JobProgress) -> None:
        if self._bar is None:
            since = iso_utc(progress.job.since)
            self._plain(f"{_label(progress)} since {since}: {progress.bars_needed:,} bars to cover")
            return
        self._task = self._bar.add(_label(progress), progress)

    def page_stored(self, progress: JobProgress) -> None:
        if self._bar is None:
            self._plain(f"{_label(progress)} {_figures(progress)}")
        else:
            self._bar.update(self._task, progress, note="")

    def waiting(self, progress: JobProgress, seconds: float, reason: str) -> None:
        note = f"(waiting {seconds:.0f} s: rate limit)"
        if self._bar is None:
            self._plain(f"{_label(progress)} {_figures(progress)}  {note}")
        else:
            self._bar.update(self._task, progress, note=note)

    def job_finished(self, progress: JobProgress | None, result: JobResult) -> None:
        if self._bar is None:
            self._plain(_result_line(result))
            return
        if progress is not None and self._task is not None:
            self._bar.update(self._task, progress, note="")
        self._bar.console.print(_result_line(result), markup=False, highlight=False)
        self._task = None

    def close(self) -> None:
        if self._bar is not None:
            self._bar.progress.stop()


class _RichBar:
    """rich's Progress with this backfill's columns (its own ETA column would ignore rate-limit pauses:
    JobProgress.eta_seconds is shown instead)."""

    def __init__(self, progress: Any, console: Any) -> None:
        self.progress = progress
        self.console = console

    @classmethod
    def create(cls, stream: TextIO) -> _RichBar | None:
        try:
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn
        except ImportError:
            return None
        console = Console(file=stream, force_terminal=True, highlight=False)
        progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            TextColumn("{task.fields[figures]} {task.fields[note]}", markup=False),
            console=console,
            refresh_per_second=10,
        )
        progress.start()
        return cls(progress, console)

    def add(self, label: str, p: JobProgress) -> Any:
        return self.progress.add_task(
            label, total=max(1, p.bars_needed), completed=p.bars_covered, figures=_figures(p), note=""
        )

    def update(self, task: Any, p: JobProgress, *, note: str) -> None:
        self.progress.update(task, completed=p.bars_covered, figures=_figures(p), note=note)


_SUMMARY_HEADER = ("SYMBOL", "INTERVAL", "STATUS", "PAGES", "ROWS", "COVERED UNTIL", "NOTE")


def format_summary(summary: BackfillSummary) -> str:
    """The summary as a text table (rendered by rich; one plain line per job without it), then totals."""
    rows = [
        (
            job.symbol,
            job.interval,
            job.status.value,
            str(job.pages),
            f"{job.rows_written:,}",
            iso_utc(job.covered_until) or "-",
            job.error or "",
        )
        for job in summary.jobs
    ]
    try:
        lines = _rich_table(rows)
    except ImportError:
        lines = [f"{r[0]} {r[1]}: {r[2]}, {r[3]} page(s), {r[4]} rows, covered until {r[5]}"
                 + (f": {r[6]}" if r[6] else "") for r in rows]
    counts = ", ".join(f"{summary.count(s)} {s.value}" for s in JobStatus if summary.count(s))
    rate = summary.rows_written / summary.elapsed_seconds if summary.elapsed_seconds > 0 else 0.0
    lines.append(
        f"total: {len(summary.jobs)} job(s) ({counts or 'none'}), {summary.pages} page(s), "
        f"{summary.rows_written:,} rows in {summary.elapsed_seconds:.1f} s ({rate:,.0f} rows/s)"
    )
    return "\n".join(line.rstrip() for line in lines)


def _rich_table(rows: Sequence[Sequence[str]]) -> list[str]:
    """The rows under _SUMMARY_HEADER as plain text lines, laid out by rich (ImportError without it)."""
    import io

    from rich.console import Console
    from rich.table import Table

    table = Table(*_SUMMARY_HEADER, box=None, pad_edge=False, show_edge=False, header_style="")
    for row in rows:
        table.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=250, color_system=None, force_terminal=False).print(table)
    return out.getvalue().splitlines()


def _job_from_spec(spec: str) -> dict[str, str]:
    """SYMBOL:INTERVAL[:SINCE] -> a job object (since may contain ':' itself: 2024-01-01T12:00:00Z)."""
    parts = spec.split(":", 2)
    job = {"symbol": parts[0]}
    if len(parts) > 1:
        job["interval"] = parts[1]
    if len(parts) > 2 and parts[2]:
        job["since"] = parts[2]
    return job


def _read_jobs_file(path: Path) -> list[Any]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InvalidRequest(f"cannot read {path}: {exc.strerror}", param="jobs-file") from None
    except ValueError as exc:
        raise InvalidRequest(f"{path} is not valid JSON: {exc}", param="jobs-file") from None
    if isinstance(document, list):
        return document  # a bare list of jobs is accepted too
    if isinstance(document, Mapping) and isinstance(document.get("jobs"), list):
        return list(document["jobs"])
    raise InvalidRequest(f'{path} must hold {{"jobs": [...]}} or a list of jobs', param="jobs-file")


def main(argv: Sequence[str] | None = None, *, clock: Clock = time.time) -> int:
    """The command line (see --help). Returns the exit status."""
    # Imported here: the Lambda never needs them.
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(
        prog="python -m marketdata.backfill",
        description="Fill the candle cache from the providers for the given jobs, resuming from what is "
        "already covered. Uses DATABASE_URL (or DB_*) and the provider settings from the environment.",
        epilog="SINCE: 2024-01-01, 2024-01-01T12:00:00Z, 2024-01-01T12:00:00+00:00 or Unix seconds; "
        "without it, BACKFILL_DEFAULT_LOOKBACK_DAYS before now. Exit status: 0 when every job is complete, "
        "partial or deferred; 1 when any failed or was invalid; 2 for a usage or configuration error.",
    )
    parser.add_argument(
        "jobs", nargs="*", metavar="SYMBOL:INTERVAL[:SINCE]", help="e.g. BTCUSDT:1m:2024-01-01"
    )
    parser.add_argument("--jobs-file", type=Path, help='a JSON file {"jobs": [...]} as the schedule input')
    parser.add_argument("--max-seconds", type=float, help="stop starting pages after this many seconds")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON instead of a table")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    args = parser.parse_args(argv)
    if args.max_seconds is not None and not args.max_seconds > 0:
        parser.error("--max-seconds must be a positive number")
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # Each job's outcome is on the progress lines and in the summary already.
        logger.setLevel(logging.ERROR)
    try:
        raw_jobs = _read_jobs_file(args.jobs_file) if args.jobs_file else []
        raw_jobs += [_job_from_spec(spec) for spec in args.jobs]
        if not raw_jobs:
            parser.error("give at least one job (SYMBOL:INTERVAL[:SINCE]) or --jobs-file")
        settings = Settings.from_env()
        now = clock()
        jobs = parse_jobs({"jobs": raw_jobs}, now=now, lookback_days=settings.backfill_default_lookback_days)
        service = build_backfill_service(settings, clock=clock)
    except (InvalidRequest, ConfigurationError, DatabaseUnavailable) as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2
    deadline = now + args.max_seconds if args.max_seconds is not None else math.inf
    display = TerminalProgress()
    try:
        summary = run_backfill(jobs, service, clock=clock, deadline=deadline, progress=display)
    except KeyboardInterrupt:
        display.close()
        print("\ninterrupted: every page stored so far is kept; run again to resume", file=sys.stderr)
        return 130
    finally:
        display.close()
        service.close()
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    # `python -m` runs this file as __main__: call the package's own copy of the module so loggers and
    # classes have their real names (marketdata.backfill), as in the Lambda.
    from marketdata.backfill import main as _package_main

    sys.exit(_package_main())
