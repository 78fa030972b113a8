"""run_backfill against real Postgres and the fake upstream: exact fills, idempotence, deadlines, failures,
rate budgets."""

from __future__ import annotations

import math

import pytest

from devtools.fake_upstream import FakeUpstream
from marketdata.backfill import InvalidJob, JobProgress, JobResult, JobStatus, run_backfill
from marketdata.config import Settings
from marketdata.intervals import Interval, add_bars, first_open_at_or_after, last_closed_open, next_open
from marketdata.service import MarketDataService
from marketdata.store import CandleStore
from tests.backfill.helpers import (
    KLINES,
    NOW,
    TIME_SERIES,
    Wiring,
    backfill_settings,
    job,
    span,
    stored,
    truth,
    wire,
)

M1 = Interval.M1


def bars_back(interval: str, n: int) -> int:
    """The open time that makes a job from it exactly n closed bars long at NOW."""
    iv = Interval(interval)
    return add_bars(iv, last_closed_open(iv, NOW), -(n - 1))


@pytest.fixture
def settings(fake_upstream: FakeUpstream, database_url: str) -> Settings:
    return backfill_settings(fake_upstream, database_url)


@pytest.fixture
def wiring(fake_upstream: FakeUpstream, store: CandleStore, settings: Settings) -> Wiring:
    fake_upstream.now = NOW
    return wire(fake_upstream, store, settings)


@pytest.fixture
def sequential(fake_upstream: FakeUpstream, store: CandleStore, settings: Settings) -> Wiring:
    """One page in flight at a time (FILL_PARALLEL_PAGES=1), for what happens right after a page."""
    fake_upstream.now = NOW
    return wire(fake_upstream, store, settings.model_copy(update={"fill_parallel_pages": 1}))


def run(wiring: Wiring, jobs, *, deadline: float = math.inf, progress=None):
    return run_backfill(
        jobs, wiring.service, clock=wiring.clock, deadline=deadline, progress=progress, sleep=wiring.sleep
    )


class Recorder:
    """A progress reporter that keeps what it was told (and can act on a page, like a deadline passing)."""

    def __init__(self, on_page=None) -> None:
        self.started: list[tuple[str, int]] = []
        self.pages: list[tuple[int, int]] = []  # (pages, bars covered)
        self.waits: list[float] = []
        self.finished: list[JobResult] = []
        self._on_page = on_page

    def job_started(self, progress: JobProgress) -> None:
        self.started.append((progress.job.label, progress.bars_needed))

    def page_stored(self, progress: JobProgress) -> None:
        self.pages.append((progress.pages, progress.bars_covered))
        if self._on_page is not None:
            self._on_page(progress)

    def waiting(self, progress: JobProgress, seconds: float, reason: str) -> None:
        self.waits.append(seconds)

    def job_finished(self, progress: JobProgress | None, result: JobResult) -> None:
        self.finished.append(result)


def test_a_job_fills_exactly_the_missing_range(wiring: Wiring, fake_upstream: FakeUpstream, store) -> None:
    since = bars_back("1m", 2500)
    lo, hi = span("1m", since, NOW)
    # Part of the range is cached already: the newest 1000 bars.
    newer = add_bars(M1, hi, -999)
    first = run(wiring, [job("BTCUSDT", "1m", newer)])
    assert first.jobs[0].status is JobStatus.COMPLETE and first.jobs[0].rows_written == 1000
    assert fake_upstream.count(KLINES) == 1
    fake_upstream.reset()
    fake_upstream.now = NOW

    recorder = Recorder()
    summary = run(wiring, [job("BTCUSDT", "1m", since)], progress=recorder)

    [result] = summary.jobs
    assert result.status is JobStatus.COMPLETE and result.error is None
    assert result.rows_written == 1500
    assert result.pages == 2 == fake_upstream.count(KLINES)  # 1500 missing bars, 1000 per page
    # Only the missing part was asked for, oldest first, in whole pages from where it starts.
    asked = [int(r.query["startTime"]) for r in fake_upstream.requests]
    assert asked == [lo * 1000, add_bars(M1, lo, 1000) * 1000]
    assert result.covered_until == hi and result.since == since == lo
    # The cache now holds exactly the truth for the whole range, and not the open bar.
    assert stored(store, "BTCUSDT", "1m", 0, NOW + 3600) == truth(fake_upstream, "BTCUSDT", "1m", lo, hi)
    assert store.read_coverage("BTCUSDT", M1, lo, hi) == [(lo, hi)]
    assert not stored(store, "BTCUSDT", "1m", next_open(M1, hi), NOW + 3600)
    # Progress: bars needed counted from since, then one report per page, ending at all bars covered.
    assert recorder.started == [("BTCUSDT 1m", 2500)]
    assert recorder.pages == [(1, 2000), (2, 2500)]  # the cached 1000 count from the start
    assert summary.totals() == {
        "jobs": 1,
        "complete": 1,
        "partial": 0,
        "deferred": 0,
        "failed": 0,
        "invalid": 0,
        "pages": 2,
        "rows_written": 1500,
    }


