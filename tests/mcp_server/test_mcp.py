"""The MCP server driven by the `mcp` package's own client against a real `flux serve` with auth
on: over stdio (`flux mcp` spawned with FLUX_URL and FLUX_TOKEN) and over streamable HTTP (the
server's `/mcp`, with a bearer header). Changes that subscribers must hear of are made with plain
HTTP requests to the API, not through MCP.

Namespaces: `alpha` (public) and `beta` (private). Each test runs its coroutine under a deadline,
so a missing notification fails it instead of hanging."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from click.testing import CliRunner
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning, MCPError
from mcp_types import CallToolResult, ResourceUpdatedNotification

from conftest import REPO, FluxServer, module_server, wait_for
from flux.cli import main

ADMIN = "mcp-admin-token"
TRANSPORTS = ["stdio", "http"]
DEADLINE = 60.0  # seconds for a whole test's MCP conversation
NOTIFIED_WITHIN = 1.0  # seconds from a publish's answer to the notification (the bound)
EXPECTED_TOOLS = {
    "publish",
    "get",
    "list",
    "history",
    "changes_since",
    "delete",
    "claim",
    "renew",
    "release",
    "presence",
}


@pytest.fixture(scope="module")
def flux(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
    }
    yield from module_server(tmp_path_factory, "mcp", env)


@pytest.fixture(scope="module")
def tokens(flux: FluxServer) -> dict[str, str]:
    """The namespaces' tokens: `alpha` is public, `beta` private."""
    found = {}
    for name, private in (("alpha", False), ("beta", True)):
        answer = httpx.post(
            f"{flux.url}/api/namespaces",
            json={"name": name, "private": private},
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        assert answer.status_code == 200, answer.text
        found[name] = answer.json()["token"]
    return found


def run(coro: Awaitable[None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(coro, DEADLINE)

    asyncio.run(bounded())


@contextlib.asynccontextmanager
async def connect(
    transport: str, flux: FluxServer, token: str, *, mode: str = "auto", **options: Any
) -> AsyncIterator[Client]:
    """An MCP client of Flux: `flux mcp` as a subprocess, or `/mcp` over HTTP; `mode` "legacy"
    speaks the handshake protocol versions (per-session subscriptions), "auto" the newest."""
    if transport == "stdio":
        env = {**os.environ, "FLUX_URL": flux.url, "FLUX_TOKEN": token}
        params = StdioServerParameters(command=sys.executable, args=["-m", "flux", "mcp"], env=env)
        async with Client(params, mode=mode, **options) as client:
            yield client
        return
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    # httpx's default 5 s read timeout is shorter than an early request's wait for the SDK on
    # a loaded machine (the slow-load test: 4 s plus the load itself); `run` bounds it all.
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        server = streamable_http_client(f"{flux.url}/mcp", http_client=http)
        async with Client(server, mode=mode, **options) as client:
            yield client


async def publish(flux: FluxServer, token: str, entity_id: str, **properties: Any) -> int:
    """A plain HTTP publish (not through MCP); returns the new version."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{flux.url}/api/events",
            json={
                "stream": "test",
                "source": "http",
                "timestamp": int(time.time() * 1000),
                "payload": {"entity_id": entity_id, "properties": properties},
            },
            headers={"Authorization": f"Bearer {token}"} if token else {},
        )
    assert answer.status_code == 200, answer.text
    version: int = answer.json()["sequence"]
    return version


def http_get(flux: FluxServer, entity_id: str, token: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{flux.url}/api/state/entities/{entity_id}", headers=headers)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    """A tool's structured result; fails the test on a tool error."""
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    """The text of a tool error (fails the test if the call succeeds)."""
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    return text_of(result)


def text_of(result: CallToolResult) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


# -- tools -------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_tools_and_resource_templates_are_listed(
    flux: FluxServer, tokens: dict[str, str], transport: str
) -> None:
    async def scenario() -> None:
        async with connect(transport, flux, tokens["alpha"]) as client:
            tools = {tool.name: tool for tool in (await client.list_tools()).tools}
            assert set(tools) == EXPECTED_TOOLS
            publish_schema = tools["publish"].input_schema["properties"]
            for condition in (
                "expected_version",
                "if_absent",
                "expected_properties",
                "fencing_token",
                "ttl_ms",
            ):
                assert condition in publish_schema
            assert "version" in (tools["publish"].output_schema or {}).get("properties", {})
            read_only = {name for name, t in tools.items() if t.annotations.read_only_hint}
            assert read_only == {"get", "list", "history", "changes_since"}
            templates = (await client.list_resource_templates()).resource_templates
            assert {t.uri_template for t in templates} == {
                "flux://entities/{+entity_id}",
                "flux://namespaces/{namespace}",
            }

    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_every_tool_does_what_the_http_api_shows(
    flux: FluxServer, tokens: dict[str, str], transport: str
) -> None:
    token = tokens["alpha"]
    task, lock, agent = (f"alpha/{name}-{transport}" for name in ("task", "lock", "agent"))

    async def scenario() -> None:
        async with connect(transport, flux, token) as client:
            before = httpx.get(f"{flux.url}/api/health").json()["lastSequence"]
            first = await call(client, "publish", entity_id=task, properties={"status": "open"})
            assert first["entity_id"] == task
            assert http_get(flux, task).json()["version"] == first["version"]
            second = await call(
                client,
                "publish",
                entity_id=task,
                properties={"status": "taken"},
                expected_version=first["version"],
                expected_properties={"status": "open"},
                ttl_ms=600_000,
            )
            assert second["version"] > first["version"]

            entity = await call(client, "get", entity_id=task)
            assert entity == http_get(flux, task).json()
            assert entity["properties"] == {"status": "taken", "__ttl_ms__": 600_000}
            listed = await call(client, "list", prefix=f"alpha/task-{transport}")
            assert listed["count"] == 1 and listed["entities"][0]["id"] == task
            by_namespace = await call(client, "list", namespace="alpha")
            assert task in {e["id"] for e in by_namespace["entities"]}
            history = await call(client, "history", entity_id=task)
            assert [e["payload"]["properties"]["status"] for e in history["events"]] == [
                "taken",
                "open",
            ]
            changes = await call(client, "changes_since", since=before, prefix="alpha/task-")
            assert {e["id"]: e["version"] for e in changes["changes"]}[task] == second["version"]
            assert changes["next"] >= second["version"] and changes["more"] is False

            lease = await call(client, "claim", entity_id=lock, owner="w1", ttl_ms=30_000)
            fenced = await call(
                client,
                "publish",
                entity_id=lock,
                properties={"leader": "w1"},
                fencing_token=lease["token"],
            )
            assert fenced["version"] > lease["version"]
            renewed = await call(
                client, "renew", entity_id=lock, owner="w1", token=lease["token"], ttl_ms=60_000
            )
            assert renewed["token"] == lease["token"]
            assert renewed["expires_at"] > lease["expires_at"]
            released = await call(
                client, "release", entity_id=lock, owner="w1", token=lease["token"]
            )
            assert released["released"] is True
            assert http_get(flux, lock).json()["properties"]["__lease__"] is None

            present = await call(
                client,
                "presence",
                entity_id=agent,
                owner="agent-1",
                ttl_ms=30_000,
                properties={"online": True},
            )
            assert present["presence"] is True
            assert http_get(flux, agent).json()["properties"]["online"] is True
            await call(client, "release", entity_id=agent, owner="agent-1", token=present["token"])
            assert http_get(flux, agent).status_code == 404  # a presence ends with its lease

            deleted = await call(client, "delete", entity_id=task)
            assert deleted["deleted"] is True and deleted["entity_id"] == task
            assert http_get(flux, task).status_code == 404
            again = await call(client, "delete", entity_id=task)
            assert again["deleted"] is False

    run(scenario())


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_failed_condition_is_a_tool_error_with_the_current_version_and_state(
    flux: FluxServer, tokens: dict[str, str], transport: str
) -> None:
    token = tokens["alpha"]
    entity_id, lock = f"alpha/counter-{transport}", f"alpha/guard-{transport}"

    async def scenario() -> None:
        version = await publish(flux, token, entity_id, count=1)
        async with connect(transport, flux, token) as client:
            text = await refused(
                client,
                "publish",
                entity_id=entity_id,
                properties={"count": 2},
                expected_version=version - 1 if version > 1 else 99,
            )
            assert "condition failed" in text and "Nothing was stored" in text
            assert f"now at version {version}" in text
            assert '"properties": {"count": 1}' in text
            assert f"expected_version={version}" in text
            assert http_get(flux, entity_id).json()["version"] == version  # nothing stored

            created = await refused(
                client, "publish", entity_id=entity_id, properties={"count": 0}, if_absent=True
            )
            assert "the entity exists" in created and f"version {version}" in created

            # Retrying as the text says succeeds in one step.
            retried = await call(
                client,
                "publish",
                entity_id=entity_id,
                properties={"count": 2},
                expected_version=version,
            )
            assert retried["version"] > version

            await call(client, "claim", entity_id=lock, owner="w1", ttl_ms=30_000)
            taken = await refused(client, "claim", entity_id=lock, owner="w2", ttl_ms=30_000)
            assert "held by 'w1'" in taken

    run(scenario())


# -- resources ---------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_entity_and_namespace_resources_read_as_the_api_answers(
    flux: FluxServer, tokens: dict[str, str], transport: str
) -> None:
    entity_id = f"alpha/doc-{transport}"

    async def scenario() -> None:
        await publish(flux, tokens["alpha"], entity_id, title="hello")
        async with connect(transport, flux, tokens["alpha"]) as client:
            read = await client.read_resource(f"flux://entities/{entity_id}")
            (content,) = read.contents
            assert content.mime_type == "application/json"
            assert json.loads(getattr(content, "text", "")) == http_get(flux, entity_id).json()
            listing = await client.read_resource("flux://namespaces/alpha")
            ids = {e["id"] for e in json.loads(getattr(listing.contents[0], "text", ""))}
            assert entity_id in ids
            with pytest.raises(MCPError, match="not found"):
                await client.read_resource("flux://entities/alpha/no-such-entity")

    run(scenario())


# -- subscriptions -----------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def listening(
    transport: str, flux: FluxServer, token: str, mode: str, uris: list[str]
) -> AsyncIterator[Callable[[float], Awaitable[str | None]]]:
    """Subscribe to `uris`, then yield `next_update(timeout)`: the address of the next
    `notifications/resources/updated` (None when none came within `timeout` seconds).

    mode "listen": a `subscriptions/listen` stream (protocol 2026-07-28); mode "session":
    `resources/subscribe` on a session of the handshake versions, notifications on the
    session's own stream."""
    if mode == "listen":
        async with (
            connect(transport, flux, token) as client,
            client.listen(resource_subscriptions=uris) as subscription,
        ):
            events = aiter(subscription)

            async def next_event(timeout: float) -> str | None:
                try:
                    event = await asyncio.wait_for(anext(events), timeout)
                except TimeoutError:
                    return None
                uri: str = getattr(event, "uri", "")
                return uri

            yield next_event
        return
    updates: asyncio.Queue[str] = asyncio.Queue()

    async def handler(message: Any) -> None:
        if isinstance(message, ResourceUpdatedNotification):
            updates.put_nowait(message.params.uri)

    async with connect(transport, flux, token, mode="legacy", message_handler=handler) as client:
        with warnings.catch_warnings():
            # The SDK marks resources/subscribe deprecated: it is older clients' way, served.
            warnings.simplefilter("ignore", MCPDeprecationWarning)
            for uri in uris:
                await client.subscribe_resource(uri)
        if transport == "http":
            # The client opens the session's GET stream beside its first requests; an update
            # sent before the stream is open has nowhere to go (no event store): let it open.
            await asyncio.sleep(0.2)

        async def next_update(timeout: float) -> str | None:
            try:
                return await asyncio.wait_for(updates.get(), timeout)
            except TimeoutError:
                return None

        yield next_update


