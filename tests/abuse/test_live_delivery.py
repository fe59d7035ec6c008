"""Live delivery must be bounded, fair and ordered (issue 11: defects 3, 4, 5, SSE part of 9).

- 3: a snapshot subscription built every message up front (about 27 MiB per connection for 100k
  entities, held for as long as the connection never read). Snapshots now go out at the pace
  the client reads and count against the outbox bound; a client that stops reading is closed.
- 4: one event with 10,001 properties overflowed every matching outbox at once (the bound was
  10,000 messages), closing every wildcard subscriber with 1013. One change now always fits an
  outbox that was not already over its bound before it.
- 5: an SSE stream received live changes, with `id:` lines, before its filter and replay were in
  place, so a browser that kept the highest id skipped the replay on reconnect. A stream is now
  subscribed before it can receive anything: versions arrive in order, ids never skip. The
  WebSocket gets the same guarantee with a subscription in its URL.
- 9 (SSE): streams that never read were held forever. A stream (and a WebSocket) whose outbox
  overflows, or whose send does not complete within FLUX_LIVE_SEND_TIMEOUT_SECONDS, is closed,
  its socket aborted if the client still does not read, and the close counted in
  `flux_live_slow_consumer_closes_total`.

Stalled clients are raw sockets with a small receive buffer that never read; whether the server
still holds their connection is read from /proc/net/tcp (its side of the socket, ESTABLISHED).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from websockets.asyncio.client import connect

from conftest import FluxServer
from liveclient import TIMEOUT, Client, Publisher, Stream, event, ws_client, ws_url

OUTBOX_BYTES = 256 * 1024
SEND_TIMEOUT = 2
BOUND = 20.0  # seconds within which a stalled connection must be gone


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """A server with a small outbox bound and a short send timeout (the message-count bound is
    left at its default: 10,000)."""
    env = {
        "FLUX_LIVE_OUTBOX_BYTES": str(OUTBOX_BYTES),
        "FLUX_LIVE_SEND_TIMEOUT_SECONDS": str(SEND_TIMEOUT),
    }
    server = FluxServer(tmp_path_factory.mktemp("delivery") / "data", env=env).start()
    yield server
    server.stop()
    logs = server.logs()
    assert "Traceback" not in logs, logs


def run(main: Any, timeout: float = 60) -> None:
    asyncio.run(asyncio.wait_for(main, timeout))


# -- helpers: stalled raw clients, the server's view of them -----------------------------------


def stalled_socket(port: int) -> socket.socket:
    """A connected socket with a small receive buffer, for a client that will not read."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(TIMEOUT)
    sock.connect(("127.0.0.1", port))
    return sock


def stalled_websocket(port: int, path: str = "/api/ws", subscribe: Any = None) -> socket.socket:
    """A WebSocket that completes its handshake, sends `subscribe` (a JSON message) and then
    never reads again."""
    sock = stalled_socket(port)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        assert chunk, head
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    if subscribe is not None:
        payload = orjson.dumps(subscribe)
        assert len(payload) < 126
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)
    return sock


def stalled_event_stream(port: int, query: str) -> socket.socket:
    """An SSE request whose answer is never read."""
    sock = stalled_socket(port)
    sock.sendall(
        f"GET /api/events/stream?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()
    )
    return sock


def held_by_server(port: int, clients: list[socket.socket]) -> int:
    """How many of `clients` the server still holds: its side of the connection is open
    (ESTABLISHED in /proc/net/tcp), whatever it has sent or queued."""
    ports = {sock.getsockname()[1] for sock in clients}
    held = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                local, remote, state = fields[1], fields[2], fields[3]
                if (
                    state == "01"
                    and int(local.rsplit(":", 1)[1], 16) == port
                    and int(remote.rsplit(":", 1)[1], 16) in ports
                ):
                    held += 1
    return held


def metrics(server: FluxServer) -> dict[str, float]:
    text = httpx.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            found[name] = float(value)
    return found


def slow_closes(server: FluxServer, transport: str) -> float:
    name = f'flux_live_slow_consumer_closes_total{{transport="{transport}"}}'
    return metrics(server).get(name, 0.0)


