#!/usr/bin/env python3
"""Developer entry point: `python3 scripts/dev.py test`, `serve`, `backfill` and `openapi`.

Needs only Python 3.11+ on the machine. It creates `.venv/` beside the repository, installs the
project with its dev tools into it (again only when pyproject.toml changed), and then:

  test      runs the whole suite (ruff, mypy, then pytest on 2 workers); extra arguments go to pytest
  serve     starts the service on http://127.0.0.1:3000 (embedded Postgres unless DATABASE_URL is set;
            --offline: the fake upstream on port 3001, --upstream-port to change it)
  backfill  fills the cache serve answers from (the same database; --offline: the offline one), e.g.
            python3 scripts/dev.py backfill BTCUSDT:1H:2024-01-01 EUR/USD:1D --max-seconds 600
  openapi   rewrites openapi.json from the code (`--check`: fail when it is stale), in .venv's Python

Uses only the standard library, so it runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".installed"


def _say(msg: str) -> None:
    print(f"[dev] {msg}", flush=True)


def _run(cmd: list[str], **kw) -> int:
    return subprocess.call(cmd, cwd=ROOT, **kw)


def _pip(args: list[str]) -> int:
    """pip, minus the per-package warnings some mirrors' configurations print (they bury real errors)."""
    proc = subprocess.run(
        [str(PY), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    noise = ("WARNING: Location ", "WARNING: Retrying")
    for line in proc.stderr.splitlines():
        if not line.startswith(noise):
            print(line, file=sys.stderr)
    return proc.returncode


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this script runs before the venv exists
        sys.exit(f"Python 3.11+ is required, this is {sys.version.split()[0]}")
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if PY.exists() and STAMP.exists() and STAMP.read_text() == wanted:
        return
    if not PY.exists():
        _say(f"creating {VENV}")
        venv.EnvBuilder(with_pip=True, clear=True).create(VENV)
    _say("installing the project and its dev tools (first run only)")
    if _pip(["--upgrade", "pip"]) != 0 or _pip(["-e", ".[dev]"]) != 0:
        sys.exit("pip install failed (see above)")
    STAMP.write_text(wanted)


def _ensure_debian_package(package: str, paths: tuple[str, ...], needed_by: str) -> bool:
    """Whether `package` is installed (one of `paths` exists or is on PATH), installing it from Debian's
    packages when this runs as root; otherwise says that `needed_by` will fail and say how to install it."""
    if any(shutil.which(path) or os.path.exists(path) for path in paths):
        return False
    if os.geteuid() == 0 and shutil.which("apt-get"):
        _say(f"installing {package} (apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        quiet = {"stdout": subprocess.DEVNULL, "env": env}
        if _run(["apt-get", "update", "-qq"], **quiet) == 0 and _run(
            ["apt-get", "install", "-y", "-qq", package], **quiet
        ) == 0:
            return True
    _say(f"{package} is not installed: {needed_by} will fail and say how to install it")
    return False


def ensure_pgbouncer() -> None:
    """The RDS Proxy stand-in for the pooling tests. Installed from Debian's packages when we can."""
    if _ensure_debian_package("pgbouncer", ("pgbouncer", "/usr/sbin/pgbouncer"), "the PgBouncer tests"):
        # The package starts a system service we do not want; the tests run their own.
        _run(["service", "pgbouncer", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ensure_chromium() -> None:
    """The browser of the chart page test (driven by Playwright; its own browser builds are never
    downloaded). Installed from Debian's packages when we can."""
    _ensure_debian_package("chromium", ("/usr/bin/chromium",), "the chart page browser test")


def cmd_test(args: list[str]) -> int:
    ensure_venv()
    ensure_pgbouncer()
    ensure_chromium()
    _say("ruff")
    if _run([str(PY), "-m", "ruff", "check", "."]) != 0:
        return 1
    _say("mypy")
    if _run([str(PY), "-m", "mypy", "layers/shared/python/marketdata"]) != 0:
        return 1
    _say("pytest")
    workers = [] if any(a.startswith("-n") for a in args) else ["-n", "2"]
    return _run([str(PY), "-m", "pytest", *workers, *args])


#: The local tools: subcommand -> the script it runs with the venv's python.
LOCAL_TOOLS = {"serve": "local_api.py", "backfill": "local_backfill.py"}


def local_tool_argv(command: str, args: list[str]) -> list[str]:
    """The command line `dev.py <command> <args>` runs (the README's commands are tested against it)."""
    return [str(PY), str(ROOT / "scripts" / LOCAL_TOOLS[command]), *args]


def _run_local_tool(command: str, args: list[str]) -> int:
    ensure_venv()
    # Replace this process so Ctrl-C reaches the tool directly and it can stop the embedded Postgres.
    os.chdir(ROOT)
    os.execv(str(PY), local_tool_argv(command, args))
    return 0  # not reached


def cmd_serve(args: list[str]) -> int:
    return _run_local_tool("serve", args)


def cmd_backfill(args: list[str]) -> int:
    return _run_local_tool("backfill", args)


def cmd_openapi(args: list[str]) -> int:
    # scripts/gen_openapi.py imports the functions, so Powertools and pydantic: the venv's, not the system's.
    ensure_venv()
    return _run([str(PY), str(ROOT / "scripts" / "gen_openapi.py"), *args])


def main() -> int:
    commands = {"test": cmd_test, "serve": cmd_serve, "backfill": cmd_backfill, "openapi": cmd_openapi}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