@pytest.mark.parametrize("mode", ["listen", "session"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_subscriber_hears_of_a_plain_http_publish_within_a_second(
    flux: FluxServer, tokens: dict[str, str], transport: str, mode: str
) -> None:
    token = tokens["alpha"]
    entity_id = f"alpha/sensor-{transport}-{mode}"
    entity_uri, other_uri = f"flux://entities/{entity_id}", f"flux://entities/{entity_id}-x"

    async def scenario() -> None:
        await publish(flux, token, entity_id, temperature=20)
        async with listening(transport, flux, token, mode, [entity_uri, other_uri]) as updates:
            await publish(flux, token, entity_id, temperature=21)
            started = time.monotonic()
            assert await updates(NOTIFIED_WITHIN) == entity_uri
            assert time.monotonic() - started < NOTIFIED_WITHIN
            assert await updates(0.3) is None  # one change, one notification, nothing else
            # A namespace's address hears of any of its entities.
        async with listening(transport, flux, token, mode, ["flux://namespaces/alpha"]) as updates:
            await publish(flux, token, entity_id, temperature=22)
            assert await updates(NOTIFIED_WITHIN) == "flux://namespaces/alpha"

    run(scenario())


@pytest.mark.parametrize("mode", ["listen", "session"])
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_token_neither_reads_nor_subscribes_to_another_namespace_s_private_entities(
    flux: FluxServer, tokens: dict[str, str], transport: str, mode: str
) -> None:
    alpha, beta = tokens["alpha"], tokens["beta"]
    secret, seen = f"beta/secret-{transport}-{mode}", f"alpha/seen-{transport}-{mode}"
    secret_uri, seen_uri = f"flux://entities/{secret}", f"flux://entities/{seen}"

    async def scenario() -> None:
        await publish(flux, beta, secret, code=1)
        await publish(flux, alpha, seen, n=1)
        # The tools too, in the protocol era of the subscriptions below.
        era = "legacy" if mode == "session" else "auto"
        async with connect(transport, flux, alpha, mode=era) as client:
            assert "HTTP 403" in await refused(client, "get", entity_id=secret)
            for tool, arguments in (
                ("publish", {"entity_id": secret, "properties": {"code": 0}}),
                ("delete", {"entity_id": secret}),
                ("history", {"entity_id": secret}),
            ):
                assert "HTTP 403" in await refused(client, tool, **arguments)
            assert http_get(flux, secret, beta).json()["properties"] == {"code": 1}
            with pytest.raises(MCPError):
                await client.read_resource(secret_uri)
            assert (await call(client, "list", namespace="beta"))["count"] == 0
            everything = await call(client, "list")
            assert not [e for e in everything["entities"] if e["id"].startswith("beta/")]
            changes = await call(client, "changes_since", since=0)
            assert not [e for e in changes["changes"] if e["id"].startswith("beta/")]
            listing = await client.read_resource("flux://namespaces/beta")
            assert json.loads(getattr(listing.contents[0], "text", "")) == []

        # The refusal ends the client's task group, so it may come wrapped in a group.
        refusal = pytest.RaisesExc(MCPError, match="cannot subscribe.*permission to read")
        with pytest.RaisesGroup(refusal, allow_unwrapped=True, flatten_subgroups=True):
            async with listening(transport, flux, alpha, mode, [secret_uri]):
                pass

        # Subscribed to the private namespace (which follows only what the token may read) and
        # to its own entity: a change to the private entity, then one to its own. Only its own
        # is heard.
        uris = ["flux://namespaces/beta", seen_uri]
        async with listening(transport, flux, alpha, mode, uris) as updates:
            await publish(flux, beta, secret, code=2)
            await publish(flux, alpha, seen, n=2)
            assert await updates(NOTIFIED_WITHIN) == seen_uri
            assert await updates(0.3) is None

        # The namespace's own token may: the refusal above is the read check, not a failure.
        async with listening(transport, flux, beta, mode, [secret_uri]) as updates:
            await publish(flux, beta, secret, code=3)
            assert await updates(NOTIFIED_WITHIN) == secret_uri

    run(scenario())


# -- the HTTP endpoint and the command ---------------------------------------------------------


def test_a_browser_page_of_another_origin_is_refused(flux: FluxServer) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    answer = httpx.post(f"{flux.url}/mcp", json=body, headers={"Origin": "http://evil.example"})
    assert answer.status_code == 403
    assert "FLUX_MCP_ALLOWED_ORIGINS" in answer.json()["error"]
    host = flux.url.removeprefix("http://")
    same = httpx.post(
        f"{flux.url}/mcp",
        json=body,
        headers={"Origin": f"http://{host}", "Accept": "application/json, text/event-stream"},
    )
    assert same.status_code != 403


def test_flux_mcp_help_teaches_how_to_connect_a_host() -> None:
    result = CliRunner().invoke(main, ["mcp", "--help"])
    assert result.exit_code == 0
    snippet = result.output[result.output.index('{"mcpServers"') : result.output.rindex("}") + 1]
    config = json.loads(snippet)
    assert config["mcpServers"]["flux"]["args"] == ["mcp"]
    assert set(config["mcpServers"]["flux"]["env"]) == {"FLUX_URL", "FLUX_TOKEN"}
    assert "/mcp" in result.output and "changes_since" in result.output


def test_an_mcp_session_is_usable_only_with_the_token_that_opened_it(
    flux: FluxServer, tokens: dict[str, str]
) -> None:
    """A session of the handshake versions holds subscriptions and a stream: another token
    (or none) is answered as if it did not exist."""
    accept = {"Accept": "application/json, text/event-stream"}
    opening = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-11-25",
            "capabilities": {},
            "clientInfo": {"name": "test", "version": "1"},
        },
    }
    ping = {"jsonrpc": "2.0", "id": 2, "method": "ping"}
    with httpx.Client(base_url=flux.url, headers=accept) as http:

        def as_token(token: str | None) -> dict[str, str]:
            return {"Authorization": f"Bearer {token}"} if token else {}

        opened = http.post("/mcp", json=opening, headers=as_token(tokens["alpha"]))
        assert opened.status_code == 200, opened.text
        session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
        for other in (tokens["beta"], None):
            answer = http.post("/mcp", json=ping, headers={**session, **as_token(other)})
            assert answer.status_code == 404
        own = http.post("/mcp", json=ping, headers={**session, **as_token(tokens["alpha"])})
        assert own.status_code == 200 and '"result"' in own.text
        http.delete("/mcp", headers={**session, **as_token(tokens["alpha"])})


