"""What the live client tests share: an event collector that waits for what a test expects."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from marketdata.intervals import Interval
from marketdata.providers.streams import BarUpdate, LiveEvent, LiveStream, StreamStatus

#: How long a test waits for an expected event before failing (a bound, not a measurement).
WAIT_SECONDS = 10.0


@contextlib.contextmanager
def package_logs(caplog: pytest.LogCaptureFixture, level: int = logging.DEBUG) -> Iterator[None]:
    """Capture the marketdata package's records at `level` (and everyone else's): marketdata.http may
    have given the package logger its own handler, without propagation, in an earlier test of this
    process, so caplog's root handler alone would miss them."""
    package = logging.getLogger("marketdata")
    package.addHandler(caplog.handler)
    try:
        with caplog.at_level(level), caplog.at_level(level, logger="marketdata"):
            yield
    finally:
        package.removeHandler(caplog.handler)


class Collector:
    """Drains a LiveStream and keeps everything it produced, in order."""

    def __init__(self, stream: LiveStream) -> None:
        self.stream = stream
        self.events: list[LiveEvent] = []
        self._cursor = 0  # wait_for looks from here: just past the event it matched last

    def drain(self, seconds: float = 0.3) -> list[LiveEvent]:
        """Whatever arrives within `seconds` (the new events only)."""
        start = len(self.events)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.events.extend(self.stream.events(min(left, 0.1)))
        return self.events[start:]

    def wait_for(self, predicate: Callable[[LiveEvent], bool], what: str) -> LiveEvent:
        """The first event after the one the previous wait_for matched that matches `predicate`,
        waiting up to WAIT_SECONDS for it."""
        start = checked = self._cursor
        deadline = time.monotonic() + WAIT_SECONDS
        while True:
            for index in range(checked, len(self.events)):
                if predicate(self.events[index]):
                    self._cursor = index + 1
                    return self.events[index]
            checked = len(self.events)
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {what} within {WAIT_SECONDS}s; got {self.events[start:][-10:]}")
            self.events.extend(self.stream.events(min(left, 0.1)))

    def until(self, condition: Callable[[], bool], what: str) -> None:
        """Keep draining until `condition()` holds, up to WAIT_SECONDS."""
        deadline = time.monotonic() + WAIT_SECONDS
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} within {WAIT_SECONDS}s")
            self.events.extend(self.stream.events(0.05))

    def wait_status(self, status: str) -> StreamStatus:
        event = self.wait_for(lambda e: isinstance(e, StreamStatus) and e.status == status, f"{status!r}")
        assert isinstance(event, StreamStatus)
        return event

    def wait_bar(
        self, symbol: str, interval: Interval, *, closed: bool | None = None, time_: int | None = None
    ) -> BarUpdate:
        def match(e: LiveEvent) -> bool:
            return (
                isinstance(e, BarUpdate)
                and e.symbol == symbol
                and e.interval is interval
                and (closed is None or e.is_closed is closed)
                and (time_ is None or e.candle.time == time_)
            )

        event = self.wait_for(
            match,
            f"{'closed' if closed else 'forming' if closed is False else ''} "
            f"{symbol} {interval.value} bar{f' at {time_}' if time_ else ''}",
        )
        assert isinstance(event, BarUpdate)
        return event

    def bars(self, symbol: str | None = None, interval: Interval | None = None) -> list[BarUpdate]:
        return [
            e
            for e in self.events
            if isinstance(e, BarUpdate)
            and (symbol is None or e.symbol == symbol)
            and (interval is None or e.interval is interval)
        ]

    def statuses(self) -> list[StreamStatus]:
        return [e for e in self.events if isinstance(e, StreamStatus)]