def test_a_second_run_makes_no_provider_call(wiring: Wiring, fake_upstream: FakeUpstream, store) -> None:
    jobs = [job("BTCUSDT", "1H", NOW - 40 * 86400), job("EUR/USD", "1H", NOW - 40 * 86400)]
    first = run(wiring, jobs)
    assert [j.status for j in first.jobs] == [JobStatus.COMPLETE, JobStatus.COMPLETE]
    calls = fake_upstream.count()
    assert calls == 2  # 960 crypto bars: one page of 1000; 960 forex slots: one page of 5000
    rows_before = stored(store, "EUR/USD", "1H", 0, NOW)

    again = run(wiring, jobs)

    assert fake_upstream.count() == calls
    assert [(j.status, j.pages, j.rows_written) for j in again.jobs] == [(JobStatus.COMPLETE, 0, 0)] * 2
    assert [j.covered_until for j in again.jobs] == [j.covered_until for j in first.jobs]
    assert stored(store, "EUR/USD", "1H", 0, NOW) == rows_before
    lo, hi = span("1H", NOW - 40 * 86400, NOW)
    assert rows_before == truth(fake_upstream, "EUR/USD", "1H", lo, hi)  # weekends are simply absent


def test_a_deadline_stops_cleanly_and_the_next_run_resumes(
    sequential: Wiring, fake_upstream: FakeUpstream, store
) -> None:
    wiring = sequential
    since = bars_back("1m", 4500)
    lo, hi = span("1m", since, NOW)
    deadline = NOW + 0.5

    def pass_deadline_after_two_pages(progress: JobProgress) -> None:
        if progress.pages == 2:
            fake_upstream.advance(1)  # a second later: past the deadline, still the same closed bars

    recorder = Recorder(pass_deadline_after_two_pages)
    jobs = [job("BTCUSDT", "1m", since), job("ETHUSDT", "1D", NOW - 100 * 86400)]
    stopped = run(wiring, jobs, deadline=deadline, progress=recorder)

    first, second = stopped.jobs
    assert first.status is JobStatus.PARTIAL and first.pages == 2 and first.rows_written == 2000
    page2_end = add_bars(M1, lo, 1999)
    assert first.covered_until == page2_end
    assert "deadline" in first.error
    assert second.status is JobStatus.DEFERRED and second.pages == 0 and "not started" in second.error
    assert fake_upstream.count(KLINES) == 2
    assert all(r.query["symbol"] == "BTCUSDT" for r in fake_upstream.requests)
    # What was stored is true and covered; nothing past it is claimed.
    assert store.read_coverage("BTCUSDT", M1, lo, hi) == [(lo, page2_end)]
    assert stored(store, "BTCUSDT", "1m", 0, NOW) == truth(fake_upstream, "BTCUSDT", "1m", lo, page2_end)
    assert stopped.ok  # partial and deferred jobs are not failures

    fake_upstream.reset()
    fake_upstream.now = NOW + 1
    resumed = run(wiring, jobs)

    assert [j.status for j in resumed.jobs] == [JobStatus.COMPLETE, JobStatus.COMPLETE]
    btc = [r for r in fake_upstream.requests if r.query["symbol"] == "BTCUSDT"]
    assert len(btc) == 3 and resumed.jobs[0].pages == 3  # 2500 bars left: no page fetched twice
    assert int(btc[0].query["startTime"]) == next_open(M1, page2_end) * 1000
    assert resumed.jobs[0].rows_written == 2500
    assert stored(store, "BTCUSDT", "1m", 0, NOW) == truth(fake_upstream, "BTCUSDT", "1m", lo, hi)
    assert store.read_coverage("BTCUSDT", M1, lo, hi) == [(lo, hi)]


