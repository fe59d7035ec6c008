"""skills/flux, the OpenClaw skill: its SKILL.md frontmatter is what OpenClaw reads, and every
command its body documents runs, in page order, against a real `flux serve` with auth on, with
the token in the variable the frontmatter names, and prints what the page says it prints. The
seed skill's commands run too, exactly as the seed writes them.

The page is read as fenced `sh` blocks. In a block, a line starting with
`{baseDir}/scripts/flux.sh` begins a command (continued over the next lines while a quote is
open or a line ends with a backslash); `# → TEXT` lines after it are its stdout, one line each
(`…` stands for any text); `# exit N` is its exit status (0 when absent); other `#` lines are
comments. Anything else in an `sh` block fails the test, so no command goes unrun. The commands
share one server and each expects the state the ones before it left: run them together (one
`test_documented_command[lineN]` alone finds a fresh server).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from conftest import REPO, FluxServer, wait_for

SKILL_DIR = REPO / "skills" / "flux"
SKILL = SKILL_DIR / "SKILL.md"
SCRIPT = SKILL_DIR / "scripts" / "flux.sh"
ADMIN_TOKEN = "skill-admin-secret"
NAMESPACE = "dawn-coral"
BASE_DIR = "{baseDir}"
COMMAND_START = f"{BASE_DIR}/scripts/flux.sh"
OUTPUT = "# → "
EXIT = re.compile(r"# exit (\d+)$")

# The seed skill's commands (../shared/seeds), verbatim and in its order: the skill must keep
# every one of them working as written. `./scripts/flux.sh` runs from the skill's folder (and
# from the repository's root, through scripts/flux.sh); bare `flux.sh` from the PATH.
SEED_COMMANDS = [
    "./scripts/flux.sh publish sensors agent-01 dawn-coral/sensor-01 \\\n'{\"temperature\":22.5}'",
    "./scripts/flux.sh get dawn-coral/sensor-01",
    "./scripts/flux.sh health",
    "./scripts/flux.sh get flux-core/directory",
    "./scripts/flux.sh publish sensors agent-01 dawn-coral/temp-sensor-01 "
    '\'{"temperature":22.5,"unit":"celsius"}\'',
    "./scripts/flux.sh get dawn-coral/temp-sensor-01",
    "./scripts/flux.sh list",
    "./scripts/flux.sh list --prefix scada/",
    "./scripts/flux.sh delete test/old-entity",
    """./scripts/flux.sh batch '[
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"dawn-coral/sensor-01","properties":{"temp":22}}},
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"dawn-coral/sensor-02","properties":{"temp":23}}}
]'""",
    "./scripts/flux.sh connectors",
    "./scripts/flux.sh admin-config",
    "./scripts/flux.sh admin-config '{\"rate_limit_per_namespace_per_minute\": 5000}'",
    "flux.sh publish sensors agent-a dawn-coral/room-101 '{\"temperature\":22.5}'",
    "flux.sh get dawn-coral/room-101",
    'flux.sh publish system monitor dawn-coral/api-gateway \'{"status":"healthy","uptime":3600}\'',
    "flux.sh get dawn-coral/api-gateway",
]
# What the seed says a command returns (`# Returns: {"temperature":22.5,...}`): properties.
SEED_RETURNS = {"flux.sh get dawn-coral/room-101": {"temperature": 22.5}}

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="flux.sh needs curl")


# -- reading the page ----------------------------------------------------------------------------


def frontmatter(text: str) -> tuple[str, str]:
    """The YAML between the opening `---` line and the next one, and the body after it."""
    match = re.match(r"---\n(.*?)\n---\n(.*)", text, re.DOTALL)
    assert match, "SKILL.md must start with a `---` frontmatter block"
    return match.group(1), match.group(2)


@dataclass
class DocCommand:
    line: int  # in SKILL.md, 1-based
    text: str  # as written, `{baseDir}` included
    stdout: list[str] | None = None  # the `# →` lines, if the page shows any
    exit_status: int = 0
    extra: list[str] = field(default_factory=list)


def complete(command: str) -> bool:
    """Whether a shell command is whole: no quote left open, no trailing backslash."""
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command)
    except ValueError:
        return False
    return True


def doc_commands(text: str, first_line: int = 1) -> list[DocCommand]:
    """Every command of the page's `sh` blocks, in order, with what the page says it does;
    `text` starts at line `first_line` of SKILL.md."""
    commands: list[DocCommand] = []
    lines = text.splitlines()
    in_block = False
    pending: DocCommand | None = None  # a command whose lines are still coming
    current: DocCommand | None = None  # the last command: its output lines follow it
    for number, line in enumerate(lines, start=first_line):
        if line.startswith("```"):
            assert pending is None, f"SKILL.md:{pending.line}: command not closed in its block"
            in_block = line.strip() in ("```sh", "```bash")
            current = None
            continue
        if not in_block:
            continue
        if pending is not None:
            pending.text += "\n" + line
            if complete(pending.text):
                pending = None
        elif line.startswith(COMMAND_START + " ") or line == COMMAND_START:
            current = DocCommand(number, line)
            commands.append(current)
            if not complete(line):
                pending = current
        elif line.startswith(OUTPUT):
            assert current is not None, f"SKILL.md:{number}: output before any command"
            if current.stdout is None:
                current.stdout = []
            current.stdout.append(line[len(OUTPUT) :])
        elif match := EXIT.match(line):
            assert current is not None, f"SKILL.md:{number}: exit status before any command"
            current.exit_status = int(match.group(1))
        elif line.startswith("#") or not line.strip():
            continue
        else:
            pytest.fail(f"SKILL.md:{number}: not a flux.sh command, output or comment: {line!r}")
    return commands


