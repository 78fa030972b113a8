"""Backfills: fill the cache for a list of (symbol, interval, since) jobs within a time and rate budget.

Two callers run the same code:
- the scheduled Lambda (functions/backfill/app.py): EventBridge Scheduler delivers the schedule's Input
  as the event itself, a jobs document such as
  ``{"jobs": [{"symbol": "BTCUSDT", "interval": "1m", "since": "2024-01-01"}]}``;
- developers: ``python -m marketdata.backfill BTCUSDT:1m:2024-01-01 EUR/USD:1H`` (progress bar on stderr).

Each job is one `MarketDataService.fill_gaps(symbol, interval, start=since)` call: it reads coverage,
fetches only what coverage lacks, oldest first, one provider page per transaction (bars and coverage
committed together), up to the newest closed bar. Coverage is therefore the only state a backfill has:
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
        """Time left at the pace of this run so far (None until there is a pace)."""
        if self.covered_now <= 0 or self.elapsed <= 0:
            return None
        return max(0, self.bars_needed - self.bars_covered) * self.elapsed / self.covered_now


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
            live = _new_progress(index, total, job, clock())
            result = _run_job(
                job, service, live, clock=clock, deadline=deadline, progress=progress, sleep=sleep
            )
        results.append(result)
        _log_result(result)
        if progress is not None:
            progress.job_finished(live, result)
    return BackfillSummary(results, elapsed_seconds=max(0.0, clock() - started))


def _new_progress(index: int, total: int, job: PlannedJob, now: float) -> JobProgress:
    needed = count_bars(job.interval, job.since, last_closed_open(job.interval, now))
    return JobProgress(index, total, job, needed, started=now, now=now)


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


def _run_job(
    job: PlannedJob,
    service: MarketDataService,
    live: JobProgress,
    *,
    clock: Clock,
    deadline: float,
    progress: BackfillProgress | None,
    sleep: Sleep,
) -> JobResult:
    attempt_rows = 0  # bars of the pages of the current fill_gaps call (its report is lost if it raises)

    def on_page(page: Page) -> None:
        nonlocal attempt_rows
        live.now = clock()
        live.pages += 1
        live.bars_fetched += len(page.candles)
        attempt_rows += len(page.candles)
        if page.covers_closed_bars:
            live.covered_now += count_bars(job.interval, page.start, page.end)
            live.reached = page.end if live.reached is None else max(live.reached, page.end)
        if progress is not None:
            progress.page_stored(live)

    rows = 0
    idle_waits = 0

    def result(status: JobStatus, covered_until: int | None, error: str | None = None) -> JobResult:
        live.now = clock()
        return JobResult(
            job.symbol,
            job.named,
            status,
            since=job.since,
            pages=live.pages,
            rows_written=rows,
            covered_until=covered_until,
            error=error,
        )

    try:
        live.covered_before = _covered_slots(service, job, live.bars_needed, live.started)
    except DatabaseUnavailable as exc:  # fill_gaps would fail the same way: do not wait for it twice
        return result(JobStatus.FAILED, None, _failure_message(exc, 0))
    if progress is not None:
        progress.job_started(live)
    while True:
        pages_before, attempt_rows = live.pages, 0
        try:
            report = service.fill_gaps(
                job.symbol, job.interval, job.since, None, deadline=deadline, on_page=on_page
            )
        except UpstreamRateLimited as exc:
            rows += attempt_rows
            idle_waits = 0 if live.pages > pages_before else idle_waits + 1
            wait = exc.retry_after
            if wait is not None and idle_waits <= _MAX_IDLE_WAITS and clock() + wait < deadline:
                logger.info(
                    "rate limited; waiting before the next page",
                    extra={
                        "symbol": job.symbol,
                        "interval": job.interval.value,
                        "wait_seconds": round(wait, 1),
                    },
                )
                if progress is not None:
                    progress.waiting(live, wait, exc.message)
                sleep(wait)
                continue
            status = JobStatus.PARTIAL if live.pages else JobStatus.DEFERRED
            covered = _covered_until(service, job, live)
            return result(status, covered, f"rate limited, resumes next run: {exc.message}")
        except (
            MarketDataError
        ) as exc:  # SymbolNotFound, SymbolNotInPlan, Upstream*, DatabaseUnavailable, ConfigurationError...
            rows += attempt_rows
            return result(
                JobStatus.FAILED, _covered_until(service, job, live), _failure_message(exc, live.pages)
            )
        except Exception as exc:  # a bug must not cost the other jobs their run
            rows += attempt_rows
            logger.exception(
                "backfill job crashed", extra={"symbol": job.symbol, "interval": job.interval.value}
            )
            return result(JobStatus.FAILED, live.reached, f"internal error ({type(exc).__name__})")
        rows += report.rows_written
        if report.complete:
            return result(JobStatus.COMPLETE, report.covered_until)
        status = JobStatus.PARTIAL if live.pages else JobStatus.DEFERRED
        if clock() >= deadline:
            why = "stopped at the deadline" if live.pages else "no time left to start a page"
        else:
            # fill_gaps also stops early when another process holds this symbol and interval (single
            # flight) or when the provider has nothing more for the range right now.
            why = "stopped early: another process is filling this range, or the provider had nothing more"
        return result(status, report.covered_until, f"{why}; the next run resumes")


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


class TerminalProgress:
    """A progress bar on a terminal (one line redrawn in place), one plain line per update otherwise
    (CI logs). Standard library only."""

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        tty: bool | None = None,
        width: int = 24,
        redraw_every: float = 0.1,
    ) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.width = width
        self._redraw_every = redraw_every
        self._last_draw = -math.inf

    def _emit(self, text: str, *, final: bool = False, force: bool = False) -> None:
        """On a terminal: redraw the current line (at most every `redraw_every` s unless final/force),
        ending it when final. Elsewhere: one line per call."""
        if self.tty:
            now = time.monotonic()
            if not (final or force) and now - self._last_draw < self._redraw_every:
                return
            self._last_draw = now
            self.stream.write("\r\x1b[K" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def _line(self, p: JobProgress) -> str:
        share = p.bars_covered / p.bars_needed if p.bars_needed else 1.0
        filled = round(share * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        return (
            f"[{p.index}/{p.total_jobs}] {p.job.label} [{bar}] {share * 100:5.1f}% "
            f"{p.bars_covered:,}/{p.bars_needed:,} bars  {p.pages} pages  "
            f"{p.rows_per_second:,.0f} rows/s  ETA {_duration(p.eta_seconds)}"
        )

    def job_started(self, progress: JobProgress) -> None:
        self._emit(
            f"[{progress.index}/{progress.total_jobs}] {progress.job.label} since "
            f"{iso_utc(progress.job.since)}: {progress.bars_needed:,} bars to cover",
            final=True,
        )

    def page_stored(self, progress: JobProgress) -> None:
        self._emit(self._line(progress))

    def waiting(self, progress: JobProgress, seconds: float, reason: str) -> None:
        self._emit(f"{self._line(progress)}  (waiting {seconds:.0f} s: rate limit)", force=True)

    def job_finished(self, progress: JobProgress | None, result: JobResult) -> None:
        if self.tty and progress is not None and progress.pages:
            self._emit(self._line(progress), final=True)  # the last state, which throttling may have skipped
        tail = f": {result.error}" if result.error else ""
        self._emit(f"    {result.symbol} {result.interval}: {result.status.value}{tail}", final=True)


def format_summary(summary: BackfillSummary) -> str:
    """The summary as a plain text table."""
    header = ("SYMBOL", "INTERVAL", "STATUS", "PAGES", "ROWS", "COVERED UNTIL", "NOTE")
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
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(r[:-1], widths, strict=True)) + "  " + r[-1]
        for r in [header, *rows]
    ]
    counts = ", ".join(f"{summary.count(s)} {s.value}" for s in JobStatus if summary.count(s))
    rate = summary.rows_written / summary.elapsed_seconds if summary.elapsed_seconds > 0 else 0.0
    lines.append(
        f"total: {len(summary.jobs)} job(s) ({counts or 'none'}), {summary.pages} page(s), "
        f"{summary.rows_written:,} rows in {summary.elapsed_seconds:.1f} s ({rate:,.0f} rows/s)"
    )
    return "\n".join(line.rstrip() for line in lines)


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
    try:
        summary = run_backfill(jobs, service, clock=clock, deadline=deadline, progress=TerminalProgress())
    except KeyboardInterrupt:
        print("\ninterrupted: every page stored so far is kept; run again to resume", file=sys.stderr)
        return 130
    finally:
        if service.store is not None:
            service.store.close()
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary))
    return 0 if summary.ok else 1


if __name__ == "__main__":
    # `python -m` runs this file as __main__: call the package's own copy of the module so loggers and
    # classes have their real names (marketdata.backfill), as in the Lambda.
    from marketdata.backfill import main as _package_main

    sys.exit(_package_main())
