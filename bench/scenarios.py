"""The load scenarios that compare Flux with every peer: batch ingest, single-event publish,
read one entity, and fan-out (list and memory are in bench/listing.py, restart in
bench/restart.py). Each is a function `(ctx) -> list[Row]`; bench/run.py registers them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

from bench import client, data, fanout, nats_load, redis_load, restart
from bench.client import ClientResult
from bench.driver import in_processes
from bench.harness import (
    Context,
    Load,
    Row,
    client_load,
    duration_of,
    figures,
    flux_counts,
    interleaved,
    latency_rows,
    median,
    python_load,
    read_lines,
    request,
    request_file,
    wrk_load,
)
from bench.peers import HOST, FluxStorageBoundPeer, Peer, Server


def batch_file(ctx: Context, entities: int) -> Path:
    cfg = ctx.config
    return request_file(
        ctx,
        f"batch-{entities}x{cfg.batch_size}.ndjson",
        lambda: data.batch_bodies(entities, cfg.batch_size),
    )


def prefill(ctx: Context, peer: Peer, server: Server, bodies_file: Path) -> None:
    """Send every batch body once, so each entity exists before any measurement."""
    ctx.log(f"{peer.name}: creating all {ctx.config.entities:,} entities")
    bodies = read_lines(bodies_file)
    if peer.kind == "redis":
        redis_load.run_pipelines(
            server.port, redis_load.batch_pipelines(bodies), connections=2, count=len(bodies)
        )
    elif peer.kind == "nats":
        nats_load.run_batches(
            server.port, nats_load.batch_work(bodies), connections=2, count=len(bodies)
        )
    else:
        reqs = [client.post_request(HOST, server.port, "/api/events/batch", b) for b in bodies]
        client.run(HOST, server.port, reqs, connections=2, count=len(reqs))


def stored_events(peer: Peer, server: Server) -> int | None:
    """How many events the server has stored so far (Flux: its last sequence; Redis: the log
    stream's length; NATS: the bucket stream's last sequence), for the checks after a run."""
    if peer.kind == "redis":
        length = redis_load.call(server.port, "XLEN", redis_load.LOG)
        return length if isinstance(length, int) else None
    if peer.kind == "nats":
        return nats_load.status(server.port)["last_seq"]
    if not peer.name.startswith("Flux") or isinstance(peer, FluxStorageBoundPeer):
        return None  # a storage bound keeps nothing to count
    # Flux may apply the last acknowledged events a moment after the reply: read until stable.
    last = None
    for _ in range(100):
        counts = flux_counts(server.port)
        found = counts[1] if counts is not None else None
        if found is not None and found == last:
            return found
        last = found
        time.sleep(0.05)
    return last


def check_stored(
    ctx: Context,
    scenario: str,
    counts: dict[str, tuple[int, int]],
    loads: dict[str, list[Load]],
    slack: int = 0,
    servers: dict[str, Server] | None = None,
) -> None:
    """After a write scenario: every acknowledged write must be stored. `counts` maps a server
    name to (events stored before, events acknowledged). HTTP peers may store up to `slack`
    more: wrk drops the requests still in flight when its time is up, and the server may
    have stored them; the Redis and NATS clients wait for theirs."""
    for name, (before, sent) in counts.items():
        if name not in loads:  # left out after a failure
            continue
        peer = next(p for p in [*ctx.everyone, *ctx.stacks] if p.name == name)
        server = (servers or {}).get(name) or ctx.server(peer)
        after = stored_events(peer, server)
        if after is None:
            continue
        extra = (after - before) - sent
        if extra < 0 or extra > (slack if peer.kind == "http" else 0):
            # Reported, not raised: the rest of the run still measures.
            message = (
                f"MISMATCH: {scenario}, {name}: {sent:,} writes acknowledged but "
                f"{after - before:,} stored (before {before:,}, after {after:,})"
            )
            ctx.log(message)
            ctx.checks.append(message)
        else:
            ctx.checks.append(f"{scenario}, {name}: {sent:,} acknowledged writes, all stored")


def scenario_batch(ctx: Context) -> list[Row]:
    """1,000-event batches over all entities: a warm-up pass that creates every entity, then
    `batch_requests` batches per measured run, 4 in flight; events/s and batch latency. Flux:
    POST /api/events/batch; Redis: one pipeline of XADD + HSET per event; NATS: 1,000 pipelined
    KV puts."""
    cfg = ctx.config
    file = batch_file(ctx, cfg.entities)
    bodies = read_lines(file)
    path = "/api/events/batch"
    by_count = ctx.args.batch_client == "python"
    taking_part = [p for p in ctx.everyone if "batch" in p.scenarios]
    # With exact counts Flux gets a fresh server of its own: its log then holds exactly this
    # scenario's events, which the restart scenario reuses (bench/restart.py).
    own: dict[str, Server] = {}
    flux_dir = ctx.work / "batch-Flux-data"
    if by_count and ctx.subject in taking_part:
        ctx.log(f"starting {ctx.subject.name} (a fresh one for batch ingest)")
        own[ctx.subject.name] = ctx.subject.start(ctx.work, flux_dir)
    counts: dict[str, tuple[int, int]] = {}
    for peer in taking_part:
        server = own.get(peer.name) or ctx.server(peer)
        if peer.kind == "http" and peer.name not in own:  # Flux: the warm-up pass checks it
            status, doc = request(server.port, "POST", path, bodies[0])
            if status != 200:
                raise RuntimeError(f"{peer.name}: batch preflight got {status}: {doc!r:.300}")
            if peer is ctx.subject and doc.get("successful") != cfg.batch_size:
                raise RuntimeError(f"Flux batch preflight: {doc!r:.300}")
        before = stored_events(peer, server)
        if before is not None:
            counts[peer.name] = (before, 0)
    redis_work = (
        redis_load.batch_pipelines(bodies) if any(p.kind == "redis" for p in taking_part) else []
    )
    nats_work = nats_load.batch_work(bodies) if any(p.kind == "nats" for p in taking_part) else []

    def measure(peer: Peer, server: Server, label: str) -> Load:
        count = len(bodies) if label.endswith("-warmup") else cfg.batch_requests
        conns = cfg.batch_connections
        if peer.kind == "redis":
            load = client_load(
                server,
                lambda: redis_load.run_pipelines(
                    server.port, redis_work, connections=conns, count=count
                ),
            )
        elif peer.kind == "nats":
            load = client_load(
                server,
                lambda: nats_load.run_batches(
                    server.port, nats_work, connections=conns, count=count
                ),
            )
        elif by_count:
            load = python_load(ctx, server, file=file, path=path, connections=conns, count=count)
        else:
            return wrk_load(
                ctx,
                server,
                label=label,
                method="POST",
                mode="body",
                file=file,
                path=path,
                threads=cfg.batch_threads,
                connections=conns,
                seconds=duration_of(ctx, label),
            )
        if peer.name in counts:
            before, sent = counts[peer.name]
            counts[peer.name] = (before, sent + count * cfg.batch_size)
        return load

    loads = interleaved(ctx, "batch", measure, unit="batches/s", servers=own)
    if by_count:
        check_stored(ctx, "batch", counts, loads, servers=own)
    total = len(bodies) + cfg.repeats * cfg.batch_requests
    if ctx.subject.name in own:
        _after_batch(ctx, own[ctx.subject.name], flux_dir, total * cfg.batch_size, loads)
    what = (
        f"{total * cfg.batch_size:,} events over {cfg.entities:,} entities"
        if by_count
        else f"over {cfg.entities:,} entities"
    )
    return [
        Row(
            f"batch ingest ({cfg.batch_size:,}-event batches, {cfg.batch_connections} in flight, "
            f"{what})",
            "events/s",
            figures(ctx, loads, lambda x: x.rps * cfg.batch_size),
        ),
        Row(
            "  batch p50 latency",
            "ms",
            figures(ctx, loads, lambda x: x.p50_ms),
            higher_is_better=False,
            decimals=1,
        ),
    ]


def _after_batch(
    ctx: Context, server: Server, data_dir: Path, events: int, loads: dict[str, list[Load]]
) -> None:
    """Hand the batch scenario's Flux over to the restart scenario when its log fits, else stop
    it."""
    names = [s.strip() for s in ctx.args.scenarios.split(",")]
    cfg = ctx.config
    if ctx.subject.name in loads and restart.takes_batch_log(ctx, names, events, cfg.entities):
        ctx.log("batch: keeping Flux's log for the restart scenario")
        how = f"the batch scenario's fresh Flux, {events:,} events by batch ingest"
        restart.hand_over(ctx, server, data_dir, how)
    else:
        server.stop()
        if not ctx.args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    if server.ready_after is not None:
        ctx.notes.append(f"Flux start with an empty data dir: {server.ready_after:.2f} s")


def stack_rows(ctx: Context, loads: dict[str, list[Load]], unit: str) -> list[Row]:
    """Flux and the ceiling on the other server stacks (Granian), as extra rows: the Flux
    column is Flux on that stack and the ceiling column the ceiling on it."""
    rows = []
    for flux, ceiling in zip(ctx.stacks[::2], ctx.stacks[1::2], strict=True):
        stack = flux.name.removeprefix("Flux on ")

        def pick(
            f: Callable[[Load], float], flux: Peer = flux, ceiling: Peer = ceiling
        ) -> dict[str, float | None]:
            out: dict[str, float | None] = {p.name: None for p in ctx.everyone}
            for peer, column in ((flux, ctx.subject.name), (ceiling, "ceiling")):
                if peer.name in loads:
                    out[column] = median([f(x) for x in loads[peer.name]])
            return out

        rows += [
            Row(
                f"  server stack {stack}: Flux and ceiling on {stack}", unit, pick(lambda x: x.rps)
            ),
            Row(
                f"  server stack {stack}: p99 latency",
                "ms",
                pick(lambda x: x.p99_ms),
                higher_is_better=False,
                decimals=2,
            ),
        ]
    return rows


# (port, connections or workers, seconds) -> the run's figures
PeerRun = Callable[[int, int, float], ClientResult]


def peer_load(ctx: Context, server: Server, label: str, run: PeerRun) -> Load:
    """A Redis or NATS run with the scenario's concurrency (`connections` workers, spread over
    `peer_processes` processes) for the scenario's duration."""
    procs = ctx.config.peer_processes
    share = ctx.config.connections // procs
    seconds = duration_of(ctx, label)
    return client_load(
        server, lambda: in_processes(lambda k: run(server.port, share, seconds), procs)
    )