def pattern(expected: str) -> re.Pattern[str]:
    """A documented output line as a regex: literal text, `…` standing for any text."""
    return re.compile(".*".join(re.escape(part) for part in expected.split("…")), re.DOTALL)


def shape(command: str) -> tuple[str, frozenset[str], int]:
    """A flux.sh command's subcommand, options and number of other arguments."""
    args = shlex.split(command)[1:]
    options = frozenset(a.split("=", 1)[0] for a in args[1:] if a.startswith("--"))
    return args[0], options, len([a for a in args[1:] if not a.startswith("--")])


FRONT, BODY = frontmatter(SKILL.read_text())
COMMANDS = doc_commands(BODY, first_line=FRONT.count("\n") + 4)


# -- the frontmatter -----------------------------------------------------------------------------


def test_frontmatter_has_what_openclaw_reads() -> None:
    """The AgentSkills fields (a name of at most 64 lowercase letters, digits and hyphens, the
    folder's; a description of at most 1024 characters) and OpenClaw's gating under
    `metadata.openclaw` (docs/skill.md says where the format comes from)."""
    meta = yaml.safe_load(FRONT)
    assert meta["name"] == SKILL_DIR.name
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]{0,63}", meta["name"])
    assert isinstance(meta["description"], str) and 40 < len(meta["description"]) <= 1024
    openclaw = meta["metadata"]["openclaw"]
    requires = openclaw["requires"]
    assert {"bash", "curl"} <= set(requires["bins"])
    assert requires["env"] == [openclaw["primaryEnv"]] == ["FLUX_TOKEN"]
    for bin_name in requires["bins"]:
        assert shutil.which(bin_name), f"{bin_name} is required but not on PATH"


def test_metadata_is_one_line_of_json() -> None:
    """OpenClaw falls back to a single-line parser when YAML fails, and reads `metadata` as
    JSON5: one line of plain JSON is read the same by every version."""
    (line,) = [line for line in FRONT.splitlines() if line.startswith("metadata:")]
    assert json.loads(line.removeprefix("metadata:")) == yaml.safe_load(FRONT)["metadata"]


def test_frontmatter_names_what_the_script_reads() -> None:
    """The token variable is the one the script sends, and FLUX_URL is documented with the
    script's default."""
    script = SCRIPT.read_text()
    token = yaml.safe_load(FRONT)["metadata"]["openclaw"]["primaryEnv"]
    assert f"{token}=${{{token}:-}}" in script
    default = re.search(r"^FLUX_URL=\$\{FLUX_URL:-(\S+)\}$", script, re.MULTILINE)
    assert default, "the script's FLUX_URL default"
    assert f"`FLUX_URL`: the server (optional; default `{default.group(1)}`)" in BODY
    assert script.startswith("#!/usr/bin/env bash\n") and "| curl " in script


def test_the_skills_script_is_the_repositorys() -> None:
    """One script: scripts/flux.sh is a link to the skill's (which must be a real file, so that
    a copy of the skill's folder is whole)."""
    assert not SCRIPT.is_symlink()
    assert os.access(SCRIPT, os.X_OK)
    assert (REPO / "scripts" / "flux.sh").resolve() == SCRIPT.resolve()


def test_every_script_command_is_documented() -> None:
    script_commands = re.findall(r"^    ([a-z-]+)\) cmd_\w+ \"\$@\" ;;$", SCRIPT.read_text(), re.M)
    assert "publish" in script_commands and "lease" in script_commands
    documented = {shape(c.text)[0] for c in COMMANDS}
    assert set(script_commands) <= documented


def test_the_skill_is_a_superset_of_the_seed() -> None:
    """Each seed command has a documented command of the same shape (subcommand, options,
    number of arguments)."""
    documented = {shape(c.text) for c in COMMANDS}
    for command in SEED_COMMANDS:
        assert shape(command) in documented, command


def test_every_documented_command_shows_its_output() -> None:
    """Each example says what it prints, and the page shows a failed condition (exit 3)."""
    assert [c.line for c in COMMANDS if not c.stdout] == []
    assert 3 in {c.exit_status for c in COMMANDS}


# -- running them --------------------------------------------------------------------------------


def register(url: str, name: str) -> str:
    answer = httpx.post(
        f"{url}/api/namespaces",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def auth_server(data_dir: Path, directory_seconds: str) -> FluxServer:
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": directory_seconds,
    }
    return FluxServer(data_dir, env).start()


