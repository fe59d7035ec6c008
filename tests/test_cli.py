"""The `flux` client commands, run with click's CliRunner against a real `flux serve`."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from conftest import FluxServer, free_port, module_server
from flux import _output
from flux.cli import ClientOptions, main
from flux.client import FluxClient
from flux.config import SETTINGS, shown_default

ADMIN_TOKEN = "cli-admin-secret"
CLEAN_ENV: dict[str, str | None] = {
    "FLUX_URL": None,
    "FLUX_TOKEN": None,
    "FLUX_ADMIN_TOKEN": None,
    "FLUX_PRETTY": None,
}
SEED_BATCH = """[
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"cli/sensor-01","properties":{"temp":22}}},
{"stream":"sensors","source":"agent-01","payload":{"entity_id":"cli/sensor-02","properties":{"temp":23}}}
]"""


TOMBSTONES_KEPT = 4


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """One server for the module; it has an admin token (which only admin writes need). The
    directory is off: its entity appearing mid-test would change the counts tests compare. It
    remembers only a few deletions (so a changes cursor can grow too old)."""
    env = {
        "FLUX_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        "FLUX_TOMBSTONES_KEPT": str(TOMBSTONES_KEPT),
    }
    yield from module_server(tmp_path_factory, "cli", env)


@pytest.fixture(scope="module")
def url(flux_server: FluxServer) -> str:
    return flux_server.url


def flux(url: str, *args: str, input: str | None = None, obj: Any = None, **env: str) -> Result:
    """Run `flux ARGS` with FLUX_URL=url (and only the given FLUX_* variables set)."""
    return CliRunner().invoke(
        main, list(args), input=input, obj=obj, env={**CLEAN_ENV, "FLUX_URL": url, **env}
    )


def ok_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# -- commands ----------------------------------------------------------------------------------


def test_publish_then_get_returns_the_merged_properties(url: str) -> None:
    result = flux(url, "publish", "sensors", "agent-01", "cli/room-101", '{"temperature":22.5}')
    published = ok_json(result)
    assert published["stream"] == "sensors"
    assert len(published["eventId"]) == 36
    assert result.stderr == "Publishing event to Flux...\n"
    ok_json(flux(url, "publish", "system", "monitor", "cli/room-101", '{"status":"ok"}'))
    entity = ok_json(flux(url, "get", "cli/room-101"))
    assert entity["id"] == "cli/room-101"
    assert entity["properties"] == {"temperature": 22.5, "status": "ok"}


def test_publish_reads_properties_from_stdin_and_takes_a_timestamp(url: str) -> None:
    args = ("publish", "sensors", "a", "cli/stdin", "-", "--timestamp", "1700000000000")
    ok_json(flux(url, *args, input='{"from": "stdin"}'))
    assert ok_json(flux(url, "get", "cli/stdin"))["properties"] == {"from": "stdin"}
    (event,) = ok_json(flux(url, "history", "cli/stdin"))
    assert event["timestamp"] == 1_700_000_000_000


def test_ids_are_url_encoded(url: str) -> None:
    entity_id = "cli/we ird?x=1#frag%20ü+&"
    ok_json(flux(url, "publish", "sensors", "a", entity_id, "{}"))  # creates nothing
    ok_json(flux(url, "publish", "sensors", "a", entity_id, '{"v": 1}'))
    assert ok_json(flux(url, "get", entity_id))["id"] == entity_id
    assert ok_json(flux(url, "delete", entity_id))["entity_id"] == entity_id
    assert flux(url, "get", entity_id).exit_code == 1


def test_list_with_prefix_and_namespace(url: str) -> None:
    for entity_id in ("scada/pump-01", "scada/pump-02", "scada-x/valve"):
        ok_json(flux(url, "publish", "sensors", "a", entity_id, '{"on": true}'))
    ids = {e["id"] for e in ok_json(flux(url, "list", "--prefix", "scada/"))}
    assert ids == {"scada/pump-01", "scada/pump-02"}
    ids = {e["id"] for e in ok_json(flux(url, "list", "--namespace", "scada-x"))}
    assert ids == {"scada-x/valve"}
    everything = {e["id"] for e in ok_json(flux(url, "list"))}
    assert {"scada/pump-01", "scada/pump-02", "scada-x/valve"} <= everything


def test_delete(url: str) -> None:
    ok_json(flux(url, "publish", "sensors", "a", "test/old-entity", '{"v": 1}'))
    result = flux(url, "delete", "test/old-entity")
    assert ok_json(result)["entity_id"] == "test/old-entity"
    assert result.stderr == "Deleting entity test/old-entity...\n"
    gone = flux(url, "get", "test/old-entity")
    assert gone.exit_code == 1
    assert gone.stdout == ""
    assert gone.stderr == "Error: Entity not found (HTTP 404)\n"


def test_batch_adds_missing_timestamps(url: str) -> None:
    result = flux(url, "batch", SEED_BATCH)
    summary = ok_json(result)
    assert (summary["successful"], summary["failed"]) == (2, 0)
    assert result.stderr == "Publishing batch to Flux...\n"
    assert ok_json(flux(url, "get", "cli/sensor-01"))["properties"] == {"temp": 22}
    assert ok_json(flux(url, "get", "cli/sensor-02"))["properties"] == {"temp": 23}


def test_batch_accepts_an_events_object_and_keeps_given_timestamps(url: str) -> None:
    events = {
        "events": [
            {
                "stream": "sensors",
                "source": "a",
                "timestamp": 1234,
                "payload": {"entity_id": "cli/wrapped", "properties": {"v": 1}},
            }
        ]
    }
    assert ok_json(flux(url, "batch", json.dumps(events)))["successful"] == 1
    (event,) = ok_json(flux(url, "history", "cli/wrapped"))
    assert event["timestamp"] == 1234


def test_batch_with_a_rejected_event_exits_1(url: str) -> None:
    events = [
        {
            "stream": "sensors",
            "source": "a",
            "payload": {"entity_id": "cli/half", "properties": {}},
        },
        {"stream": "Bad", "source": "a", "payload": {"entity_id": "cli/half", "properties": {}}},
    ]
    result = flux(url, "batch", json.dumps(events))
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert (summary["successful"], summary["failed"]) == (1, 1)
    assert "Error: 1 of 2 event(s) rejected" in result.stderr


def test_batch_delete(url: str) -> None:
    for name in ("a", "b"):
        ok_json(flux(url, "publish", "sensors", "x", f"cli-bulk/{name}", '{"v": 1}'))
    result = flux(url, "batch-delete", '{"prefix": "cli-bulk/"}')
    assert ok_json(result) == {
        "deleted": 2,
        "deleted_ids": ["cli-bulk/a", "cli-bulk/b"],
        "not_found": [],
        "failed": 0,
        "errors": [],
    }
    assert result.stderr == "Batch deleting entities...\n"
    assert ok_json(flux(url, "list", "--prefix", "cli-bulk/")) == []


def test_history_limit(url: str) -> None:
    for n in range(3):
        ok_json(flux(url, "publish", "sensors", "a", "cli/hist", json.dumps({"n": n})))
    events = ok_json(flux(url, "history", "cli/hist"))
    assert [e["payload"]["properties"]["n"] for e in events] == [2, 1, 0]
    (latest,) = ok_json(flux(url, "history", "cli/hist", "--limit", "1"))
    assert latest["payload"]["properties"] == {"n": 2}
    assert ok_json(flux(url, "history", "cli/hist", "--since", "2999-01-01T00:00:00Z")) == []


def test_connectors(url: str) -> None:
    names = [c["name"] for c in ok_json(flux(url, "connectors"))["connectors"]]
    assert names == ["github", "gmail", "linkedin", "calendar"]


def test_admin_config_read(url: str) -> None:
    config = ok_json(flux(url, "admin-config"))
    assert config["rate_limit_per_namespace_per_minute"] > 0


def test_admin_config_update(url: str) -> None:
    change = '{"rate_limit_per_namespace_per_minute": 5000}'
    result = flux(url, "admin-config", change, FLUX_ADMIN_TOKEN=ADMIN_TOKEN)
    assert ok_json(result)["rate_limit_per_namespace_per_minute"] == 5000
    config = ok_json(flux(url, "admin-config"))
    assert config["rate_limit_per_namespace_per_minute"] == 5000

    missing = flux(url, "admin-config", change)
    assert missing.exit_code == 1
    assert missing.stderr == "Error: FLUX_ADMIN_TOKEN not set\n"

    wrong = flux(url, "admin-config", change, FLUX_ADMIN_TOKEN="wrong")
    assert wrong.exit_code == 1
    assert wrong.stderr == "Error: Unauthorized (HTTP 401)\n"


def test_health(url: str) -> None:
    ok_json(flux(url, "publish", "sensors", "a", "cli/health", '{"v": 1}'))
    count = len(ok_json(flux(url, "list")))
    result = flux(url, "health")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"✓ Flux is reachable at {url}\n  Entities in state: {count}\n"
    assert result.stderr == f"Testing Flux connection at {url}...\n"


# -- coordination ------------------------------------------------------------------------------


def conflict(result: Result) -> Any:
    """The 409 answer a failed condition prints on stdout (exit status 3)."""
    assert result.exit_code == 3, result.output
    return json.loads(result.stdout)


def test_publish_if_absent_and_the_conflict_it_explains(url: str) -> None:
    args = ("publish", "tasks", "planner", "cli-c/task", '{"status":"open"}', "--if-absent")
    created = ok_json(flux(url, *args))
    again = flux(url, "publish", "tasks", "late", "cli-c/task", '{"status":"x"}', "--if-absent")
    answer = conflict(again)
    assert answer["current_version"] == created["sequence"]
    assert answer["current"]["properties"] == {"status": "open"}
    assert answer["expected"] == {"version": 0}
    lines = again.stderr.splitlines()
    assert lines[0] == "Publishing event to Flux..."
    assert lines[1] == (
        f"Error: condition failed: the entity exists (version {created['sequence']}); "
        "expected it not to (HTTP 409)"
    )
    assert re.fullmatch(
        rf"  entity cli-c/task: version {created['sequence']}, last changed by planner at "
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z",
        lines[2],
    ), lines[2]
    assert len(lines) == 3
    assert ok_json(flux(url, "get", "cli-c/task"))["properties"] == {"status": "open"}


def test_publish_expect_version_and_properties(url: str) -> None:
    base = ("publish", "tasks", "w1", "cli-c/job")
    version = ok_json(flux(url, *base, '{"status":"open"}'))["sequence"]
    taken = flux(url, *base, '{"status":"taken"}', "--expect", 'status="open"')
    taken_version = ok_json(taken)["sequence"]
    lost = flux(url, *base, '{"status":"mine"}', "--expect", 'status="open"')
    assert conflict(lost)["expected"] == {"properties": {"status": "open"}}
    assert "expected property 'status' to be 'open', it is 'taken'" in lost.stderr
    stale = flux(url, *base, '{"n":1}', "--expect-version", str(version))
    assert conflict(stale)["current_version"] == taken_version
    both = ("--expect-version", str(taken_version), "--expect", "owner=null", "--expect", "n=null")
    ok_json(flux(url, *base, '{"owner":"w1"}', *both))
    assert ok_json(flux(url, "get", "cli-c/job"))["properties"] == {
        "status": "taken",
        "owner": "w1",
    }
    missing = flux(url, "publish", "tasks", "w1", "cli-c/none", "{}", "--expect-version", "5")
    assert conflict(missing)["current"] is None
    assert "  entity cli-c/none does not exist (version 0)\n" in missing.stderr


def test_publish_ttl_ms(url: str) -> None:
    base = ("publish", "agents", "a", "cli-c/beat", '{"alive":true}')
    ok_json(flux(url, *base, "--ttl-ms", "60000"))
    assert ok_json(flux(url, "get", "cli-c/beat"))["properties"]["__ttl_ms__"] == 60000
    ok_json(flux(url, *base, "--ttl-ms", "0"))
    assert ok_json(flux(url, "get", "cli-c/beat"))["properties"]["__ttl_ms__"] is None


def test_leases_and_fenced_publish(url: str) -> None:
    lease = ok_json(
        flux(url, "lease", "acquire", "cli-c/lock", "--owner", "w1", "--ttl-ms", "60000")
    )
    token = lease["token"]
    assert (lease["entity_id"], lease["owner"]) == ("cli-c/lock", "w1")
    taken = flux(url, "lease", "acquire", "cli-c/lock", "--owner", "w2", "--ttl-ms", "60000")
    answer = conflict(taken)
    assert answer["current"]["properties"]["__lease__"]["owner"] == "w1"
    assert "Error: condition failed: the lease is held by 'w1' until" in taken.stderr
    assert re.search(
        rf'\n  lease: held by "w1" \(token {token}\) until \d{{4}}-\d\d-\d\dT[\d:.]+Z\n$',
        taken.stderr,
    ), taken.stderr

    fenced = ("publish", "tasks", "w1", "cli-c/lock", '{"step":1}', "--fencing-token", str(token))
    ok_json(flux(url, *fenced))
    renew = ("lease", "renew", "cli-c/lock", "--owner", "w1", "--token", str(token))
    assert ok_json(flux(url, *renew, "--ttl-ms", "30000"))["token"] == token
    wrong = ("lease", "release", "cli-c/lock", "--owner", "w2", "--token", str(token))
    conflict(flux(url, *wrong))
    release = ("lease", "release", "cli-c/lock", "--owner", "w1", "--token", str(token))
    released = ok_json(flux(url, *release))
    assert (released["entity_id"], released["released"]) == ("cli-c/lock", True)
    assert released["version"] > token
    assert ok_json(flux(url, "get", "cli-c/lock"))["properties"]["__lease__"] is None
    conflict(flux(url, *renew, "--ttl-ms", "30000"))  # lost: stop acting on its behalf
    newer = flux(url, "lease", "acquire", "cli-c/lock", "--owner", "w2", "--ttl-ms", "60000")
    assert ok_json(newer)["token"] > token
    stale = flux(url, *fenced)
    assert "fencing token" in stale.stderr and "stale" in stale.stderr
    assert conflict(stale)["expected"] == {"fencing_token": token}


def test_a_presence_lease_with_properties(url: str) -> None:
    acquire = ("lease", "acquire", "cli-c/agent-7", "--owner", "agent-7", "--ttl-ms", "60000")
    lease = ok_json(flux(url, *acquire, "--presence", "--properties", '{"skills":["scrape"]}'))
    entity = ok_json(flux(url, "get", "cli-c/agent-7"))
    assert entity["properties"]["skills"] == ["scrape"]
    assert entity["properties"]["__lease__"]["presence"] is True
    token = str(lease["token"])
    release = ("lease", "release", "cli-c/agent-7", "--owner", "agent-7", "--token", token)
    ok_json(flux(url, *release))
    assert flux(url, "get", "cli-c/agent-7").exit_code == 1


def claim_events(task_version: int, worker_version: int) -> list[dict[str, Any]]:
    return [
        {
            "stream": "tasks",
            "source": "w1",
            "expected_version": task_version,
            "payload": {"entity_id": "cli-c/b-task", "properties": {"status": "taken"}},
        },
        {
            "stream": "tasks",
            "source": "w1",
            "expected_version": worker_version,
            "payload": {"entity_id": "cli-c/b-worker", "properties": {"busy": True}},
        },
    ]


def test_batch_atomic(url: str) -> None:
    task = ok_json(flux(url, "publish", "tasks", "p", "cli-c/b-task", '{"status":"open"}'))
    worker = ok_json(flux(url, "publish", "tasks", "p", "cli-c/b-worker", '{"busy":false}'))
    wrong = json.dumps(claim_events(task["sequence"], worker["sequence"] + 50))
    refused = flux(url, "batch", "--atomic", wrong)
    answer = conflict(refused)
    assert (answer["index"], answer["entity_id"]) == (1, "cli-c/b-worker")
    assert (
        f"\n  event 1 of the atomic batch: entity cli-c/b-worker: version {worker['sequence']}, "
        "last changed by p at " in refused.stderr
    )
    assert ok_json(flux(url, "get", "cli-c/b-task"))["properties"] == {"status": "open"}
    # "atomic": true in the object does the same
    wrapped = json.dumps({"events": json.loads(wrong), "atomic": True})
    assert conflict(flux(url, "batch", wrapped))["index"] == 1

    right = json.dumps(claim_events(task["sequence"], worker["sequence"]))
    done = ok_json(flux(url, "batch", right, "--atomic"))
    sequences = [r["sequence"] for r in done["results"]]
    assert sequences[1] == sequences[0] + 1


def test_a_batch_whose_only_rejections_are_conditions_exits_3(url: str) -> None:
    version = ok_json(flux(url, "publish", "tasks", "p", "cli-c/nb", '{"n":0}'))["sequence"]
    stale = {
        "stream": "tasks",
        "source": "a",
        "expected_version": version + 100,
        "payload": {"entity_id": "cli-c/nb", "properties": {"n": 1}},
    }
    fine = {
        "stream": "tasks",
        "source": "a",
        "payload": {"entity_id": "cli-c/nb2", "properties": {"n": 1}},
    }
    result = flux(url, "batch", json.dumps([stale, fine]))
    assert result.exit_code == 3, result.output
    summary = json.loads(result.stdout)
    assert (summary["successful"], summary["failed"]) == (1, 1)
    assert result.stderr.endswith(
        "Error: 1 of 2 event(s) rejected (see results)\n"
        f"  event 0: condition failed: expected version {version + 100}, "
        f"current version is {version}\n"
    )
    bad = {**fine, "stream": "Bad"}
    mixed = flux(url, "batch", json.dumps([stale, bad]))
    assert mixed.exit_code == 1
    assert "Error: 2 of 2 event(s) rejected (see results)" in mixed.stderr


def test_changes_one_page_at_a_time(url: str) -> None:
    cursor = ok_json(flux(url, "publish", "feed", "p", "cli-feed/zero", '{"i":-1}'))["sequence"]
    for i in range(3):
        ok_json(flux(url, "publish", "feed", "p", f"cli-feed/e{i}", json.dumps({"i": i})))
    ok_json(flux(url, "delete", "cli-feed/e1"))
    first = flux(url, "changes", "--since", str(cursor), "--prefix", "cli-feed/", "--limit", "1")
    page = ok_json(first)
    assert [e["id"] for e in page["changes"]] == ["cli-feed/e0"]
    assert page["more"] is True
    assert first.stderr == f"More changes are waiting: flux changes --since {page['next']}\n"
    rest = flux(url, "changes", "--since", str(page["next"]), "--namespace", "cli-feed")
    last = ok_json(rest)
    assert [e["id"] for e in last["changes"]] == ["cli-feed/e2"]
    assert last["deleted"] == [{"id": "cli-feed/e1", "version": last["next"]}]
    assert last["more"] is False and rest.stderr == ""


def test_changes_follow_prints_each_new_page(url: str) -> None:
    cursor = ok_json(flux(url, "publish", "feed", "p", "cli-follow/a", '{"n":1}'))["sequence"]

    def later() -> None:
        time.sleep(0.4)
        with FluxClient(url) as writer:
            writer.publish("feed", "p", "cli-follow/b", {"n": 2})
            writer.delete("cli-follow/a")

    writer = threading.Thread(target=later)
    writer.start()
    follow = ("changes", "--since", str(cursor - 1), "--prefix", "cli-follow/", "--follow")
    result = flux(url, *follow, "--interval", "0.05", "--timeout", "3")
    writer.join()
    assert result.exit_code == 0, result.output
    pages = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(pages) >= 2  # what was there, then what came later; no empty pages
    assert all(p["changes"] or p["deleted"] for p in pages)
    assert pages[0]["changes"][0]["id"] == "cli-follow/a"
    later_ids = [e["id"] for p in pages[1:] for e in p["changes"]]
    assert "cli-follow/b" in later_ids
    assert pages[-1]["deleted"][-1]["id"] == "cli-follow/a"
    assert result.stderr == (
        f"Following changes after version {cursor - 1} at {url} (Ctrl-C stops)...\n"
    )


def test_changes_from_a_forgotten_version_exits_4(url: str) -> None:
    cursor = ok_json(flux(url, "publish", "feed", "p", "cli-old/first", '{"n":1}'))["sequence"]
    for i in range(TOMBSTONES_KEPT + 1):
        ok_json(flux(url, "publish", "feed", "p", f"cli-old/d{i}", '{"n":1}'))
        ok_json(flux(url, "delete", f"cli-old/d{i}"))
    result = flux(url, "changes", "--since", str(cursor))
    assert result.exit_code == 4, result.output
    assert result.stdout == ""
    assert "(FLUX_TOMBSTONES_KEPT)" in result.stderr and "(HTTP 410)" in result.stderr
    version = re.search(r"flux changes --since (\d+)\)\n$", result.stderr)
    assert version is not None, result.stderr
    ok_json(flux(url, "changes", "--since", version.group(1)))


# -- output ------------------------------------------------------------------------------------


def test_output_is_compact_when_piped_and_pretty_on_a_terminal(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok_json(flux(url, "publish", "sensors", "a", "cli/pretty", '{"t": 1}'))
    piped = flux(url, "get", "cli/pretty")
    assert piped.stdout.count("\n") == 1
    assert piped.stdout.startswith('{"id":"cli/pretty","properties":{"t":1},')

    monkeypatch.setattr(_output, "stdout_is_terminal", lambda: True)
    on_terminal = flux(url, "get", "cli/pretty")
    assert on_terminal.stdout.startswith('{\n  "id": "cli/pretty",\n  "properties": {\n    "t": 1')
    assert json.loads(on_terminal.stdout) == json.loads(piped.stdout)
    forced_compact = flux(url, "get", "cli/pretty", FLUX_PRETTY="0")
    assert forced_compact.stdout == piped.stdout
    assert flux(url, "--compact", "get", "cli/pretty").stdout == piped.stdout


def test_pretty_flag_and_env(url: str) -> None:
    ok_json(flux(url, "publish", "sensors", "a", "cli/pretty2", '{"t": "ü"}'))
    flag = flux(url, "--pretty", "get", "cli/pretty2")
    assert flag.stdout.startswith('{\n  "id": "cli/pretty2",')
    assert '"t": "ü"' in flag.stdout
    assert flux(url, "get", "cli/pretty2", FLUX_PRETTY="1").stdout == flag.stdout


def test_url_option_wins_over_env(url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = CliRunner().invoke(
        main, ["--url", url, "connectors"], env={**CLEAN_ENV, "FLUX_URL": dead}
    )
    assert ok_json(result)["connectors"]


# -- errors ------------------------------------------------------------------------------------


def test_server_error_prints_message_and_status(url: str) -> None:
    result = flux(url, "publish", "Sensors", "a", "cli/x", '{"v": 1}')
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.endswith(
        "Error: invalid stream format 'Sensors': must be lowercase with optional dots (HTTP 400)\n"
    )
    bad_since = flux(url, "history", "cli/x", "--since", "yesterday")
    assert bad_since.exit_code == 1
    assert "Error: invalid `since` timestamp (expected ISO 8601) (HTTP 400)" in bad_since.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("publish", "s", "a", "cli/x", "{nope"), "not valid JSON"),
        (("publish", "s", "a", "cli/x", "[1, 2]"), "expected an object, got an array"),
        (("publish", "s", "a", "cli/x", '{"v": NaN}'), "NaN is not valid JSON"),
        (("publish", "s", "a", "cli/x"), "Missing argument 'PROPERTIES_JSON'"),
        (("batch", '"x"'), "expected an array or an object, got a string"),
        (("batch", '{"events": 3}'), 'expected an array of events or {"events": [...]}'),
        (("batch-delete", "[]"), "expected an object, got an array"),
        (("admin-config", "5"), "expected an object, got a number"),
        (("history", "cli/x", "--limit", "0"), "0 is not in the range 1<=x<=500"),
        (("publish", "s", "a", "cli/x", "{}", "--expect", "status=open"), "'open' is not JSON"),
        (("publish", "s", "a", "cli/x", "{}", "--expect", "status"), "expected KEY=JSON"),
        (("publish", "s", "a", "cli/x", "{}", "--expect", "=1"), "expected KEY=JSON"),
        (
            ("publish", "s", "a", "cli/x", "{}", "--if-absent", "--expect-version", "3"),
            "--if-absent means --expect-version 0",
        ),
        (("publish", "s", "a", "cli/x", "{}", "--expect-version", "-1"), "x>=0"),
        (("publish", "s", "a", "cli/x", "{}", "--fencing-token", "0"), "x>=1"),
        (("lease", "acquire", "cli/x", "--ttl-ms", "5"), "Missing option '--owner'"),
        (("lease", "acquire", "cli/x", "--owner", "o"), "Missing option '--ttl-ms'"),
        (("lease", "renew", "cli/x", "--owner", "o", "--ttl-ms", "5"), "Missing option '--token'"),
        (("lease", "release", "cli/x", "--owner", "o", "--token", "0"), "x>=1"),
        (
            ("lease", "acquire", "cli/x", "--owner", "o", "--ttl-ms", "5", "--properties", "[]"),
            "expected an object, got an array",
        ),
        (("changes", "--timeout", "1"), "--timeout goes with --follow"),
        (("changes", "--since", "-1"), "x>=0"),
        (("get",), "Missing argument 'ENTITY_ID'"),
        (("nope",), "No such command 'nope'"),
    ],
)
def test_usage_errors_exit_2(url: str, args: tuple[str, ...], message: str) -> None:
    result = flux(url, *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr
    assert result.stdout == ""


def test_unreachable_server(url: str) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    result = flux(dead, "get", "cli/x")
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot reach Flux at {dead}: ")

    health = flux(dead, "health")
    assert health.exit_code == 1
    assert health.stdout == ""
    assert f"✗ Failed to reach Flux at {dead}: " in health.stderr


def test_health_of_something_that_is_not_flux(url: str) -> None:
    result = flux(url + "/not-flux", "health")
    assert result.exit_code == 1
    assert "✗ Failed to reach Flux at" in result.stderr
    assert "(HTTP 404)" in result.stderr


# -- tokens (canned replies) -------------------------------------------------------------------


def test_flux_token_is_sent_on_every_call() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        if request.url.path == "/api/state/entities":
            return httpx.Response(200, json=[])
        return httpx.Response(200, json={"entities": 0, "status": "ok"})

    options = ClientOptions(transport=httpx.MockTransport(handler))
    env = {"FLUX_TOKEN": "ns-token", "FLUX_ADMIN_TOKEN": "admin-token"}
    for args in (["list"], ["health"], ["get", "a/b"], ["admin-config"], ["admin-config", "{}"]):
        result = flux("http://flux.test", *args, obj=options, **env)
        assert result.exit_code == 0, result.output
    assert seen == ["Bearer ns-token"] * 4 + ["Bearer admin-token"]


# -- help --------------------------------------------------------------------------------------

COMMANDS = [
    "publish",
    "batch",
    "get",
    "list",
    "delete",
    "batch-delete",
    "history",
    "changes",
    "lease",
    "connectors",
    "admin-config",
    "health",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, [command, "--help"], prog_name="flux")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: flux {command} ")
    summary = result.stdout.split("\n\n")[1].strip()
    assert summary and summary.endswith(".")
    assert "Example" in result.stdout
    assert f"flux {command}" in result.stdout


@pytest.mark.parametrize("command", ["acquire", "renew", "release"])
def test_every_lease_command_has_help_with_an_example(command: str) -> None:
    result = CliRunner().invoke(main, ["lease", command, "--help"], prog_name="flux")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: flux lease {command} [OPTIONS] ENTITY_ID")
    assert "Example" in result.stdout
    assert f"flux lease {command} dawn-coral/" in result.stdout


def test_group_help_lists_commands_and_environment() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout
    for variable in ("FLUX_URL", "FLUX_TOKEN", "FLUX_ADMIN_TOKEN"):
        assert variable in result.stdout
    assert "3 condition failed (409" in result.stdout
    assert "4 changes cursor too old (410" in result.stdout


def test_serve_help_shows_every_setting_with_its_declared_default() -> None:
    result = CliRunner().invoke(main, ["serve", "--help"], prog_name="flux")
    assert result.exit_code == 0
    flags = {p.name: getattr(p, "help", None) for p in main.commands["serve"].params}
    assert flags["host"] == "Address to bind [default: 127.0.0.1, $FLUX_HOST]."
    assert flags["port"] == "TCP port [default: 3000, $PORT]."
    assert flags["data_dir"] == (
        "Where the event log and snapshots live [default: ./flux-data, $FLUX_DATA_DIR]."
    )
    for setting in SETTINGS:
        runtime = ", runtime" if setting.runtime else ""
        assert f"  {setting.env} [default: {shown_default(setting)}{runtime}]\n" in result.stdout


def test_serve_nats_flag_is_checked_like_its_setting() -> None:
    """`--nats` takes what FLUX_NATS_URL takes (tests/test_nodes.py runs a node started with
    it beside nodes started with the variable, on one stream); a bad value is a usage error
    before anything starts."""
    flags = {p.name: getattr(p, "help", None) for p in main.commands["serve"].params}
    assert flags["nats_url"] is not None
    assert flags["nats_url"].endswith("[default: (empty), $FLUX_NATS_URL].")
    result = CliRunner().invoke(main, ["serve", "--nats", "nats://host-without-port"])
    assert result.exit_code == 2
    assert "Invalid value for --nats:" in result.stderr
    assert "'nats://host-without-port' is not a NATS server (nats://host:port)" in result.stderr
