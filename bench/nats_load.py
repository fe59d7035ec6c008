"""The NATS JetStream key-value peer's load, with nats-py (the official Python client).

The bucket `bench` (file storage, history 1, direct gets on) holds one key per entity, the
entity id as it is (`bench/e123`; `/` is valid in a KV key); each update is one put of the
event's JSON under its entity's key, acknowledged by JetStream after it is stored. A KV put is
a JetStream publish to `$KV.bench.<key>` that waits for its ack:

- single updates: `kv.put(key, value)` from 64 workers, one put at a time each (the same
  concurrency as wrk's 64 connections against Flux), in 2 processes of 32 workers sharing 4
  connections each (the Python client tops out at about a core; see `CONNECTIONS`);
- batches of 1,000: the 1,000 puts of a batch are published at once, each with its own reply
  subject, and the batch is done when all 1,000 acks are back (a pipelined put; `kv.put` one
  by one would measure round trips, not the server); 4 batches in flight, as for Flux;
- reads: `kv.get(key)` (a direct get) from 64 workers, spread the same way.

An ack with an error, or a missing key, fails the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote

import orjson

from bench.client import ClientResult
from bench.driver import drive, run_loop

BUCKET = "bench"


def url(port: int) -> str:
    return f"nats://127.0.0.1:{port}"


async def _connect(port: int) -> Any:
    import nats

    return await nats.connect(url(port), max_reconnect_attempts=0, pending_size=64 * 2**20)


async def _bucket(nc: Any) -> Any:
    from nats.js.api import KeyValueConfig, StorageType

    js = nc.jetstream(timeout=30)
    config = KeyValueConfig(bucket=BUCKET, history=1, storage=StorageType.FILE, direct=True)
    return await js.create_key_value(config=config)


def batch_work(bodies: Sequence[bytes]) -> list[list[tuple[str, bytes]]]:
    """Each `{"events": [...]}` body as its puts: (subject, value) per event."""
    out = []
    for body in bodies:
        puts = []
        for event in orjson.loads(body)["events"]:
            puts.append((f"$KV.{BUCKET}.{event['payload']['entity_id']}", orjson.dumps(event)))
        out.append(puts)
    return out


def single_work(bodies: Sequence[bytes]) -> list[tuple[str, bytes]]:
    """Each single-event body as one put: (key, value)."""
    return [(orjson.loads(b)["payload"]["entity_id"], b) for b in bodies]


def get_keys(paths: Sequence[bytes]) -> list[str]:
    prefix = b"/api/state/entities/"
    return [unquote(p.removeprefix(prefix).decode()) for p in paths]


class _Acks:
    """Counts the acks of one connection's batch on a wildcard reply subscription."""

    def __init__(self) -> None:
        self.wanted = 0
        self.seen = 0
        self.errors: list[bytes] = []
        self.done: asyncio.Event = asyncio.Event()

    async def on_ack(self, msg: Any) -> None:
        if b'"error"' in msg.data:
            self.errors.append(msg.data[:200])
        self.seen += 1
        if self.seen >= self.wanted:
            self.done.set()


async def _run_batches(
    port: int, work: Sequence[list[tuple[str, bytes]]], connections: int, count: int
) -> ClientResult:
    ncs = [await _connect(port) for _ in range(connections)]
    await _bucket(ncs[0])
    acks = [_Acks() for _ in ncs]
    inboxes = []
    for nc, ack in zip(ncs, acks, strict=True):
        inbox = nc.new_inbox()
        await nc.subscribe(inbox + ".*", cb=ack.on_ack)
        inboxes.append(inbox)

    async def op(w: int, i: int) -> None:
        nc, ack, inbox = ncs[w], acks[w], inboxes[w]
        puts = work[i % len(work)]
        ack.wanted, ack.seen = len(puts), 0
        ack.done.clear()
        for n, (subject, value) in enumerate(puts):
            await nc.publish(subject, value, reply=f"{inbox}.{n}")
        await nc.flush()
        await asyncio.wait_for(ack.done.wait(), 60)
        if ack.errors:
            raise RuntimeError(f"NATS KV put failed: {ack.errors[0]!r}")

    try:
        return await drive(op, connections, count=count)
    finally:
        for nc in ncs:
            await nc.close()


def run_batches(
    port: int, work: Sequence[list[tuple[str, bytes]]], *, connections: int, count: int
) -> ClientResult:
    """`count` batches of pipelined puts (cycling over `work`), `connections` in flight."""
    return run_loop(_run_batches(port, work, connections, count))


# Workers share a few connections: nats-py multiplexes requests on a connection, and each
# connection costs the client its own reader, flusher and ping tasks (measured: 64 workers on
# 4 connections answer more than on 1 or 16).
CONNECTIONS = 4


async def _run_ops(
    port: int, kind: str, work: Sequence[Any], workers: int, seconds: float
) -> ClientResult:
    ncs = [await _connect(port) for _ in range(min(workers, CONNECTIONS))]
    kvs = [await _bucket(nc) for nc in ncs]

    async def put(w: int, i: int) -> None:
        key, value = work[i % len(work)]
        await kvs[w % len(kvs)].put(key, value)

    async def get(w: int, i: int) -> None:
        entry = await kvs[w % len(kvs)].get(work[i % len(work)])
        if not entry.value:
            raise RuntimeError(f"NATS KV: empty value for {entry.key}")

    try:
        return await drive(put if kind == "put" else get, workers, seconds=seconds)
    finally:
        for nc in ncs:
            await nc.close()


def run_puts(
    port: int, work: Sequence[tuple[str, bytes]], *, workers: int, seconds: float
) -> ClientResult:
    """`kv.put(key, value)` (cycling over `work`) from `workers` workers for `seconds`."""
    return run_loop(_run_ops(port, "put", work, workers, seconds))


def run_gets(port: int, keys: Sequence[str], *, workers: int, seconds: float) -> ClientResult:
    """`kv.get(key)` (cycling over `keys`) from `workers` workers for `seconds`."""
    return run_loop(_run_ops(port, "get", keys, workers, seconds))


async def _status(port: int) -> dict[str, int]:
    nc = await _connect(port)
    try:
        kv = await _bucket(nc)
        status = await kv.status()
        # History 1: the stream keeps one message per key, so its message count is the number
        # of keys; `bytes` is what it stores.
        state = status.stream_info.state
        return {
            "keys": int(state.messages),
            "bytes": int(state.bytes),
            "last_seq": int(state.last_seq),
        }
    finally:
        await nc.close()


def status(port: int) -> dict[str, int]:
    """The bucket's key count, stored bytes and last sequence (puts stored so far), for the
    checks after a run."""
    return run_loop(_status(port))


async def _ping(port: int) -> bool:
    try:
        nc = await asyncio.wait_for(_connect(port), 2)
    except Exception:
        return False
    try:
        js = nc.jetstream(timeout=2)
        await js.account_info()
        return True
    except Exception:
        return False
    finally:
        await nc.close()


def ping(port: int) -> bool:
    """True once the server accepts connections and JetStream answers."""
    return run_loop(_ping(port))
