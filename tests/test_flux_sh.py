"""scripts/flux.sh, run with bash against a real `flux serve`: every command as the seed's docs
write it, plus escaping, URL encoding, output modes and exit codes."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, FluxServer, free_port, module_server

SCRIPT = REPO / "scripts" / "flux.sh"
ADMIN_TOKEN = "sh-admin-secret"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="flux.sh needs curl")

# The seed's batch example, verbatim (its events have no timestamp).
SEED_BATCH = """[
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"dawn-coral/sensor-01","properties":{"temp":22}}},
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"dawn-coral/sensor-02","properties":{"temp":23}}}
]"""


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """One server for the module; it has an admin token (which only admin writes need)."""
    yield from module_server(tmp_path_factory, "sh", {"FLUX_ADMIN_TOKEN": ADMIN_TOKEN})


@pytest.fixture(scope="module")
def url(flux_server: FluxServer) -> str:
    return flux_server.url


def sh(
    url: str, *args: str, path: str | None = None, via: str = "bash", **env: str
) -> subprocess.CompletedProcess[str]:
    """Run flux.sh with FLUX_URL=url and no other FLUX_* variables unless given."""
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    environ.update(FLUX_URL=url, **env)
    if path is not None:
        environ["PATH"] = path
    command = ["./scripts/flux.sh", *args] if via == "direct" else ["bash", str(SCRIPT), *args]
    return subprocess.run(
        command, cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )


def ok_json(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_script_is_executable_and_runs_as_the_seed_shows(url: str) -> None:
    assert os.access(SCRIPT, os.X_OK)
    assert SCRIPT.read_text().startswith("#!/usr/bin/env bash\n")
    result = sh(url, "health", via="direct")
    assert result.returncode == 0, result.stderr


# -- the seed's commands, verbatim -------------------------------------------------------------


def test_seed_publish_and_get(url: str) -> None:
    result = sh(
        url, "publish", "sensors", "agent-01", "dawn-coral/sensor-01", '{"temperature":22.5}'
    )
    published = ok_json(result)
    assert published["stream"] == "sensors"
    assert result.stderr == "Publishing event to Flux...\n"
    entity = ok_json(sh(url, "get", "dawn-coral/sensor-01"))
    assert entity["id"] == "dawn-coral/sensor-01"
    assert entity["properties"]["temperature"] == 22.5

    args = ("sensors", "agent-01", "dawn-coral/temp-sensor-01")
    ok_json(sh(url, "publish", *args, '{"temperature":22.5,"unit":"celsius"}'))
    entity = ok_json(sh(url, "get", "dawn-coral/temp-sensor-01"))
    assert entity["properties"] == {"temperature": 22.5, "unit": "celsius"}


def test_seed_use_cases_merge_properties(url: str) -> None:
    ok_json(sh(url, "publish", "sensors", "agent-a", "dawn-coral/room-101", '{"temperature":22.5}'))
    ok_json(sh(url, "publish", "sensors", "agent-b", "dawn-coral/room-101", '{"humidity":40}'))
    room = ok_json(sh(url, "get", "dawn-coral/room-101"))
    assert room["properties"] == {"temperature": 22.5, "humidity": 40}

    status = '{"status":"healthy","uptime":3600}'
    ok_json(sh(url, "publish", "system", "monitor", "dawn-coral/api-gateway", status))
    gateway = ok_json(sh(url, "get", "dawn-coral/api-gateway"))
    assert gateway["properties"] == {"status": "healthy", "uptime": 3600}


def test_seed_publish_timestamp_is_epoch_ms(url: str) -> None:
    before = time.time_ns() // 1_000_000
    ok_json(sh(url, "publish", "sensors", "agent-01", "dawn-coral/ts", '{"v":1}'))
    after = time.time_ns() // 1_000_000
    (event,) = ok_json(sh(url, "history", "dawn-coral/ts"))
    assert before - 1000 <= event["timestamp"] <= after
    assert event["source"] == "agent-01"


def test_seed_list(url: str) -> None:
    for entity_id in ("scada/pump-01", "scada/pump-02", "scadax/other"):
        ok_json(sh(url, "publish", "sensors", "plc", entity_id, '{"running":true}'))
    everything = {e["id"] for e in ok_json(sh(url, "list"))}
    assert {"scada/pump-01", "scada/pump-02", "scadax/other"} <= everything
    scada = {e["id"] for e in ok_json(sh(url, "list", "--prefix", "scada/"))}
    assert scada == {"scada/pump-01", "scada/pump-02"}
    by_namespace = {e["id"] for e in ok_json(sh(url, "list", "--namespace", "scadax"))}
    assert by_namespace == {"scadax/other"}
    both = ok_json(sh(url, "list", "--prefix=scada/pump-02", "--namespace", "scada"))
    assert [e["id"] for e in both] == ["scada/pump-02"]


def test_seed_delete(url: str) -> None:
    ok_json(sh(url, "publish", "sensors", "agent-01", "test/old-entity", '{"v":1}'))
    result = sh(url, "delete", "test/old-entity")
    assert ok_json(result)["entity_id"] == "test/old-entity"
    assert result.stderr == "Deleting entity test/old-entity...\n"
    gone = sh(url, "get", "test/old-entity")
    assert gone.returncode == 1
    assert gone.stdout == ""
    assert gone.stderr == "Error: Entity not found (HTTP 404)\n"


def test_seed_batch_without_timestamps(url: str) -> None:
    result = sh(url, "batch", SEED_BATCH)
    summary = ok_json(result)
    assert (summary["successful"], summary["failed"]) == (2, 0)
    assert result.stderr == "Publishing batch to Flux...\n"
    assert ok_json(sh(url, "get", "dawn-coral/sensor-01"))["properties"]["temp"] == 22
    assert ok_json(sh(url, "get", "dawn-coral/sensor-02"))["properties"]["temp"] == 23


def test_seed_connectors(url: str) -> None:
    names = [c["name"] for c in ok_json(sh(url, "connectors"))["connectors"]]
    assert names == ["github", "gmail", "linkedin", "calendar"]


def test_seed_admin_config(url: str) -> None:
    config = ok_json(sh(url, "admin-config"))
    assert config["rate_limit_per_namespace_per_minute"] > 0

    change = '{"rate_limit_per_namespace_per_minute": 5000}'
    missing = sh(url, "admin-config", change)
    assert missing.returncode == 1
    assert missing.stderr == "Error: FLUX_ADMIN_TOKEN not set\n"

    updated = ok_json(sh(url, "admin-config", change, FLUX_ADMIN_TOKEN=ADMIN_TOKEN))
    assert updated["rate_limit_per_namespace_per_minute"] == 5000
    assert ok_json(sh(url, "admin-config"))["rate_limit_per_namespace_per_minute"] == 5000
    wrong = sh(url, "admin-config", change, FLUX_ADMIN_TOKEN="wrong")
    assert wrong.returncode == 1
    assert wrong.stderr == "Error: Unauthorized (HTTP 401)\n"


def test_seed_health(url: str) -> None:
    ok_json(sh(url, "publish", "sensors", "agent-01", "dawn-coral/health", '{"v":1}'))
    count = len(ok_json(sh(url, "list")))
    result = sh(url, "health")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"✓ Flux is reachable\n  Entities in state: {count}\n"
    assert result.stderr == f"Testing Flux connection at {url}...\n"


def test_seed_directory_lookup(url: str) -> None:
    """`flux.sh get flux-core/directory`: the entity if the server keeps one, else a clean 404."""
    result = sh(url, "get", "flux-core/directory")
    if result.returncode == 0:
        assert json.loads(result.stdout)["id"] == "flux-core/directory"
    else:
        assert result.returncode == 1
        assert result.stderr == "Error: Entity not found (HTTP 404)\n"


def documented_commands(doc: Path) -> list[list[str]]:
    """The `./scripts/flux.sh ...` command lines of a document (quoted arguments may span
    lines)."""
    commands: list[list[str]] = []
    pending: list[str] = []
    for line in doc.read_text().splitlines():
        text = line.strip()
        if not pending and not text.startswith("./scripts/flux.sh "):
            continue
        pending.append(text)
        try:
            words = shlex.split("\n".join(pending), comments=True)
        except ValueError:
            continue  # an open quote: the command goes on
        commands.append(words[1:])
        pending = []
    return commands


@pytest.mark.parametrize("doc", ["README.md", "docs/cli.md"])
def test_documented_examples_run(url: str, doc: str) -> None:
    commands = documented_commands(REPO / doc)
    assert [c[0] for c in commands[:3]] == ["health", "publish", "get"]
    for args in commands:
        result = sh(url, *args)
        assert result.returncode == 0, (args, result.stderr)


# -- more than the seed ------------------------------------------------------------------------


def test_history(url: str) -> None:
    for n in range(3):
        ok_json(sh(url, "publish", "sensors", "a", "dawn-coral/hist", json.dumps({"n": n})))
    events = ok_json(sh(url, "history", "dawn-coral/hist"))
    assert [e["payload"]["properties"]["n"] for e in events] == [2, 1, 0]
    (latest,) = ok_json(sh(url, "history", "dawn-coral/hist", "--limit", "1"))
    assert latest["payload"]["properties"] == {"n": 2}
    later = ok_json(sh(url, "history", "dawn-coral/hist", "--since", "2999-01-01T00:00:00+00:00"))
    assert later == []


def test_batch_delete(url: str) -> None:
    for name in ("a", "b"):
        ok_json(sh(url, "publish", "sensors", "x", f"sh-bulk/{name}", '{"v":1}'))
    result = sh(url, "batch-delete", '{"namespace":"sh-bulk"}')
    assert ok_json(result) == {
        "deleted": 2,
        "deleted_ids": ["sh-bulk/a", "sh-bulk/b"],
        "not_found": [],
        "failed": 0,
        "errors": [],
    }
    assert result.stderr == "Batch deleting entities...\n"
    assert ok_json(sh(url, "list", "--namespace", "sh-bulk")) == []


def test_batch_wrapped_with_given_timestamp(url: str) -> None:
    event = {
        "stream": "sensors",
        "source": "a",
        "timestamp": 4242,
        "payload": {"entity_id": "dawn-coral/wrapped", "properties": {"v": 1}},
    }
    ok_json(sh(url, "batch", json.dumps({"events": [event]})))
    (stored,) = ok_json(sh(url, "history", "dawn-coral/wrapped"))
    assert stored["timestamp"] == 4242


def test_batch_with_a_rejected_event_exits_1(url: str) -> None:
    batch = (
        '[{"stream":"sensors","source":"a","payload":{}},'
        '{"stream":"Bad","source":"a","payload":{}}]'
    )
    result = sh(url, "batch", batch)
    assert result.returncode == 1
    summary = json.loads(result.stdout)
    assert (summary["successful"], summary["failed"]) == (1, 1)
    assert 'Error: 1 event(s) rejected (see "results")' in result.stderr


@pytest.mark.parametrize(
    ("stream_source", "entity_id"),
    [
        ('ag"ent\\01', 'dawn-coral/quote"back\\slash'),
        ("tab\there", "dawn-coral/tab\tand\x01control"),
        ("ünï", "dawn-coral/ü€ 漢字"),
    ],
)
def test_arguments_are_json_escaped(url: str, stream_source: str, entity_id: str) -> None:
    ok_json(sh(url, "publish", "sensors", stream_source, entity_id, '{"v":1}'))
    entity = ok_json(sh(url, "get", entity_id))
    assert entity["id"] == entity_id
    (event,) = ok_json(sh(url, "history", entity_id))
    assert event["source"] == stream_source


def test_ids_are_url_encoded(url: str) -> None:
    entity_id = "dawn-coral/we ird?x=1&y=2#frag%41+b"
    ok_json(sh(url, "publish", "sensors", "a", entity_id, '{"v":1}'))
    assert ok_json(sh(url, "get", entity_id))["id"] == entity_id
    listed = ok_json(sh(url, "list", "--prefix", "dawn-coral/we ird?x=1&y"))
    assert [e["id"] for e in listed] == [entity_id]
    assert ok_json(sh(url, "delete", entity_id))["entity_id"] == entity_id
    assert sh(url, "get", entity_id).returncode == 1
    # "." and ".." are ids too, not path steps
    ok_json(sh(url, "publish", "sensors", "a", "..", '{"dots":2}'))
    assert ok_json(sh(url, "get", ".."))["properties"] == {"dots": 2}


def test_output_is_compact_when_piped_and_pretty_on_request(url: str) -> None:
    ok_json(sh(url, "publish", "sensors", "a", "dawn-coral/pretty", '{"t":1}'))
    piped = sh(url, "get", "dawn-coral/pretty")
    assert piped.stdout.count("\n") == 1
    pretty = sh(url, "get", "dawn-coral/pretty", FLUX_PRETTY="1")
    assert pretty.stdout.startswith('{\n  "id": "dawn-coral/pretty",')
    assert json.loads(pretty.stdout) == json.loads(piped.stdout)


# -- errors and usage --------------------------------------------------------------------------


def test_server_error_exits_1_with_the_message(url: str) -> None:
    result = sh(url, "publish", "Sensors", "agent-01", "dawn-coral/x", '{"v":1}')
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.endswith(
        "Error: invalid stream format 'Sensors': must be lowercase with optional dots (HTTP 400)\n"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("publish", "sensors", "a", "dawn-coral/x", "{nope"), "PROPERTIES_JSON: not valid JSON"),
        (("publish", "sensors", "a", "dawn-coral/x", "[1]"), "expected a JSON object"),
        (("publish", "sensors", "a", "dawn-coral/x"), "usage: flux.sh publish STREAM"),
        (("batch", "{nope"), "EVENTS_JSON is not valid JSON"),
        (("batch", '{"events":3}'), "EVENTS_JSON must be a JSON array"),
        (("batch-delete", "[]"), "FILTER_JSON: expected a JSON object"),
        (("get",), "usage: flux.sh get ENTITY_ID"),
        (("list", "--bogus"), "usage: flux.sh list"),
        (("list", "--prefix"), "--prefix needs a value"),
        (("bogus",), "unknown command 'bogus'"),
        ((), "Usage: flux.sh <command>"),
    ],
)
def test_usage_errors_exit_2(url: str, args: tuple[str, ...], message: str) -> None:
    result = sh(url, *args)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args", [("help",), ("--help",), ("-h",), ("publish", "--help")])
def test_help(url: str, args: tuple[str, ...]) -> None:
    result = sh(url, *args)
    assert result.returncode == 0
    assert result.stdout.startswith("Usage: flux.sh <command> [arguments]")
    for word in ("publish", "batch-delete", "admin-config", "FLUX_URL", "FLUX_ADMIN_TOKEN"):
        assert word in result.stdout


def test_unreachable_server() -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    health = sh(dead, "health")
    assert health.returncode == 1
    assert health.stdout == ""
    assert health.stderr.endswith(f"✗ Failed to reach Flux at {dead}\n")
    get = sh(dead, "get", "dawn-coral/x")
    assert get.returncode == 1
    assert f"Error: cannot reach Flux at {dead}" in get.stderr


def test_default_url_is_localhost_3000() -> None:
    result = sh("", "help")
    assert "now: http://localhost:3000" in result.stdout


# -- with only bash and curl -------------------------------------------------------------------


@pytest.fixture
def bare_path(tmp_path: Path) -> str:
    """A PATH with bash, curl, date and cat only (no jq, no python3)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "curl", "date", "cat"):
        found = shutil.which(tool)
        assert found is not None
        (bin_dir / tool).symlink_to(found)
    return str(bin_dir)


