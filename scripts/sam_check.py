#!/usr/bin/env python3
"""Prove the deployable package: `sam validate --lint`, `sam build`, then run the BUILT functions.

    python3 scripts/sam_check.py [--database-url URL] [--upstream-url URL] [--build-only]

Steps
1. A private virtualenv `.venv-sam/` with aws-sam-cli (created once, re-created when SAM_CLI_REQUIREMENT
   changes). SAM is heavy and pins many packages; kept apart it cannot disturb the project's `.venv`.
2. `sam validate --lint` (cfn-lint); samconfig.toml's parameter_overrides read by SAM's own parser (a
   value with an unquoted space is silently cut there) and matched against the template's parameters;
   `sam build` of template.yaml into `.aws-sam/sam-check/build`
   (not `.aws-sam/build`, so a developer's own build is left alone). No Docker: the functions are plain
   copies of functions/*/ and the layer is built by layers/shared/Makefile, which makes pip fetch the
   manylinux aarch64 wheels for CPython 3.13 (pydantic-core ships them) on any machine. sam needs a real
   `python3.13` for the python3.13 runtime (it checks the version of the one it finds on PATH) and the
   Makefile needs it to write bytecode the runtime will load; this script finds one (PATH, pyenv,
   SAM_CHECK_PYTHON313) and puts its folder first on PATH, or stops and says how to get one.
3. The build output is inspected: every function has its handler, the layer has the marketdata
   package with cpython-313 bytecode, the migrations (same files as migrations/), and only aarch64
   native code (an x86_64 .so would crash on Lambda arm64), declared so by the wheels' tags.
4. Each event in events/ is fed to its function in a FRESH `python3.13 -I -S -B` process whose sys.path
   is the standard library plus [the built function dir, the built layer's python dir] and nothing
   else, as on Lambda (/var/task, /opt/python). Every module the process loaded must come from those
   places or the standard library; the API functions must not load boto3 (cold start). The layer's
   bytecode must be what runs: the process counts every module it compiles from source, and none may
   come from the layer (on Lambda /opt is read-only, so each would be compiled again at every cold
   start), and every marketdata module's shipped .pyc must be one python3.13 uses as it is (its magic
   number, hash-based so a zip's mtimes cannot invalidate it, the hash of the shipped source).

Why an overlay for native code, and only for it
   The layer holds aarch64 binaries, which this (usually x86_64) machine cannot load. Alternatives: a
   second, x86_64 `sam build` would prove a different package than the one deployed; installing the
   requirements for the host would prove nothing about the build output at all. Instead the invocation
   uses a copy of the built layer in which, for each distribution that carries native code, the host's
   extension modules OF THE SAME VERSION are added next to the aarch64 ones (which stay, and which the
   host's import system skips by file name). Before adding them, the host wheel's Python files are
   compared with the built ones and must be identical: the only bytes not taken from the build output
   are the compiled extensions the build itself was shown (step 3) to contain for arm64. So a missing
   module, a missing data file (migrations), a wrong path or an import the layer does not satisfy fails
   here exactly as it would on Lambda. On an aarch64 Linux machine no overlay is made.

Invocations (all in fresh processes; with a database the order matters):
   migrate -> applies every migration (or says up to date), candles (miss or hit) -> candles again (hit),
   bad candles input (400/422, no stack), symbols crypto and forex, every other API Gateway sample event
   in events/ (the UDF datafeed, the chart page: 200, no stack) sent to the function template.yaml routes
   it to, the live function's WebSocket events (connect, subscribe, disconnect), a short broadcaster
   run with nobody to post to (so boto3, which the Lambda runtime provides, is not needed), backfill
   (jobs from events/backfill_schedule.json) -> candles over the backfilled range (hit),
   migrate again (nothing). Candle values are compared with the fake upstream's truth. Without
   --database-url the API runs in bypass mode and the migrate function must refuse with a
   ConfigurationError.

The functions (their routes and own environment) and the parameter names are template.yaml's, read by
scripts/sam_template.py (with PyYAML from the interpreter running this, or else from .venv-sam, which
SAM brings it to).

--upstream-url must be the fake upstream (devtools/fake_upstream.py); without it one is started
in this process. --database-url should name an empty or migrated database the check may write to.
Exit status 0 when everything holds, 1 with a list of what did not, 2 when a tool is missing.
Standard library only, like scripts/dev.py.
"""

from __future__ import annotations

import argparse
import base64
import calendar
import contextlib
import fcntl
import functools
import glob
import gzip
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import venv
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SAM_VENV = ROOT / ".venv-sam"
SAM_CLI_REQUIREMENT = "aws-sam-cli==1.170.0"
WORK = ROOT / ".aws-sam" / "sam-check"  # default --work-dir: build output, invocation layer
HOST_WHEELS = ROOT / ".aws-sam" / "host-wheels"  # host builds of native distributions, kept between runs
TEMPLATE = ROOT / "template.yaml"
EVENTS = ROOT / "events"

LAYER = "SharedLayer"
LAMBDA_LAYER_DIR = "/opt/python"  # where Lambda unpacks the layer's python/ folder
CANDLE_FIELDS = {"time", "open", "high", "low", "close", "volume"}
HISTORY_FIELDS = {"symbol", "interval", "asset_class", "provider", "candles", "next_start"}
ELF_MACHINE = {62: "x86_64", 183: "aarch64"}
DEFAULT_TWELVE_DATA_KEY = "sam-check-key"


@dataclass(frozen=True)
class TemplateFunctions:
    """What this check needs of template.yaml: logical id -> CodeUri, route key -> the logical id serving
    it, logical id -> the function's own environment variables, and the parameter names."""

    code_uris: dict[str, str]
    routes: dict[str, str]
    environments: dict[str, dict[str, Any]]
    parameters: frozenset[str]