def directory_lists(url: str, names: list[str]) -> bool:
    """Whether the directory lists these namespaces and counts itself (its last write)."""
    answer = httpx.get(f"{url}/api/state/entities/flux-core/directory")
    if answer.status_code != 200:
        return False
    properties = answer.json()["properties"]
    listed = [n["name"] for n in properties["namespaces"]]
    return listed == sorted(names) and properties["totalEntities"] > 0


@pytest.fixture(scope="module")
def skill_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FluxServer, str]]:
    """Auth on, the namespace `dawn-coral` registered, and its token. The page shows versions,
    so they must come out the same on every run: the namespace is registered with the
    directory off, the directory is then written until it is current (twice: the second write
    counts the directory itself), and the server restarts with the directory off, so that the
    page's commands are the only writes."""
    data_dir = tmp_path_factory.mktemp("skill") / "data"
    srv = auth_server(data_dir, "0")
    try:
        token = register(srv.url, NAMESPACE)
    finally:
        srv.stop()
    srv = auth_server(data_dir, "0.1")
    try:
        wait_for(lambda: directory_lists(srv.url, [NAMESPACE]), "the directory")
    finally:
        srv.stop()
    srv = auth_server(data_dir, "0")
    yield srv, token
    srv.stop()


def run(
    command: str, url: str, env: dict[str, str], cwd: Path, path: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A command line run by bash, with FLUX_URL and `env` and no other FLUX_* variables."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    environ.update(FLUX_URL=url, **env)
    if path is not None:
        environ["PATH"] = f"{path}{os.pathsep}{environ.get('PATH', '')}"
    return subprocess.run(
        ["bash", "-c", command], cwd=cwd, env=environ, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("doc", COMMANDS, ids=[f"line{c.line}" for c in COMMANDS])
def test_documented_command(
    doc: DocCommand, skill_server: tuple[FluxServer, str], tmp_path: Path
) -> None:
    srv, token = skill_server
    primary = yaml.safe_load(FRONT)["metadata"]["openclaw"]["primaryEnv"]
    command = doc.text.replace(BASE_DIR, shlex.quote(str(SKILL_DIR)))
    result = run(command, srv.url, {primary: token, "FLUX_ADMIN_TOKEN": ADMIN_TOKEN}, tmp_path)
    where = f"SKILL.md:{doc.line}: {doc.text}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    assert result.returncode == doc.exit_status, where
    assert doc.stdout is not None
    got = result.stdout.splitlines()
    assert len(got) == len(doc.stdout), where
    for expected, line in zip(doc.stdout, got, strict=True):
        assert pattern(expected).fullmatch(line), f"{where}\nexpected: {expected}"


# -- the seed's commands, as written -------------------------------------------------------------


@pytest.fixture(scope="module")
def seed_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FluxServer, dict[str, str]]]:
    """Auth on, with the namespaces the seed's commands write to and their tokens."""
    srv = auth_server(tmp_path_factory.mktemp("seed") / "data", "0.1")
    tokens = {name: register(srv.url, name) for name in ("dawn-coral", "scada", "test")}
    wait_for(lambda: directory_lists(srv.url, list(tokens)), "the directory")
    yield srv, tokens
    srv.stop()


def seed_namespace(command: str) -> str:
    """The namespace of the first entity id or prefix in a command (`dawn-coral` if none)."""
    for arg in shlex.split(command)[2:]:
        if match := re.match(r"([a-z0-9_-]{3,32})/", arg):
            return match.group(1)
    return NAMESPACE


@pytest.mark.parametrize("where", ["skill", "repository"])
def test_seed_commands_as_written(
    where: str, seed_server: tuple[FluxServer, dict[str, str]]
) -> None:
    """Every seed command exits 0, with FLUX_TOKEN the token of the namespace it names."""
    srv, tokens = seed_server
    cwd = SKILL_DIR if where == "skill" else REPO
    outputs: dict[str, Any] = {}
    for command in SEED_COMMANDS:
        token = tokens.get(seed_namespace(command), tokens[NAMESPACE])
        env = {"FLUX_TOKEN": token, "FLUX_ADMIN_TOKEN": ADMIN_TOKEN}
        result = run(command, srv.url, env, cwd, path=str(cwd / "scripts"))
        assert result.returncode == 0, f"{command}\n{result.stderr}"
        if result.stdout.startswith(("{", "[")):
            outputs[command] = json.loads(result.stdout)
        else:
            assert result.stdout.startswith("✓ Flux is reachable\n"), command
    for command, properties in SEED_RETURNS.items():
        assert outputs[command]["properties"].items() >= properties.items()
    assert outputs["./scripts/flux.sh get dawn-coral/temp-sensor-01"]["properties"] == {
        "temperature": 22.5,
        "unit": "celsius",
    }
    assert outputs["./scripts/flux.sh list --prefix scada/"] == []
    assert outputs["./scripts/flux.sh delete test/old-entity"]["deleted"] is False
    batch = next(c for c in SEED_COMMANDS if " batch " in c)
    assert outputs[batch]["successful"] == 2
    update = next(c for c in SEED_COMMANDS if c.startswith("./scripts/flux.sh admin-config '"))
    assert outputs[update]["rate_limit_per_namespace_per_minute"] == 5000