def test_a_deadline_passing_mid_round_stores_the_pages_in_flight_and_sends_no_more(
    fake_upstream: FakeUpstream, store, settings: Settings
) -> None:
    fake_upstream.now = NOW
    wiring = wire(fake_upstream, store, settings.model_copy(update={"fill_parallel_pages": 2}))
    since = bars_back("1m", 6000)
    lo, hi = span("1m", since, NOW)

    def pass_deadline_after_two_pages(progress: JobProgress) -> None:
        if progress.pages == 2:
            fake_upstream.advance(1)

    summary = run(wiring, [job("BTCUSDT", "1m", since)], deadline=NOW + 0.5,
                  progress=Recorder(pass_deadline_after_two_pages))
    [btc] = summary.jobs
    # Page 1 alone, then pages 2 and 3 together: page 3 was in flight when the deadline passed, so it
    # is stored too; nothing was sent after.
    assert btc.status is JobStatus.PARTIAL and btc.pages == 3 and btc.rows_written == 3000
    assert fake_upstream.count(KLINES) == 3
    assert store.read_coverage("BTCUSDT", M1, lo, hi) == [(lo, add_bars(M1, lo, 2999))]
    assert btc.covered_until == add_bars(M1, lo, 2999)


def test_a_deadline_already_passed_starts_nothing(wiring: Wiring, fake_upstream: FakeUpstream) -> None:
    summary = run(
        wiring, [job("BTCUSDT", "1H", NOW - 86400), job("EUR/USD", "1D", NOW - 86400 * 9)], deadline=NOW
    )
    assert [j.status for j in summary.jobs] == [JobStatus.DEFERRED, JobStatus.DEFERRED]
    assert fake_upstream.count() == 0


def test_one_failing_job_does_not_stop_the_others(wiring: Wiring, fake_upstream: FakeUpstream, store) -> None:
    since = NOW - 10 * 86400
    jobs = [
        job("NOPEUSDT", "1H", since),
        InvalidJob("ETHUSDT", "1h", "job 2: unsupported interval '1h'"),
        job("ETHUSDT", "1H", since),
        job("XYZ/ABC", "1H", since),
        job("EUR/USD", "4H", since),
    ]
    summary = run(wiring, jobs)

    statuses = [j.status for j in summary.jobs]
    assert statuses == [
        JobStatus.FAILED,
        JobStatus.INVALID,
        JobStatus.COMPLETE,
        JobStatus.FAILED,
        JobStatus.COMPLETE,
    ]
    assert "unknown symbol 'NOPEUSDT'" in summary.jobs[0].error
    assert summary.jobs[1].error == "job 2: unsupported interval '1h'"
    assert "XYZ/ABC" in summary.jobs[3].error
    assert not summary.ok
    assert summary.count(JobStatus.FAILED, JobStatus.INVALID) == 3
    lo, hi = span("1H", since, NOW)
    assert stored(store, "ETHUSDT", "1H", 0, NOW) == truth(fake_upstream, "ETHUSDT", "1H", lo, hi)
    # Forex 4H is built from hours: the job fills the hours (and says so), nothing is stored as 4H.
    assert summary.jobs[4].interval == "4H"
    assert stored(store, "EUR/USD", "4H", 0, NOW) == []
    hours = truth(fake_upstream, "EUR/USD", "1H", *span("1H", since, NOW))
    assert stored(store, "EUR/USD", "1H", 0, NOW) == hours


