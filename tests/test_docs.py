"""The docs say what the code does: every setting is documented, the README's commands exist."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import REPO
from flux.config import SETTINGS, markdown_table, table_in

CONFIGURATION = REPO / "docs" / "configuration.md"


def test_every_setting_is_documented() -> None:
    text = CONFIGURATION.read_text()
    documented = set(re.findall(r"^\| `([A-Z_]+)` \|", text, flags=re.MULTILINE))
    assert documented == {s.env for s in SETTINGS}


def test_the_settings_table_is_the_one_the_declarations_make() -> None:
    text = CONFIGURATION.read_text()
    start, end = table_in(text)
    assert text[start:end] == markdown_table(), (
        "docs/configuration.md's settings table differs from the declarations in "
        "src/flux/config.py: run .venv/bin/python -m flux.config --write docs/configuration.md"
    )


def test_python_m_flux_config_writes_the_table(tmp_path: Path) -> None:
    text = CONFIGURATION.read_text()
    start, end = table_in(text)
    stale = tmp_path / "configuration.md"
    stale.write_text(
        text[:start] + "| variable | default | meaning |\n|---|---|---|\n" + text[end:]
    )
    command = [sys.executable, "-m", "flux.config"]
    subprocess.run([*command, "--write", str(stale)], check=True, timeout=60)
    assert stale.read_text() == text
    printed = subprocess.run(command, check=True, capture_output=True, text=True, timeout=60)
    assert printed.stdout == markdown_table()


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