def scenario_single(ctx: Context) -> list[Row]:
    """One event per request, 64 concurrent clients; events/s, p50/p99. Flux: POST /api/events
    (wrk, 64 keep-alive connections); Redis: XADD + HSET pipelined, 64 connections; NATS: one
    KV put at a time from 64 workers."""
    cfg = ctx.config
    file = request_file(
        ctx,
        f"single-{cfg.entities}x{cfg.single_bodies}.ndjson",
        lambda: data.single_bodies(cfg.entities, cfg.single_bodies),
    )
    conditional_file = request_file(
        ctx,
        f"conditional-{cfg.entities}x{cfg.single_bodies}.ndjson",
        lambda: data.conditional_bodies(cfg.entities, cfg.single_bodies),
    )
    conditional: list[Load] = []  # Flux with conditional events, right after each plain run
    path = "/api/events"
    bodies = read_lines(file)
    taking_part = [p for p in [*ctx.everyone, *ctx.stacks] if "single" in p.scenarios]
    counts: dict[str, tuple[int, int]] = {}
    for peer in taking_part:
        server = ctx.server(peer)
        if peer.kind == "http":
            status, doc = request(server.port, "POST", path, bodies[0])
            if status != 200 or (peer.name.startswith("Flux") and "eventId" not in doc):
                raise RuntimeError(f"{peer.name}: single-event preflight got {status}: {doc!r}")
        before = stored_events(peer, server)
        if before is not None:
            counts[peer.name] = (before, 0)
    redis_work = redis_load.single_pipelines(bodies)
    nats_work = nats_load.single_work(bodies)

    def redis_run(port: int, conns: int, seconds: float) -> ClientResult:
        return redis_load.run_pipelines(
            port, redis_work, connections=conns, seconds=seconds, check_nonempty=True
        )

    def nats_run(port: int, workers: int, seconds: float) -> ClientResult:
        return nats_load.run_puts(port, nats_work, workers=workers, seconds=seconds)

    def measure(peer: Peer, server: Server, label: str) -> Load:
        if peer.kind == "http":
            load = wrk_load(
                ctx,
                server,
                label=label,
                method="POST",
                mode="body",
                file=file,
                path=path,
                threads=cfg.threads,
                connections=cfg.connections,
                seconds=duration_of(ctx, label),
            )
            sent = load.requests
            if peer is ctx.subject:
                checked = wrk_load(
                    ctx,
                    server,
                    label=label + "-conditional",
                    method="POST",
                    mode="body",
                    file=conditional_file,
                    path=path,
                    threads=cfg.threads,
                    connections=cfg.connections,
                    seconds=duration_of(ctx, label),
                )
                sent += checked.requests
                if not label.endswith("-warmup"):
                    conditional.append(checked)
        else:
            load = peer_load(ctx, server, label, redis_run if peer.kind == "redis" else nats_run)
            sent = load.requests
        if peer.name in counts:
            before, so_far = counts[peer.name]
            counts[peer.name] = (before, so_far + sent)
        return load

    loads = interleaved(ctx, "single", measure, unit="events/s")
    runs = 2 * (1 + cfg.repeats) * cfg.connections
    check_stored(ctx, "single", counts, loads, slack=runs)
    plain = figures(ctx, loads, lambda x: x.rps)
    subject = ctx.subject.name
    checked_rps = median([x.rps for x in conditional]) if conditional else None
    return [
        Row(
            f"single-event publish ({cfg.connections} concurrent clients)",
            "events/s",
            plain,
        ),
        *latency_rows(ctx, loads, "publish"),
        # Each Flux run above is followed at once by a run of conditional events: same server,
        # same clients, every event `expected_properties: {"claim": null}` (a condition that
        # holds), so each one is decided by the log's writer before it is stored.
        Row(
            "single-event publish, conditional (expected_properties)",
            "events/s",
            {
                **{name: None for name in plain},
                subject: checked_rps,
                "ceiling": plain.get("ceiling"),
            },
        ),
        Row(
            "  conditional / plain publish (Flux, same runs)",
            "ratio",
            {
                **{name: None for name in plain},
                subject: checked_rps / base
                if checked_rps and (base := plain.get(subject))
                else None,
            },
            decimals=2,
        ),
        *stack_rows(ctx, loads, "events/s"),
    ]


