"""Fixtures shared by the whole suite live in tests/support/; they are registered here."""

from tests.support.aws_fixtures import *  # noqa: F403
from tests.support.postgres import *  # noqa: F403
from tests.support.postgres import pytest_collection_finish, pytest_sessionstart  # noqa: F401
from tests.support.upstream_fixtures import *  # noqa: F403

# The two hooks (not fixtures, so not in the star import's __all__) start the run's embedded Postgres
# once, in the xdist controller or a plain run, before any test needs it; workers only attach to it.