def rss_kib(server: FluxServer, field: str = "VmRSS") -> int:
    assert server.proc is not None
    for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}")


def wait_until_released(server: FluxServer, clients: list[socket.socket], what: str) -> float:
    """Seconds until the server holds none of `clients`; fails after BOUND."""
    began = time.monotonic()
    while held_by_server(server.port, clients):
        elapsed = time.monotonic() - began
        held = held_by_server(server.port, clients)
        assert elapsed < BOUND, f"{held} of {len(clients)} {what} still held after {BOUND} s"
        time.sleep(0.1)
    return time.monotonic() - began


def publish_batches(server: FluxServer, events: list[dict[str, Any]], size: int = 1000) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as http:
        for start in range(0, len(events), size):
            answer = http.post("/api/events/batch", json={"events": events[start : start + size]})
            assert answer.status_code == 200, answer.text


# -- 3: snapshots at the pace of the reader ----------------------------------------------------


def test_snapshot_subscribers_that_never_read_hold_no_whole_snapshot_and_are_closed(
    srv: FluxServer,
) -> None:
    """10,000 entities of about 600 bytes: a `*` snapshot is about 7 MB of messages. Eight
    connections that subscribe with a snapshot and never read once held all of it each, for
    ever. Now each holds at most about the outbox bound, and is closed after the send timeout."""
    count, connections = 10_000, 8
    blob = secrets.token_hex(250)
    publish_batches(srv, [event(f"snap/e{n}", {"blob": blob, "n": n}) for n in range(count)])
    before = rss_kib(srv)
    closes = slow_closes(srv, "ws")
    clients = [
        stalled_websocket(
            srv.port, subscribe={"type": "subscribe", "prefix": "snap/", "snapshot": True}
        )
        for _ in range(connections)
    ]
    try:
        time.sleep(1.0)  # what it builds up front, it has built by now
        grown_mib = (rss_kib(srv, "VmHWM") - before) / 1024
        assert grown_mib < 24, f"the server grew by {grown_mib:.0f} MiB for {connections} snapshots"
        wait_until_released(srv, clients, "snapshot subscribers that never read")
        assert slow_closes(srv, "ws") - closes == connections
    finally:
        for sock in clients:
            sock.close()


def test_a_snapshot_still_reaches_a_reading_client_whole_and_in_a_bounded_outbox(
    srv: FluxServer,
) -> None:
    """A snapshot larger than the outbox bound, to a client that reads: every entity once, then
    `subscribed`, then live changes; nothing is dropped."""
    count = 3_000
    blob = secrets.token_hex(100)  # 3,000 x ~350 bytes: about 4 times the bound
    publish_batches(srv, [event(f"whole/e{n}", {"blob": blob, "n": n}) for n in range(count)])

    async def main() -> None:
        async with ws_client(srv.url) as ws, Publisher(srv.url) as pub:
            got = await ws.subscribe(prefix="whole/", snapshot=True)
            *snapshots, ack = got
            assert {m["type"] for m in snapshots} == {"snapshot"}
            assert sorted(m["properties"]["n"] for m in snapshots) == list(range(count))
            seq = await pub.one("whole/e0", n=-1)
            (change,) = await ws.changes(1)
            assert change["version"] == seq > ack["version"]

    run(main())


# -- 4: one wide event -------------------------------------------------------------------------


