"""scripts/flux.sh, run with bash against a real `flux serve`: every command as the seed's docs
write it, plus escaping, URL encoding, output modes and exit codes."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from conftest import REPO, FluxServer, free_port, module_server
from localhttp import QuietHTTPServer

SCRIPT = REPO / "scripts" / "flux.sh"
ADMIN_TOKEN = "sh-admin-secret"

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="flux.sh needs curl")

# The seed's batch example, verbatim (its events have no timestamp).
SEED_BATCH = """[
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"dawn-coral/sensor-01","properties":{"temp":22}}},
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"dawn-coral/sensor-02","properties":{"temp":23}}}
]"""


TOMBSTONES_KEPT = 4


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """One server for the module; it has an admin token (which only admin writes need) and
    remembers only a few deletions (so a changes cursor can grow too old)."""
    env = {"FLUX_ADMIN_TOKEN": ADMIN_TOKEN, "FLUX_TOMBSTONES_KEPT": str(TOMBSTONES_KEPT)}
    yield from module_server(tmp_path_factory, "sh", env)


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
    # The server writes its own directory entity on a timer, so the count may grow by it
    # between two calls: the health's count is the one before or after it.
    before = len(ok_json(sh(url, "list")))
    result = sh(url, "health")
    after = len(ok_json(sh(url, "list")))
    assert result.returncode == 0, result.stderr
    assert result.stdout in {
        f"✓ Flux is reachable\n  Entities in state: {count}\n" for count in (before, after)
    }
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


# -- coordination ------------------------------------------------------------------------------


def conflict(result: subprocess.CompletedProcess[str]) -> Any:
    """The 409 answer a failed condition prints on stdout (exit status 3)."""
    assert result.returncode == 3, result.stderr
    return json.loads(result.stdout)


ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def test_publish_if_absent_and_the_conflict_it_explains(url: str) -> None:
    args = ("publish", "tasks", "planner", "sh-c/task", '{"status":"open"}', "--if-absent")
    created = ok_json(sh(url, *args))
    again = sh(url, "publish", "tasks", "late", "sh-c/task", '{"status":"x"}', "--if-absent")
    answer = conflict(again)
    assert answer["current_version"] == created["sequence"]
    assert answer["current"]["properties"] == {"status": "open"}
    lines = again.stderr.splitlines()
    assert lines[:2] == [
        "Publishing event to Flux...",
        f"Error: condition failed: the entity exists (version {created['sequence']}); "
        "expected it not to (HTTP 409)",
    ]
    assert re.fullmatch(
        rf"  entity sh-c/task: version {created['sequence']}, last changed by planner at {ISO}",
        lines[2],
    ), lines[2]
    assert len(lines) == 3
    assert ok_json(sh(url, "get", "sh-c/task"))["properties"] == {"status": "open"}


def test_publish_conditions_and_ttl(url: str) -> None:
    base = ("publish", "tasks", "w1", "sh-c/job")
    version = ok_json(sh(url, *base, '{"status":"open"}'))["sequence"]
    taken = ok_json(sh(url, *base, '{"status":"taken"}', "--expect", 'status="open"'))
    lost = sh(url, *base, '{"status":"mine"}', "--expect", 'status="open"')
    assert conflict(lost)["expected"] == {"properties": {"status": "open"}}
    stale = sh(url, *base, '{"n":1}', "--expect-version", str(version))
    assert conflict(stale)["current_version"] == taken["sequence"]
    both = (f"--expect-version={taken['sequence']}", "--expect=owner=null", "--ttl-ms", "60000")
    ok_json(sh(url, *base, '{"owner":"w1"}', *both))
    props = ok_json(sh(url, "get", "sh-c/job"))["properties"]
    assert props == {"status": "taken", "owner": "w1", "__ttl_ms__": 60000}
    ok_json(sh(url, *base, "{}", "--ttl-ms", "0"))
    assert ok_json(sh(url, "get", "sh-c/job"))["properties"]["__ttl_ms__"] is None
    missing = sh(url, "publish", "tasks", "w1", "sh-c/none", "{}", "--expect-version", "007")
    assert conflict(missing)["expected"] == {"version": 7}
    assert "  entity sh-c/none does not exist (version 0)\n" in missing.stderr


def test_leases_and_fenced_publish(url: str) -> None:
    lease = ok_json(sh(url, "lease", "acquire", "sh-c/lock", "--owner", "w1", "--ttl-ms", "60000"))
    token = str(lease["token"])
    assert (lease["entity_id"], lease["owner"]) == ("sh-c/lock", "w1")
    taken = sh(url, "lease", "acquire", "sh-c/lock", "--owner=w2", "--ttl-ms=60000")
    assert conflict(taken)["current"]["properties"]["__lease__"]["owner"] == "w1"
    assert re.search(rf'\n  lease: held by "w1" \(token {token}\) until {ISO}\n$', taken.stderr), (
        taken.stderr
    )

    fenced = ("publish", "tasks", "w1", "sh-c/lock", '{"step":1}', "--fencing-token", token)
    ok_json(sh(url, *fenced))
    renew = ("lease", "renew", "sh-c/lock", "--owner", "w1", "--token", token, "--ttl-ms", "30000")
    assert ok_json(sh(url, *renew))["token"] == lease["token"]
    conflict(sh(url, "lease", "release", "sh-c/lock", "--owner", "w2", "--token", token))
    released = ok_json(sh(url, "lease", "release", "sh-c/lock", "--owner", "w1", "--token", token))
    assert (released["entity_id"], released["released"]) == ("sh-c/lock", True)
    conflict(sh(url, *renew))
    ok_json(sh(url, "lease", "acquire", "sh-c/lock", "--owner", "w2", "--ttl-ms", "60000"))
    stale = sh(url, *fenced)
    assert conflict(stale)["expected"] == {"fencing_token": lease["token"]}
    assert "stale" in stale.stderr


def test_a_presence_lease_with_properties(url: str) -> None:
    acquire = ("lease", "acquire", "sh-c/agent-7", "--owner", "agent-7", "--ttl-ms", "60000")
    lease = ok_json(sh(url, *acquire, "--presence", "--properties", '{"skills":["scrape"]}'))
    props = ok_json(sh(url, "get", "sh-c/agent-7"))["properties"]
    assert props["skills"] == ["scrape"] and props["__lease__"]["presence"] is True
    token = str(lease["token"])
    ok_json(sh(url, "lease", "release", "sh-c/agent-7", "--owner", "agent-7", "--token", token))
    assert sh(url, "get", "sh-c/agent-7").returncode == 1


def claim(task_version: int, worker_version: int) -> list[dict[str, Any]]:
    return [
        {
            "stream": "tasks",
            "source": "w1",
            "expected_version": task_version,
            "payload": {"entity_id": "sh-c/b-task", "properties": {"status": "taken"}},
        },
        {
            "stream": "tasks",
            "source": "w1",
            "expected_version": worker_version,
            "payload": {"entity_id": "sh-c/b-worker", "properties": {"busy": True}},
        },
    ]


def test_batch_atomic(url: str) -> None:
    task = ok_json(sh(url, "publish", "tasks", "p", "sh-c/b-task", '{"status":"open"}'))
    worker = ok_json(sh(url, "publish", "tasks", "p", "sh-c/b-worker", '{"busy":false}'))
    wrong = json.dumps(claim(task["sequence"], worker["sequence"] + 50))
    refused = sh(url, "batch", "--atomic", wrong)
    assert conflict(refused)["index"] == 1
    assert (
        f"\n  event 1 of the atomic batch: entity sh-c/b-worker: version {worker['sequence']}, "
        in refused.stderr
    )
    assert ok_json(sh(url, "get", "sh-c/b-task"))["properties"] == {"status": "open"}
    wrapped = json.dumps({"events": json.loads(wrong), "atomic": True})
    assert conflict(sh(url, "batch", wrapped))["index"] == 1
    right = json.dumps(claim(task["sequence"], worker["sequence"]))
    sequences = [r["sequence"] for r in ok_json(sh(url, "batch", right, "--atomic"))["results"]]
    assert sequences[1] == sequences[0] + 1


def test_a_batch_whose_only_rejections_are_conditions_exits_3(url: str) -> None:
    version = ok_json(sh(url, "publish", "tasks", "p", "sh-c/nb", '{"n":0}'))["sequence"]
    stale = {
        "stream": "tasks",
        "source": "a",
        "expected_version": version + 100,
        "payload": {"entity_id": "sh-c/nb", "properties": {"n": 1}},
    }
    fine = {"stream": "tasks", "source": "a", "payload": {"entity_id": "sh-c/nb", "properties": {}}}
    result = sh(url, "batch", json.dumps([stale, fine]))
    assert result.returncode == 3, result.stderr
    assert json.loads(result.stdout)["failed"] == 1
    assert result.stderr.endswith(
        'Error: 1 event(s) rejected (see "results")\n'
        '  a condition failed for each of them (see their "conflict")\n'
    )
    mixed = sh(url, "batch", json.dumps([stale, {**fine, "stream": "Bad"}]))
    assert mixed.returncode == 1
    assert mixed.stderr.endswith('Error: 2 event(s) rejected (see "results")\n')


def test_changes_one_page_at_a_time(url: str) -> None:
    cursor = ok_json(sh(url, "publish", "feed", "p", "sh-feed/zero", '{"i":-1}'))["sequence"]
    for i in range(3):
        ok_json(sh(url, "publish", "feed", "p", f"sh-feed/e{i}", json.dumps({"i": i})))
    ok_json(sh(url, "delete", "sh-feed/e1"))
    first = sh(url, "changes", "--since", str(cursor), "--prefix", "sh-feed/", "--limit", "1")
    page = ok_json(first)
    assert [e["id"] for e in page["changes"]] == ["sh-feed/e0"]
    assert page["more"] is True
    assert first.stderr == f"More changes are waiting: flux.sh changes --since {page['next']}\n"
    rest = sh(url, "changes", f"--since={page['next']}", "--namespace", "sh-feed")
    last = ok_json(rest)
    assert [e["id"] for e in last["changes"]] == ["sh-feed/e2"]
    assert last["deleted"] == [{"id": "sh-feed/e1", "version": last["next"]}]
    assert last["more"] is False and rest.stderr == ""


def test_changes_follow_prints_each_new_page(url: str) -> None:
    cursor = ok_json(sh(url, "publish", "feed", "p", "sh-follow/a", '{"n":1}'))["sequence"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("FLUX_")}
    command = [str(SCRIPT), "changes", "--since", str(cursor - 1), "--prefix", "sh-follow/"]
    follower = subprocess.Popen(
        [*command, "--follow", "--interval", "0.05"],
        env={**environ, "FLUX_URL": url},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert follower.stdout is not None
        first = json.loads(follower.stdout.readline())
        assert [e["id"] for e in first["changes"]] == ["sh-follow/a"]
        ok_json(sh(url, "publish", "feed", "p", "sh-follow/b", '{"n":2}'))
        second = json.loads(follower.stdout.readline())
        assert [e["id"] for e in second["changes"]] == ["sh-follow/b"]
        assert second["next"] > first["next"]
        ok_json(sh(url, "delete", "sh-follow/a"))
        third = json.loads(follower.stdout.readline())
        assert third["changes"] == [] and [d["id"] for d in third["deleted"]] == ["sh-follow/a"]
        assert follower.poll() is None  # still following
    finally:
        os.killpg(follower.pid, 15)
        _, stderr = follower.communicate(timeout=10)
    assert stderr.startswith(f"Following changes after version {cursor - 1} at {url}")


def test_changes_from_a_forgotten_version_exits_4(url: str) -> None:
    cursor = ok_json(sh(url, "publish", "feed", "p", "sh-old/first", '{"n":1}'))["sequence"]
    for i in range(TOMBSTONES_KEPT + 1):
        ok_json(sh(url, "publish", "feed", "p", f"sh-old/d{i}", '{"n":1}'))
        ok_json(sh(url, "delete", f"sh-old/d{i}"))
    result = sh(url, "changes", "--since", str(cursor))
    assert result.returncode == 4, result.stderr
    assert result.stdout == ""
    assert "(FLUX_TOMBSTONES_KEPT)" in result.stderr and "(HTTP 410)" in result.stderr
    version = re.search(r"flux.sh changes --since (\d+)\)\n$", result.stderr)
    assert version is not None, result.stderr
    ok_json(sh(url, "changes", "--since", version.group(1)))


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
        (("publish", "s", "a", "x/y", "{}", "--bogus"), "usage: flux.sh publish STREAM"),
        (("publish", "s", "a", "x/y", "{}", "--expect-version"), "--expect-version needs a value"),
        (
            ("publish", "s", "a", "x/y", "{}", "--expect-version", "-1"),
            "a whole number of at least 0",
        ),
        (
            ("publish", "s", "a", "x/y", "{}", "--fencing-token", "0"),
            "a whole number of at least 1",
        ),
        (
            ("publish", "s", "a", "x/y", "{}", "--ttl-ms", "1.5"),
            "--ttl-ms: expected a whole number",
        ),
        (("publish", "s", "a", "x/y", "{}", "--expect", "status"), "--expect: expected KEY=JSON"),
        (("publish", "s", "a", "x/y", "{}", "--expect", "=1"), "--expect: expected KEY=JSON"),
        (("publish", "s", "a", "x/y", "{}", "--expect", "s=open"), "a string needs quotes"),
        (
            ("publish", "s", "a", "x/y", "{}", "--if-absent", "--expect-version", "3"),
            "--if-absent means --expect-version 0",
        ),
        (("batch", "--atomic"), "usage: flux.sh batch EVENTS_JSON [--atomic]"),
        (("lease",), "usage: flux.sh lease acquire|renew|release"),
        (("lease", "take", "x/y"), "usage: flux.sh lease acquire|renew|release"),
        (("lease", "acquire"), "usage: flux.sh lease acquire ENTITY_ID"),
        (("lease", "acquire", "x/y", "--ttl-ms", "5"), "--owner is required"),
        (("lease", "acquire", "x/y", "--owner", "o"), "--ttl-ms is required"),
        (
            ("lease", "acquire", "x/y", "--owner", "o", "--token", "3"),
            "usage: flux.sh lease acquire",
        ),
        (("lease", "renew", "x/y", "--owner", "o", "--ttl-ms", "5"), "--token is required"),
        (
            ("lease", "release", "x/y", "--owner", "o", "--token", "3", "--ttl-ms", "5"),
            "usage: flux.sh lease release",
        ),
        (("lease", "release", "x/y", "--owner", "o", "--presence"), "usage: flux.sh lease release"),
        (("lease", "release", "x/y", "--owner"), "--owner needs a value"),
        (
            ("lease", "acquire", "x/y", "--owner", "o", "--ttl-ms", "5", "--properties", "[1]"),
            "--properties: expected a JSON object",
        ),
        (("changes", "--since", "x"), "--since: expected a whole number"),
        (("changes", "--limit", "0"), "--limit: expected a whole number of at least 1"),
        (("changes", "--interval", "0"), "--interval: expected a number of seconds"),
        (("changes", "--bogus"), "usage: flux.sh changes"),
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
    for word in ("--expect-version", "--if-absent", "--atomic", "lease acquire", "changes"):
        assert word in result.stdout
    assert "3 condition failed" in result.stdout and "4 changes cursor too old" in result.stdout


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


def test_coordination_with_only_bash_and_curl(url: str, bare_path: str) -> None:
    base = ("publish", "tasks", "w1", "sh-bare/task")
    created = ok_json(sh(url, *base, '{"status":"open"}', "--if-absent", path=bare_path))
    again = sh(url, *base, '{"status":"open"}', "--if-absent", path=bare_path)
    assert conflict(again)["current_version"] == created["sequence"]
    # without python3 or jq the conflict note is the version alone
    assert again.stderr.endswith(f"(HTTP 409)\n  current version: {created['sequence']}\n")
    taken = sh(url, *base, '{"status":"taken"}', "--expect", 'status="open"', path=bare_path)
    ok_json(taken)
    lease = ("lease", "acquire", "sh-bare/task", "--owner", "w1", "--ttl-ms", "60000")
    ok_json(sh(url, *lease, "--properties", '{"by":"w1"}', path=bare_path))
    events = json.dumps(
        [
            {
                "stream": "tasks",
                "source": "w1",
                "timestamp": 1,
                "expected_version": 1,
                "payload": {"entity_id": "sh-bare/task", "properties": {"n": 1}},
            }
        ]
    )
    assert conflict(sh(url, "batch", events, "--atomic", path=bare_path))["index"] == 0
    wrapped = json.dumps({"events": json.loads(events), "atomic": False})
    assert conflict(sh(url, "batch", wrapped, "--atomic", path=bare_path))["index"] == 0
    cursor = str(created["sequence"] - 1)
    page = ok_json(sh(url, "changes", "--since", cursor, "--prefix", "sh-bare/", path=bare_path))
    assert [e["id"] for e in page["changes"]] == ["sh-bare/task"]


@pytest.mark.skipif(shutil.which("jq") is None, reason="checks the jq variants")
def test_coordination_with_jq_and_without_python(url: str, bare_path: str) -> None:
    jq = shutil.which("jq")
    assert jq is not None
    (Path(bare_path) / "jq").symlink_to(jq)
    lease = ("lease", "acquire", "sh-jq/lock", "--ttl-ms", "60000")
    held = ok_json(sh(url, *lease, "--owner", "w1", path=bare_path))
    taken = sh(url, *lease, "--owner", "w2", path=bare_path)
    conflict(taken)
    assert re.search(
        rf"\n  entity sh-jq/lock: version {held['version']}, last changed by w1 at {ISO}\n"
        rf'  lease: held by "w1" \(token {held["token"]}\) until {ISO}\n$',
        taken.stderr,
    ), taken.stderr
    bad = sh(url, "publish", "s", "a", "sh-jq/x", "{}", "--expect", "s=open", path=bare_path)
    assert bad.returncode == 2 and "a string needs quotes" in bad.stderr
    event = {
        "stream": "tasks",
        "source": "w1",
        "expected_version": held["version"] + 50,
        "payload": {"entity_id": "sh-jq/lock", "properties": {"n": 1}},
    }
    refused = sh(url, "batch", json.dumps({"events": [event], "atomic": True}), path=bare_path)
    assert conflict(refused)["index"] == 0
    assert "\n  event 0 of the atomic batch: entity sh-jq/lock: version " in refused.stderr


def test_batch_without_python_goes_as_given_and_the_server_stamps_it(
    url: str, bare_path: str
) -> None:
    """Without python3 or jq the events go as given: the seed example, without timestamps,
    takes the server's time."""
    sent = ok_json(sh(url, "batch", SEED_BATCH, path=bare_path))
    assert sent["successful"] == 2


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
    server = QuietHTTPServer(("127.0.0.1", 0), Recorder)
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


