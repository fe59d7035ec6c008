"""Private namespaces over WebSocket and SSE: `*` and prefix subscriptions leave out what the
connection may not read; an exact subscription to a private entity is an error; the namespace's
token (header or an `auth` message) or the admin token lets it all through."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import FluxServer
from liveclient import Stream, ws_client

ADMIN = "live-private-admin"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    data_dir: Path = tmp_path_factory.mktemp("live-private") / "data"
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        "FLUX_RATE_LIMIT_ENABLED": "false",
    }
    srv = FluxServer(data_dir, env).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tokens(server: FluxServer) -> dict[str, str]:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    made = {}
    for name, private in (("pub", False), ("sec", True)):
        response = httpx.post(
            f"{server.url}/api/namespaces", json={"name": name, "private": private}, headers=admin
        )
        assert response.status_code == 200, response.text
        made[name] = response.json()["token"]
    return made


def publish(server: FluxServer, token: str, entity_id: str, n: int) -> None:
    event = {
        "stream": "s",
        "source": "t",
        "timestamp": 1,
        "payload": {"entity_id": entity_id, "properties": {"n": n}},
    }
    response = httpx.post(
        f"{server.url}/api/events", json=event, headers={"Authorization": f"Bearer {token}"}
    )
    assert response.status_code == 200, response.text


def test_websocket_leaves_out_private_entities(server: FluxServer, tokens: dict[str, str]) -> None:
    async def scenario() -> None:
        async with (
            ws_client(server.url) as anonymous,
            ws_client(server.url, additional_headers=bearer(tokens["sec"])) as owner,
            ws_client(server.url) as late,
        ):
            await anonymous.subscribe(entity_id="*")
            await owner.subscribe(entity_id="*")
            await late.send(type="auth", token=ADMIN)
            await late.expect("authenticated")
            await late.subscribe(prefix="sec/")
            await anonymous.send(type="subscribe", entity_id="sec/a")
            refused = await anonymous.expect("error")
            assert "sec" in refused["error"] or "token" in refused["error"].lower()

            publish(server, tokens["sec"], "sec/a", 1)
            publish(server, tokens["pub"], "pub/a", 2)

            (seen,) = await anonymous.changes(1)
            assert seen["entity_id"] == "pub/a"
            await anonymous.nothing()
            got = await owner.changes(2)
            assert [m["entity_id"] for m in got] == ["sec/a", "pub/a"]
            (admin_seen,) = await late.changes(1)
            assert admin_seen["entity_id"] == "sec/a"

            snap = await anonymous.subscribe(prefix="", snapshot=True)
            ids = {m["entity_id"] for m in snap if m["type"] == "snapshot"}
            assert "pub/a" in ids and "sec/a" not in ids

            replay = await anonymous.subscribe(prefix="sec/", since=0)
            assert [m for m in replay if m["type"] != "subscribed"] == []

    asyncio.run(scenario())


def test_a_wrong_token_in_an_auth_message_is_refused(
    server: FluxServer, tokens: dict[str, str]
) -> None:
    """A token of no namespace (and not the admin's) is answered with an `error` naming the
    problem, never `authenticated`; the connection stays open with what it had, so a private
    namespace stays out of reach until a right token follows."""

    async def scenario() -> None:
        async with ws_client(server.url) as client:
            await client.send(type="auth", token="not-a-token-of-anything")
            refused = await client.expect("error")
            assert refused["error"] == "Invalid token: it belongs to no namespace"
            await client.send(type="subscribe", entity_id="sec/a")
            denied = await client.expect("error")
            assert "sec" in denied["error"] or "token" in denied["error"].lower()
            await client.send(type="auth", token=tokens["sec"])
            await client.expect("authenticated")
            await client.subscribe(entity_id="sec/a")

    asyncio.run(scenario())


def test_sse_leaves_out_private_entities(server: FluxServer, tokens: dict[str, str]) -> None:
    async def scenario() -> None:
        owner_headers = bearer(tokens["sec"])
        async with (
            httpx.AsyncClient(
                base_url=server.url, headers={"content-type": "application/json"}, timeout=10
            ) as http,
            http.stream("GET", "/api/events/stream", params={"since": 0}) as anon_response,
            http.stream(
                "GET", "/api/events/stream", params={"since": 0}, headers=owner_headers
            ) as owner_response,
        ):
            anon, owner = Stream(anon_response), Stream(owner_response)
            anon_ids = {e["data"].get("entity_id") for e in await anon.until_subscribed()}
            owner_ids = {e["data"].get("entity_id") for e in await owner.until_subscribed()}
            assert "sec/a" not in anon_ids
            assert "sec/a" in owner_ids

    publish(server, tokens["sec"], "sec/a", 3)
    asyncio.run(scenario())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
