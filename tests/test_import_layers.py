"""Who may import whom: the layer and the functions import no development code; the local tools and the
benchmarks import the fakes from devtools/, never the test suite (tests import all of them, not the
other way round), so there is no import cycle between scripts/ and tests/."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: folder -> the top-level packages of this repository it must not import
FORBIDDEN = {
    "layers/shared/python": {"tests", "scripts", "devtools", "bench"},
    "functions": {"tests", "scripts", "devtools", "bench"},
    "devtools": {"tests", "scripts", "bench"},
    "scripts": {"tests", "bench"},
    "bench": {"tests"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            # Code run in a child interpreter (python -c "..."): its imports count too.
            for line in node.value.splitlines():
                words = line.strip().split()
                if len(words) >= 2 and words[0] in ("import", "from"):
                    found.add(words[1].split(".")[0])
    return found


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_imports_only_what_it_may(folder: str) -> None:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"no Python files under {folder}"
    wrong = {
        str(path.relative_to(ROOT)): sorted(_imported_packages(path) & FORBIDDEN[folder])
        for path in files
        if _imported_packages(path) & FORBIDDEN[folder]
    }
    assert not wrong, f"{folder} imports what it must not: {wrong}"


def test_the_check_sees_imports_in_child_interpreter_code(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text('import os\nSCRIPT = "import sys\\nfrom tests.support import x\\n"\n', encoding="utf-8")
    assert _imported_packages(sample) >= {"os", "tests"}