@functools.cache
def template_functions() -> TemplateFunctions:
    """template.yaml read by scripts/sam_template.py, its one reader (in SAM's virtualenv when this
    interpreter has no PyYAML)."""
    try:
        sys.path.insert(0, str(ROOT))
        try:
            from scripts import sam_template
        finally:
            sys.path.remove(str(ROOT))
        template = sam_template.load()
        functions = {k: {**asdict(f), "routes": [asdict(r) for r in f.routes]}
                     for k, f in template.functions.items()}  # fmt: skip
        parameters = list(template.parameters)
    except ImportError:  # no PyYAML here: SAM's virtualenv has it
        python = ensure_sam().parent / "python"
        proc = subprocess.run(
            [str(python), str(ROOT / "scripts" / "sam_template.py")], capture_output=True, text=True
        )
        if proc.returncode != 0:
            raise CheckFailed(f"template.yaml cannot be read:\n{proc.stderr[-2000:]}") from None
        document = json.loads(proc.stdout)
        functions, parameters = document["functions"], document["parameters"]
    return TemplateFunctions(
        {k: f["code_uri"] for k, f in functions.items()},
        {f"{r['method']} {r['path']}": k for k, f in functions.items() for r in f["routes"]},
        {k: dict(f["environment"]) for k, f in functions.items()},
        frozenset(parameters),
    )


class ToolMissing(Exception):
    """A prerequisite (python3.13, make, pip) is not available; the message says how to get it."""


class CheckFailed(Exception):
    """A step failed; the message says which and why."""


def say(message: str) -> None:
    print(f"[sam-check] {message}", flush=True)


# ---------------------------------------------------------------- tools


def _python_version(python: str) -> tuple[int, int] | None:
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "PYENV_VERSION": ""},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    parts = out.stdout.split()
    return (int(parts[0]), int(parts[1])) if out.returncode == 0 and len(parts) == 2 else None


