"""Committed files carry no traces of one machine: no local paths (under work, root or tmp at the file
system root), and no citations of files that are not in the repository (the provider facts live in
docs/providers.md)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Built from pieces, so that this file does not match itself.
LOCAL_PATH = re.compile(r"(?<![\w.~-])/(?:" + "|".join(["work", "root", "tmp"]) + r")(?:/|\b)")
MISSING_FILES = re.compile(r"\b(?:" + "|".join(["PROVIDERS", "CONTRACTS"]) + r")\.md\b")

#: Files that may name a local path, and why.
LOCAL_PATHS_ALLOWED = {
    # Unix socket directories inside database URLs: the parser's own test data, not a place on a machine.
    "tests/cache/test_store_connection.py",
}
#: Citations another branch removes (issue 11): the entry goes when that branch is merged.
CITATIONS_PENDING: dict[str, str] = {}


def _committed_text_files() -> dict[str, str]:
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"git ls-files failed in {ROOT.name}: {exc}: this test reads the committed file list")
    texts = {}
    for name in listed.decode().split("\0"):
        path = ROOT / name
        if not name or not path.is_file():
            continue  # deleted in the working tree
        data = path.read_bytes()
        if b"\0" in data[:8192]:
            continue  # binary (the chart screenshot)
        texts[name] = data.decode("utf-8", errors="replace")
    return texts


FILES = _committed_text_files()


def test_the_file_list_is_the_repository() -> None:
    assert {"README.md", "docs/providers.md", "template.yaml", "tests/test_docs.py"} <= set(FILES)


def _hits(pattern: re.Pattern[str], skip: set[str] | dict[str, str]) -> list[str]:
    return [
        f"{name}:{number}: {line.strip()[:120]}"
        for name, text in FILES.items()
        if name not in skip
        for number, line in enumerate(text.splitlines(), 1)
        if pattern.search(line)
    ]


def test_no_committed_file_names_a_local_machine_path() -> None:
    found = _hits(LOCAL_PATH, LOCAL_PATHS_ALLOWED)
    assert not found, "local machine paths in committed files (print paths relative to the repository):\n" + (
        "\n".join(found)
    )
    for name in LOCAL_PATHS_ALLOWED:
        assert LOCAL_PATH.search(FILES[name]), f"{name} no longer needs its exception: remove it"


def test_no_committed_file_cites_a_file_outside_the_repository() -> None:
    found = _hits(MISSING_FILES, CITATIONS_PENDING)
    assert not found, "citations of files not in the repository (use docs/providers.md):\n" + "\n".join(found)
    for name, why in CITATIONS_PENDING.items():
        assert MISSING_FILES.search(FILES[name]), f"{name} no longer cites it ({why}): remove its entry"


def test_the_patterns_catch_what_they_are_for() -> None:
    assert LOCAL_PATH.search("source tree, /" + "work/main/.venv/bin/python")
    assert LOCAL_PATH.search("python3 -m venv /" + "tmp/ck")
    assert LOCAL_PATH.search("/" + "root/.pyenv/versions/3.13.0/bin/python3.13")
    assert LOCAL_PATH.search("paths under /" + "tmp, say")
    assert not LOCAL_PATH.search("arn:aws:logs:<region>:<account>:log-group:/aws/lambda/x/*")
    assert not LOCAL_PATH.search("https://example.com/tmp/x and .local/pgdata and ~/checkov-venv")
    assert MISSING_FILES.search("see " + "PROVIDERS" + ".md")
    assert not MISSING_FILES.search("see docs/providers.md")
