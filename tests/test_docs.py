"""The docs say what the code does: every setting is documented, the README's commands exist,
the architecture's module table lists every module in its layer."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
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


def _section(text: str, heading: str) -> str:
    return text.split(heading + "\n", 1)[1].split("\n#", 1)[0]


def _contract_layers() -> list[list[str]]:
    """The layers of the import-linter contract in pyproject.toml, top first."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c["layers"] for c in config["contracts"] if c["type"] == "layers"]
    return [[name.strip() for name in layer.split("|")] for layer in layers]


def _source_modules() -> set[str]:
    """Every module under src/flux, by its dotted name (a package by its own name)."""
    src = REPO / "src"
    modules = set()
    for path in (src / "flux").rglob("*.py"):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.add(".".join(parts))
    return modules


def test_the_module_table_lists_every_module_in_its_layer() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| `([\w.]+)` \| ([0-9]+|–) \|", _section(text, "### Modules"), re.M)
    documented = dict(rows)
    assert len(documented) == len(rows), "a module is listed twice"
    modules = _source_modules()
    assert not modules - set(documented), "modules missing from docs/architecture.md"
    assert not set(documented) - modules, "docs/architecture.md lists modules that do not exist"
    layer_of = {name: str(n) for n, layer in enumerate(_contract_layers(), 1) for name in layer}
    for module, layer in documented.items():
        if module == "flux":
            assert layer == "–"
        else:
            assert layer == layer_of[module.split(".")[1]], module


def test_the_layer_table_is_the_contract() -> None:
    text = (REPO / "docs" / "architecture.md").read_text()
    rows = re.findall(r"^\| *([0-9]+) \| (`.*?`) \|", _section(text, "### Layers"), re.M)
    documented = [re.findall(r"`(\w+)`", names) for _, names in rows]
    assert [int(n) for n, _ in rows] == list(range(1, len(rows) + 1))
    assert documented == _contract_layers()


def test_security_page_names_only_real_settings() -> None:
    """Every setting docs/security.md names exists, so its table of limits cannot drift."""
    text = (REPO / "docs" / "security.md").read_text()
    named = set(re.findall(r"\bFLUX_[A-Z_]+[A-Z]\b", text))
    assert len(named) >= 20
    assert named <= {s.env for s in SETTINGS}, named - {s.env for s in SETTINGS}
