"""The Redis peer's load: the same work as Flux's, sent with a minimal RESP client.

Flux appends each event to its log and merges its properties into the entity's state. The Redis
equivalent, per event, is `XADD log * event <the event's JSON>` (the log: one stream for all
events, as Flux has one log) plus `HSET <entity id> <name> <JSON value> ...` (the state: one hash
per entity), sent together in one pipeline. A batch of 1,000 events is one pipeline of 2,000
commands. Reads are `HGETALL <entity id>`; listing by prefix uses a sorted-set index of the
entity ids (`ZRANGE index [prefix (prefix\\xff BYLEX`, then every `HGETALL` pipelined).

The client is as thin as Python allows, so the figure is Redis's and not a client library's:
commands are encoded once before the run, each connection is an `asyncio.Protocol` on uvloop,
and replies are parsed by hiredis (C). A reply error fails the run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import cast
from urllib.parse import unquote

import hiredis
import orjson

from bench.client import ClientResult
from bench.driver import drive, run_loop

HOST = "127.0.0.1"
LOG = b"log"  # the stream every event is appended to
INDEX = b"index"  # sorted set of every entity id (score 0), for listing by prefix


def command(*args: bytes | str) -> bytes:
    """One command in RESP, the Redis wire format."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        raw = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


class RespConnection(asyncio.Protocol):
    """One connection: `call(data, n)` writes pipelined commands and waits for `n` replies."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.replies: list[object] = []
        self.wanted = 0
        self.waiter: asyncio.Future[None] | None = None
        self.transport: asyncio.WriteTransport | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's, hence the cast.
        self.transport = cast(asyncio.WriteTransport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        gets, append = self.reader.gets, self.replies.append
        while (reply := gets()) is not False:
            append(reply)
        waiter = self.waiter
        if waiter is not None and len(self.replies) >= self.wanted and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionError("Redis closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    async def call(self, data: bytes, n: int) -> list[object]:
        """Send `data` (n pipelined commands) and return their n replies; raises on a reply
        error or a lost connection."""
        if self.lost is not None:
            raise self.lost
        assert self.transport is not None
        self.wanted = n
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        await self.waiter
        replies, self.replies = self.replies, []
        for reply in replies:
            if isinstance(reply, hiredis.ReplyError):
                raise RuntimeError(f"Redis error: {reply}")
        return replies

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> RespConnection:
    _, protocol = await asyncio.get_running_loop().create_connection(RespConnection, HOST, port)
    return protocol


# -- the work, encoded once ----------------------------------------------------------------------


def event_commands(event: dict[str, object], raw: bytes | None = None) -> bytes:
    """XADD of the event to the log plus HSET of its properties on the entity's hash."""
    payload = event["payload"]
    assert isinstance(payload, dict)
    props = payload.get("properties") or {}
    assert isinstance(props, dict)
    fields: list[bytes | str] = []
    for name, value in props.items():
        fields += [name, orjson.dumps(value)]
    xadd = command(b"XADD", LOG, b"*", b"event", raw if raw is not None else orjson.dumps(event))
    return xadd + command(b"HSET", str(payload["entity_id"]), *fields)


def batch_pipelines(bodies: Sequence[bytes]) -> list[tuple[bytes, int]]:
    """Each `{"events": [...]}` body as one pipeline (XADD + HSET per event), with its reply
    count."""
    out = []
    for body in bodies:
        events = orjson.loads(body)["events"]
        out.append((b"".join(event_commands(e) for e in events), 2 * len(events)))
    return out


def single_pipelines(bodies: Sequence[bytes]) -> list[tuple[bytes, int]]:
    """Each single-event body as XADD + HSET in one pipeline (2 replies)."""
    return [(event_commands(orjson.loads(b), b), 2) for b in bodies]