def scenario_get(ctx: Context) -> list[Row]:
    """Read one entity, 64 concurrent clients; req/s, p50/p99. Flux: GET
    /api/state/entities/<id> (wrk); Redis: HGETALL; NATS: KV get. Every entity exists first (the
    batch scenario created them, or this one does)."""
    cfg = ctx.config
    file = request_file(
        ctx,
        f"get-{cfg.entities}x{cfg.get_paths}.txt",
        lambda: data.get_paths(cfg.entities, cfg.get_paths),
    )
    paths = read_lines(file)
    first = paths[0].decode()
    taking_part = [p for p in [*ctx.everyone, *ctx.stacks] if "get" in p.scenarios]
    for peer in taking_part:
        server = ctx.server(peer)
        if peer.kind == "http":
            status, doc = request(server.port, "GET", first)
            if status == 404:
                prefill(ctx, peer, server, batch_file(ctx, cfg.entities))
                status, doc = request(server.port, "GET", first)
            if status != 200:
                raise RuntimeError(f"{peer.name}: GET preflight got {status}: {doc!r:.300}")
        elif (stored_events(peer, server) or 0) < cfg.entities:
            prefill(ctx, peer, server, batch_file(ctx, cfg.entities))
    redis_work = redis_load.get_commands(paths)
    nats_keys = nats_load.get_keys(paths)

    def redis_run(port: int, conns: int, seconds: float) -> ClientResult:
        return redis_load.run_pipelines(
            port, redis_work, connections=conns, seconds=seconds, check_nonempty=True
        )

    def nats_run(port: int, workers: int, seconds: float) -> ClientResult:
        return nats_load.run_gets(port, nats_keys, workers=workers, seconds=seconds)

    def measure(peer: Peer, server: Server, label: str) -> Load:
        if peer.kind == "http":
            return wrk_load(
                ctx,
                server,
                label=label,
                method="GET",
                mode="path",
                file=file,
                threads=cfg.threads,
                connections=cfg.connections,
                seconds=duration_of(ctx, label),
            )
        return peer_load(ctx, server, label, redis_run if peer.kind == "redis" else nats_run)

    loads = interleaved(ctx, "get", measure)
    for peer in taking_part:
        if peer.kind != "http":
            ctx.checks.append(
                f"get, {peer.name}: every read found its entity (a miss fails the run)"
            )
    return [
        Row(
            f"read one entity ({cfg.connections} concurrent clients)",
            "req/s",
            figures(ctx, loads, lambda x: x.rps),
        ),
        *latency_rows(ctx, loads, "read"),
        *stack_rows(ctx, loads, "req/s"),
    ]


