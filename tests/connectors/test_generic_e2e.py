"""Generic sources on real `flux serve` processes: a source survives a restart and keeps
polling, a changed upstream value reaches a WebSocket subscriber, the upstream token never
appears in the clear (data dir, server log, API answers), another namespace cannot touch a
source, and the `flux source` commands work."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from click.testing import CliRunner, Result

from conftest import FluxServer, wait_for
from flux import cli
from flux._output import source_table
from flux.cli import main
from jsonserver import JsonServer
from liveclient import ws_client

KEY = base64.b64encode(bytes(range(32))).decode()
TOKEN = "upstream-token-7d2b91e0c4"
ADMIN = "e2e-admin-token"
ENV = {
    "FLUX_ENCRYPTION_KEY": KEY,
    "FLUX_CONNECTOR_RETRY_SECONDS": "0.2",
    "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
    "FLUX_LOG_LEVEL": "debug",  # the most the log ever says: the token must not be in it
}
T = TypeVar("T")


@pytest.fixture
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    yield server
    server.stop()


def properties(url: str, entity_id: str, token: str | None = None) -> dict[str, Any] | None:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = httpx.get(
        f"{url}/api/state/entities/{entity_id.replace('/', '%2F')}", headers=headers, timeout=5
    )
    return response.json()["properties"] if response.status_code == 200 else None  # type: ignore[no-any-return]


def source_doc(upstream: JsonServer, **changes: Any) -> dict[str, Any]:
    return {
        "name": "weather",
        "url": upstream.url("/weather"),
        "poll_interval_secs": 1,
        "entity_key": "oslo",
        "namespace": "demo",
        "auth_type": "bearer",
        "token": TOKEN,
        **changes,
    }


def test_survives_a_restart_and_never_shows_the_token(
    server_factory: type[FluxServer], data_dir: Path, upstream: JsonServer
) -> None:
    upstream.set("/weather", {"temp": 10})
    server = server_factory(data_dir, ENV).start()
    answers: list[str] = []
    created = httpx.post(f"{server.url}/api/connectors/generic", json=source_doc(upstream))
    answers.append(created.text)
    assert created.status_code == 201, created.text
    source_id = created.json()["source_id"]
    assert wait_for(lambda: properties(server.url, "demo/oslo")) == {"temp": 10}
    assert upstream.calls("/weather")[0].headers["authorization"] == f"Bearer {TOKEN}"
    answers.append(httpx.get(f"{server.url}/api/connectors/generic").text)
    server.stop()

    upstream.set("/weather", {"temp": 11})
    again = server_factory(data_dir, ENV, port=server.port).start()
    assert wait_for(lambda: (properties(again.url, "demo/oslo") or {}).get("temp") == 11)
    shown = httpx.get(f"{again.url}/api/connectors/generic/{source_id}")
    answers.append(shown.text)
    assert shown.json()["has_token"] is True
    # It keeps polling on its interval.
    polls = shown.json()["polls"]
    wait_for(
        lambda: (
            httpx.get(f"{again.url}/api/connectors/generic/{source_id}").json()["polls"]
            >= polls + 2
        )
    )
    upstream.set("/weather", {"temp": 12})
    assert wait_for(lambda: (properties(again.url, "demo/oslo") or {}).get("temp") == 12)
    answers.append(httpx.get(f"{again.url}/api/connectors/generic").text)
    again.stop()

    secret = TOKEN.encode()
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert {"sources.db", "credentials.db"} <= {p.name for p in files}
    for path in files:
        assert secret not in path.read_bytes(), path
    for log in (server.logs(), again.logs()):
        assert "generic source" in log  # the log does talk about the source...
        assert TOKEN not in log  # ...but never shows its token
    for text in answers:
        assert TOKEN not in text


def test_a_changed_value_reaches_a_websocket_subscriber(
    server_factory: type[FluxServer], data_dir: Path, upstream: JsonServer
) -> None:
    upstream.set("/weather", {"temp": 1, "unit": "C"})
    server = server_factory(data_dir, ENV).start()
    doc = source_doc(upstream, auth_type="none")
    del doc["token"]

    async def scenario() -> list[dict[str, Any]]:
        async with ws_client(server.url) as ws:
            await ws.subscribe(entity_id="demo/oslo")
            async with httpx.AsyncClient() as http:
                response = await http.post(f"{server.url}/api/connectors/generic", json=doc)
                assert response.status_code == 201
            first = await ws.changes(2)  # temp and unit appear
            upstream.set("/weather", {"temp": 2, "unit": "C"})
            second = await ws.changes(1)  # only what changed
            return first + second

    messages = asyncio.run(scenario())
    assert {(m["property"], m["value"]) for m in messages[:2]} == {("temp", 1), ("unit", "C")}
    assert (messages[2]["entity_id"], messages[2]["property"], messages[2]["value"]) == (
        "demo/oslo",
        "temp",
        2,
    )
    server.stop()


def test_another_namespace_cannot_see_or_change_a_source(
    server_factory: type[FluxServer], data_dir: Path, upstream: JsonServer
) -> None:
    upstream.set("/weather", {"temp": 3})
    env = {
        **ENV,
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_SOURCES_ALLOWED_NETWORKS": "127.0.0.1/32",  # the upstream stand-in
        "FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS": "1",
    }
    server = server_factory(data_dir, env).start()
    tokens = {}
    for name in ("alpha", "beta"):
        response = httpx.post(
            f"{server.url}/api/namespaces",
            json={"name": name},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        tokens[name] = response.json()["token"]
    alpha = {"Authorization": f"Bearer {tokens['alpha']}"}
    beta = {"Authorization": f"Bearer {tokens['beta']}"}
    created = httpx.post(
        f"{server.url}/api/connectors/generic",
        json=source_doc(upstream, namespace="alpha"),
        headers=alpha,
    )
    assert created.status_code == 201, created.text
    source_id = created.json()["source_id"]
    assert wait_for(lambda: properties(server.url, "alpha/oslo")) == {"temp": 3}
    path = f"{server.url}/api/connectors/generic/{source_id}"
    assert httpx.get(f"{server.url}/api/connectors/generic", headers=beta).json() == {"sources": []}
    assert httpx.get(path, headers=beta).status_code == 404
    assert httpx.delete(path, headers=beta).status_code == 404
    assert httpx.get(path).status_code == 401
    assert httpx.get(path, headers=alpha).json()["status"] == "running"
    assert httpx.delete(path, headers=alpha).status_code == 204
    server.stop()


# -- the CLI -------------------------------------------------------------------------------------


def flux(url: str, *args: str, input: str | None = None, **env: str) -> Result:
    clean = {"FLUX_TOKEN": None, "FLUX_ADMIN_TOKEN": None, "FLUX_PRETTY": None}
    return CliRunner().invoke(main, list(args), input=input, env={**clean, "FLUX_URL": url, **env})


def test_cli_add_list_rm(
    server_factory: type[FluxServer],
    data_dir: Path,
    upstream: JsonServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    upstream.set("/issues", {"items": [{"id": 1, "title": "a"}, {"id": 2, "title": "b"}]})
    upstream.set("/stats", {"up": True})
    server = server_factory(data_dir, ENV).start()
    url = server.url

    added = flux(
        url, "source", "add", "issues", upstream.url("/issues"), "--namespace", "cli",
        "--items", "$.items", "--entity-key", "$.id", "--map", "name=$.title", "--every", "1",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    issues_id = json.loads(added.stdout)["source_id"]
    assert wait_for(lambda: properties(url, "cli/2")) == {"name": "b"}

    # The secret from an environment variable...
    added = flux(
        url, "source", "add", "stats", upstream.url("/stats"), "-n", "cli", "-k", "stats",
        "--every", "1", "--bearer-token-env", "STATS_TOKEN", STATS_TOKEN=TOKEN,
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    stats_id = json.loads(added.stdout)["source_id"]
    assert wait_for(lambda: properties(url, "cli/stats")) == {"up": True}
    assert upstream.calls("/stats")[0].headers["authorization"] == f"Bearer {TOKEN}"
    # ...or a hidden prompt (not echoed).
    added = flux(
        url, "source", "add", "keyed", upstream.url("/stats"), "-n", "cli", "-k", "keyed",
        "--header", "X-Api-Key", input="prompted-key\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    assert "prompted-key" not in added.output
    wait_for(lambda: any(c.headers.get("x-api-key") == "prompted-key" for c in upstream.requests))

    listed = flux(url, "source", "list")  # piped: JSON
    assert listed.exit_code == 0, listed.output
    sources = json.loads(listed.stdout)
    assert [s["name"] for s in sources] == ["issues", "stats", "keyed"]
    assert TOKEN not in listed.stdout
    monkeypatch.setattr(cli, "stdout_is_terminal", lambda: True)
    table = flux(url, "source", "list")
    assert table.exit_code == 0
    assert table.stdout.splitlines()[0].split() == [
        "ID", "NAME", "ENTITY", "EVERY", "STATUS", "POLLS", "EVENTS", "LAST", "POLL", "LAST",
        "ERROR",
    ]  # fmt: skip
    assert issues_id in table.stdout and "cli/$.id per $.items" in table.stdout
    monkeypatch.undo()

    shown = flux(url, "source", "show", stats_id)
    assert json.loads(shown.stdout)["has_token"] is True

    removed = flux(url, "source", "rm", issues_id)
    assert removed.exit_code == 0, removed.output
    assert f"Removed source {issues_id}" in removed.stderr
    again = flux(url, "source", "rm", issues_id)
    assert again.exit_code == 1
    assert f"Source '{issues_id}' not found (HTTP 404)" in again.stderr
    names = [s["name"] for s in json.loads(flux(url, "source", "list").stdout)]
    assert names == ["stats", "keyed"]
    server.stop()


def test_cli_usage_errors(upstream: JsonServer) -> None:
    url = "http://127.0.0.1:9"  # never reached: these fail before any request
    base = ["source", "add", "x", upstream.url("/x"), "-n", "cli", "-k", "x"]
    for extra, message in [
        (["--bearer-token-env", "UNSET_VAR_FOR_TEST"], "UNSET_VAR_FOR_TEST is not set"),
        (["--map", "title"], "expected PROPERTY=$.path"),
        (["--map", "t=title"], "expected PROPERTY=$.path"),
        (["--bearer", "--header", "X-Key"], "use one of --bearer-token-env, --bearer"),
        (["--token-env", "V"], "--token-env goes with --header"),
        (["--every", "0"], "0 is not in the range x>=1"),
    ]:
        result = flux(url, *base, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.stderr, (extra, result.stderr)


def test_source_table() -> None:
    assert source_table([]) == "No sources. Add one with `flux source add`."
    rows = source_table(
        [
            {
                "source_id": "id-1",
                "name": "weather",
                "namespace": "demo",
                "entity_key": "oslo",
                "poll_interval_secs": 60,
                "status": "error",
                "polls": 3,
                "events": 1,
                "last_poll": None,
                "last_error": "upstream error: HTTP 500",
            }
        ]
    ).splitlines()
    assert rows[1].split() == [
        "id-1", "weather", "demo/oslo", "60s", "error", "3", "1", "-", "upstream", "error:",
        "HTTP", "500",
    ]  # fmt: skip
