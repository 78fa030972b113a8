"""Fixtures shared by the cache tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.cache.service_helpers import FrozenClock, connect


@pytest.fixture
def raw_conn(database_url: str) -> Iterator[Any]:
    """A plain pg8000 connection to this test's database, for looking at the tables directly."""
    conn = connect(database_url)
    yield conn
    conn.close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()