def test_a_plan_gated_pair_fails_its_job_with_the_reason_and_the_others_run(
    wiring: Wiring, fake_upstream: FakeUpstream, store
) -> None:
    # A served pair answering Twelve Data's "available starting with the Grow or Venture plan" 404 body.
    fake_upstream.plan_gated_symbols = {"GBP/NZD"}
    since = NOW - 3 * 86400
    summary = run(wiring, [job("GBP/NZD", "1H", since), job("EUR/USD", "1H", since)])

    assert [j.status for j in summary.jobs] == [JobStatus.FAILED, JobStatus.COMPLETE]
    error = summary.jobs[0].error or ""
    assert "SymbolNotInPlan" in error and "higher Twelve Data plan" in error and "Grow or Venture" in error
    assert summary.jobs[0].rows_written == 0 and summary.jobs[0].covered_until is None
    assert stored(store, "GBP/NZD", "1H", 0, NOW) == [] and store.read_coverage("GBP/NZD", "1H", 0, NOW) == []
    assert fake_upstream.count(TIME_SERIES) == 2  # one refused request for GBP/NZD, not retried
    eur_usd = truth(fake_upstream, "EUR/USD", "1H", *span("1H", since, NOW))
    assert stored(store, "EUR/USD", "1H", 0, NOW) == eur_usd
    assert not summary.ok


def test_a_provider_failure_mid_job_keeps_the_pages_stored_before_it(
    sequential: Wiring, fake_upstream: FakeUpstream, store
) -> None:
    wiring = sequential
    since = bars_back("1m", 3000)
    lo, hi = span("1m", since, NOW)
    fail_after_one_page = Recorder(lambda p: fake_upstream.fail_next(10, 500, KLINES))
    summary = run(
        wiring,
        [job("BTCUSDT", "1m", since), job("EUR/USD", "1D", NOW - 30 * 86400)],
        progress=fail_after_one_page,
    )

    btc, eur = summary.jobs
    assert btc.status is JobStatus.FAILED and btc.pages == 1 and btc.rows_written == 1000
    assert "UpstreamUnavailable" in btc.error and "1 page(s) stored before the failure are kept" in btc.error
    assert eur.status is JobStatus.COMPLETE
    page1_end = add_bars(M1, lo, 999)
    assert store.read_coverage("BTCUSDT", M1, lo, hi) == [(lo, page1_end)]
    assert stored(store, "BTCUSDT", "1m", 0, NOW) == truth(fake_upstream, "BTCUSDT", "1m", lo, page1_end)


def test_a_database_outage_fails_each_job_without_crashing(fake_upstream: FakeUpstream) -> None:
    # Nothing listens on port 1: every job fails with DatabaseUnavailable, none escapes.
    settings = backfill_settings(fake_upstream, "postgresql://nobody@127.0.0.1:1/none", DB_CONNECT_TIMEOUT=1)
    fake_upstream.now = NOW
    wiring = wire(fake_upstream, CandleStore(settings), settings)
    summary = run(wiring, [job("BTCUSDT", "1H", NOW - 86400), job("ETHUSDT", "1H", NOW - 86400)])
    assert [j.status for j in summary.jobs] == [JobStatus.FAILED, JobStatus.FAILED]
    assert all("DatabaseUnavailable" in j.error for j in summary.jobs)
    assert fake_upstream.count() == 0


def test_an_unexpected_bug_in_one_job_is_contained(wiring: Wiring, fake_upstream: FakeUpstream) -> None:
    class Exploding(MarketDataService):
        def fill_gaps(self, symbol, *args, **kwargs):
            if symbol == "ETHUSDT":
                raise ZeroDivisionError("bug")
            return super().fill_gaps(symbol, *args, **kwargs)

    service = Exploding(
        wiring.service.store, wiring.service.providers, wiring.service.settings, clock=wiring.clock
    )
    summary = run_backfill(
        [job("ETHUSDT", "1D", NOW - 9 * 86400), job("BTCUSDT", "1D", NOW - 9 * 86400)],
        service,
        clock=wiring.clock,
    )
    assert [j.status for j in summary.jobs] == [JobStatus.FAILED, JobStatus.COMPLETE]
    assert summary.jobs[0].error == "internal error (ZeroDivisionError)"


# --- rate budgets --------------------------------------------------------------------------------------