def live_connections(flux: FluxServer) -> int:
    metrics = httpx.get(f"{flux.url}/metrics").text
    (line,) = [x for x in metrics.splitlines() if x.startswith("flux_websocket_connections ")]
    return int(line.split()[1])


@pytest.mark.parametrize("mode", ["listen", "session"])
def test_a_subscription_inside_the_server_ends_with_its_stream_or_session(
    flux: FluxServer, tokens: dict[str, str], mode: str
) -> None:
    """Each subscriber of /mcp is a connection in the live fan-out: it must go when the listen
    stream or the session ends, or every MCP client would leave one behind."""
    before = live_connections(flux)

    async def scenario() -> None:
        uris = ["flux://namespaces/alpha"]
        async with listening("http", flux, tokens["alpha"], mode, uris):
            assert live_connections(flux) == before + 1

    run(scenario())
    wait_for(lambda: live_connections(flux) == before, "the subscriber's connection to go", 5)


def documented_configs() -> list[dict[str, Any]]:
    """The host configs docs/mcp.md shows (its ```json blocks), in order."""
    text = (REPO / "docs" / "mcp.md").read_text()
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", text, re.S)]


def test_the_host_configs_in_the_docs_connect(flux: FluxServer, tokens: dict[str, str]) -> None:
    """docs/mcp.md's two configs, as a host would use them: the command with its environment,
    and the URL with its header (the placeholders filled in)."""
    stdio, http = (config["mcpServers"]["flux"] for config in documented_configs())
    token = tokens["alpha"]

    def filled(value: str) -> str:
        return value.replace("http://localhost:3000", flux.url).replace("<namespace token>", token)

    async def scenario() -> None:
        command = str(Path(sys.executable).parent / stdio["command"])  # the venv's `flux`
        env = {**os.environ, **{name: filled(v) for name, v in stdio["env"].items()}}
        params = StdioServerParameters(command=command, args=stdio["args"], env=env)
        headers = {name: filled(v) for name, v in http["headers"].items()}
        async with httpx2.AsyncClient(headers=headers) as client:
            transport = streamable_http_client(filled(http["url"]), http_client=client)
            for server in (params, transport):
                async with Client(server) as mcp:
                    published = await call(
                        mcp, "publish", entity_id="alpha/docs", properties={"ok": True}
                    )
                    assert published["version"] > 0

    run(scenario())