def test_request_bodies(stub: str) -> None:
    """A plain publish sends what it always sent; the options add top-level fields."""
    entity = ("publish", "tasks", "w1", "ns/t", '{"s":1}')
    assert sh(stub, *entity).returncode == 0
    options = ("--expect-version", "3", "--expect", "s=null", "--expect", 'k="v"')
    more = ("--fencing-token", "9", "--ttl-ms", "0")
    assert sh(stub, *entity, *options, *more).returncode == 0
    assert sh(stub, "lease", "acquire", "ns/l", "--owner", "w1", "--ttl-ms", "500").returncode == 0
    presence = ("--presence", "--properties", '{"on":true}')
    assert (
        sh(stub, "lease", "acquire", "ns/p", "--owner", "o", "--ttl-ms", "5", *presence).returncode
        == 0
    )
    renew = ("lease", "renew", "ns/l", "--owner", "w1", "--token", "4", "--ttl-ms", "600")
    assert sh(stub, *renew).returncode == 0
    assert sh(stub, "lease", "release", "ns/l", "--owner", "w1", "--token", "4").returncode == 0
    assert sh(stub, "changes", "--prefix", "a b", "--limit", "5").returncode == 0
    seen = [(method, path, body) for method, path, _, body in Recorder.seen]
    head = '{"stream":"tasks","source":"w1","timestamp":'
    payload = '"payload":{"entity_id":"ns/t","properties":{"s":1}}'
    assert seen[0][2] is not None
    assert re.fullmatch(re.escape(head) + r"\d{13}," + re.escape(payload + "}"), seen[0][2])
    assert seen[1][2] is not None
    assert seen[1][2].endswith(
        payload + ',"fencing_token":9,"ttl_ms":0,"expected_version":3,'
        '"expected_properties":{"s":null,"k":"v"}}'
    )
    assert seen[2:] == [
        ("POST", "/api/leases/acquire", '{"entity_id":"ns/l","owner":"w1","ttl_ms":500}'),
        (
            "POST",
            "/api/leases/acquire",
            '{"entity_id":"ns/p","owner":"o","ttl_ms":5,"presence":true,"properties":{"on":true}}',
        ),
        (
            "POST",
            "/api/leases/renew",
            '{"entity_id":"ns/l","owner":"w1","token":4,"ttl_ms":600}',
        ),
        ("POST", "/api/leases/release", '{"entity_id":"ns/l","owner":"w1","token":4}'),
        ("GET", "/api/state/changes?since=0&prefix=a%20b&limit=5", None),
    ]


def test_a_non_json_error_body_is_shown(stub: str) -> None:
    result = sh(stub, "get", "plain")
    assert result.returncode == 1
    assert result.stderr == "Error: upstream exploded (HTTP 502)\n"