def get_commands(paths: Sequence[bytes]) -> list[tuple[bytes, int]]:
    """Each `GET /api/state/entities/<id>` path as `HGETALL <id>`."""
    prefix = b"/api/state/entities/"
    return [(command(b"HGETALL", unquote(p.removeprefix(prefix).decode())), 1) for p in paths]


# -- runs ----------------------------------------------------------------------------------------


async def _run_pipelines(
    port: int,
    work: Sequence[tuple[bytes, int]],
    connections: int,
    count: int | None,
    seconds: float | None,
    check: bool,
) -> ClientResult:
    conns = [await connect(port) for _ in range(connections)]
    size = len(work)

    async def op(w: int, i: int) -> None:
        data, n = work[i % size]
        replies = await conns[w].call(data, n)
        if check and not replies[0]:
            raise RuntimeError(f"Redis: empty reply to {data[:80]!r}")

    try:
        return await drive(op, connections, count=count, seconds=seconds)
    finally:
        for conn in conns:
            conn.close()


def run_pipelines(
    port: int,
    work: Sequence[tuple[bytes, int]],
    *,
    connections: int,
    count: int | None = None,
    seconds: float | None = None,
    check_nonempty: bool = False,
) -> ClientResult:
    """Send the pipelines in `work` (cycling) on `connections` connections, one at a time per
    connection, for `count` pipelines or `seconds`; `check_nonempty`: fail on an empty first
    reply (an HGETALL of a missing entity)."""
    return run_loop(_run_pipelines(port, work, connections, count, seconds, check_nonempty))


async def _run_list(
    port: int, prefixes: Sequence[str], expected: int, connections: int, seconds: float
) -> ClientResult:
    conns = [await connect(port) for _ in range(connections)]
    queries = [command(b"ZRANGE", INDEX, f"[{p}", f"({p}\xff", b"BYLEX") for p in prefixes]

    async def op(w: int, i: int) -> None:
        (ids,) = await conns[w].call(queries[i % len(queries)], 1)
        assert isinstance(ids, list)
        if len(ids) != expected:
            raise RuntimeError(f"Redis list: {len(ids)} ids, expected {expected}")
        hashes = await conns[w].call(b"".join(command(b"HGETALL", k) for k in ids), len(ids))
        if not hashes[-1]:
            raise RuntimeError("Redis list: an entity without properties")

    try:
        return await drive(op, connections, seconds=seconds)
    finally:
        for conn in conns:
            conn.close()


def run_list(
    port: int, prefixes: Sequence[str], *, expected: int, connections: int, seconds: float
) -> ClientResult:
    """List every entity under a prefix (cycling over `prefixes`): the ids from the index, then
    every entity's hash in one pipeline; each list must have `expected` entities."""
    return run_loop(_run_list(port, prefixes, expected, connections, seconds))


async def _load(port: int, entities: Sequence[tuple[str, dict[str, object]]], index: bool) -> None:
    conn = await connect(port)
    try:
        for start in range(0, len(entities), 1000):
            chunk = entities[start : start + 1000]
            parts = []
            for entity_id, props in chunk:
                fields: list[bytes | str] = []
                for name, value in props.items():
                    fields += [name, orjson.dumps(value)]
                parts.append(command(b"HSET", entity_id, *fields))
                if index:
                    parts.append(command(b"ZADD", INDEX, b"0", entity_id))
            await conn.call(b"".join(parts), len(parts))
    finally:
        conn.close()


def load_entities(
    port: int, entities: Sequence[tuple[str, dict[str, object]]], *, index: bool
) -> None:
    """HSET every entity's properties (and, with `index`, ZADD its id to the index)."""
    run_loop(_load(port, entities, index))


async def _call(port: int, *args: bytes | str) -> object:
    conn = await connect(port)
    try:
        (reply,) = await conn.call(command(*args), 1)
        return reply
    finally:
        conn.close()


def call(port: int, *args: bytes | str) -> object:
    """One command, for checks (XLEN, DBSIZE, INFO) and readiness (PING)."""
    return run_loop(_call(port, *args))
