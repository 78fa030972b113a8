"""Local stand-ins for the two upstream providers, shared by the tests, the local tools and the benchmarks.

`fake_upstream` speaks Binance's and Twelve Data's REST APIs as recorded (docs/providers.md), and
`fake_streams` their WebSocket streams on the same model and clock. They live here, not under tests/,
so that scripts/ (`dev.py serve --offline`, `dev.py backfill --offline`, the build check) and bench/ can
use them without importing the test suite; nothing here is part of the Lambda layer.
"""