def find_python313() -> Path:
    """A real CPython 3.13 executable (not a pyenv shim), with pip."""
    candidates: list[str] = []
    if os.environ.get("SAM_CHECK_PYTHON313"):
        candidates.append(os.environ["SAM_CHECK_PYTHON313"])
    pyenv_root = os.environ.get("PYENV_ROOT") or str(Path.home() / ".pyenv")
    candidates += sorted(
        glob.glob(os.path.join(pyenv_root, "versions", "3.13*", "bin", "python3.13")), reverse=True
    )
    for found in (shutil.which("python3.13"), "/usr/local/bin/python3.13", "/usr/bin/python3.13"):
        if found:
            candidates.append(found)
    for candidate in candidates:
        if not os.path.exists(candidate) or _python_version(candidate) != (3, 13):
            continue
        # Resolve a shim to the interpreter itself, so its folder can go first on PATH.
        real = subprocess.run(
            [candidate, "-c", "import sys; print(sys.executable)"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        python = Path(real or candidate)
        if (
            subprocess.run([python, "-m", "pip", "--version"], capture_output=True, check=False).returncode
            != 0
        ):
            raise ToolMissing(f"{python} has no pip: run `{python} -m ensurepip`")
        return python
    raise ToolMissing(
        "python3.13 not found. `sam build` needs a CPython 3.13 for the python3.13 Lambda runtime (no Docker "
        "here), and the layer's bytecode is compiled with it. Get one with `pyenv install 3.13`, "
        "`apt-get install python3.13` (Debian 13+/Ubuntu 24.04+) or `uv python install 3.13`, or point "
        "SAM_CHECK_PYTHON313 at an existing python3.13."
    )


def ensure_sam() -> Path:
    """The sam executable of .venv-sam, installing aws-sam-cli there first when needed."""
    sam = SAM_VENV / "bin" / "sam"
    stamp = SAM_VENV / ".installed"
    with _locked(ROOT / ".aws-sam" / ".venv-sam.lock"):
        if sam.exists() and stamp.exists() and stamp.read_text() == SAM_CLI_REQUIREMENT:
            return sam
        say(f"installing {SAM_CLI_REQUIREMENT} into {SAM_VENV.name}/ (first run only, about a minute)")
        venv.EnvBuilder(with_pip=True, clear=True).create(SAM_VENV)
        pip = [str(SAM_VENV / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
        for args in (["--upgrade", "pip"], [SAM_CLI_REQUIREMENT]):
            proc = subprocess.run([*pip, *args], capture_output=True, text=True)
            if proc.returncode != 0:
                raise ToolMissing(
                    f"pip install {' '.join(args)} into {SAM_VENV} failed:\n{proc.stderr[-3000:]}"
                )
        stamp.write_text(SAM_CLI_REQUIREMENT)
    return sam


def sam_environment(python313: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(python313.parent), str(SAM_VENV / "bin"), env.get("PATH", "")])
    env.pop("PYENV_VERSION", None)
    env.update(
        {
            "SAM_CLI_TELEMETRY": "0",
            "SAM_CLI_CONTAINER_CONNECTION_TIMEOUT": "1",
            # Never look for credentials on an instance metadata endpoint; validate and build need none.
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_REGION": env.get("AWS_REGION") or "us-east-1",
            "AWS_DEFAULT_REGION": env.get("AWS_DEFAULT_REGION") or "us-east-1",
            "PYTHON": str(python313),  # for layers/shared/Makefile
        }
    )
    return env


def run_sam(sam: Path, args: list[str], env: dict[str, str]) -> str:
    command = [str(sam), *args]
    say("$ sam " + " ".join(args))
    started = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise CheckFailed(f"`sam {' '.join(args)}` failed (exit {proc.returncode}):\n{output.strip()}")
    say(f"  ok in {time.monotonic() - started:.1f} s")
    return output


def sam_version(sam: Path, env: dict[str, str]) -> str:
    return subprocess.run([str(sam), "--version"], env=env, capture_output=True, text=True).stdout.strip()


# ---------------------------------------------------------------- samconfig.toml

# Runs in .venv-sam: SAM's own parser for parameter_overrides, which splits on spaces and quotes.
SAMCONFIG_PARSER = r"""
import json, sys, tomllib
from samcli.cli.types import CfnParameterOverridesType
config = tomllib.load(open(sys.argv[1], "rb"))
parsed = {}
for env, commands in config.items():
    for command, section in (commands.items() if isinstance(commands, dict) else ()):
        params = section.get("parameters") if isinstance(section, dict) else None
        values = (params or {}).get("parameter_overrides")
        if values is not None:
            values = values if isinstance(values, list) else [values]
            parsed[env + "." + command] = CfnParameterOverridesType().convert(values, None, None)
print(json.dumps(parsed))
"""


def check_samconfig(path: Path = ROOT / "samconfig.toml") -> int:
    """Every parameter_overrides entry of samconfig.toml, as SAM itself reads it, fits the template."""
    python = SAM_VENV / "bin" / "python"
    proc = subprocess.run(
        [str(python), "-c", SAMCONFIG_PARSER, str(path)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise CheckFailed(f"samconfig.toml cannot be read by SAM:\n{proc.stderr[-2000:]}")
    known = template_functions().parameters
    problems = []
    parsed = json.loads(proc.stdout)
    for where, overrides in parsed.items():
        for key, value in overrides.items():
            if key not in known:
                problems.append(f"{where}: {key} is not a template parameter")
            if value.count("(") != value.count(")") or value.count("[") != value.count("]"):
                problems.append(f"{where}: {key} was cut at a space ({value!r}): quote the value")
        if "BackfillJobs" in overrides:
            try:
                jobs = json.loads(overrides["BackfillJobs"])["jobs"]
                assert isinstance(jobs, list) and jobs
            except (ValueError, KeyError, TypeError, AssertionError):
                problems.append(
                    f"{where}: BackfillJobs is not a jobs document: {overrides['BackfillJobs']!r}"
                )
        schedule = overrides.get("BackfillSchedule")
        if schedule is not None and not re.fullmatch(r"(rate|cron|at)\(.+\)", schedule):
            problems.append(f"{where}: BackfillSchedule {schedule!r} is not a schedule expression")
    if problems:
        raise CheckFailed("samconfig.toml:\n  - " + "\n  - ".join(problems))
    return len(parsed)


# ---------------------------------------------------------------- build inspection


@dataclass
class Distribution:
    name: str
    version: str
    tags: list[str]
    files: list[str]

    @property
    def native_files(self) -> list[str]:
        return [f for f in self.files if f.endswith(".so") or ".so." in f]


def _dist_field(metadata: str, name: str) -> str:
    match = re.search(rf"^{name}:\s*(.+)$", metadata, re.MULTILINE)
    return match.group(1).strip() if match else ""


def distributions(site: Path) -> list[Distribution]:
    found = []
    for info in sorted(site.glob("*.dist-info")):
        metadata = (info / "METADATA").read_text(encoding="utf-8", errors="replace")
        wheel = (info / "WHEEL").read_text() if (info / "WHEEL").exists() else ""
        tags = [line.split(":", 1)[1].strip() for line in wheel.splitlines() if line.startswith("Tag:")]
        record = (info / "RECORD").read_text() if (info / "RECORD").exists() else ""
        files = [line.split(",", 1)[0] for line in record.splitlines() if line.strip()]
        found.append(
            Distribution(_dist_field(metadata, "Name"), _dist_field(metadata, "Version"), tags, files)
        )
    return found


def elf_machine(path: Path) -> str:
    header = path.read_bytes()[:20]
    if header[:4] != b"\x7fELF":
        return "not-elf"
    return ELF_MACHINE.get(int.from_bytes(header[18:20], "little"), f"machine-{header[18]}")


def inspect_build(build: Path, functions: TemplateFunctions | None = None) -> list[Distribution]:
    """Check the build output's shape; return the layer's distributions that carry native code."""
    problems: list[str] = []
    for logical_id in (functions or template_functions()).code_uris:
        if not (build / logical_id / "app.py").is_file():
            problems.append(f"{logical_id}: app.py missing from the build output")
    site = build / LAYER / "python"
    package = site / "marketdata"
    if not (package / "__init__.py").is_file():
        problems.append("layer: python/marketdata missing")
    else:
        modules = {p.stem for p in package.rglob("*.py")}
        compiled = {p.name.split(".")[0] for p in package.rglob("__pycache__/*.cpython-313.pyc")}
        if missing := sorted(modules - compiled):
            problems.append(f"layer: no cpython-313 bytecode for marketdata modules {missing}")
    if list(site.glob("marketdata*.egg-info")):
        problems.append("layer: an egg-info (editable install leftover) was packaged")
    wanted = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    shipped = sorted(p.name for p in (site / "migrations").glob("*.sql"))
    if not wanted or shipped != wanted:
        problems.append(f"layer: python/migrations has {shipped}, migrations/ has {wanted}")
    native: list[Distribution] = []
    for dist in distributions(site):
        if not dist.native_files and all(t.endswith("-none-any") for t in dist.tags):
            continue
        native.append(dist)
        if not dist.tags or not all("aarch64" in t for t in dist.tags):
            problems.append(f"layer: {dist.name} {dist.version} is not an aarch64 wheel (tags {dist.tags})")
        for rel in dist.native_files:
            machine = elf_machine(site / rel)
            if machine != "aarch64":
                problems.append(f"layer: {rel} is {machine} code; Lambda arm64 cannot load it")
    stray = [
        str(p.relative_to(site))
        for p in site.rglob("*.so")
        if not any(str(p.relative_to(site)) in d.files for d in native)
    ]
    if stray:
        problems.append(f"layer: native files outside any declared wheel: {stray}")
    if problems:
        raise CheckFailed("the build output is incomplete or wrong:\n  - " + "\n  - ".join(problems))
    return native


# ---------------------------------------------------------------- the invocation layer


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def host_is_aarch64_linux() -> bool:
    return sys.platform.startswith("linux") and platform.machine().lower() in ("aarch64", "arm64")


def _fetch_host_build(python313: Path, dist: Distribution, host: Path) -> None:
    if (host / ".complete").exists():
        return
    shutil.rmtree(host, ignore_errors=True)
    say(f"fetching the host build of {dist.name}=={dist.version} (its native code only is used)")
    proc = subprocess.run(
        [str(python313), "-m", "pip", "install", "--disable-pip-version-check", "-q", "--no-deps",
         "--only-binary=:all:", "--no-compile", "--target", str(host), f"{dist.name}=={dist.version}"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        raise ToolMissing(f"pip could not fetch {dist.name}=={dist.version} for this host:\n{proc.stderr}")
    (host / ".complete").write_text("ok")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock file: two checks at once (pytest workers, a developer) share .venv-sam safely."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def invocation_layer(build: Path, native: list[Distribution], python313: Path, work: Path) -> Path:
    """The layer to put on sys.path: the build output itself, or a copy plus host-native extensions."""
    site = build / LAYER / "python"
    if host_is_aarch64_linux() or not native:
        return site
    copy = work / "invoke-layer" / "python"
    shutil.rmtree(copy.parent, ignore_errors=True)
    shutil.copytree(site, copy, symlinks=True)
    for dist in native:
        host = HOST_WHEELS / f"{dist.name}-{dist.version}-{platform.machine()}"
        with _locked(HOST_WHEELS / ".lock"):
            _fetch_host_build(python313, dist, host)
        host_dist = next((d for d in distributions(host) if d.version == dist.version), None)
        if host_dist is None:
            raise CheckFailed(f"host wheel of {dist.name} {dist.version} not found in {host}")
        # Same version means same Python code: prove it, so only compiled extensions differ.
        for rel in host_dist.files:
            if rel.endswith(".py") and not rel.startswith(".."):
                built = copy / rel
                if not built.exists() or _sha256(built) != _sha256(host / rel):
                    raise CheckFailed(
                        f"{dist.name}: {rel} differs between the built layer and the host wheel"
                    )
        for rel in host_dist.native_files:
            (copy / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(host / rel, copy / rel)
        say(f"invocation layer: + host extensions of {dist.name} {dist.version}: {host_dist.native_files}")
    return copy


# ---------------------------------------------------------------- invoking a built function

# Runs inside `python3.13 -I -S -B`: no site-packages, no PYTHONPATH, no current directory on sys.path.
# It starts with the source of scripts/lambda_context.py (standard library only): the one Lambda
# context stand-in, which nothing from the repository could be imported for here.
RUNNER = (Path(__file__).resolve().parent / "lambda_context.py").read_text(encoding="utf-8") + r"""
import json, sys, time
function_dir, layer_dir, event_path, out_path, name, timeout = sys.argv[1:7]
stdlib = [p for p in sys.path if p]
sys.path[:0] = [function_dir, layer_dir]


def LambdaContext():
    return FakeLambdaContext(name, timeout_ms=int(float(timeout) * 1000), aws_request_id="sam-check-" + name)


# Every module compiled from source in this process (no usable bytecode next to it): on Lambda, where
# /opt is read-only, that compilation would happen again on every cold start.
import importlib.machinery
compiled = []
_source_to_code = importlib.machinery.SourceFileLoader.source_to_code


def _counted(self, data, path, *args, **kwargs):
    compiled.append(str(path))
    return _source_to_code(self, data, path, *args, **kwargs)


importlib.machinery.SourceFileLoader.source_to_code = _counted


def stale_bytecode(package_dir):
    # The package's modules whose shipped .pyc this interpreter would not use as it is.
    import _imp
    import importlib.util
    import os
    stale = []
    for folder, _, files in os.walk(package_dir):
        for name in files:
            if not name.endswith(".py"):
                continue
            source = os.path.join(folder, name)
            try:
                with open(importlib.util.cache_from_source(source), "rb") as f:
                    header = f.read(16)
                with open(source, "rb") as f:
                    digest = _imp.source_hash(importlib.util._RAW_MAGIC_NUMBER, f.read())
            except OSError:
                stale.append(source + " (no bytecode)")
                continue
            flags = int.from_bytes(header[4:8], "little")
            if header[:4] != importlib.util.MAGIC_NUMBER:
                stale.append(source + " (bytecode of another Python)")
            elif not flags & 1:
                stale.append(source + " (timestamp-based: a zip's mtimes invalidate it)")
            elif header[8:16] != digest:
                stale.append(source + " (bytecode of another source)")
    return stale


out = {"stage": "import"}
try:
    started = time.perf_counter()
    import app
    out["import_ms"] = (time.perf_counter() - started) * 1000
    out["stage"] = "invoke"
    with open(event_path) as f:
        event = json.load(f)
    out["result"] = app.lambda_handler(event, LambdaContext())
    out["ok"] = True
except BaseException as exc:
    import traceback
    out["ok"] = False
    out["error_type"] = type(exc).__name__
    out["error"] = str(exc)
    out["traceback"] = traceback.format_exc()
finally:
    allowed = (function_dir, layer_dir, *stdlib)
    out["foreign_modules"] = sorted(
        f"{m}: {getattr(mod, '__file__', '')}"
        for m, mod in list(sys.modules.items())
        if getattr(mod, "__file__", None)
        and (not str(mod.__file__).startswith(allowed) or "site-packages" in str(mod.__file__))
    )
    out["boto3_loaded"] = "boto3" in sys.modules or "botocore" in sys.modules
    out["compiled_in_layer"] = sorted(p for p in compiled if p.startswith(layer_dir))
    out["stale_bytecode"] = stale_bytecode(layer_dir + "/marketdata")
    with open(out_path, "w") as f:
        json.dump(out, f, default=str)
"""


@dataclass
class Invocation:
    label: str
    logical_id: str
    ok: bool
    result: Any = None
    error_type: str = ""
    error: str = ""
    stage: str = ""
    import_ms: float | None = None
    foreign_modules: list[str] = field(default_factory=list)
    boto3_loaded: bool = False
    output: str = ""
    #: Layer modules this process compiled from source (no usable .pyc shipped), and marketdata modules
    #: whose shipped .pyc python3.13 would not use (see RUNNER).
    compiled_in_layer: list[str] = field(default_factory=list)
    stale_bytecode: list[str] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.label} ({self.logical_id})"


def invoke(
    python313: Path,
    build: Path,
    layer: Path,
    logical_id: str,
    event: Any,
    env: dict[str, str],
    label: str,
    timeout: float = 60,
) -> Invocation:
    with tempfile.TemporaryDirectory(prefix="sam-check-") as tmp:
        event_path, out_path = Path(tmp) / "event.json", Path(tmp) / "out.json"
        event_path.write_text(json.dumps(event))
        function_dir = build / logical_id
        lambda_env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8",
            "TZ": ":UTC",
            "HOME": tmp,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EXECUTION_ENV": "AWS_Lambda_python3.13",
            "AWS_LAMBDA_FUNCTION_NAME": logical_id,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "LAMBDA_TASK_ROOT": str(function_dir),
            **env,
        }
        proc = subprocess.run(
            [
                str(python313),
                "-I",
                "-S",
                "-B",
                "-c",
                RUNNER,
                str(function_dir),
                str(layer),
                str(event_path),
                str(out_path),
                logical_id,
                str(timeout),
            ],
            env=lambda_env,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
        )
        output = (proc.stdout + proc.stderr)[-4000:]
        if not out_path.exists():
            return Invocation(
                label,
                logical_id,
                False,
                error_type="crash",
                error=f"the interpreter exited {proc.returncode} without a result",
                output=output,
            )
        data = json.loads(out_path.read_text())
    return Invocation(
        label,
        logical_id,
        bool(data.get("ok")),
        data.get("result"),
        data.get("error_type", ""),
        data.get("error", "") + ("\n" + data["traceback"] if data.get("traceback") else ""),
        data.get("stage", ""),
        data.get("import_ms"),
        data.get("foreign_modules", []),
        bool(data.get("boto3_loaded")),
        output,
        data.get("compiled_in_layer", []),
        data.get("stale_bytecode", []),
    )


def load_event(name: str) -> Any:
    return json.loads((EVENTS / name).read_text())


def with_query(event: dict[str, Any], **query: str) -> dict[str, Any]:
    """A copy of an HTTP API v2 event with other query parameters (kept consistent with rawQueryString)."""
    copy = json.loads(json.dumps(event))
    copy["queryStringParameters"] = dict(query)
    copy["rawQueryString"] = "&".join(f"{k}={v}" for k, v in query.items())
    return copy


# ---------------------------------------------------------------- expectations


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: Any


def http_answer(inv: Invocation) -> HttpAnswer:
    """The HTTP answer of an API function: JSON decoded, other content types (the chart page) as text."""
    result = inv.result
    if not isinstance(result, dict) or "statusCode" not in result:
        raise CheckFailed(f"{inv.describe()}: not an API Gateway v2 response: {str(result)[:300]}")
    headers = {str(k).lower(): str(v) for k, v in (result.get("headers") or {}).items()}
    raw = result.get("body") or ""
    data = base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode("utf-8")
    if headers.get("content-encoding") == "gzip":
        data = gzip.decompress(data)
    text = data.decode("utf-8")
    if "Traceback" in text:
        raise CheckFailed(f"{inv.describe()}: the body contains a stack trace: {text[:300]}")
    if not headers.get("content-type", "application/json").startswith("application/json"):
        return HttpAnswer(int(result["statusCode"]), headers, text)
    try:
        body = json.loads(text)
    except ValueError as exc:
        raise CheckFailed(f"{inv.describe()}: the body is not JSON ({exc}): {text[:300]}") from None
    return HttpAnswer(int(result["statusCode"]), headers, body)


def expect(condition: bool, inv: Invocation, message: str) -> None:
    if not condition:
        raise CheckFailed(f"{inv.describe()}: {message}")


def expected_candles(symbol: str, interval: str, start: int, end: int) -> list[dict[str, Any]]:
    sys.path.insert(0, str(ROOT))
    try:
        from devtools.fake_upstream import expected_bars
    finally:
        sys.path.remove(str(ROOT))
    return [dict(bar._asdict()) for bar in expected_bars(symbol, interval, start, end)]


def check_history(inv: Invocation, *, cache: set[str], query: dict[str, str]) -> HttpAnswer:
    answer = http_answer(inv)
    expect(answer.status == 200, inv, f"status {answer.status}, body {str(answer.body)[:300]}")
    expect(
        answer.headers.get("x-cache") in cache,
        inv,
        f"X-Cache {answer.headers.get('x-cache')!r}, wanted {cache}",
    )
    expect("max-age" in answer.headers.get("cache-control", ""), inv, "no Cache-Control max-age")
    body = answer.body
    expect(isinstance(body, dict) and set(body) == HISTORY_FIELDS, inv, f"body fields {sorted(body)}")
    expect(
        body["symbol"] == query["symbol"] and body["interval"] == query["interval"],
        inv,
        f"answered {body['symbol']} {body['interval']}",
    )
    candles = body["candles"]
    expect(all(isinstance(c, dict) and set(c) == CANDLE_FIELDS for c in candles), inv, "candle fields")
    truth = expected_candles(query["symbol"], query["interval"], int(query["start"]), int(query["end"]))
    truth = truth[: int(query.get("limit", "500"))]
    expect(
        candles == truth,
        inv,
        f"candles differ from the fake upstream's truth: got {len(candles)}, wanted {len(truth)}; "
        f"first got {candles[:1]}, wanted {truth[:1]}",
    )
    return answer


def check_import(inv: Invocation) -> None:
    if not inv.ok and inv.stage == "import":
        raise CheckFailed(
            f"{inv.describe()}: the built package cannot import its handler: "
            f"{inv.error_type}: {inv.error}\n{inv.output}"
        )
    expect(
        not inv.foreign_modules, inv, f"modules loaded from outside the build output: {inv.foreign_modules}"
    )
    # The layer's bytecode is what runs: nothing from /opt is compiled at a cold start.
    expect(
        not inv.compiled_in_layer,
        inv,
        f"layer modules compiled from source (no usable .pyc shipped): {inv.compiled_in_layer[:10]}",
    )
    expect(not inv.stale_bytecode, inv, f"marketdata bytecode python3.13 would not use: {inv.stale_bytecode}")


def check_ok(inv: Invocation) -> None:
    check_import(inv)
    expect(inv.ok, inv, f"raised {inv.error_type}: {inv.error}\n{inv.output}")


# ---------------------------------------------------------------- the run


@dataclass
class Options:
    database_url: str | None
    upstream_url: str
    twelve_data_api_key: str


def function_env(options: Options, layer: Path) -> dict[str, dict[str, str]]:
    common = {
        "BINANCE_REST_URL": options.upstream_url,
        "TWELVE_DATA_REST_URL": options.upstream_url,
        "TWELVE_DATA_API_KEY": options.twelve_data_api_key,
        "POWERTOOLS_SERVICE_NAME": "marketdata",
        "POWERTOOLS_METRICS_NAMESPACE": "MarketData",
        "LOG_LEVEL": "INFO",
        "HTTP_READ_TIMEOUT": "5",
        # The fake's bars are final the instant they close; a grace would only shift the compared range.
        "BINANCE_CLOSE_GRACE_SECONDS": "0",
    }
    if options.database_url:
        common["DATABASE_URL"] = options.database_url
    environments = template_functions().environments
    # The broadcaster runs until just before the next minute: here a few ticks (the invocation's context
    # gives it 60 s, the stop margin keeps all but ~3 of them), posting nowhere (no subscriber is left).
    special = {
        "BroadcasterFunction": {
            "LIVE_MANAGEMENT_ENDPOINT": "http://127.0.0.1:9",
            # Nobody is subscribed, so the live clients open nothing (a client connects on its first
            # follow of a pair; tests/live checks it); should a row linger, they still reach nothing real.
            "BINANCE_WS_URL": "ws://127.0.0.1:9",
            "TWELVE_DATA_WS_URL": "ws://127.0.0.1:9",
            "LIVE_STOP_MARGIN_SECONDS": "57",
        }
    }
    return {
        logical_id: {**common, **_in_layer(variables, layer), **special.get(logical_id, {})}
        for logical_id, variables in environments.items()
    }


def _in_layer(variables: dict[str, Any], layer: Path) -> dict[str, str]:
    """A function's own variables that name a place in the layer (MIGRATIONS_DIR: /opt/python/...), as
    the template sets them, pointed at this run's copy of the layer instead of /opt/python."""
    return {
        name: str(layer) + value[len(LAMBDA_LAYER_DIR) :]
        for name, value in variables.items()
        if isinstance(value, str) and (value == LAMBDA_LAYER_DIR or value.startswith(LAMBDA_LAYER_DIR + "/"))
    }


def _summary(inv: Invocation) -> str:
    """A few words on what came back, for the progress lines."""
    result = inv.result
    if not inv.ok:
        return f"refused: {inv.error_type}"
    if isinstance(result, dict) and "statusCode" in result:
        headers = {str(k).lower(): v for k, v in (result.get("headers") or {}).items()}
        cache = f", X-Cache {headers['x-cache']}" if "x-cache" in headers else ""
        return f"HTTP {result['statusCode']}{cache}"
    if isinstance(result, dict) and "applied" in result:
        return f"applied {result['applied'] or 'nothing'}"
    if isinstance(result, dict) and "totals" in result:
        return f"totals {result['totals']}"
    return str(result)[:80]


Check = Callable[[Invocation], None]


@dataclass
class _Run:
    """The invocations of one check run: each step's Invocation, and the failures so far (a failing step
    is reported and the run goes on, so one run lists everything that is wrong)."""

    python313: Path
    build: Path
    layer: Path
    envs: dict[str, dict[str, str]]
    has_db: bool
    done: list[Invocation] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def step(self, label: str, logical_id: str, event: Any, check: Check, timeout: float = 60) -> None:
        inv = invoke(
            self.python313, self.build, self.layer, logical_id, event, self.envs[logical_id], label, timeout
        )
        self.done.append(inv)
        try:
            check(inv)
        except CheckFailed as exc:
            message = str(exc)
            if inv.output and inv.output[-200:] not in message:
                # What the function logged (Powertools JSON lines, stack traces): the why of a 5xx.
                tail = inv.output[-2500:].strip().replace("\n", "\n    | ")
                message += f"\n  the function's output (last lines):\n    | {tail}"
            self.failures.append(message)
            say(f"FAIL {label}")
            return
        ms = f"import {inv.import_ms:4.0f} ms" if inv.import_ms is not None else "no import"
        say(f"ok   {label:<24} {ms}  {_summary(inv)}")

    def needs_database(self, check: Check) -> Check:
        """`check` of a function that works on the database (migrate, backfill) once it succeeded; without
        a database the function must refuse with a ConfigurationError instead: there is nothing to write."""

        def checked(inv: Invocation) -> None:
            if not self.has_db:
                check_refuses_without_database(inv)
                return
            check_ok(inv)
            check(inv)

        return checked


def check_api(inv: Invocation) -> None:
    """An API function answered, without loading boto3 on the request path."""
    check_ok(inv)
    expect(not inv.boto3_loaded, inv, "boto3/botocore were imported on the request path (cold start)")


def check_refuses_without_database(inv: Invocation) -> None:
    check_import(inv)
    got = inv.error_type or "success"
    expect(
        not inv.ok and inv.error_type == "ConfigurationError", inv, f"wanted ConfigurationError, got {got}"
    )


def check_nothing_to_migrate(inv: Invocation) -> None:
    check_ok(inv)
    expect(inv.result.get("applied") == [], inv, f"a second run applied {inv.result.get('applied')}")


def check_history_answer(cache: set[str], query: dict[str, str]) -> Check:
    def check(inv: Invocation) -> None:
        check_api(inv)
        check_history(inv, cache=cache, query=query)

    return check


# --- the steps, in the order they run (with a database the order matters) ---


def _migrate_step(run: _Run) -> None:
    """First, so that the API below runs against the schema."""
    versions = sorted((p.name.split("_")[0] for p in (ROOT / "migrations").glob("*.sql")), key=int)

    def migrate_first(inv: Invocation) -> None:
        result = inv.result
        expect(isinstance(result, dict) and {"applied", "latest"} <= set(result), inv, f"returned {result}")
        expect(set(result["applied"]) <= set(versions), inv, f"applied {result['applied']}, files {versions}")
        expect(
            result["latest"] == versions[-1], inv, f"latest {result['latest']}, files end at {versions[-1]}"
        )

    event = load_event("migrate.json")
    run.step("migrate", "MigrateFunction", event, run.needs_database(migrate_first), timeout=120)


def _candles_steps(run: _Run) -> None:
    candles = load_event("candles.json")
    query = candles["queryStringParameters"]
    first_cache = {"miss", "hit", "partial"} if run.has_db else {"bypass"}

    def bad_input(inv: Invocation) -> None:
        check_api(inv)
        answer = http_answer(inv)
        expect(answer.status in (400, 422), inv, f"status {answer.status}, wanted 400/422")
        message = answer.body.get("message") if isinstance(answer.body, dict) else None
        expect(isinstance(message, str) and bool(message), inv, f"no message in {answer.body}")
        expect("no-store" in answer.headers.get("cache-control", ""), inv, "an error answer may be cached")

    run.step("candles", "HistoricalFunction", candles, check_history_answer(first_cache, query))
    if run.has_db:
        run.step("candles (again)", "HistoricalFunction", candles, check_history_answer({"hit"}, query))
    run.step("candles bad input", "HistoricalFunction", load_event("candles_bad_input.json"), bad_input)


def _symbols_steps(run: _Run) -> None:
    def symbols(asset_class: str, must_have: str) -> Check:
        def check(inv: Invocation) -> None:
            check_api(inv)
            answer = http_answer(inv)
            expect(answer.status == 200, inv, f"status {answer.status}, body {str(answer.body)[:300]}")
            body = answer.body
            expect(body.get("asset_class") == asset_class, inv, f"asset_class {body.get('asset_class')}")
            names = body.get("symbols")
            expect(
                isinstance(names, list) and names == sorted(names) and must_have in names,
                inv,
                f"symbols not a sorted list containing {must_have}: {str(names)[:200]}",
            )

        return check

    for asset_class, must_have in (("crypto", "BTCUSDT"), ("forex", "EUR/USD")):
        event = load_event(f"symbols_{asset_class}.json")
        run.step(f"symbols {asset_class}", "SymbolsFunction", event, symbols(asset_class, must_have))


#: The sample events the steps above check in their own ways.
_CHECKED_EVENTS = {"candles.json", "candles_bad_input.json", "symbols_crypto.json", "symbols_forex.json"}


def _sample_event_steps(run: _Run) -> None:
    """Every other API sample event (the UDF datafeed, the chart page), to the function its route is on."""

    def sample_answer(inv: Invocation) -> None:
        check_api(inv)
        answer = http_answer(inv)
        expect(answer.status == 200, inv, f"status {answer.status}, body {str(answer.body)[:300]}")
        if isinstance(answer.body, dict) and "s" in answer.body:
            expect(answer.body["s"] == "ok", inv, f"UDF answer {str(answer.body)[:300]}")

    routes = template_functions().routes
    for path in sorted(EVENTS.glob("*.json")):
        event = json.loads(path.read_text())
        if path.name in _CHECKED_EVENTS or not (isinstance(event, dict) and event.get("version") == "2.0"):
            continue
        run.step(path.stem.replace("_", " "), routes[event["routeKey"]], event, sample_answer)



def _live_steps(run: _Run) -> None:
    """The live API: a WebSocket connection's life, then a broadcaster run (nobody left to post to)."""

    def live(wanted: str | None) -> Check:
        def check(inv: Invocation) -> None:
            check_api(inv)
            result = inv.result if isinstance(inv.result, dict) else {}
            status = result.get("statusCode")
            if not run.has_db:  # nowhere to keep subscriptions: refused with a message, never a crash
                expect(status == 503, inv, f"statusCode {status}, wanted 503 without a database")
                return
            expect(status == 200, inv, f"statusCode {status}, body {str(result.get('body'))[:300]}")
            if wanted is not None:
                body = json.loads(result.get("body") or "{}")
                expect(body.get("type") == wanted, inv, f"reply {str(body)[:300]}, wanted type {wanted}")

        return check

    run.step("live connect", "LiveFunction", load_event("live_connect.json"), live(None))
    run.step("live subscribe", "LiveFunction", load_event("live_subscribe.json"), live("subscribed"))
    run.step("live disconnect", "LiveFunction", load_event("live_disconnect.json"), live(None))

    def broadcast(inv: Invocation) -> None:
        result = inv.result if isinstance(inv.result, dict) else {}
        expect(result.get("ticks", 0) >= 1 and result.get("posts") == 0, inv, f"returned {result}")

    event = load_event("broadcaster_schedule.json")
    run.step("broadcaster", "BroadcasterFunction", event, run.needs_database(broadcast), timeout=60)


def _backfill_steps(run: _Run) -> None:
    """The backfill (the scheduler's Input is the event itself), then the cache over what it filled."""
    jobs = load_event("backfill_schedule.json")

    def backfill(inv: Invocation) -> None:
        result = inv.result
        summaries = result.get("jobs") if isinstance(result, dict) else None
        if not isinstance(summaries, list):
            raise CheckFailed(f"{inv.describe()}: no per-job summary in {str(result)[:300]}")
        expect(len(summaries) == len(jobs["jobs"]), inv, f"{len(summaries)} job summaries")
        bad = [j for j in summaries if str(j.get("status")) in ("failed", "invalid")]
        expect(not bad, inv, f"jobs failed: {bad}")

    run.step("backfill", "BackfillFunction", jobs, run.needs_database(backfill), timeout=120)
    if not run.has_db:
        return
    # The first job starts on a date: the cache now answers its first three weeks by itself.
    job = jobs["jobs"][0]
    since = calendar.timegm(time.strptime(job["since"], "%Y-%m-%d"))
    backfilled = {
        "symbol": job["symbol"],
        "interval": job["interval"],
        "start": str(since),
        "end": str(since + 20 * 86400),
        "limit": "21",
    }
    run.step(
        "candles after backfill",
        "HistoricalFunction",
        with_query(load_event("candles.json"), **backfilled),
        check_history_answer({"hit"}, backfilled),
    )


def run_invocations(python313: Path, build: Path, layer: Path, options: Options) -> list[Invocation]:
    """Every step (see the module docstring); CheckFailed listing each failed one."""
    has_db = options.database_url is not None
    run = _Run(python313, build, layer, function_env(options, layer), has_db)
    _migrate_step(run)
    _candles_steps(run)
    _symbols_steps(run)
    _sample_event_steps(run)
    _live_steps(run)
    _backfill_steps(run)
    if has_db:
        event = load_event("migrate.json")
        run.step("migrate again", "MigrateFunction", event, check_nothing_to_migrate, timeout=120)
    if run.failures:
        raise CheckFailed("invocations of the built functions failed:\n\n" + "\n\n".join(run.failures))
    return run.done


def start_fake_upstream() -> Any:
    sys.path.insert(0, str(ROOT))
    try:
        from devtools.fake_upstream import FakeUpstream
    finally:
        sys.path.remove(str(ROOT))
    return FakeUpstream().start()  # accepts any non-empty Twelve Data key


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--database-url", help="Postgres the built functions use (default: none, bypass mode)"
    )
    parser.add_argument("--upstream-url", help="the fake upstream's URL (default: start one here)")
    parser.add_argument(
        "--twelve-data-api-key", default=DEFAULT_TWELVE_DATA_KEY, help="key the fake upstream accepts"
    )
    parser.add_argument("--build-only", action="store_true", help="validate and build, do not invoke")
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=WORK,
        help=f"build output and scratch (default {WORK.relative_to(ROOT)})",
    )
    args = parser.parse_args(argv)
    build_dir = args.work_dir.resolve() / "build"

    fake = None
    try:
        python313 = find_python313()
        if not shutil.which("make"):
            raise ToolMissing(
                "make not found: the layer is built by layers/shared/Makefile (apt-get install make)"
            )
        sam = ensure_sam()
        env = sam_environment(python313)
        say(f"{sam_version(sam, env)}; python3.13 = {python313}")
        run_sam(sam, ["validate", "--lint", "--template-file", str(TEMPLATE)], env)
        say(f"samconfig.toml: parameter_overrides of {check_samconfig()} environments fit the template")
        shutil.rmtree(build_dir, ignore_errors=True)
        run_sam(
            sam, ["build", "--template-file", str(TEMPLATE), "--build-dir", str(build_dir), "--parallel"], env
        )
        native = inspect_build(build_dir)
        say(
            "build output holds every function, the package, its bytecode, the migrations; native code "
            f"is aarch64 only ({', '.join(f'{d.name} {d.version}' for d in native) or 'none'})"
        )
        if args.build_only:
            return 0
        layer = invocation_layer(build_dir, native, python313, args.work_dir.resolve())
        upstream = args.upstream_url
        if not upstream:
            fake = start_fake_upstream()
            upstream = fake.url
        options = Options(args.database_url, upstream.rstrip("/"), args.twelve_data_api_key)
        database = "yes" if args.database_url else "none (bypass mode)"
        say(f"invoking the built functions in fresh python3.13 -I -S processes; database: {database}")
        invocations = run_invocations(python313, build_dir, layer, options)
        say(f"all {len(invocations)} invocations passed")
        return 0
    except ToolMissing as exc:
        print(f"[sam-check] MISSING TOOL: {exc}", file=sys.stderr, flush=True)
        return 2
    except CheckFailed as exc:
        print(f"[sam-check] FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        if fake is not None:
            fake.stop()


if __name__ == "__main__":
    sys.exit(main())
