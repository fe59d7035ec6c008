"""A small asyncio HTTP/1.1 keep-alive client: sends pre-built requests as fast as the server
answers them, on N connections. Used to fill a server with an exact number of events (the
restart scenario) and as the alternative load generator for batch ingest (`--batch-client
python`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass
class ClientResult:
    requests: int
    seconds: float
    cpu_seconds: float  # this process's CPU time during the run
    latencies_ms: list[float]

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


def post_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


async def _drive(
    host: str,
    port: int,
    requests: Sequence[bytes],
    connections: int,
    count: int | None,
    seconds: float | None,
) -> ClientResult:
    next_index = 0
    done = 0
    latencies: list[float] = []
    deadline = None if seconds is None else time.monotonic() + seconds

    async def worker() -> None:
        nonlocal next_index, done
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                if count is not None and next_index >= count:
                    return
                if deadline is not None and time.monotonic() >= deadline:
                    return
                request = requests[next_index % len(requests)]
                next_index += 1
                sent = time.monotonic()
                writer.write(request)
                status, body = await _read_response(reader)
                if status != 200:
                    raise RuntimeError(f"HTTP {status}: {body[:300]!r}")
                latencies.append((time.monotonic() - sent) * 1000)
                done += 1
        finally:
            writer.close()

    cpu0 = time.process_time()
    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = time.monotonic() - t0
    return ClientResult(done, elapsed, time.process_time() - cpu0, latencies)


def run(
    host: str,
    port: int,
    requests: Sequence[bytes],
    *,
    connections: int,
    count: int | None = None,
    seconds: float | None = None,
) -> ClientResult:
    """Send `count` requests (cycling over `requests`), or as many as fit in `seconds`."""
    return asyncio.run(_drive(host, port, requests, connections, count, seconds))
