"""The deployable package: `sam validate --lint`, `sam build`, and the BUILT functions run with events/.

The end-to-end test drives scripts/sam_check.py (see its docstring for what it proves and why native
code is overlaid) against a fresh empty database and the fake upstream. It is slow (a minute or two;
the first run also installs aws-sam-cli into .venv-sam/) and fails - never skips - when a tool is
missing, printing the script's message on how to get it.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.upstream_fixtures import TEST_TWELVE_DATA_API_KEY

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "sam_check.py"


def _sam_check():
    spec = importlib.util.spec_from_file_location("sam_check", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["sam_check"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_built_package_serves_every_event(empty_database_url, fake_upstream, tmp_path) -> None:
    proc = subprocess.run(
        [
            sys.executable, str(SCRIPT),
            "--database-url", empty_database_url,
            "--upstream-url", fake_upstream.url,
            "--twelve-data-api-key", TEST_TWELVE_DATA_API_KEY,
            "--work-dir", str(tmp_path / "sam-check"),
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=1500,
    )  # fmt: skip
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"scripts/sam_check.py failed (exit {proc.returncode}):\n{output}"
    # The nine fixed steps, the live API's four (connect, subscribe, disconnect, broadcaster), and one per
    # other API Gateway sample event (UDF datafeed, chart page).
    samples = [p for p in (ROOT / "events").glob("*.json") if '"version": "2.0"' in p.read_text()]
    assert f"all {9 + 4 + len(samples) - 4} invocations passed" in output, output
    # The built functions really talked to the upstream (not to leftovers of another run).
    assert fake_upstream.count("/api/v3/klines") > 0
    assert fake_upstream.count("/api/v3/exchangeInfo") > 0
    assert fake_upstream.count("/time_series") > 0  # the forex backfill job


# --- the build inspection itself must catch a broken package (fast, synthetic build trees) ------------

ELF_X86_64 = b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + (62).to_bytes(2, "little") + b"\x00" * 40
ELF_AARCH64 = b"\x7fELF\x02\x01\x01" + b"\x00" * 11 + (183).to_bytes(2, "little") + b"\x00" * 40


def _build_tree(root: Path, *, native: bytes = ELF_AARCH64, tag: str = "cp313-cp313-manylinux2014_aarch64",
                migrations: bool = True, bytecode: bool = True) -> Path:  # fmt: skip
    check = _sam_check()
    for logical_id in check.template_functions().code_uris:
        (root / logical_id).mkdir(parents=True)
        (root / logical_id / "app.py").write_text("def lambda_handler(event, context):\n    return {}\n")
    site = root / check.LAYER / "python"
    (site / "marketdata" / "__pycache__").mkdir(parents=True)
    (site / "marketdata" / "__init__.py").write_text("")
    if bytecode:
        (site / "marketdata" / "__pycache__" / "__init__.cpython-313.pyc").write_bytes(b"")
    if migrations:
        (site / "migrations").mkdir()
        for sql in (ROOT / "migrations").glob("*.sql"):
            (site / "migrations" / sql.name).write_text(sql.read_text())
    (site / "fastcore").mkdir()
    (site / "fastcore" / "_core.cpython-313-x.so").write_bytes(native)
    info = site / "fastcore-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fastcore\nVersion: 1.0\n")
    (info / "WHEEL").write_text(f"Wheel-Version: 1.0\nRoot-Is-Purelib: false\nTag: {tag}\n")
    (info / "RECORD").write_text("fastcore/_core.cpython-313-x.so,,\nfastcore-1.0.dist-info/METADATA,,\n")
    return root


def test_inspection_accepts_a_complete_arm64_build(tmp_path: Path) -> None:
    native = _sam_check().inspect_build(_build_tree(tmp_path))
    assert [(d.name, d.version) for d in native] == [("fastcore", "1.0")]


def test_inspection_rejects_x86_64_native_code(tmp_path: Path) -> None:
    check = _sam_check()
    tree = _build_tree(tmp_path, native=ELF_X86_64, tag="cp313-cp313-manylinux2014_x86_64")
    with pytest.raises(check.CheckFailed) as info:
        check.inspect_build(tree)
    assert "x86_64 code" in str(info.value)
    assert "not an aarch64 wheel" in str(info.value)


def test_inspection_rejects_a_layer_without_migrations_or_bytecode(tmp_path: Path) -> None:
    check = _sam_check()
    with pytest.raises(check.CheckFailed) as info:
        check.inspect_build(_build_tree(tmp_path, migrations=False, bytecode=False))
    assert "python/migrations has []" in str(info.value)
    assert "no cpython-313 bytecode" in str(info.value)


def test_inspection_rejects_a_missing_handler(tmp_path: Path) -> None:
    check = _sam_check()
    tree = _build_tree(tmp_path)
    (tree / "SymbolsFunction" / "app.py").unlink()
    with pytest.raises(check.CheckFailed, match=r"SymbolsFunction: app\.py missing"):
        check.inspect_build(tree)
