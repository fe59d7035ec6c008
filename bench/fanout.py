"""The fan-out scenario's two sides: WebSocket subscribers (a separate process) and a paced
publisher (in the harness process).

Subscribers: `python -m bench.fanout --url ws://HOST:PORT/api/ws --connections N` opens N
WebSocket connections (a minimal client of its own, `_WebSocket`, no compression), subscribes
each to `*` and waits for each acknowledgement, then prints `READY`. It then reads one line
from stdin, `T0 T1` (wall-clock nanoseconds), and counts the messages received in [T0, T1)
that carry a publish time, keeping each one's delivery latency (receive time - publish time;
same machine, same clock). After T1 it writes the totals and a latency histogram as JSON to
`--out` and exits.

The publish time is the event's one property, `sent_ns` (`time.time_ns()` just before the
request is written): Flux delivers it as a `state_update` with `"property":"sent_ns"`, the
ceiling as the POSTed body itself.

Redis (`--url redis://HOST:PORT`): each subscriber is a connection in `PSUBSCRIBE *` (every
channel, as `*` is every entity for Flux), read with hiredis; the publisher sends, per event,
`XADD log * event <json>`, `HSET <entity> sent_ns <n>` and `PUBLISH <entity> <json>` in one
pipeline (store it as the other scenarios do, then publish it), and Redis delivers the JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from bench.client import _read_response, post_request
from bench.peers import ROOT

SUBSCRIBE = '{"type":"subscribe","entity_id":"*"}'
ENTITIES = 100  # events cycle over bench/f0 .. bench/f99
BUCKET_NS = 10_000  # latencies are counted in 10 µs buckets


def sent_ns_of(data: str | bytes) -> int | None:
    """The publish time a delivered message carries (Flux's state_update or the ceiling's
    copy of the event), or None (metrics_update and the like)."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if type(message) is not dict:
        return None
    if message.get("property") == "sent_ns":
        value = message.get("value")
        return value if type(value) is int else None
    payload = message.get("payload")
    if type(payload) is dict:
        props = payload.get("properties")
        if type(props) is dict and type(props.get("sent_ns")) is int:
            sent: int = props["sent_ns"]
            return sent
    return None


# -- subscriber process ------------------------------------------------------------------------


class _WebSocket(asyncio.Protocol):
    """A minimal WebSocket client (RFC 6455) for the subscribers: the upgrade handshake, masked
    text frames out, unfragmented frames in (pings answered). A general client (websockets')
    cost the subscriber processes most of a core at 50k messages/s on a 2-core machine, CPU
    taken from the server being measured; this one parses a frame in a few microseconds."""

    def __init__(self, host: str, path: str, on_text: Callable[[bytes, int], None]) -> None:
        self.host = host
        self.path = path
        self.on_text = on_text
        self.buffer = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[str] = loop.create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transport is not a subclass of asyncio.Transport, but has its methods.
        self.transport = opened = cast(asyncio.Transport, transport)
        key = base64.b64encode(os.urandom(16)).decode()
        opened.write(
            f"GET {self.path} HTTP/1.1\r\nHost: {self.host}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def send(self, opcode: int, data: bytes) -> None:
        """One masked frame (clients must mask; payloads under 64 KiB here)."""
        assert self.transport is not None and len(data) < 65536
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
        size = bytes([0x80 | len(data)]) if len(data) < 126 else b"\xfe" + len(data).to_bytes(2)
        self.transport.write(bytes([0x80 | opcode]) + size + mask + masked)

    def data_received(self, data: bytes) -> None:
        now = time.time_ns()
        buf = self.buffer
        buf += data
        if not self.upgraded:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            if not buf.startswith(b"HTTP/1.1 101"):
                self.close(f"upgrade refused: {bytes(buf[:80])!r}")
                return
            del buf[: end + 4]
            self.upgraded = True
            self.opened.set_result(None)
        pos = 0
        size = len(buf)
        while size - pos >= 2:
            opcode = buf[pos] & 0x0F
            length = buf[pos + 1] & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4])
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10])
                head = 10
            if size - pos < head + length:
                break
            payload = bytes(buf[pos + head : pos + head + length])
            pos += head + length
            if opcode == 0x1:
                self.on_text(payload, now)
            elif opcode == 0x9:
                self.send(0xA, payload)
            elif opcode == 0x8:
                self.close(f"closed by the server: {payload[2:].decode(errors='replace')}")
            elif opcode != 0xA:
                self.close(f"unexpected frame opcode {opcode}")
        del buf[:pos]

    def close(self, reason: str) -> None:
        if not self.closed.done():
            self.closed.set_result(reason)
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(str(exc or "connection lost"))