def test_a_stdio_subscription_goes_on_across_a_flux_server_restart(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """`flux mcp` outlives the server it talks to: its WebSocket subscriptions reconnect and
    resume, so a change after the restart is heard."""
    first = server_factory(tmp_path / "data").start()
    uri = "flux://entities/lab/door"

    async def scenario() -> None:
        await publish(first, "", "lab/door", open=False)
        async with listening("stdio", first, "", "listen", [uri]) as updates:
            first.stop()
            again = server_factory(tmp_path / "data", port=first.port).start()
            await publish(again, "", "lab/door", open=True)
            assert await updates(10.0) == uri  # reconnecting takes a backoff step or two

    run(scenario())


def test_open_mcp_streams_do_not_hold_up_a_shutdown(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """A listen stream and a session's GET stream stay open until the client leaves; a server
    that waited for them would take its whole graceful timeout (30 s) to stop."""
    flux = server_factory(tmp_path / "data").start()
    stopped: list[tuple[int, float]] = []

    async def scenario() -> None:
        async with (
            listening("http", flux, "", "listen", ["flux://namespaces/lab"]),
            listening("http", flux, "", "session", ["flux://namespaces/lab"]),
        ):
            started = time.monotonic()
            code = await asyncio.to_thread(flux.stop)
            stopped.append((code, time.monotonic() - started))

    # The clients see their server go away; what they raise then is not under test.
    with contextlib.suppress(Exception):
        run(scenario())
    ((code, seconds),) = stopped
    assert code == -signal.SIGTERM and seconds < 10, (code, seconds, flux.logs()[-2000:])
    assert "Application shutdown complete" in flux.logs()  # the lifespan ended, not killed


# -- loading the MCP SDK beside a started server -------------------------------------------------

# On PYTHONPATH (as `sitecustomize`) for the servers below: it slows or breaks the import of the
# SDK-bound endpoint, `flux.api.mcp_sessions`, which `flux serve` loads once it serves.
_SLOW_LOAD = """
import sys, time
class _Slow:
    def find_spec(self, name, path=None, target=None):
        if name == "flux.api.mcp_sessions":
            time.sleep({seconds})
            if {fail}:
                raise ImportError("the MCP SDK is broken here (a test)")
        return None
sys.meta_path.insert(0, _Slow())
"""


def _server_loading_mcp(tmp_path: Path, seconds: float, fail: bool) -> FluxServer:
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SLOW_LOAD.format(seconds=seconds, fail=fail))
    path = os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    return FluxServer(tmp_path / "data", env={"PYTHONPATH": path}).start()


def test_the_server_answers_while_mcp_loads_and_an_early_mcp_request_waits_for_it(
    tmp_path: Path,
) -> None:
    """The server answers once its state is restored, before the MCP SDK is loaded (here the
    load takes 4 s more than usual); an MCP session opened right then is served once it is."""
    flux = _server_loading_mcp(tmp_path, seconds=4.0, fail=False)
    try:
        began = time.monotonic()
        assert httpx.get(f"{flux.url}/api/health").status_code == 200

        async def session() -> None:
            async with connect("http", flux, "") as client:
                tools = await client.list_tools()
                assert {tool.name for tool in tools.tools} == EXPECTED_TOOLS
                stored = await call(client, "publish", entity_id="early", properties={"a": 1})
                assert stored["entity_id"] == "early"

        run(session())
        # The session waited for the load: it could not have been served sooner.
        assert time.monotonic() - began > 1.0
        assert "MCP endpoint ready at /mcp" in flux.logs()
        assert http_get(flux, "early").json()["properties"] == {"a": 1}
    finally:
        flux.stop()


def test_mcp_that_cannot_load_answers_503_and_the_api_goes_on(tmp_path: Path) -> None:
    flux = _server_loading_mcp(tmp_path, seconds=0.0, fail=True)
    try:
        body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
        answer = httpx.post(
            f"{flux.url}/mcp", json=body, headers={"Accept": "application/json, text/event-stream"}
        )
        assert answer.status_code == 503
        assert "MCP endpoint is not running" in answer.json()["error"]
        assert http_get(flux, "missing").status_code == 404
        assert "the MCP endpoint did not start" in flux.logs()
        assert "the MCP SDK is broken here" in flux.logs()
    finally:
        # A clean stop all the same (uvicorn re-raises the signal once it has shut down).
        assert flux.stop() in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in flux.logs()
