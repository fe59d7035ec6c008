"""Live state against real `flux serve` processes: resuming across a server restart (SIGTERM,
then a new process on the same data dir) with an exact count, and a stalled client dropped with
1013 while the others keep receiving everything."""

from __future__ import annotations

import asyncio
import secrets
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from conftest import FluxServer
from liveclient import TIMEOUT, Message, Publisher, Stream, event, versions, ws_client, ws_url


def run_async(main: object) -> None:
    asyncio.run(asyncio.wait_for(main, 90))  # type: ignore[arg-type]


def test_resume_after_a_server_restart_sees_every_change_once_in_order(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """A client keeps the last version it saw and drops; the server takes more events, stops
    (SIGTERM) and a new process starts on the same data dir and takes more. Resuming with
    `since`, the client gets exactly the missing changes, in order, then live ones."""
    data_dir = tmp_path / "data"
    first = server_factory(data_dir).start()
    seen: list[Message] = []
    published: list[int] = []

    async def before_restart() -> None:
        async with Publisher(first.url) as pub:
            async with ws_client(first.url) as ws:
                await ws.subscribe(prefix="r/", snapshot=True)
                for n in range(10):
                    published.append(await pub.one(f"r/{n % 3}", n=n, sq=n * n))
                seen.extend(await ws.changes(20))
            # Disconnected: these are missed.
            more = await pub.batch([event(f"r/{n % 3}", {"n": n}) for n in range(10, 40)])
            published.extend(more)
            await pub.batch([event("noise/1", {"n": n}) for n in range(5)])
        # SIGTERM with a client connected: it gets a close frame (1012, "service restart") and
        # the server stops promptly and cleanly (uvicorn re-raises the signal: -15).
        async with ws_client(first.url) as connected:
            await connected.subscribe(entity_id="*")
            began = time.monotonic()
            assert await asyncio.to_thread(first.stop) in (0, -15)
            assert time.monotonic() - began < 15
            with pytest.raises(ConnectionClosed) as closed:
                await connected.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012

    run_async(before_restart())
    last_seen = seen[-1]["version"]
    assert versions(seen) == published[:10]

    second = server_factory(data_dir).start()

    async def after_restart() -> None:
        async with Publisher(second.url) as pub:
            more = await pub.batch([event(f"r/{n % 3}", {"n": n}) for n in range(40, 55)])
            published.extend(more)
            await pub.delete("r/2")
            published.append(await pub.last_seq())
            async with ws_client(second.url) as ws:
                *replayed, ack = await ws.subscribe(prefix="r/", since=last_seen)
                assert ack == {"type": "subscribed", "prefix": "r/", "version": published[-1]}
                # Exactly the missing versions, in order: no gap, no duplicate.
                assert versions(replayed) == published[10:]
                assert len(replayed) == 45 + 1
                assert [m.get("value") for m in replayed[:-1]] == list(range(10, 55))
                assert replayed[-1]["type"] == "entity_deleted"
                # ... then live ones continue.
                live = [await pub.one("r/0", n=300 + n) for n in range(3)]
                assert versions(await ws.changes(3)) == live

    run_async(after_restart())
    second.stop()
    assert "Traceback" not in first.logs() + second.logs()


def small_buffer_socket(url: str) -> socket.socket:
    """A connected TCP socket with a small receive buffer, so that a client that stops reading
    fills the server's side quickly."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


@pytest.fixture(scope="module")
def slow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """A server with a small live queue (FLUX_WS_QUEUE_LIMIT=50) for the stalled clients."""
    srv = FluxServer(tmp_path_factory.mktemp("slow") / "data", env={"FLUX_WS_QUEUE_LIMIT": "50"})
    yield srv.start()
    srv.stop()
    assert "Traceback" not in srv.logs()


async def connections(srv: FluxServer) -> int:
    """The server's count of live connections (GET /metrics)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{srv.url}/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("flux_websocket_connections "))
    return int(line.split()[1])


def test_a_stalled_client_is_closed_with_1013_while_the_others_get_everything(
    slow_server: FluxServer,
) -> None:
    srv = slow_server
    # Large, incompressible values fill the socket buffers, then the server's queue.
    big = secrets.token_hex(10_000)

    async def main() -> None:
        async with (
            Publisher(srv.url) as pub,
            ws_client(srv.url) as healthy,
            connect(
                ws_url(srv.url),
                sock=small_buffer_socket(srv.url),
                max_queue=1,
                compression=None,
                open_timeout=TIMEOUT,
                close_timeout=2,
            ) as stalled,
        ):
            await healthy.subscribe(prefix="s/")
            await stalled.send('{"type":"subscribe","prefix":"s/"}')
            published: list[int] = []
            got: list[Message] = []

            async def catch_up() -> None:  # the healthy client reads everything published
                while not got or got[-1]["version"] != published[-1]:
                    got.extend(await healthy.changes(1))

            # Publish until the stalled connection is dropped (the server's count falls to 1).
            # The healthy client catches up after each batch, so it is never more than one
            # batch (40 messages) behind: under the limit of 50, however slow this machine.
            deadline = time.monotonic() + 30
            while await connections(srv) == 2:
                assert time.monotonic() < deadline, "the stalled client was never dropped"
                published += await pub.batch(
                    [event(f"s/{n}", {"blob": big, "n": n}) for n in range(20)]
                )
                await catch_up()
            published += await pub.batch([event("s/after", {"n": n}) for n in range(10)])
            await catch_up()
            # The healthy client got every change, in order, once.
            assert versions(got) == published
            assert len(got) == len(published) * 2 - 10
            await healthy.nothing()
            # The stalled one, once it reads again, finds what the socket held, then the close.
            received = 0
            try:
                while True:
                    await asyncio.wait_for(stalled.recv(), TIMEOUT)
                    received += 1
            except ConnectionClosed as exc:
                closed = exc
            assert closed.rcvd is not None, closed
            assert closed.rcvd.code == 1013
            assert "slow consumer" in closed.rcvd.reason
            assert received < len(published) * 2  # it did miss messages

    run_async(main())
    assert "closing a slow WebSocket consumer" in srv.logs()


def test_a_stalled_event_stream_gets_an_error_event_and_ends(slow_server: FluxServer) -> None:
    srv = slow_server
    big = secrets.token_hex(10_000)  # large values fill the socket buffers quickly

    async def main() -> None:
        async with (
            Publisher(srv.url) as pub,
            httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT) as http,
            http.stream("GET", "/api/events/stream", params={"prefix": "s/"}) as response,
        ):
            events = Stream(response)
            await events.until_subscribed()
            deadline = time.monotonic() + 30
            published: list[int] = []
            while await connections(srv):
                assert time.monotonic() < deadline, "the stalled stream was never dropped"
                published += await pub.batch([event(f"s/{n}", {"blob": big}) for n in range(20)])
            received = 0
            while True:  # what the sockets held, then the error event, then the end
                message = await events.next()
                if message["event"] != "state_update":
                    break
                received += 1
            assert message["event"] == "error"
            assert "slow consumer" in message["data"]["error"]
            assert received < len(published)  # it did miss changes
            with pytest.raises(StopAsyncIteration):
                await anext(events.lines)

    run_async(main())


def test_sigterm_with_an_open_sse_stream_shuts_down_at_once(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    """An SSE stream never ends by itself; shutdown ends it instead of waiting out the
    graceful timeout, and the final snapshot is written."""
    srv = server_factory(data_dir).start()
    event = {
        "stream": "s",
        "source": "t",
        "timestamp": 1,
        "payload": {"entity_id": "ns/a", "properties": {"n": 1}},
    }
    assert httpx.post(f"{srv.url}/api/events", json=event).status_code == 200
    with httpx.stream("GET", f"{srv.url}/api/events/stream", timeout=10) as response:
        assert response.status_code == 200
        began = time.monotonic()
        srv.stop(signal.SIGTERM, timeout=20)
        assert time.monotonic() - began < 10
    assert list((data_dir / "snapshots").glob("snapshot-*.json.gz"))