async def _measure(window: list[int], grace: float) -> tuple[int, int, float]:
    """The subscribers' side of a run, once they are connected: say `READY`, read `T0 T1` from
    stdin into `window` (the receivers count the messages published inside it, by the
    `sent_ns` they carry, so the edges of the window do not depend on the delivery latency),
    wait until T1 plus `grace` (the last in-window messages being read); returns T0, T1 and the
    CPU seconds this process used between them."""
    print("READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    t0, t1 = (int(x) for x in line.split())
    window[:] = [t0, t1]
    await asyncio.sleep(max(0.0, (t0 - time.time_ns()) / 1e9))
    cpu0 = time.process_time()
    await asyncio.sleep(max(0.0, (t1 - time.time_ns()) / 1e9))
    cpu1 = time.process_time()
    await asyncio.sleep(grace)
    return t0, t1, cpu1 - cpu0


def _result(
    measured: tuple[int, int, float], latencies: list[int], closed: list[str]
) -> dict[str, Any]:
    """What a subscriber process reports (see `Subscribers.result`)."""
    t0, t1, cpu = measured
    histogram = Counter(x // BUCKET_NS for x in latencies)
    return {
        "messages": len(latencies),
        "seconds": (t1 - t0) / 1e9,
        "cpu_seconds": cpu,
        "closed": len(closed),
        "close_reasons": sorted(set(closed))[:3],
        "histogram": sorted(histogram.items()),
    }


async def _subscribe(url: str, connections: int, grace: float) -> dict[str, Any]:
    host, _, path = url.removeprefix("ws://").partition("/")
    address, _, port = host.rpartition(":")
    window = [0, 0]  # [T0, T1); 0 until the harness says
    latencies: list[int] = []
    loop = asyncio.get_running_loop()

    def on_text(data: bytes, now: int) -> None:
        sent = sent_ns_of(data)
        if sent is not None and window[0] <= sent < window[1]:
            latencies.append(now - sent)

    async def open_one() -> _WebSocket:
        acked: asyncio.Future[None] = loop.create_future()

        def until_subscribed(data: bytes, now: int) -> None:
            if b'"subscribed"' in data and not acked.done():  # a metrics_update may come first
                acked.set_result(None)

        _, ws = await loop.create_connection(
            lambda: _WebSocket(host, "/" + path, until_subscribed), address, int(port)
        )
        await asyncio.wait_for(ws.opened, 30)
        ws.send(0x1, SUBSCRIBE.encode())
        await asyncio.wait_for(acked, 30)
        ws.on_text = on_text
        return ws

    sockets: list[_WebSocket] = []
    for start in range(0, connections, 25):  # 25 handshakes at a time
        count = min(25, connections - start)
        sockets += await asyncio.gather(*(open_one() for _ in range(count)))
    measured = await _measure(window, grace)
    closed = [ws.closed.result() for ws in sockets if ws.closed.done()]
    for ws in sockets:
        if not ws.closed.done():
            ws.send(0x8, (1000).to_bytes(2))
            ws.close("closed by the subscriber")
    return _result(measured, latencies, closed)


async def _subscribe_redis(url: str, connections: int, grace: float) -> dict[str, Any]:
    """As `_subscribe`, for Redis pub/sub: `connections` connections in `PSUBSCRIBE *`."""
    import hiredis

    host, _, port = url.removeprefix("redis://").partition(":")
    window = [0, 0]
    latencies: list[int] = []
    closed: list[str] = []
    loop = asyncio.get_running_loop()

    class Subscriber(asyncio.Protocol):
        def __init__(self) -> None:
            self.reader = hiredis.Reader()
            self.subscribed: asyncio.Future[None] = loop.create_future()

        def data_received(self, data: bytes) -> None:
            now = time.time_ns()
            self.reader.feed(data)
            while (reply := self.reader.gets()) is not False:
                if not isinstance(reply, list):
                    continue
                if reply[0] == b"psubscribe" and not self.subscribed.done():
                    self.subscribed.set_result(None)
                elif reply[0] == b"pmessage":
                    sent = sent_ns_of(reply[3])
                    if sent is not None and window[0] <= sent < window[1]:
                        latencies.append(now - sent)

        def connection_lost(self, exc: Exception | None) -> None:
            closed.append(str(exc or "closed by Redis"))

    protocols: list[Subscriber] = []
    for _ in range(connections):
        transport, protocol = await loop.create_connection(Subscriber, host, int(port))
        transport.write(b"*2\r\n$10\r\nPSUBSCRIBE\r\n$1\r\n*\r\n")
        protocols.append(protocol)
    await asyncio.wait_for(asyncio.gather(*(p.subscribed for p in protocols)), 30)
    return _result(await _measure(window, grace), latencies, closed)


def subscriber_main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.fanout", description=__doc__)
    parser.add_argument("--url", required=True, help="ws://HOST:PORT/api/ws or redis://HOST:PORT")
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--grace", type=float, default=0.5)
    parser.add_argument("--out", type=Path, required=True, help="where to write the result")
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    subscribe = _subscribe_redis if args.url.startswith("redis://") else _subscribe
    result = runner(subscribe(args.url, args.connections, args.grace))
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(args.out)


# -- harness side ------------------------------------------------------------------------------


class Subscribers:
    """One subscriber process (see the module docstring)."""

    def __init__(self, url: str, connections: int, out: Path) -> None:
        self.out = out
        out.unlink(missing_ok=True)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.fanout",
                "--url",
                url,
                "--connections",
                str(connections),
                "--out",
                str(out),
            ],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "READY":
            self.proc.kill()
            raise RuntimeError(f"fan-out subscribers did not start (got {line!r})")

    def start(self, t0: int, t1: int) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{t0} {t1}\n")
        self.proc.stdin.flush()

    def result(self, timeout: float = 60) -> dict[str, Any]:
        try:
            self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()
            raise RuntimeError("fan-out subscribers did not report") from None
        if self.proc.returncode != 0 or not self.out.exists():
            raise RuntimeError(f"fan-out subscribers failed (exit {self.proc.returncode})")
        doc: dict[str, Any] = json.loads(self.out.read_text())
        self.out.unlink()
        return doc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


@dataclass
class Published:
    sent: int
    late: int  # requests sent more than 5 ms after their slot (every connection was busy)
    errors: int
    cpu_seconds: float
    p50_ms: float  # POST latency
    p99_ms: float


def event_body(k: int) -> bytes:
    return (
        f'{{"stream":"bench.fanout","source":"bench","timestamp":{time.time_ns() // 1_000_000},'
        f'"payload":{{"entity_id":"bench/f{k % ENTITIES}",'
        f'"properties":{{"sent_ns":{time.time_ns()}}}}}}}'
    ).encode()


async def _open(kind: str, port: int) -> Any:
    """One publisher connection: (reader, writer) for HTTP, a RESP connection for Redis."""
    if kind == "redis":
        from bench import redis_load

        return await redis_load.connect(port)
    return await asyncio.open_connection("127.0.0.1", port)


async def _send(kind: str, conn: Any, port: int, k: int) -> bool:
    """Publish event k on `conn` and wait for the answer; True when it succeeded."""
    body = event_body(k)
    if kind == "redis":
        from bench import redis_load

        entity = f"bench/f{k % ENTITIES}"
        sent = orjson.loads(body)["payload"]["properties"]["sent_ns"]
        data = (
            redis_load.command(b"XADD", redis_load.LOG, b"*", b"event", body)
            + redis_load.command(b"HSET", entity, b"sent_ns", str(sent))
            + redis_load.command(b"PUBLISH", entity, body)
        )
        try:
            await conn.call(data, 3)
        except (RuntimeError, ConnectionError):
            return False
        return True
    conn[1].write(post_request("127.0.0.1", port, "/api/events", body))
    status, _ = await _read_response(conn[0])
    return status == 200


def _close(kind: str, conn: Any) -> None:
    if kind == "redis":
        conn.close()
    else:
        conn[1].close()


async def _publish(
    port: int, rate: float, start: float, stop: float, connections: int, kind: str = "http"
) -> Published:
    """Publish one event per slot, slot k at monotonic time start + k / rate, until `stop`, on a
    pool of keep-alive connections (a slot waits when all of them are busy). `kind`: "http"
    (POST /api/events) or "redis" (XADD + HSET + PUBLISH, pipelined)."""
    pool: asyncio.Queue[Any] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await _open(kind, port))
    pending: set[asyncio.Task[None]] = set()
    latencies: list[float] = []
    late = errors = 0

    async def send(conn: Any, k: int, t: float) -> None:
        nonlocal errors
        ok = await _send(kind, conn, port, k)
        latencies.append((time.monotonic() - t) * 1000)
        if not ok:
            errors += 1
        pool.put_nowait(conn)

    cpu0 = time.process_time()
    k = 0
    while True:
        slot = start + k / rate
        if slot >= stop:
            break
        delay = slot - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        now = time.monotonic()
        if now - slot > 0.005:
            late += 1
        task = asyncio.create_task(send(conn, k, now))
        pending.add(task)
        task.add_done_callback(pending.discard)
        k += 1
    if pending:
        await asyncio.gather(*pending)
    cpu = time.process_time() - cpu0
    while not pool.empty():
        _close(kind, pool.get_nowait())
    latencies.sort()
    n = len(latencies)
    return Published(
        sent=k,
        late=late,
        errors=errors,
        cpu_seconds=cpu,
        p50_ms=latencies[n // 2] if n else 0.0,
        p99_ms=latencies[min(n - 1, int(n * 0.99))] if n else 0.0,
    )


@dataclass
class FanoutResult:
    delivered: int  # messages published in the window and received, all subscribers together
    seconds: float
    expected: int  # events published in the window x subscribers
    p50_ms: float
    p99_ms: float
    max_ms: float
    subscriber_cpu: float  # cores
    server_cpu: float  # cores, over the window
    publisher: Published
    closed: int
    close_reasons: list[str]

    @property
    def rate(self) -> float:
        return self.delivered / self.seconds


def run(
    port: int,
    work: Path,
    *,
    subscribers: int,
    processes: int,
    rate: float,
    settle: float,
    seconds: float,
    publisher_connections: int = 16,
    server_cpu: Callable[[], float] | None = None,
    kind: str = "http",
) -> FanoutResult:
    """Connect `subscribers` WebSockets (over `processes` processes), publish `rate` events/s
    for `settle` + `seconds`, and measure what the subscribers receive in the last `seconds`.
    `kind` "redis": Redis pub/sub subscribers and publisher instead (see the module docstring).
    """
    url = f"redis://127.0.0.1:{port}" if kind == "redis" else f"ws://127.0.0.1:{port}/api/ws"
    shares = [subscribers // processes + (i < subscribers % processes) for i in range(processes)]
    procs = [Subscribers(url, n, work / f"fanout-{port}-{i}.json") for i, n in enumerate(shares)]
    try:
        for proc in procs:
            proc.ready()
        start = time.monotonic()
        wall = time.time_ns()
        t0 = wall + int(settle * 1e9)
        t1 = t0 + int(seconds * 1e9)
        for proc in procs:
            proc.start(t0, t1)
        cpu: list[float] = []

        async def sample_cpu() -> None:
            for at in (start + settle, start + settle + seconds):
                await asyncio.sleep(max(0.0, at - time.monotonic()))
                cpu.append(server_cpu() if server_cpu is not None else 0.0)

        async def drive() -> Published:
            sampler = asyncio.create_task(sample_cpu())
            end = start + settle + seconds
            result = await _publish(port, rate, start, end, publisher_connections, kind)
            await sampler
            return result

        published = asyncio.run(drive())
        docs = [proc.result() for proc in procs]
    finally:
        for proc in procs:
            proc.kill()
    histogram: Counter[int] = Counter()
    for doc in docs:
        for bucket, count in doc["histogram"]:
            histogram[bucket] += count
    buckets = sorted(histogram.items())
    n = sum(histogram.values())

    def pct(q: float) -> float:
        """The q-quantile in ms (the upper edge of its bucket)."""
        rank, seen = min(n - 1, int(n * q)), 0
        for bucket, count in buckets:
            seen += count
            if seen > rank:
                return (bucket + 1) * BUCKET_NS / 1e6
        return float("nan")

    return FanoutResult(
        delivered=n,
        seconds=seconds,
        expected=round(rate * seconds) * subscribers,
        p50_ms=pct(0.5),
        p99_ms=pct(0.99),
        max_ms=pct(1.0),
        subscriber_cpu=sum(doc["cpu_seconds"] for doc in docs) / seconds,
        server_cpu=(cpu[1] - cpu[0]) / seconds,
        publisher=published,
        closed=sum(doc["closed"] for doc in docs),
        close_reasons=[r for doc in docs for r in doc["close_reasons"]],
    )


if __name__ == "__main__":
    subscriber_main()
