"""Presence over WebSocket against a real `flux serve`: a clean close removes it at once, a
killed client's within the ping timeout, a client that stops answering pings within the ping
timeout, and a server restart removes what a previous run left; each removal is a logged
tombstone that subscribers see and history keeps."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import FluxServer, wait_for
from liveclient import Client, ws_client

PING = {"FLUX_WS_PING_INTERVAL_SECONDS": "0.5", "FLUX_WS_PING_TIMEOUT_SECONDS": "1"}


@pytest.fixture
def srv(server_factory: type[FluxServer], data_dir: Path) -> Iterator[FluxServer]:
    server = server_factory(data_dir, env=PING).start()
    yield server
    server.stop()


async def declare(client: Client, entity_id: str, **properties: object) -> int:
    await client.send(type="presence", entity_id=entity_id, properties=properties)
    while True:
        message = await client.recv()
        if message["type"] == "presence":
            assert message["entity_id"] == entity_id
            version: int = message["version"]
            return version
        assert message["type"] in ("state_update", "entity_deleted"), message


async def deleted(watcher: Client, entity_id: str, timeout: float) -> float:
    """Seconds until the watcher hears the entity deleted."""
    began = time.monotonic()
    while True:
        message = await watcher.recv(timeout)
        if message["type"] == "entity_deleted" and message["entity_id"] == entity_id:
            return time.monotonic() - began


def removal_in_history(url: str, entity_id: str) -> dict[str, object]:
    history = httpx.get(f"{url}/api/events", params={"entity": entity_id}).json()
    newest: dict[str, object] = history[0]
    props = newest["payload"]["properties"]  # type: ignore[index]
    assert props["__deleted__"] is True and props["__expired__"] == "presence", newest
    return newest


def test_a_clean_close_removes_the_presence_at_once(srv: FluxServer) -> None:
    async def run() -> float:
        async with ws_client(srv.url) as watcher:
            await watcher.subscribe(prefix="agents/")
            async with ws_client(srv.url) as agent:
                await declare(agent, "agents/a", online=True, skills=["search"])
                update = await watcher.expect("state_update")
                assert update["entity_id"] == "agents/a"
                state = httpx.get(f"{srv.url}/api/state/entities/agents/a").json()
                assert state["properties"]["online"] is True
                assert set(state["properties"]["__presence__"]) == {"connection", "since"}
            return await deleted(watcher, "agents/a", timeout=5)

    assert asyncio.run(run()) < 2
    removal_in_history(srv.url, "agents/a")
    assert httpx.get(f"{srv.url}/api/state/entities/agents/a").status_code == 404


AGENT = textwrap.dedent(
    """
    import asyncio, sys, orjson
    from websockets.asyncio.client import connect

    async def main():
        async with connect(sys.argv[1]) as ws:
            await ws.send(orjson.dumps({"type": "presence", "entity_id": sys.argv[2],
                                        "properties": {"online": True}}).decode())
            while orjson.loads(await ws.recv())["type"] != "presence":
                pass
            print("ready", flush=True)
            await asyncio.sleep(120)

    asyncio.run(main())
    """
)


def test_a_killed_clients_presence_is_gone_within_the_ping_timeout(srv: FluxServer) -> None:
    ws = srv.url.replace("http://", "ws://") + "/api/ws"

    async def run() -> float:
        async with ws_client(srv.url) as watcher:
            await watcher.subscribe(entity_id="agents/k")
            agent = subprocess.Popen(
                [sys.executable, "-c", AGENT, ws, "agents/k"], stdout=subprocess.PIPE
            )
            try:
                assert agent.stdout is not None
                line = await asyncio.wait_for(asyncio.to_thread(agent.stdout.readline), 20)
                assert line.strip() == b"ready"
                await watcher.expect("state_update")
                os.kill(agent.pid, signal.SIGKILL)
                return await deleted(watcher, "agents/k", timeout=10)
            finally:
                agent.kill()
                agent.wait()
                if agent.stdout is not None:
                    agent.stdout.close()

    assert asyncio.run(run()) < 1 + 0.5 + 1  # ping timeout + interval + slack
    removal_in_history(srv.url, "agents/k")


def silent_client(port: int, entity_id: str) -> socket.socket:
    """A WebSocket client that declares presence, then never reads again (so never answers a
    ping), with its socket left open: as a client on a dead network link looks."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 101"), answer
    payload = orjson.dumps(
        {"type": "presence", "entity_id": entity_id, "properties": {"online": True}}
    )
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    assert len(payload) < 126
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def test_a_client_that_stops_answering_pings_loses_its_presence(srv: FluxServer) -> None:
    async def run() -> float:
        async with ws_client(srv.url) as watcher:
            await watcher.subscribe(entity_id="agents/s")
            sock = await asyncio.to_thread(silent_client, srv.port, "agents/s")
            try:
                await watcher.expect("state_update")
                return await deleted(watcher, "agents/s", timeout=10)
            finally:
                sock.close()

    assert asyncio.run(run()) < 0.5 + 1 + 1.5  # interval + timeout + slack
    removal_in_history(srv.url, "agents/s")


def test_presence_left_by_a_killed_server_is_removed_at_start(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    first = server_factory(data_dir, env=PING).start()

    async def hold() -> None:
        async with ws_client(first.url) as agent:
            await declare(agent, "agents/z", online=True)
            first.kill()

    with contextlib.suppress(Exception):  # the server died under the client
        asyncio.run(hold())
    second = server_factory(data_dir, env=PING).start()
    try:
        wait_for(
            lambda: httpx.get(f"{second.url}/api/state/entities/agents/z").status_code == 404,
            "the stale presence to be removed",
        )
        removal_in_history(second.url, "agents/z")
    finally:
        second.stop()


def test_presence_needs_the_right_to_write_and_holds_a_bounded_number(srv: FluxServer) -> None:
    async def run() -> None:
        async with ws_client(srv.url) as agent:
            await agent.send(type="presence", entity_id="flux-core/x", properties={"a": 1})
            refused = await agent.expect("error")
            assert "flux-core" in refused["error"]
            await agent.send(type="presence", entity_id="agents/p", properties={"__lease__": 1})
            assert "set by Flux" in (await agent.expect("error"))["error"]
            await agent.send(type="presence", entity_id="agents/p", properties=[])
            assert "properties" in (await agent.expect("error"))["error"]
            for i in range(16):
                await declare(agent, f"agents/p{i}", online=True)
            await agent.send(type="presence", entity_id="agents/p99", properties={"a": 1})
            assert "at most 16" in (await agent.expect("error"))["error"]

    asyncio.run(run())