def test_works_with_only_bash_and_curl(url: str, bare_path: str) -> None:
    ok_json(sh(url, "publish", "sensors", "a", "dawn-coral/bare", '{"v":1}', path=bare_path))
    pretty = sh(url, "get", "dawn-coral/bare", path=bare_path, FLUX_PRETTY="1")
    assert json.loads(pretty.stdout)["properties"] == {"v": 1}  # raw, but JSON
    bad = sh(url, "publish", "sensors", "a", "dawn-coral/bare", "[1]", path=bare_path)
    assert bad.returncode == 2
    missing = sh(url, "get", "dawn-coral/nothing", path=bare_path)
    assert missing.stderr == "Error: Entity not found (HTTP 404)\n"
    health = sh(url, "health", path=bare_path)
    assert health.stdout.startswith("✓ Flux is reachable\n  Entities in state: ")


def test_batch_without_python_needs_timestamps(url: str, bare_path: str) -> None:
    """Without python3 or jq the events go as given: the seed example is then rejected."""
    rejected = sh(url, "batch", SEED_BATCH, path=bare_path)
    assert rejected.returncode == 1
    assert "missing field `timestamp`" in rejected.stdout
    with_ts = SEED_BATCH.replace('"source"', '"timestamp":1700000000000,"source"')
    assert ok_json(sh(url, "batch", with_ts, path=bare_path))["successful"] == 2


