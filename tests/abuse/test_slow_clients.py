"""Connections must not be held forever, nor all taken by one client.

A client that sends its headers or its body slowly (a byte now and then) once held its
connection for as long as it liked, and a few hundred of them used up the server's file
descriptors. The server now closes a connection whose headers are not complete within
FLUX_HEADER_TIMEOUT_SECONDS and a request whose body is not complete within
FLUX_BODY_TIMEOUT_SECONDS (both answered `408`), caps the connections one client address may hold
(FLUX_MAX_CONNECTIONS_PER_CLIENT, `429` past it), and raises its own open-file limit to the hard
limit at start.
"""

from __future__ import annotations

import contextlib
import resource
import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from conftest import FluxServer, wait_for

N = 30  # sockets of each kind
BOUND = 20.0  # seconds within which the server must have closed them (timeouts are 2 s)


def _connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.setblocking(False)
    return sock


def _closed(sock: socket.socket, received: dict[socket.socket, bytes]) -> bool:
    """Whether the server closed `sock` (what it sent before is kept in `received`)."""
    try:
        chunk = sock.recv(4096)
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    received[sock] = received.get(sock, b"") + chunk
    return not chunk


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    env = {
        "FLUX_HEADER_TIMEOUT_SECONDS": "2",
        "FLUX_BODY_TIMEOUT_SECONDS": "2",
        "FLUX_MAX_CONNECTIONS_PER_CLIENT": str(4 * N),
    }
    srv = FluxServer(tmp_path_factory.mktemp("slow") / "data", env)
    srv.start()
    yield srv
    srv.stop()


def test_slow_headers_and_slow_bodies_are_closed(strict: FluxServer) -> None:
    port = strict.port
    event = orjson.dumps(
        {"stream": "s", "source": "x", "payload": {"entity_id": "ns/slow", "properties": {}}}
    )
    head = (
        f"POST /api/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(event)}\r\n\r\n"
    ).encode()
    with _sockets() as opened:
        headers_only = []
        bodies = []
        for _ in range(N):
            sock = _connect(port)
            opened.append(sock)
            sock.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            headers_only.append(sock)
        for _ in range(N):
            sock = _connect(port)
            opened.append(sock)
            sock.sendall(head + event[:1])
            bodies.append(sock)
        received: dict[socket.socket, bytes] = {}
        open_ = set(opened)
        sent = 1
        began = time.monotonic()
        while open_ and time.monotonic() - began < BOUND:
            # a normal request is answered meanwhile
            assert httpx.get(f"{strict.url}/api/health", timeout=10).status_code == 200
            for sock in bodies:  # one more byte of each body, slowly (never the last)
                if sock in open_ and sent < len(event) - 1:
                    with contextlib.suppress(OSError):
                        sock.send(event[sent : sent + 1])
            sent += 1
            select.select(list(open_), [], [], 0.5)
            open_ = {sock for sock in open_ if not _closed(sock, received)}
        assert not open_, f"{len(open_)} of {2 * N} slow connections still open after {BOUND} s"
        elapsed = time.monotonic() - began
        answered = [received.get(sock, b"") for sock in opened]
        timed_out = [r for r in answered if r.startswith(b"HTTP/1.1 408")]
        assert len(timed_out) >= N, answered[:3]  # some may be reset before the answer is read
        assert timed_out[0].endswith(b'{"error":"request timeout"}') or b"timeout" in timed_out[0]
    assert elapsed < BOUND
    assert httpx.get(f"{strict.url}/api/state/entities/ns%2Fslow").status_code == 404


def test_a_client_may_hold_only_so_many_connections(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    srv = server_factory(data_dir, {"FLUX_MAX_CONNECTIONS_PER_CLIENT": "5"}).start()
    handshake = (
        f"GET /api/ws HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    try:
        with _sockets() as sockets:  # WebSockets count too, and are counted out when closed
            for _ in range(5):
                sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
                sockets.append(sock)
                sock.sendall(handshake)
                assert sock.recv(4096).startswith(b"HTTP/1.1 101")
            assert httpx.get(f"{srv.url}/api/health", timeout=10).status_code == 429
        wait_for(
            lambda: httpx.get(f"{srv.url}/api/health", timeout=10).status_code == 200,
            "the WebSockets' slots to free up",
        )
        with _sockets() as opened:
            for _ in range(5):
                opened.append(_connect(srv.port))
            time.sleep(0.5)  # the server has accepted them
            refused = httpx.get(f"{srv.url}/api/health", timeout=10)
            assert refused.status_code == 429, refused.text
            assert refused.json() == {"error": "too many connections from this client"}
            opened.pop().close()
            wait_for(
                lambda: httpx.get(f"{srv.url}/api/health", timeout=10).status_code == 200,
                "a connection slot to free up",
            )
    finally:
        srv.stop()


def test_the_open_file_limit_is_raised_to_the_hard_limit(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(soft, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))  # inherited by the server
    try:
        srv = server_factory(data_dir).start()
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        assert srv.proc is not None
        limits = Path(f"/proc/{srv.proc.pid}/limits").read_text()
        line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        server_soft, server_hard = line.split()[3:5]
        assert server_soft == server_hard, line
        assert f"open file limit {server_hard}" in srv.logs()
    finally:
        srv.stop()
