"""The list and memory scenarios, which share one data set: `list_entities` entities of 5 small
properties (`bench/l<g>/e<n>`, bench/data.py), loaded into a fresh Flux and a fresh Redis.

- memory: resident bytes per entity, (RSS after loading - RSS when started empty) / entities,
  for the server process. Redis holds the same state as one hash per entity (HSET only: Flux's
  log is on disk, so Redis's stream is left out here); its sorted-set index for listing is
  loaded afterwards and its cost given in the notes.
- list: every entity under one prefix (`entities / groups` of them, 10,000 of 100,000 in the
  full run), cycling over the prefixes, `list_connections` clients; lists/s and latency. Flux:
  `GET /api/state/entities?prefix=bench/l<g>/` (wrk); Redis: the ids from the sorted-set index
  (`ZRANGE index [prefix (prefix\\xff BYLEX`), then `HGETALL` of each id in one pipeline, the
  way an application on Redis would list by prefix without scanning every key.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from bench import client, data, redis_load
from bench.driver import in_processes
from bench.harness import (
    Context,
    Load,
    Row,
    client_load,
    duration_of,
    figures,
    interleaved,
    latency_rows,
    mcp_loaded,
    read_lines,
    request,
    request_file,
    wrk_load,
)
from bench.peers import HOST, Peer, Server


@dataclass
class Loaded:
    """A fresh server holding the list/memory data set."""

    server: Server
    empty_rss: int  # bytes, after start with an empty data dir
    loaded_rss: int  # bytes, after loading every entity
    notes: list[str] = field(default_factory=list)


def _settled_rss(server: Server) -> int:
    """RSS after a short pause, so that start-up or the last writes have settled."""
    time.sleep(0.5)
    return server.rss_bytes()


def _used_memory(port: int) -> int:
    info = redis_load.call(port, "INFO", "memory")
    assert isinstance(info, bytes)
    for line in info.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":", 1)[1])
    raise RuntimeError("INFO memory without used_memory")


def _load_flux(ctx: Context, server: Server) -> None:
    cfg = ctx.config
    file = request_file(
        ctx,
        f"list-{cfg.list_entities}x{cfg.list_groups}.ndjson",
        lambda: data.list_batch_bodies(cfg.list_entities, cfg.list_groups, cfg.batch_size),
    )
    reqs = [
        client.post_request(HOST, server.port, "/api/events/batch", b) for b in read_lines(file)
    ]
    client.run(HOST, server.port, reqs, connections=4, count=len(reqs))
    status, doc = request(server.port, "GET", "/api/health")
    # >=: Flux may have created its own `flux-core/directory` entity by then.
    if status != 200 or doc["entities"] < cfg.list_entities:
        raise RuntimeError(f"Flux after loading the list data set: {status} {doc!r:.300}")
    ctx.checks.append(f"list/memory, Flux: {doc['entities']:,} entities after loading")


def loaded(ctx: Context, peer: Peer) -> Loaded:
    """`peer`'s server with the data set loaded (started and loaded once per run)."""
    key = f"loaded-{peer.name}"
    if key in ctx.shared:
        found: Loaded = ctx.shared[key]
        return found
    cfg = ctx.config
    ctx.log(f"{peer.name}: loading {cfg.list_entities:,} entities into a fresh server")
    server = peer.start(ctx.work)
    if peer.kind == "http":  # Flux: started in full, the MCP SDK too, before "empty"
        mcp_loaded(server.port)
    empty = _settled_rss(server)
    notes = []
    if peer.kind == "redis":
        rows = data.list_entities(cfg.list_entities, cfg.list_groups)
        used0 = _used_memory(server.port)
        redis_load.load_entities(server.port, rows, index=False)
        full = _settled_rss(server)
        used1 = _used_memory(server.port)
        redis_load.load_entities(server.port, rows, index=True)
        used2 = _used_memory(server.port)
        keys = redis_load.call(server.port, "DBSIZE")
        if keys != cfg.list_entities + 1:
            raise RuntimeError(
                f"Redis after loading: {keys} keys, expected {cfg.list_entities + 1}"
            )
        ctx.checks.append(f"list/memory, Redis: {keys:,} keys after loading (hashes + index)")
        per = cfg.list_entities
        notes.append(
            f"memory, Redis: used_memory (Redis's own count) {(used1 - used0) / per:,.0f} "
            "bytes per entity for the hashes; the sorted-set index used for listing adds "
            f"{(used2 - used1) / per:,.0f}"
        )
    else:
        _load_flux(ctx, server)
        full = _settled_rss(server)
    notes.append(f"memory, {peer.name}: RSS {empty / 2**20:,.1f} MiB started empty")
    result = Loaded(server, empty, full, notes)
    ctx.shared[key] = result
    return result


