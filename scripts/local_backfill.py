#!/usr/bin/env python3
"""`python3 scripts/dev.py backfill`: the backfill CLI (`python -m marketdata.backfill`) on serve's database.

    python scripts/local_backfill.py [--offline] [--pgdata DIR] SYMBOL:INTERVAL[:SINCE] ... [backfill options]

The database is the one `dev.py serve` uses (scripts/local_env.py): DATABASE_URL when set, else the
embedded Postgres in .local/pgdata, started if it is not running (and stopped again afterwards unless a
`serve` still uses it). --offline fills the offline cache (.local/pgdata-offline, what `serve --offline`
answers from) from a fake upstream started in this process: its bars are a pure function of symbol,
interval and time, so they are the same bars `serve --offline`'s fake would send. Every other argument
goes to the backfill CLI (see `--help` there).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # scripts.local_env, when run as a script
    sys.path.insert(0, str(ROOT))

from scripts import local_env  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    # No -h of its own: --help shows these options, then the backfill CLI's.
    parser = argparse.ArgumentParser(
        prog="python3 scripts/dev.py backfill",
        add_help=False,
        description="Backfill the local cache that `dev.py serve` answers from.",
        epilog="Other arguments go to python -m marketdata.backfill (jobs, --max-seconds, --json, ...).",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="fill the offline cache (what `serve --offline` uses) from a fake upstream (no network)",
    )
    parser.add_argument(
        "--pgdata",
        type=Path,
        default=None,
        help="data directory of the embedded Postgres (default .local/pgdata, or .local/pgdata-offline)",
    )
    args, rest = parser.parse_known_args(argv)
    if {"-h", "--help"} & set(rest):
        parser.print_help()
        print()
        from marketdata.backfill import main as backfill

        return backfill(["--help"])
    with contextlib.ExitStack() as cleanup:
        try:
            database = local_env.open_local_database(cleanup, offline=args.offline, pgdata=args.pgdata)
            if args.offline:
                upstream = local_env.start_offline_upstream(cleanup)
                local_env.say(f"offline: Binance and Twelve Data are the fake upstream at {upstream.url}")
        except local_env.LocalSetupError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        local_env.say(database.describe())
        from marketdata.backfill import main as backfill

        return backfill(rest)


if __name__ == "__main__":
    sys.exit(main())
