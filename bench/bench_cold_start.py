#!/usr/bin/env python3
"""Cold start figure: the time to import each Lambda handler module, over a bare interpreter.

    .venv/bin/python bench/bench_cold_start.py [--runs 15] [--target-ms 350] [--python PATH]

For each handler (every function of template.yaml: functions/historical, symbols, udf, chart, backfill,
migrate) a FRESH interpreter is started `--runs` times with only the handler's folder added to sys.path
and runs `import app`; a bare interpreter (`pass`) and the naive stack (a handler written the obvious
way: the Powertools resolver, Logger and Metrics, pydantic, httpx, pg8000 and boto3 imported at module
level) are timed the same way, in the same rounds (each round runs every command once, in turn).
Printed per handler, as medians:

  CPU-bare   user + system CPU of the whole process minus the bare interpreter's: what a cold start
             adds on top of the runtime's own start. The verdict uses this figure, because wall time
             on a shared machine mostly measures the neighbours.
  wall-bare  the same in wall time (equal to CPU-bare on an idle machine).
  import     CPU and wall time measured inside the process, around `import app` only.
  vs naive   CPU-bare over the naive stack's CPU-bare.

A reference row, `pydantic+1`, times importing pydantic and building one model (what any handler that
validates with pydantic pays at least; the naive stack builds no model).

Targets: each HTTP handler at most `--target-ratio` (0.5) of the naive stack; the backfill under
`--target-ms` (350 ms on this machine). When one misses it,
`python -X importtime` attributes the time: its heaviest imports (cumulative) are printed; `--detail`
prints them for every handler.

When `scripts/sam_check.py` has built the package (.aws-sam/sam-check/), the same is measured for the
BUILT functions under python3.13 -I -S with the layer on sys.path, as on Lambda (bytecode shipped in
the layer, nothing else importable; the naive stack also gets a boto3, installed once with pip into
.aws-sam/bench-boto3/, as Lambda's runtime has its own).

No assertion here (machines are noisy): figures and a verdict for a human. Warm-up runs are discarded
so the first run's bytecode compilation is not counted.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from scripts import sam_template  # noqa: E402

_TEMPLATE = sam_template.load()
#: Every function of template.yaml: folder name -> (source folder, logical id).
HANDLERS = {f.name: (f.code_uri, f.logical_id) for f in _TEMPLATE.functions.values()}
#: The request path (every HTTP function) and the backfill; the migration is not on one.
TARGETED = (*(f.name for f in _TEMPLATE.http_functions), "backfill")
BUILT = ROOT / ".aws-sam" / "sam-check"
#: The HTTP handlers: their target is a share of the naive stack's import.
HTTP = tuple(f.name for f in _TEMPLATE.http_functions)
BARE, NAIVE = "bare", "naive"
#: The baseline: what a handler written the obvious way imports at module level.
NAIVE_DESCRIPTION = "Powertools resolver, Logger, Metrics, pydantic, httpx, pg8000, boto3"
NAIVE_CODE = (
    "import sys, time\n"
    "sys.path[:0] = {paths!r}\n"
    "t, c = time.perf_counter(), time.process_time()\n"
    "from aws_lambda_powertools import Logger, Metrics\n"
    "from aws_lambda_powertools.event_handler import APIGatewayHttpResolver\n"
    "import pydantic, httpx, pg8000.native, boto3\n"
    "print('IMPORT_MS', (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)\n"
)
#: A reference, not a target: importing pydantic and building ONE model. Every handler validates with
#: pydantic models, and the first model built imports pydantic's schema machinery (about as much again as
#: `import pydantic`); the naive stack builds none. This row shows that floor in the same rounds.
PYDANTIC = "pydantic+1"
PYDANTIC_CODE = (
    "import sys, time\n"
    "sys.path[:0] = {paths!r}\n"
    "t, c = time.perf_counter(), time.process_time()\n"
    "from pydantic import BaseModel\n"
    "class Query(BaseModel):\n"
    "    limit: int = 500\n"
    "print('IMPORT_MS', (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)\n"
)
#: boto3 for the built package's naive baseline (Lambda's runtime brings its own; the layer has none).
BENCH_BOTO3 = ROOT / ".aws-sam" / "bench-boto3"

IMPORT_CODE = (
    "import sys, time\n"
    "sys.path[:0] = {paths!r}\n"
    "t, c = time.perf_counter(), time.process_time()\n"
    "import app\n"
    "print('IMPORT_MS', (time.perf_counter() - t) * 1000, (time.process_time() - c) * 1000)\n"
)


@dataclass(frozen=True)
class Timing:
    wall_ms: float  # medians over the runs
    cpu_ms: float  # user + system CPU of the whole process
    import_wall_ms: float | None = None  # measured inside the process, around `import app`
    import_cpu_ms: float | None = None


def _env() -> dict[str, str]:
    # What the functions see on Lambda, minus anything that would make them reach out at import.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PYTHON"))}
    env.update({"POWERTOOLS_SERVICE_NAME": "marketdata", "POWERTOOLS_METRICS_NAMESPACE": "MarketData"})
    env["PYDANTIC_DISABLE_PLUGINS"] = "__all__"  # as template.yaml's Globals set it
    return env


def time_process(command: list[str], runs: int, warmup: int = 2) -> Timing:
    """Medians over `runs` fresh processes (after `warmup` discarded ones)."""
    return time_interleaved({"only": command}, runs, warmup)["only"]


def time_interleaved(commands: dict[str, list[str]], runs: int, warmup: int = 2) -> dict[str, Timing]:
    """Medians over `runs` rounds, each round running every command once in turn (after `warmup`
    discarded rounds), so a busy neighbour slows every figure of a round alike and ratios hold."""
    samples: dict[str, list[tuple[float, float, float | None, float | None]]] = {k: [] for k in commands}
    for i in range(warmup + runs):
        for name, command in commands.items():
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.perf_counter()
            proc = subprocess.run(command, capture_output=True, text=True, env=_env())
            wall = (time.perf_counter() - started) * 1000
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            if proc.returncode != 0:
                raise SystemExit(f"{' '.join(command[:3])} ... failed:\n{proc.stderr[-2000:]}")
            if i < warmup:
                continue
            cpu = ((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)) * 1000
            match = re.search(r"IMPORT_MS ([0-9.]+) ([0-9.]+)", proc.stdout)
            inner = (float(match.group(1)), float(match.group(2))) if match else (None, None)
            samples[name].append((wall, cpu, *inner))
    median = statistics.median
    out = {}
    for name, rows in samples.items():
        import_walls = [r[2] for r in rows if r[2] is not None]
        import_cpus = [r[3] for r in rows if r[3] is not None]
        out[name] = Timing(
            median(r[0] for r in rows),
            median(r[1] for r in rows),
            median(import_walls) if import_walls else None,
            median(import_cpus) if import_cpus else None,
        )
    return out


def heaviest_imports(python: list[str], paths: list[str], top: int = 12) -> list[tuple[int, int, str]]:
    """(cumulative us, self us, module) of the heaviest imports under `import app`, by -X importtime."""
    code = f"import sys\nsys.path[:0] = {paths!r}\nimport app\n"
    proc = subprocess.run(
        [*python, "-X", "importtime", "-c", code], capture_output=True, text=True, env=_env()
    )
    rows = []
    for line in proc.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|( *)(\S+)", line)
        if match:
            self_us, cumulative, indent, name = int(match[1]), int(match[2]), len(match[3]), match[4]
            # Direct imports of app and of its direct imports: the level a person can act on.
            if indent <= 3:
                rows.append((cumulative, self_us, ("  " * ((indent - 1) // 2)) + name))
    return sorted(rows, reverse=True)[:top]


def report(
    label: str,
    python: list[str],
    path_sets: dict[str, list[str]],
    args: argparse.Namespace,
    naive_paths: list[str] | None = None,
) -> bool:
    commands = {BARE: [*python, "-c", "pass"]}
    if naive_paths is not None:
        commands[NAIVE] = [*python, "-c", NAIVE_CODE.format(paths=naive_paths)]
        commands[PYDANTIC] = [*python, "-c", PYDANTIC_CODE.format(paths=naive_paths)]
    for name, paths in path_sets.items():
        commands[name] = [*python, "-c", IMPORT_CODE.format(paths=paths)]
    timings = time_interleaved(commands, args.runs)
    bare = timings.pop(BARE)
    naive = timings.pop(NAIVE, None)
    floor = timings.pop(PYDANTIC, None)
    naive_cpu = naive.cpu_ms - bare.cpu_ms if naive is not None else None
    print(f"\n{label}")
    print(
        f"  bare interpreter: {bare.wall_ms:.1f} ms wall, {bare.cpu_ms:.1f} ms CPU (medians of {args.runs}, "
        "rounds interleaved)"
    )
    print(
        f"  {'handler':<11} {'CPU-bare':>9} {'wall-bare':>10} {'import':>9} {'import':>9} {'vs':>6}   "
        f"verdict: HTTP handlers <= {args.target_ratio:.2f}x naive, backfill < {args.target_ms:.0f} ms CPU"
    )
    print(f"  {'':<11} {'':>9} {'':>10} {'CPU':>9} {'wall':>9} {'naive':>6}")
    if naive is not None and naive_cpu is not None:
        imports = f"{_ms(naive.import_cpu_ms)} {_ms(naive.import_wall_ms)}"
        print(f"  {NAIVE:<11} {naive_cpu:6.1f} ms {naive.wall_ms - bare.wall_ms:7.1f} ms {imports}  1.00x"
              "   (baseline: " + NAIVE_DESCRIPTION + ")")  # fmt: skip
    if floor is not None and naive_cpu:
        floor_cpu = floor.cpu_ms - bare.cpu_ms
        imports = f"{_ms(floor.import_cpu_ms)} {_ms(floor.import_wall_ms)}"
        print(f"  {PYDANTIC:<11} {floor_cpu:6.1f} ms {floor.wall_ms - bare.wall_ms:7.1f} ms {imports} "
              f"{floor_cpu / naive_cpu:5.2f}x   (reference: pydantic and one model)")  # fmt: skip
    all_ok = True
    for name, t in timings.items():
        paths = path_sets[name]
        cpu_over, wall_over = t.cpu_ms - bare.cpu_ms, t.wall_ms - bare.wall_ms
        targeted = name in TARGETED
        ratio = cpu_over / naive_cpu if naive_cpu else None
        share_target = name in HTTP and ratio is not None
        ok = ratio <= args.target_ratio if share_target and ratio is not None else cpu_over < args.target_ms
        verdict = ("ok" if ok else "MISSES TARGET") if targeted else "(not on a request path)"
        all_ok = all_ok and (ok or not targeted)
        imports = f"{_ms(t.import_cpu_ms)} {_ms(t.import_wall_ms)}"
        shown = f"{ratio:5.2f}x" if ratio is not None else "     -"
        print(f"  {name:<11} {cpu_over:6.1f} ms {wall_over:7.1f} ms {imports} {shown}   {verdict}")
        if args.detail or (targeted and not ok):
            print(f"    heaviest imports of {name} (python -X importtime; cumulative, self):")
            for cumulative, self_us, module in heaviest_imports(python, paths):
                print(f"      {cumulative / 1000:7.1f} ms {self_us / 1000:6.1f} ms  {module}")
    return all_ok


def _shown(python: str) -> str:
    """The interpreter as the README can print it: relative to the repository when inside it (the
    project venv), else its name (no local machine paths in committed output)."""
    path = Path(python)
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _ms(value: float | None) -> str:
    return f"{value:6.1f} ms" if value is not None else "       -"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--target-ms", type=float, default=350.0, help="the backfill's target (CPU ms)")
    parser.add_argument(
        "--target-ratio", type=float, default=0.5, help="HTTP handlers' target: a share of naive"
    )
    parser.add_argument("--python", default=sys.executable, help="interpreter with the project installed")
    parser.add_argument("--detail", action="store_true", help="import breakdown for every handler")
    args = parser.parse_args()

    sources = {name: [str(ROOT / folder)] for name, (folder, _) in HANDLERS.items()}
    ok = report(f"source tree, {_shown(args.python)}", [args.python], sources, args, naive_paths=[])

    layer = BUILT / "invoke-layer" / "python"
    if not layer.is_dir():
        layer = BUILT / "build" / "SharedLayer" / "python"
    python313 = _python313()
    if (BUILT / "build").is_dir() and layer.is_dir() and python313:
        built = {
            name: [str(BUILT / "build" / logical_id), str(layer)]
            for name, (_, logical_id) in HANDLERS.items()
        }
        boto3_dir = _boto3_for(python313)
        naive = [str(layer), str(boto3_dir)] if boto3_dir else None
        label = f"built package (sam build), {Path(python313).name} -I -S"
        ok = report(label, [python313, "-I", "-S"], built, args, naive_paths=naive) and ok
    else:
        print("\n(built package not measured: run scripts/sam_check.py first)")
    print(
        "\nverdict:",
        "every request-path handler imports within the target" if ok else "see MISSES TARGET above",
    )
    return 0


def _boto3_for(python313: str) -> Path | None:
    """A boto3 for python3.13 (pip, once, into .aws-sam/bench-boto3/), as Lambda's runtime has one."""
    if (BENCH_BOTO3 / ".complete").exists():
        return BENCH_BOTO3
    proc = subprocess.run(
        [python313, "-m", "pip", "install", "--disable-pip-version-check", "-q", "--target", str(BENCH_BOTO3),
         "boto3"],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode != 0:
        print(f"(no boto3 for {python313}: the built package has no naive baseline)\n{proc.stderr[-500:]}")
        return None
    (BENCH_BOTO3 / ".complete").write_text("ok")
    return BENCH_BOTO3


def _python313() -> str | None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from sam_check import ToolMissing, find_python313

        try:
            return str(find_python313())
        except ToolMissing:
            return None
    finally:
        sys.path.remove(str(ROOT / "scripts"))


if __name__ == "__main__":
    sys.exit(main())
