"""Fixtures shared by the whole suite live in tests/support/; they are registered here."""