def test_one_wide_event_closes_no_reading_subscriber(srv: FluxServer) -> None:
    """An event with 10,001 properties (about 1.6 MB of messages: more messages than the count
    bound and more bytes than the byte bound), committed with a small event on each side, reaches
    every reading subscriber whole (three wildcard WebSockets and an SSE stream), and none of them
    is closed."""
    width = 10_001
    wide = {f"p{n:05d}": n for n in range(width)}

    async def main() -> None:
        async with (
            ws_client(srv.url, max_size=None) as a,
            ws_client(srv.url, max_size=None) as b,
            ws_client(srv.url, max_size=None) as c,
            httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT) as http,
            http.stream("GET", "/api/events/stream", params={"prefix": "wide/"}) as response,
            Publisher(srv.url) as pub,
        ):
            sockets = [a, b, c]
            for ws in sockets:
                await ws.subscribe(entity_id="*")
            stream = Stream(response)
            await stream.until_subscribed()
            seqs = await pub.batch(
                [
                    event("wide/before", {"x": 1}, source="tenant-a"),
                    event("wide/one", wide, source="tenant-b"),
                    event("wide/after", {"x": 2}, source="tenant-a"),
                ]
            )

            async def read_ws(ws: Any) -> list[dict[str, Any]]:
                got = []
                while len(got) < width + 2:
                    message = await ws.recv()
                    if message.get("entity_id", "").startswith("wide/"):
                        got.append(message)
                await ws.send(type="ping")  # still open, and nothing more from these events
                while (message := await ws.recv())["type"] != "pong":
                    assert not message.get("entity_id", "").startswith("wide/"), message
                return got

            async def read_sse() -> list[dict[str, Any]]:
                got = []
                while len(got) < width + 2:
                    message = await stream.next()
                    assert message["event"] == "state_update", message
                    got.append(message["data"])
                return got

            received = await asyncio.gather(*(read_ws(ws) for ws in sockets), read_sse())
            for got in received:
                assert [m["version"] for m in got] == [seqs[0], *[seqs[1]] * width, seqs[2]]
                assert [m["property"] for m in got[1:-1]] == list(wide)

    run(main())


# -- 5: SSE (and WebSocket) resume in version order ------------------------------------------