def _taking_part(ctx: Context, scenario: str) -> list[Peer]:
    return [p for p in ctx.everyone if scenario in p.scenarios and p.kind in ("http", "redis")]


def scenario_memory(ctx: Context) -> list[Row]:
    """Resident bytes per entity: (RSS loaded - RSS empty) / entities."""
    cfg = ctx.config
    values: dict[str, float | None] = {p.name: None for p in ctx.everyone}
    for peer in _taking_part(ctx, "memory"):
        found = loaded(ctx, peer)
        values[peer.name] = (found.loaded_rss - found.empty_rss) / cfg.list_entities
        ctx.notes += found.notes
    return [
        Row(
            f"memory per entity ({cfg.list_entities:,} entities of 5 small properties, RSS)",
            "bytes",
            values,
            higher_is_better=False,
        )
    ]


def scenario_list(ctx: Context) -> list[Row]:
    """List every entity under a prefix (entities / groups of them); lists/s and latency."""
    cfg = ctx.config
    expected = cfg.list_entities // cfg.list_groups
    prefixes = [data.list_prefix(g) for g in range(cfg.list_groups)]
    file = request_file(
        ctx,
        f"list-paths-{cfg.list_groups}.txt",
        lambda: [f"/api/state/entities?prefix={p}".encode() for p in prefixes],
    )
    taking_part = _taking_part(ctx, "list")
    servers = {p.name: loaded(ctx, p).server for p in taking_part}
    for peer in taking_part:
        if peer.kind == "http":
            status, doc = request(servers[peer.name].port, "GET", read_lines(file)[0].decode())
            if status != 200 or len(doc) != expected:
                got = len(doc) if isinstance(doc, list) else doc
                raise RuntimeError(f"{peer.name}: list preflight got {status}: {got!r:.300}")
    ctx.checks.append(f"list: each list returned all {expected:,} entities under its prefix")

    def measure(peer: Peer, server: Server, label: str) -> Load:
        seconds = duration_of(ctx, label)
        if peer.kind == "redis":
            # The client decodes every reply (10,000 hashes a list): spread it over processes
            # as for the other Redis loads, so that Redis and not the client sets the pace.
            procs = min(cfg.peer_processes, cfg.list_connections)
            return client_load(
                server,
                lambda: in_processes(
                    lambda k: redis_load.run_list(
                        server.port,
                        prefixes,
                        expected=expected,
                        connections=cfg.list_connections // procs,
                        seconds=seconds,
                    ),
                    procs,
                ),
            )
        return wrk_load(
            ctx,
            server,
            label=label,
            method="GET",
            mode="path",
            file=file,
            threads=min(2, cfg.list_connections),
            connections=cfg.list_connections,
            seconds=seconds,
        )

    loads = interleaved(ctx, "list", measure, unit="lists/s", servers=servers)
    return [
        Row(
            f"list {expected:,} of {cfg.list_entities:,} entities by prefix "
            f"({cfg.list_connections} concurrent clients)",
            "lists/s",
            figures(ctx, loads, lambda x: x.rps),
            decimals=1,
        ),
        *latency_rows(ctx, loads, "list", decimals=1),
    ]


def release(ctx: Context) -> None:
    """Stop the servers holding the data set (when no later scenario needs them)."""
    for key in [k for k in ctx.shared if k.startswith("loaded-")]:
        ctx.shared.pop(key).server.stop()
