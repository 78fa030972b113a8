"""Fixtures shared by the whole suite live in tests/support/; they are registered here."""
from tests.support.postgres import *  # noqa: F403
from tests.support.upstream_fixtures import *  # noqa: F403
