"""The `flux` client commands, run with click's CliRunner against a real `flux serve`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from conftest import FluxServer, free_port, module_server
from flux import _output
from flux.cli import ClientOptions, main
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


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """One server for the module; it has an admin token (which only admin writes need). The
    directory is off: its entity appearing mid-test would change the counts tests compare."""
    env = {"FLUX_ADMIN_TOKEN": ADMIN_TOKEN, "FLUX_DIRECTORY_INTERVAL_SECONDS": "0"}
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


def test_group_help_lists_commands_and_environment() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for command in COMMANDS:
        assert f"  {command} " in result.stdout
    for variable in ("FLUX_URL", "FLUX_TOKEN", "FLUX_ADMIN_TOKEN"):
        assert variable in result.stdout


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
