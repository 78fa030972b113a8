"""The jobs document: since forms, per-job validation, the top-level shape."""

from __future__ import annotations

import calendar

import pytest

from marketdata.backfill import InvalidJob, PlannedJob, parse_jobs, parse_since
from marketdata.errors import InvalidRequest
from marketdata.intervals import Interval

JAN1 = calendar.timegm((2024, 1, 1, 0, 0, 0))
NOW = calendar.timegm((2024, 5, 15, 10, 37, 20))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2024-01-01", JAN1),
        ("2024-01-01T12:00:00Z", JAN1 + 12 * 3600),
        ("2024-01-01T12:00:00+00:00", JAN1 + 12 * 3600),
        ("2024-01-01T12:00:00+02:00", JAN1 + 10 * 3600),
        ("2024-01-01T12:00:00-05:30", JAN1 + 17 * 3600 + 1800),
        ("2024-01-01T12:00:00", JAN1 + 12 * 3600),  # naive = UTC
        ("2024-01-01 12:00", JAN1 + 12 * 3600),
        ("2024-01-01T12:00:00.900Z", JAN1 + 12 * 3600),  # fractions floor to the second
        (" 2024-01-01 ", JAN1),
        (JAN1, JAN1),
        (str(JAN1), JAN1),
        (float(JAN1), JAN1),
        (0, 0),
    ],
)
def test_since_forms(value: object, expected: int) -> None:
    assert parse_since(value) == expected


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("yesterday", "is not a date"),
        ("2024-13-01", "is not a date"),
        ("2024-02-30", "is not a date"),
        ("", "is not a date"),
        (True, "boolean"),
        (JAN1 * 1000, "looks like milliseconds"),
        (str(JAN1 * 1000), "looks like milliseconds"),
        (-5, "between 1970-01-01 and 3000-01-01"),
        (1.5, "whole Unix seconds"),
        (float("nan"), "whole Unix seconds"),
        ([2024], "not list"),
        ("9999-12-31T23:59:59-14:00", "between 1970-01-01 and 3000-01-01"),
        ("0001-01-01T00:00:00+14:00", "between 1970-01-01 and 3000-01-01"),
        ("1" * 25, "looks like milliseconds"),
        ("2024-01-01T12:00:00+25:00", "is not a date"),
        ("\uff11\uff17\uff10\uff14", "is not a date"),  # full-width digits are not Unix seconds
    ],
)
def test_bad_since_says_what_is_accepted(value: object, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_since(value)


def test_jobs_are_validated_one_by_one() -> None:
    document = {
        "jobs": [
            {"symbol": "btcusdt", "interval": "1m", "since": "2024-01-01"},
            {"symbol": "EUR/USD", "interval": "1H"},
            {"symbol": "ETHUSDT", "interval": "1h", "since": "2024-01-01"},
            {"symbol": "ETH'; DROP TABLE ohlcv_cache;--", "interval": "1m"},
            {"symbol": "BTCUSDT", "interval": "1D", "since": "2099-01-01"},
            {"symbol": "BTCUSDT", "interval": "1D", "from": "2024-01-01"},
            {"interval": "1D"},
            {"symbol": "BTCUSDT", "interval": "1W", "since": "soon"},
            "BTCUSDT:1m",
            {"symbol": "SOLUSDT", "interval": "1M", "since": JAN1},
        ]
    }
    planned = parse_jobs(document, now=NOW, lookback_days=30)
    assert len(planned) == 10
    assert planned[0] == PlannedJob("BTCUSDT", Interval.M1, JAN1)
    assert planned[1] == PlannedJob("EUR/USD", Interval.H1, NOW - 30 * 86400, since_given=False)
    assert planned[9] == PlannedJob("SOLUSDT", Interval.MO1, JAN1)
    invalid = {i: p for i, p in enumerate(planned) if isinstance(p, InvalidJob)}
    assert sorted(invalid) == [2, 3, 4, 5, 6, 7, 8]
    assert "did you mean '1H'" in invalid[2].error and invalid[2].interval == "1h"
    assert "invalid symbol" in invalid[3].error
    assert "in the future" in invalid[4].error
    assert "unknown field 'from'" in invalid[5].error
    assert "symbol is required" in invalid[6].error and invalid[6].symbol == "?"
    assert "'soon' is not a date" in invalid[7].error
    assert "expected an object" in invalid[8].error
    assert all(err.error.startswith(f"job {i + 1}:") for i, err in invalid.items())


def test_lookback_comes_from_the_setting() -> None:
    [planned] = parse_jobs({"jobs": [{"symbol": "BTCUSDT", "interval": "1D"}]}, now=NOW, lookback_days=7)
    assert isinstance(planned, PlannedJob)
    assert planned.since == NOW - 7 * 86400 and not planned.since_given


@pytest.mark.parametrize(
    "event",
    [None, [], "jobs", {}, {"job": []}, {"jobs": "BTCUSDT"}, {"jobs": {"symbol": "BTCUSDT"}}],
)
def test_an_event_without_a_jobs_list_is_rejected_clearly(event: object) -> None:
    with pytest.raises(InvalidRequest, match="jobs") as info:
        parse_jobs(event, now=NOW, lookback_days=30)
    assert info.value.param == "jobs"


def test_empty_jobs_list_is_valid() -> None:
    assert parse_jobs({"jobs": []}, now=NOW, lookback_days=30) == []

