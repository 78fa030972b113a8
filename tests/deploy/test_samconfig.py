"""samconfig.toml: one definition per environment. SAM CLI reads only the environment it is given
(`--config-env`, default `default`), merging that environment's `global` section under the command's;
nothing falls back to another environment, so an environment is only worth declaring for what differs."""

from __future__ import annotations

import itertools
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CONFIG = tomllib.loads((ROOT / "samconfig.toml").read_text())
ENVIRONMENTS = {name: value for name, value in CONFIG.items() if isinstance(value, dict)}


def test_no_two_environments_declare_the_same_command_section() -> None:
    assert "default" in ENVIRONMENTS, "`sam build` / `sam deploy` read [default]"
    for first, second in itertools.combinations(sorted(ENVIRONMENTS), 2):
        for command in set(ENVIRONMENTS[first]) & set(ENVIRONMENTS[second]):
            assert ENVIRONMENTS[first][command] != ENVIRONMENTS[second][command], (
                f"[{first}.{command}] and [{second}.{command}] are identical: keep one"
            )


def test_the_readme_names_only_environments_that_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"--config-env (\w+)", readme))
    assert named, "README: how to deploy another environment"
    assert named <= set(ENVIRONMENTS), (
        f"README names environments samconfig.toml lacks: {named - set(ENVIRONMENTS)}"
    )