def _forex_wiring(fake_upstream: FakeUpstream, store, settings, credits: int) -> Wiring:
    fake_upstream.now = NOW
    # The fake enforces the same per-minute credit limit as the plan: exceeding it would show as a refused
    # request, so a clean run proves the shared budget kept under it.
    fake_upstream.twelve_data_credits_per_minute = credits
    return wire(fake_upstream, store, settings, credits_per_minute=credits)


def test_twelve_data_pacing_waits_for_the_next_credits(fake_upstream: FakeUpstream, store, settings) -> None:
    wiring = _forex_wiring(fake_upstream, store, settings, credits=2)
    since = NOW - 17 * 86400  # about 24,500 one-minute slots: five Twelve Data pages
    summary = run(wiring, [job("EUR/USD", "1m", since)])

    [result] = summary.jobs
    assert result.status is JobStatus.COMPLETE
    pages = fake_upstream.count(TIME_SERIES)
    assert result.pages == pages == 5
    # Two pages per minute: wait a minute after pages 2 and 4, never sleeping for real.
    # Credits are counted per UTC minute: the first wait ends at the next minute (NOW is 20 s into one).
    assert wiring.sleeps == [pytest.approx(40.0), pytest.approx(60.0)]
    assert not any("run out of API credits" in str(r) for r in fake_upstream.requests)
    lo, hi = span("1m", since, fake_upstream.now)  # two minutes later: two more closed bars, also fetched
    assert stored(store, "EUR/USD", "1m", 0, fake_upstream.now) == truth(
        fake_upstream, "EUR/USD", "1m", lo, hi
    )
    assert result.covered_until == hi


def test_a_rate_wait_past_the_deadline_defers_and_other_providers_continue(
    fake_upstream: FakeUpstream, store, settings
) -> None:
    wiring = _forex_wiring(fake_upstream, store, settings, credits=2)
    since = NOW - 17 * 86400
    recorder = Recorder()
    jobs = [job("EUR/USD", "1m", since), job("GBP/USD", "1H", since), job("BTCUSDT", "1H", since)]
    summary = run(wiring, jobs, deadline=NOW + 30, progress=recorder)

    eur, gbp, btc = summary.jobs
    assert eur.status is JobStatus.PARTIAL and eur.pages == 2
    assert "rate limited" in eur.error and "TWELVE_DATA_CREDITS_PER_MINUTE" in eur.error
    assert gbp.status is JobStatus.DEFERRED and gbp.pages == 0 and "rate limited" in gbp.error
    assert btc.status is JobStatus.COMPLETE
    assert wiring.sleeps == [] and recorder.waits == []
    assert fake_upstream.count(TIME_SERIES) == 2  # the refused requests were never sent
    assert summary.ok
    # The stored part is valid coverage: a later run continues after it.
    lo, _ = span("1m", since, NOW)
    covered = store.read_coverage("EUR/USD", M1, lo, NOW)
    assert len(covered) == 1 and covered[0][0] <= lo and covered[0][1] == eur.covered_until


def test_an_upstream_rate_limit_that_fits_is_waited_out(
    wiring: Wiring, fake_upstream: FakeUpstream, store
) -> None:
    # Binance answers 429 with Retry-After 5 s: longer than the client's own retry budget, so it surfaces
    # as UpstreamRateLimited(retry_after=5); the backfill waits (on the fake clock) and carries on.
    since = bars_back("1m", 1500)
    fake_upstream.fail_next(1, 429, KLINES, retry_after=5)
    summary = run(wiring, [job("BTCUSDT", "1m", since)], deadline=NOW + 600)

    [result] = summary.jobs
    assert result.status is JobStatus.COMPLETE and result.pages == 2
    assert 5 in [round(s) for s in wiring.sleeps]
    lo, hi = span("1m", since, fake_upstream.now)
    assert stored(store, "BTCUSDT", "1m", 0, fake_upstream.now) == truth(
        fake_upstream, "BTCUSDT", "1m", lo, hi
    )