def scenario_fanout(ctx: Context) -> list[Row]:
    """`fanout_subscribers` WebSockets subscribed to `*` (in separate processes), one event
    POSTed every 1/`fanout_rate` s; messages delivered per second (all subscribers together)
    and the delivery latency (publish time in the event -> receive time)."""
    cfg = ctx.config
    subs, rate = cfg.fanout_subscribers, cfg.fanout_rate
    ctx.notes.append(
        f"Fan-out: {subs} WebSocket subscribers on `*` (the harness's own minimal asyncio "
        f"client on uvloop, no compression) in {cfg.fanout_processes} processes; one "
        f"single-event POST every {1000 / rate:g} ms ({rate:g} events/s, paced, 16 keep-alive "
        f"connections) from the harness process, so {rate * subs:,.0f} messages/s to deliver; "
        "latency = receive time - `sent_ns` in the event (same machine, same clock), measured "
        f"after {cfg.fanout_settle:g} s of publishing. The ceiling sends each POSTed body to every "
        "socket before answering the POST. Redis: 100 connections in `PSUBSCRIBE *` (hiredis, "
        "same processes), the publisher sends XADD + HSET + PUBLISH per event in one pipeline."
    )
    details: dict[str, list[fanout.FanoutResult]] = {}

    def measure(peer: Peer, server: Server, label: str) -> Load:
        result = fanout.run(
            server.port,
            ctx.work,
            subscribers=subs,
            processes=cfg.fanout_processes,
            rate=rate,
            settle=cfg.fanout_settle,
            seconds=duration_of(ctx, label),
            server_cpu=server.cpu_seconds,
            kind=peer.kind,
        )
        pub = result.publisher
        if pub.errors:
            raise RuntimeError(f"{label}: {pub.errors} of {pub.sent} POSTs failed")
        if result.closed:
            ctx.notes.append(
                f"{label}: the server closed {result.closed} subscriber connection(s): "
                + "; ".join(result.close_reasons)
            )
        if not label.endswith("-warmup"):
            details.setdefault(peer.name, []).append(result)
        return Load(
            rps=result.rate,
            p50_ms=result.p50_ms,
            p99_ms=result.p99_ms,
            server_cpu=result.server_cpu,
            client_cpu=result.subscriber_cpu
            + pub.cpu_seconds / (cfg.fanout_settle + result.seconds),
        )

    loads = interleaved(ctx, "fanout", measure, unit="msgs/s")
    for name, results in details.items():
        delivered = sum(r.delivered for r in results)
        expected = sum(r.expected for r in results)
        ctx.checks.append(
            f"fanout, {name}: {delivered:,} messages delivered in the measured windows, of "
            f"{expected:,} published there x subscribers"
        )
        ctx.notes.append(
            f"fanout, {name}: publisher POST latency p50 "
            f"{median([r.publisher.p50_ms for r in results]):.1f} ms, p99 "
            f"{median([r.publisher.p99_ms for r in results]):.1f} ms; late sends (every "
            f"publisher connection busy) {sum(r.publisher.late for r in results)} of "
            f"{sum(r.publisher.sent for r in results)}; max delivery latency "
            f"{max(r.max_ms for r in results):.1f} ms"
        )
    return [
        Row(
            f"fan-out delivered ({subs} subscribers on `*`, {rate:g} events/s)",
            "msgs/s",
            figures(ctx, loads, lambda x: x.rps),
        ),
        *latency_rows(ctx, loads, "delivery"),
    ]
