"""The README stays true to the code: every setting documented, CI running the README's test command."""

from __future__ import annotations

import re
from pathlib import Path

from marketdata.config import Settings

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_every_setting_is_documented_in_the_readme() -> None:
    names = {field.validation_alias for field in Settings.model_fields.values()}
    assert names, "Settings has no environment variables?"
    missing = sorted(str(n) for n in names if f"`{n}`" not in README)
    assert not missing, f"README's configuration table lacks: {missing}"


def test_readme_documents_no_setting_that_does_not_exist() -> None:
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", table))
    known = {str(f.validation_alias) for f in Settings.model_fields.values()} | {"MIGRATIONS_DIR"}
    assert documented <= known, f"README documents unknown settings: {sorted(documented - known)}"


def test_ci_runs_exactly_the_readme_test_command() -> None:
    command = "python3 scripts/dev.py test"
    assert command in README
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert command in [line.strip() for line in ci], ".ci/run must call the README's test command"
