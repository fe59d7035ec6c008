"""The docs say what the code does: every setting is documented, the README's commands exist."""

from __future__ import annotations

import os
import re

from conftest import REPO
from flux.config import SETTINGS


def test_every_setting_is_documented() -> None:
    text = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.MULTILINE))
    assert documented == {s.env for s in SETTINGS}


def test_readme_has_exactly_the_two_setup_commands_and_they_exist() -> None:
    text = (REPO / "README.md").read_text()
    setup = text.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [line.strip() for line in setup.splitlines() if line.startswith("    ")]
    assert commands == ["./scripts/serve", "./scripts/test"]
    for command in commands:
        path = REPO / command
        assert path.is_file() and os.access(path, os.X_OK), command


def test_ci_runs_the_readme_test_command() -> None:
    assert "./scripts/test" in (REPO / ".ci" / "run").read_text()