# -- tokens (a stub server that records requests) ----------------------------------------------


class Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, str | None, str | None]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else None
        self.seen.append((self.command, self.path, self.headers.get("Authorization"), body))
        if self.path.startswith("/api/state/entities/plain"):
            payload, status, kind = b"upstream exploded", 502, "text/plain"
        else:
            payload, status, kind = b'{"entities":0,"status":"ok"}', 200, "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    Recorder.seen = []
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_tokens(stub: str) -> None:
    env = {"FLUX_TOKEN": "ns-token", "FLUX_ADMIN_TOKEN": "admin-token"}
    for args in (
        ("get", "dawn-coral/sensor-01"),
        ("publish", "sensors", "a", "dawn-coral/sensor-01", '{"v":1}'),
        ("list", "--prefix", "a b"),
        ("admin-config",),
        ("admin-config", '{"max_batch_delete":3}'),
    ):
        assert sh(stub, *args, **env).returncode == 0
    methods = [(method, path, auth) for method, path, auth, _ in Recorder.seen]
    assert methods == [
        ("GET", "/api/state/entities/dawn-coral%2Fsensor-01", "Bearer ns-token"),
        ("POST", "/api/events", "Bearer ns-token"),
        ("GET", "/api/state/entities?prefix=a%20b", "Bearer ns-token"),
        ("GET", "/api/admin/config", "Bearer ns-token"),
        ("PUT", "/api/admin/config", "Bearer admin-token"),
    ]
    assert Recorder.seen[-1][3] == '{"max_batch_delete":3}'
    assert sh(stub, "connectors").returncode == 0
    assert Recorder.seen[-1][2] is None


def test_a_non_json_error_body_is_shown(stub: str) -> None:
    result = sh(stub, "get", "plain")
    assert result.returncode == 1
    assert result.stderr == "Error: upstream exploded (HTTP 502)\n"