def test_an_upstream_rate_limit_longer_than_the_time_left_defers(
    wiring: Wiring, fake_upstream: FakeUpstream
) -> None:
    fake_upstream.fail_next(1, 429, KLINES, retry_after=50)
    summary = run(wiring, [job("BTCUSDT", "1H", NOW - 86400)], deadline=NOW + 20)
    [result] = summary.jobs
    assert result.status is JobStatus.DEFERRED and "rate limit" in result.error.lower()
    assert wiring.sleeps == [] or max(wiring.sleeps) < 50


def test_first_open_alignment_for_mid_bar_since(wiring: Wiring, fake_upstream: FakeUpstream, store) -> None:
    since = NOW - 5 * 86400 - 1234  # inside a 1H bar: the backfill starts at the next bar, like the API
    summary = run(wiring, [job("BTCUSDT", "1H", since)])
    first = first_open_at_or_after(Interval.H1, since)
    assert summary.jobs[0].status is JobStatus.COMPLETE
    assert stored(store, "BTCUSDT", "1H", 0, NOW)[0].time == first


def test_the_backfill_service_counts_twelve_data_credits_with_the_setting(
    fake_upstream: FakeUpstream, database_url: str
) -> None:
    from marketdata.backfill import build_backfill_service

    fake_upstream.now = NOW
    # Two credits a minute, one of them kept for API requests: the backfill gets one.
    settings = backfill_settings(
        fake_upstream,
        database_url,
        TWELVE_DATA_CREDITS_PER_MINUTE=2,
        TWELVE_DATA_RESERVED_CREDITS_PER_MINUTE=1,
    )
    service = build_backfill_service(settings, clock=fake_upstream.clock)
    try:
        jobs = [job("EUR/USD", "1D", NOW - 30 * 86400), job("GBP/USD", "1D", NOW - 30 * 86400)]
        jobs.append(job("BTCUSDT", "1D", NOW - 30 * 86400))
        summary = run_backfill(jobs, service, clock=fake_upstream.clock, deadline=NOW + 30)
    finally:
        service.close()
    assert [j.status for j in summary.jobs] == [JobStatus.COMPLETE, JobStatus.DEFERRED, JobStatus.COMPLETE]
    assert "TWELVE_DATA_CREDITS_PER_MINUTE" in summary.jobs[1].error
    assert fake_upstream.count(TIME_SERIES) == 1 and fake_upstream.count(KLINES) == 1


def test_another_filler_holding_the_range_defers_the_job(
    fake_upstream: FakeUpstream, database_url: str
) -> None:
    # Another process (here: another connection) holds the single-flight lock of BTCUSDT 1H longer than the
    # backfill waits: the job stops without fetching, says why, and the next job runs.
    settings = backfill_settings(fake_upstream, database_url, SINGLE_FLIGHT_WAIT_SECONDS=0.2)
    fake_upstream.now = NOW
    own, other = CandleStore(settings), CandleStore(settings)
    try:
        wiring = wire(fake_upstream, own, settings)
        jobs = [job("BTCUSDT", "1H", NOW - 5 * 86400), job("ETHUSDT", "1H", NOW - 5 * 86400)]
        with other.fill_transaction("BTCUSDT", Interval.H1, wait_seconds=1):
            summary = run(wiring, jobs)
    finally:
        own.close()
        other.close()
    btc, eth = summary.jobs
    assert btc.status is JobStatus.DEFERRED and btc.pages == 0
    assert "another process is filling this range" in btc.error
    assert eth.status is JobStatus.COMPLETE
    assert [r.query["symbol"] for r in fake_upstream.requests] == ["ETHUSDT"]


def test_failed_job_reports_the_coverage_it_left(
    sequential: Wiring, fake_upstream: FakeUpstream, store
) -> None:
    wiring = sequential
    since = bars_back("1m", 2500)
    lo, hi = span("1m", since, NOW)
    fail_after_two_pages = Recorder(lambda p: p.pages == 2 and fake_upstream.fail_next(10, 503, KLINES))
    summary = run(wiring, [job("BTCUSDT", "1m", since)], progress=fail_after_two_pages)
    [btc] = summary.jobs
    assert btc.status is JobStatus.FAILED and btc.pages == 2
    assert btc.covered_until == add_bars(M1, lo, 1999) == store.read_coverage("BTCUSDT", M1, lo, hi)[0][1]