@contextlib.contextmanager
def writers(url: str, prefix: str, count: int = 4) -> Iterator[None]:
    """`count` threads committing changes as fast as they can, each a batch of a change the
    filter matches and one it does not. Threads, not tasks: the server must see commits while
    the test's own loop is busy with the streams."""
    stop = threading.Event()

    def write(k: int) -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            n = 0
            while not stop.is_set():
                batch = [event(f"{prefix}{k}/{n % 5}", {"n": n}), event(f"other/{k}", {"n": n})]
                assert http.post("/api/events/batch", json={"events": batch}).status_code == 200
                n += 1

    threads = [threading.Thread(target=write, args=(k,), daemon=True) for k in range(count)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(TIMEOUT)


def _check_order(messages: list[dict[str, Any]], prefix: str, since: int) -> None:
    """Changes only for the filter, in version order from `since` on, with ids that a resume
    may use (an id never runs ahead of a change still to come)."""
    last_id = since
    last_version = since
    for message in messages:
        data, kind = message["data"], message["event"]
        if kind in ("state_update", "entity_deleted"):
            assert data["entity_id"].startswith(prefix), message
            assert data["version"] > last_id, (message, last_id)
            assert data["version"] >= last_version, (message, last_version)
            last_version = data["version"]
        if message["id"] is not None:
            assert int(message["id"]) >= last_version, message
            last_id = int(message["id"])


def test_sse_streams_resuming_under_concurrent_writers_get_versions_in_order(
    srv: FluxServer,
) -> None:
    """300 streams subscribe with `since` while four writers commit changes (half of them to
    entities the filter does not match). Every stream's changes match its filter, come in
    version order, and no `id` runs ahead of a change that follows it."""
    prefix = "order/"

    async def one_stream(http: httpx.AsyncClient, since: int) -> list[dict[str, Any]]:
        params = {"prefix": prefix, "since": str(since)}
        async with http.stream("GET", "/api/events/stream", params=params) as response:
            stream = Stream(response)
            got = await stream.until_subscribed()
            for _ in range(3):
                got.append(await stream.next())
            return got

    async def main() -> None:
        limits = httpx.Limits(max_connections=15)
        async with (
            httpx.AsyncClient(base_url=srv.url, timeout=TIMEOUT, limits=limits) as http,
            Publisher(srv.url) as pub,
        ):
            for _ in range(20):
                since = max(await pub.last_seq() - 40, 0)
                streams = await asyncio.gather(*(one_stream(http, since) for _ in range(15)))
                for got in streams:
                    _check_order(got, prefix, since)

    with writers(srv.url, prefix):
        run(main(), timeout=90)


def test_a_websocket_subscribed_in_its_url_gets_versions_in_order(srv: FluxServer) -> None:
    """`/api/ws?prefix=…&since=…` subscribes before the connection can receive anything: under
    concurrent writers, its first messages are the replay, then `subscribed`, then live changes,
    all in version order and all for the filter."""
    prefix = "wsorder/"

    async def main() -> None:
        async with Publisher(srv.url) as pub:
            for _ in range(20):
                since = max(await pub.last_seq() - 40, 0)
                url = ws_url(srv.url) + f"?prefix={prefix}&since={since}"
                async with connect(url, open_timeout=TIMEOUT, close_timeout=2) as raw:
                    ws = Client(raw)
                    got = [await ws.recv()]
                    while got[-1]["type"] != "subscribed":
                        assert len(got) < 100, got[:5]  # the replay is under 50 changes
                        got.append(await ws.recv())
                    got += await ws.changes(3)
                as_events = [
                    {
                        "event": m["type"],
                        "data": m,
                        "id": m["version"] if m["type"] == "subscribed" else None,
                    }
                    for m in got
                ]
                _check_order(as_events, prefix, since)

    with writers(srv.url, prefix):
        run(main(), timeout=90)


def test_a_bad_websocket_url_subscription_is_a_400(srv: FluxServer) -> None:
    too_long = "x" * 1025  # over FLUX_MAX_ENTITY_ID_LENGTH
    for query in (
        "since=abc",
        "since=-1",
        "snapshot=maybe",
        "prefix=a&entity_id=b",
        f"entity_id={too_long}",
        f"prefix={too_long}",
    ):
        answer = httpx.get(
            f"{srv.url}/api/ws?{query}",
            headers={
                "Upgrade": "websocket",
                "Connection": "Upgrade",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version": "13",
            },
            timeout=TIMEOUT,
        )
        assert answer.status_code == 400, (query, answer.status_code, answer.text)
        assert set(answer.json()) == {"error"}


# -- 9: SSE streams (and WebSockets) that never read are closed --------------------------------


def _flood_until_released(
    server: FluxServer, clients: list[socket.socket], prefix: str, what: str
) -> None:
    blob = secrets.token_hex(10_000)
    began = time.monotonic()
    with httpx.Client(base_url=server.url, timeout=30) as http:
        while held_by_server(server.port, clients):
            held = held_by_server(server.port, clients)
            assert time.monotonic() - began < BOUND, f"{held} of {len(clients)} {what} still held"
            batch = [event(f"{prefix}{n}", {"blob": blob}) for n in range(20)]
            assert http.post("/api/events/batch", json={"events": batch}).status_code == 200
            time.sleep(0.05)


def test_event_streams_that_never_read_are_closed_and_counted(srv: FluxServer) -> None:
    """30 SSE streams that never read, while changes flow: each is closed once its outbox
    overflows (its socket aborted: the client is not reading the close either), and counted."""
    n = 30
    closes = slow_closes(srv, "sse")
    clients = [stalled_event_stream(srv.port, "prefix=flood-sse/") for _ in range(n)]
    try:
        time.sleep(0.5)
        assert held_by_server(srv.port, clients) == n
        _flood_until_released(srv, clients, "flood-sse/", "SSE streams that never read")
        assert slow_closes(srv, "sse") - closes == n
    finally:
        for sock in clients:
            sock.close()


def test_websockets_that_never_read_are_closed_and_their_sockets_released(
    srv: FluxServer,
) -> None:
    """The same for WebSockets: the close frame cannot reach a client that does not read, so
    the server aborts the connection instead of holding it until the client reads."""
    n = 10
    closes = slow_closes(srv, "ws")
    clients = [
        stalled_websocket(srv.port, subscribe={"type": "subscribe", "prefix": "flood-ws/"})
        for _ in range(n)
    ]
    try:
        time.sleep(0.5)
        assert held_by_server(srv.port, clients) == n
        _flood_until_released(srv, clients, "flood-ws/", "WebSockets that never read")
        assert slow_closes(srv, "ws") - closes == n
    finally:
        for sock in clients:
            sock.close()


def test_an_event_stream_replaying_to_a_client_that_never_reads_is_closed(
    srv: FluxServer,
) -> None:
    """A replay goes out at the pace of the client; one that never reads, with no live change
    to overflow its outbox, is closed after the send timeout."""
    blob = secrets.token_hex(1000)
    publish_batches(srv, [event(f"replay/e{n}", {"blob": blob}) for n in range(3000)])
    closes = slow_closes(srv, "sse")
    clients = [stalled_event_stream(srv.port, "prefix=replay/&since=0") for _ in range(5)]
    try:
        waited = wait_until_released(srv, clients, "replaying streams that never read")
        assert waited < SEND_TIMEOUT + 10
        assert slow_closes(srv, "sse") - closes == 5
    finally:
        for sock in clients:
            sock.close()


# -- bursts: what is queued for a WebSocket goes out in one write -------------------------------


def burst_values(count: int) -> list[str]:
    """Property values whose messages take every WebSocket length form (7-bit, 16-bit and
    64-bit lengths), in characters of one, two and three bytes (so characters and bytes
    differ)."""
    sizes = [0, 1, 50, 100, 110, 120, 130, 200, 1_000, 5_000]
    values = []
    for n in range(count):
        size = {7: 65_000, 77: 70_000, 150: 100_000}.get(n, sizes[n % len(sizes)])
        values.append("xé€"[n % 3] * size)
    return values


def test_a_burst_reaches_every_websocket_whole_and_in_order(srv: FluxServer) -> None:
    """One batch of 200 changes of every frame size, to three subscribers: the server writes
    the messages queued for a connection together (several frames per write, 64 KiB of text at
    most: flux.api.ws), and each subscriber still receives every change once, in commit order,
    each an intact message of its own, and nothing after them."""
    values = burst_values(200)
    events = [event(f"burst/e{n % 7}", {"v": value}) for n, value in enumerate(values)]

    async def main() -> None:
        async with (
            ws_client(srv.url, max_size=None) as a,
            ws_client(srv.url, max_size=None) as b,
            ws_client(srv.url, max_size=None) as c,
            Publisher(srv.url) as pub,
        ):
            for ws in (a, b, c):
                await ws.subscribe(prefix="burst/")
            seqs = await pub.batch(events)

            async def read(ws: Client) -> list[tuple[str, str, int]]:
                got = await ws.changes(len(events))
                await ws.nothing()
                return [(m["entity_id"], m["value"], m["version"]) for m in got]

            expected = [
                (e["payload"]["entity_id"], value, seq)
                for e, value, seq in zip(events, values, seqs, strict=True)
            ]
            for got in await asyncio.gather(read(a), read(b), read(c)):
                assert got == expected

    run(main())


def test_a_websocket_that_stops_reading_mid_burst_is_closed_and_a_reader_gets_it_all(
    srv: FluxServer,
) -> None:
    """One batch of about 7.5 MB of changes, more than the loopback socket and the transport
    buffer hold, then nothing: the sender of a subscriber that never reads is left waiting on
    the server's flow control in the middle of the burst, so it is closed as a slow consumer
    after the send timeout (and counted), while a subscriber that reads gets every change in
    order."""
    blob = secrets.token_hex(1_500)
    events = [event(f"midburst/e{n}", {"blob": blob, "n": n}) for n in range(2_500)]
    closes = slow_closes(srv, "ws")
    stalled = stalled_websocket(srv.port, subscribe={"type": "subscribe", "prefix": "midburst/"})
    try:

        async def main() -> None:
            async with ws_client(srv.url) as reader, Publisher(srv.url) as pub:
                await reader.subscribe(prefix="midburst/")
                await asyncio.sleep(0.5)  # the stalled socket's subscribe is in
                seqs = await pub.batch(events)
                got = await reader.changes(len(events) * 2)
                assert [m["version"] for m in got[1::2]] == seqs
                assert [m["value"] for m in got if m["property"] == "n"] == list(range(2_500))

        run(main())
        waited = wait_until_released(srv, [stalled], "a WebSocket that stopped reading")
        assert waited < SEND_TIMEOUT + 10
        assert slow_closes(srv, "ws") - closes == 1
    finally:
        stalled.close()
