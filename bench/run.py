"""The Flux benchmark harness: `bench/run [--quick] [--results FILE]` (see bench/README.md).

Starts Flux and every peer (bench/peers.py) on free loopback ports with fresh data dirs, runs
each scenario with a warm-up and fixed durations or counts, repeats it (Flux and the peers
interleaved, so a noisy neighbour hurts both alike), keeps the median, stops everything, and
prints one table of Flux's figures, each peer's and the ratio Flux / peer, then the same as
Markdown for bench/RESULTS.md.

A scenario is a function `(ctx) -> list[Row]` registered in `SCENARIOS`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import http.client
import inspect
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import client, data, fanout, peers, wrk
from bench.peers import HOST, Peer, Server

ROOT = peers.ROOT
WORK = ROOT / "bench" / ".work"


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    entities: int  # entities the batch/single/get scenarios spread over
    batch_size: int
    batch_threads: int
    batch_connections: int
    threads: int  # wrk threads for the single-event and GET scenarios
    connections: int  # keep-alive connections for the single-event and GET scenarios
    warmup: float  # seconds of load before the measured runs, per scenario and server
    duration: float  # seconds of each measured run
    repeats: int  # measured runs per scenario and server; the table shows the median
    single_bodies: int  # distinct single-event bodies wrk cycles over
    get_paths: int  # distinct GET paths wrk cycles over
    restart_events: int
    restart_entities: int
    restart_repeats: int
    fanout_subscribers: int  # WebSocket connections subscribed to `*`
    fanout_processes: int  # processes the subscribers are spread over
    fanout_rate: float  # events/s the publisher sends, paced
    fanout_settle: float  # seconds of publishing before each measured window


FULL = Config(
    name="full",
    entities=100_000,
    batch_size=1000,
    batch_threads=2,
    batch_connections=4,
    threads=2,
    connections=64,
    warmup=3.0,
    duration=10.0,
    repeats=3,
    single_bodies=20_000,
    get_paths=20_000,
    restart_events=1_000_000,
    restart_entities=100_000,
    restart_repeats=3,
    fanout_subscribers=100,
    fanout_processes=2,
    fanout_rate=100.0,
    fanout_settle=1.0,
)

QUICK = Config(
    name="quick",
    entities=10_000,
    batch_size=1000,
    batch_threads=2,
    batch_connections=4,
    threads=2,
    connections=64,
    warmup=1.0,
    duration=2.0,
    repeats=3,
    single_bodies=5_000,
    get_paths=5_000,
    restart_events=50_000,
    restart_entities=5_000,
    restart_repeats=1,
    fanout_subscribers=100,
    fanout_processes=2,
    fanout_rate=100.0,
    fanout_settle=1.0,
)


# -- results -----------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the table: a figure for Flux and each peer (None: not measured)."""

    scenario: str
    unit: str
    values: dict[str, float | None]
    higher_is_better: bool = True
    decimals: int = 0


@dataclass
class Context:
    config: Config
    args: argparse.Namespace
    work: Path
    data_dir: Path  # generated request files, kept between runs
    subject: Peer
    peers: list[Peer]
    servers: dict[str, Server] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    cpu: list[str] = field(default_factory=list)

    @property
    def everyone(self) -> list[Peer]:
        return [self.subject, *self.peers]

    def log(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def server(self, peer: Peer) -> Server:
        """The long-running server of `peer` (started on first use) for the load scenarios."""
        if peer.name not in self.servers:
            self.log(f"starting {peer.name}")
            self.servers[peer.name] = peer.start(self.work)
        return self.servers[peer.name]


def median(values: list[float]) -> float:
    return statistics.median(values)


# -- helpers -----------------------------------------------------------------------------------


def request(port: int, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        payload = response.read()
        try:
            return response.status, json.loads(payload)
        except ValueError:
            return response.status, payload
    finally:
        conn.close()


def request_file(ctx: Context, name: str, make: Callable[[], list[bytes]]) -> Path:
    """A generated request file under bench/.work/data, made once per name."""
    path = ctx.data_dir / name
    if not path.exists():
        ctx.log(f"generating {path.relative_to(ROOT)}")
        tmp = path.with_name(path.name + ".tmp")
        data.write_lines(tmp, make())
        tmp.replace(path)
    return path


def read_lines(path: Path) -> list[bytes]:
    return [line for line in path.read_bytes().split(b"\n") if line]


@dataclass
class Load:
    """One wrk run's figures, as the rows need them."""

    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu: float  # cores
    client_cpu: float  # cores


def wrk_load(
    ctx: Context,
    server: Server,
    *,
    label: str,
    method: str,
    mode: str,
    file: Path,
    path: str = "",
    threads: int,
    connections: int,
    seconds: float,
) -> Load:
    cpu0 = server.cpu_seconds()
    result = wrk.run(
        server.url,
        method=method,
        mode=mode,
        file=file,
        path=path,
        threads=threads,
        connections=connections,
        seconds=seconds,
    )
    server_cpu = (server.cpu_seconds() - cpu0) / result.seconds
    log_path = ctx.work / "wrk" / f"{label}.txt"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(result.text + "\n")
    ok = result.requests - result.errors["status"]
    if result.failed:
        ctx.notes.append(f"{label}: wrk counted errors {result.errors} (see {log_path.name})")
    return Load(
        rps=ok / result.seconds,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        server_cpu=server_cpu,
        client_cpu=result.cpu_seconds / result.seconds,
    )


def python_load(
    ctx: Context, server: Server, *, file: Path, path: str, connections: int, seconds: float
) -> Load:
    bodies = [client.post_request(HOST, server.port, path, b) for b in read_lines(file)]
    cpu0 = server.cpu_seconds()
    result = client.run(HOST, server.port, bodies, connections=connections, seconds=seconds)
    server_cpu = (server.cpu_seconds() - cpu0) / result.seconds
    lat = sorted(result.latencies_ms)
    return Load(
        rps=result.rps,
        p50_ms=lat[len(lat) // 2],
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        server_cpu=server_cpu,
        client_cpu=result.cpu_seconds / result.seconds,
    )


def interleaved(
    ctx: Context,
    scenario: str,
    measure: Callable[[Peer, Server, str], Load],
    unit: str = "req/s",
) -> dict[str, list[Load]]:
    """Warm each server up, then run `measure` `repeats` times per server, alternating servers.
    `measure(peer, server, label)` gets `label` '<scenario>-<peer>-<run>'."""
    taking_part = [p for p in ctx.everyone if scenario in p.scenarios]
    for peer in taking_part:
        ctx.log(f"{scenario}: warming up {peer.name} ({ctx.config.warmup:g}s)")
        measure(peer, ctx.server(peer), f"{scenario}-{peer.name}-warmup")
    loads: dict[str, list[Load]] = {p.name: [] for p in taking_part}
    for run in range(1, ctx.config.repeats + 1):
        for peer in taking_part:
            load = measure(peer, ctx.server(peer), f"{scenario}-{peer.name}-{run}")
            ctx.log(
                f"{scenario}: {peer.name} run {run}: {load.rps:,.0f} {unit}, "
                f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
                f"server CPU {load.server_cpu:.0%}, client CPU {load.client_cpu:.0%}"
            )
            loads[peer.name].append(load)
    for name, runs in loads.items():
        ctx.cpu.append(
            f"{scenario}, {name}: server {median([x.server_cpu for x in runs]):.0%} of a core, "
            f"load generator {median([x.client_cpu for x in runs]):.0%}"
        )
    return loads


def figures(
    ctx: Context, loads: dict[str, list[Load]], pick: Callable[[Load], float]
) -> dict[str, float | None]:
    return {
        p.name: median([pick(x) for x in loads[p.name]]) if p.name in loads else None
        for p in ctx.everyone
    }


def duration_of(ctx: Context, label: str) -> float:
    return ctx.config.warmup if label.endswith("-warmup") else ctx.config.duration


# -- scenarios ---------------------------------------------------------------------------------


def prefill(ctx: Context, server: Server, bodies_file: Path) -> None:
    """Send every batch body once, so each entity exists before any measurement."""
    reqs = [
        client.post_request(HOST, server.port, "/api/events/batch", b)
        for b in read_lines(bodies_file)
    ]
    client.run(HOST, server.port, reqs, connections=2, count=len(reqs))


def scenario_batch(ctx: Context) -> list[Row]:
    """POST /api/events/batch, 1,000-event bodies over all entities; events/s."""
    cfg = ctx.config
    file = request_file(
        ctx,
        f"batch-{cfg.entities}x{cfg.batch_size}.ndjson",
        lambda: data.batch_bodies(cfg.entities, cfg.batch_size),
    )
    path = "/api/events/batch"
    first = read_lines(file)[0]
    for peer in ctx.everyone:
        if "batch" not in peer.scenarios:
            continue
        server = ctx.server(peer)
        status, doc = request(server.port, "POST", path, first)
        if status != 200:
            raise RuntimeError(f"{peer.name}: batch preflight got {status}: {doc!r:.300}")
        if peer is ctx.subject:
            if doc.get("successful") != cfg.batch_size:
                raise RuntimeError(f"Flux batch preflight: {doc!r:.300}")
            ctx.log(f"{peer.name}: creating all {cfg.entities:,} entities")
            prefill(ctx, server, file)

    def measure(peer: Peer, server: Server, label: str) -> Load:
        seconds = duration_of(ctx, label)
        if ctx.args.batch_client == "python":
            return python_load(
                ctx,
                server,
                file=file,
                path=path,
                connections=cfg.batch_connections,
                seconds=seconds,
            )
        return wrk_load(
            ctx,
            server,
            label=label,
            method="POST",
            mode="body",
            file=file,
            path=path,
            threads=cfg.batch_threads,
            connections=cfg.batch_connections,
            seconds=seconds,
        )

    loads = interleaved(ctx, "batch", measure)
    return [
        Row(
            f"batch ingest ({cfg.batch_size:,}-event batches, {cfg.batch_connections} conns)",
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


def latency_rows(ctx: Context, loads: dict[str, list[Load]], what: str) -> list[Row]:
    return [
        Row(
            f"  {what} p50 latency",
            "ms",
            figures(ctx, loads, lambda x: x.p50_ms),
            higher_is_better=False,
            decimals=2,
        ),
        Row(
            f"  {what} p99 latency",
            "ms",
            figures(ctx, loads, lambda x: x.p99_ms),
            higher_is_better=False,
            decimals=2,
        ),
    ]


def scenario_single(ctx: Context) -> list[Row]:
    """POST /api/events, one event per request, 64 keep-alive connections; events/s, p50/p99."""
    cfg = ctx.config
    file = request_file(
        ctx,
        f"single-{cfg.entities}x{cfg.single_bodies}.ndjson",
        lambda: data.single_bodies(cfg.entities, cfg.single_bodies),
    )
    path = "/api/events"
    first = read_lines(file)[0]
    for peer in ctx.everyone:
        if "single" in peer.scenarios:
            status, doc = request(ctx.server(peer).port, "POST", path, first)
            if status != 200 or (peer is ctx.subject and "eventId" not in doc):
                raise RuntimeError(f"{peer.name}: single-event preflight got {status}: {doc!r}")

    def measure(peer: Peer, server: Server, label: str) -> Load:
        return wrk_load(
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

    loads = interleaved(ctx, "single", measure)
    return [
        Row(
            f"single-event POST ({cfg.connections} conns)",
            "events/s",
            figures(ctx, loads, lambda x: x.rps),
        ),
        *latency_rows(ctx, loads, "POST"),
    ]


def scenario_get(ctx: Context) -> list[Row]:
    """GET /api/state/entities/<id> of random existing entities, 64 connections; req/s, p50/p99.
    Runs after the batch scenario created the entities (it creates them itself otherwise)."""
    cfg = ctx.config
    file = request_file(
        ctx,
        f"get-{cfg.entities}x{cfg.get_paths}.txt",
        lambda: data.get_paths(cfg.entities, cfg.get_paths),
    )
    first = read_lines(file)[0].decode()
    for peer in ctx.everyone:
        if "get" not in peer.scenarios:
            continue
        server = ctx.server(peer)
        status, doc = request(server.port, "GET", first)
        if status == 404 and peer is ctx.subject:
            bodies = request_file(
                ctx,
                f"batch-{cfg.entities}x{cfg.batch_size}.ndjson",
                lambda: data.batch_bodies(cfg.entities, cfg.batch_size),
            )
            ctx.log(f"{peer.name}: creating all {cfg.entities:,} entities")
            prefill(ctx, server, bodies)
            status, doc = request(server.port, "GET", first)
        if status != 200:
            raise RuntimeError(f"{peer.name}: GET preflight got {status}: {doc!r:.300}")

    def measure(peer: Peer, server: Server, label: str) -> Load:
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

    loads = interleaved(ctx, "get", measure)
    return [
        Row(
            f"GET entity ({cfg.connections} conns)",
            "req/s",
            figures(ctx, loads, lambda x: x.rps),
        ),
        *latency_rows(ctx, loads, "GET"),
    ]


def scenario_restart(ctx: Context) -> list[Row]:
    """Fill a fresh Flux with `restart_events` events over `restart_entities` entities, stop it
    (SIGTERM: final snapshot), then time process start -> /api/health 200, from the snapshot and
    again after deleting the snapshots (full replay of the log)."""
    cfg = ctx.config
    peer = ctx.subject
    file = request_file(
        ctx,
        f"batch-{cfg.restart_entities}x{cfg.batch_size}.ndjson",
        lambda: data.batch_bodies(cfg.restart_entities, cfg.batch_size),
    )
    data_dir = ctx.work / "restart-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = peer.start(ctx.work, data_dir, wait=False)
    empty_start = server.wait_ready()
    ctx.notes.append(f"Flux start with an empty data dir: {empty_start:.2f} s")
    batches = cfg.restart_events // cfg.batch_size
    ctx.log(f"restart: filling Flux with {batches * cfg.batch_size:,} events")
    reqs = [
        client.post_request(HOST, server.port, "/api/events/batch", b) for b in read_lines(file)
    ]
    fill = client.run(HOST, server.port, reqs, connections=4, count=batches)
    ctx.log(f"restart: filled in {fill.seconds:.1f}s ({fill.rps * cfg.batch_size:,.0f} events/s)")
    expected = check_health(server, None)
    stop_s = server.stop()
    ctx.notes.append(
        f"Flux fill for the restart scenario: {fill.rps * cfg.batch_size:,.0f} events/s "
        f"(Python client, 4 conns); stop with final snapshot (SIGTERM to exit): {stop_s:.2f} s"
    )
    size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    ctx.notes.append(f"Flux data dir after the fill: {size / 2**20:,.0f} MiB")

    def restart(kind: str) -> float:
        if kind == "replay":
            shutil.rmtree(data_dir / "snapshots", ignore_errors=True)
        server = peer.start(ctx.work, data_dir, wait=False)
        try:
            seconds = server.wait_ready(timeout=600)
            check_health(server, expected)
        finally:
            server.stop()
        ctx.log(f"restart ({kind}): ready after {seconds:.2f}s")
        return seconds

    times: dict[str, list[float]] = {"snapshot": [], "replay": []}
    for _ in range(cfg.restart_repeats):
        for kind in times:
            times[kind].append(restart(kind))
    shutil.rmtree(data_dir, ignore_errors=True)
    what = f"{cfg.restart_events:,} events / {cfg.restart_entities:,} entities"
    rows = []
    for kind, label in (("snapshot", "from snapshot"), ("replay", "full log replay")):
        values: dict[str, float | None] = {p.name: None for p in ctx.everyone}
        values[peer.name] = median(times[kind])
        rows.append(
            Row(f"restart, {label} ({what})", "s", values, higher_is_better=False, decimals=2)
        )
    return rows


def scenario_fanout(ctx: Context) -> list[Row]:
    """`fanout_subscribers` WebSockets subscribed to `*` (in separate processes), one event
    POSTed every 1/`fanout_rate` s; messages delivered per second (all subscribers together)
    and the delivery latency (publish time in the event -> receive time)."""
    cfg = ctx.config
    subs, rate = cfg.fanout_subscribers, cfg.fanout_rate
    ctx.notes.append(
        f"Fan-out: {subs} WebSocket subscribers on `*` (websockets' asyncio client, no "
        f"compression) in {cfg.fanout_processes} processes; one single-event POST every "
        f"{1000 / rate:g} ms ({rate:g} events/s, paced, 16 keep-alive connections) from the "
        f"harness process, so {rate * subs:,.0f} messages/s to deliver; latency = receive "
        "time - `sent_ns` in the event (same machine, same clock), measured after "
        f"{cfg.fanout_settle:g} s of publishing. The ceiling sends each POSTed body to every "
        "socket before answering the POST."
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
            f"fan-out delivered ({subs} WebSocket subscribers, {rate:g} events/s)",
            "msgs/s",
            figures(ctx, loads, lambda x: x.rps),
        ),
        *latency_rows(ctx, loads, "delivery"),
    ]


def check_health(server: Server, expected: tuple[int, int] | None) -> tuple[int, int]:
    status, doc = request(server.port, "GET", "/api/health")
    if status != 200:
        raise RuntimeError(f"health: {status} {doc!r}")
    found = (doc["entities"], doc["lastSequence"])
    if expected is not None and found != expected:
        raise RuntimeError(f"after restart: (entities, lastSequence) {found}, expected {expected}")
    return found


SCENARIOS: dict[str, Callable[[Context], list[Row]]] = {
    "batch": scenario_batch,
    "single": scenario_single,
    "get": scenario_get,
    "restart": scenario_restart,
    "fanout": scenario_fanout,
}


# -- report ------------------------------------------------------------------------------------


def fmt(value: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{decimals}f}"


def table(ctx: Context, rows: list[Row]) -> list[list[str]]:
    subject = ctx.subject.name
    head = ["scenario", subject]
    for p in ctx.peers:
        head += [p.name, f"{subject}/{p.name}"]
    head.append("unit")
    out = [head]
    for row in rows:
        mine = row.values.get(subject)
        line = [row.scenario.strip(), fmt(mine, row.decimals)]
        if row.scenario.startswith(" "):
            line[0] = "· " + line[0]
        for p in ctx.peers:
            theirs = row.values.get(p.name)
            ratio = mine / theirs if mine is not None and theirs else None
            digits = 2 if ratio is None or ratio >= 0.1 else 4
            line += [fmt(theirs, row.decimals), fmt(ratio, digits)]
        line.append(row.unit)
        out.append(line)
    return out


def text_table(cells: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    lines = []
    for n, r in enumerate(cells):
        parts = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(cells: list[list[str]]) -> str:
    lines = ["| " + " | ".join(cells[0]) + " |"]
    lines.append("|" + "|".join(["---"] + ["---:"] * (len(cells[0]) - 2) + ["---"]) + "|")
    lines += ["| " + " | ".join(r) + " |" for r in cells[1:]]
    return "\n".join(lines)


def fs_type(path: Path) -> str:
    best, kind = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mount, fstype = parts[1], parts[2]
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    return f"{kind} ({best})"


def durability_fact(ctx: Context) -> str:
    from flux.log.sqlite import SQLiteLog

    source = inspect.getsource(SQLiteLog._connect)
    if "synchronous=FULL" in source and "journal_mode=WAL" in source:
        return (
            "Durable writes: Flux's event log is SQLite in WAL mode with `synchronous=FULL`, so "
            "every acknowledged event (each 200 above) was fsynced before the reply; the data "
            f"dirs were on {fs_type(ctx.work)}. The ceiling stores nothing."
        )
    return "WARNING: Flux's SQLite log no longer sets journal_mode=WAL with synchronous=FULL."


def cpu_ticks() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / hz, sum(fields[:8]) / hz


def own_cpu() -> float:
    """CPU seconds used by this process and its waited-for children (servers, wrk)."""
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    load = os.getloadavg()
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, Linux {platform.release()}, "
        f"Python {platform.python_version()}, wrk {wrk.version()}; "
        f"load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


def report(ctx: Context, rows: list[Row], started: datetime, elapsed: float) -> str:
    cells = table(ctx, rows)
    command = os.environ.get("BENCH_COMMAND") or shlex.join(
        ["python", "-m", "bench.run"] + sys.argv[1:]
    )
    cfg = ctx.config
    batch_client = (
        f"wrk -t{cfg.batch_threads}" if ctx.args.batch_client == "wrk" else "the Python client"
    )
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC, {cfg.name} run",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min)",
        "",
        f"Machine: {machine()}",
        "",
        markdown_table(cells),
        "",
        f"Each figure is the median of {cfg.repeats} runs of {cfg.duration:g} s after a "
        f"{cfg.warmup:g} s warm-up (restart: median of {cfg.restart_repeats}). Ratio = Flux / "
        "peer: below 1 is slower for throughput, above 1 is slower for latency and time. "
        f"wrk -t{cfg.threads} -c{cfg.connections} for single POST and GET; batch ingest with "
        f"{batch_client} -c{cfg.batch_connections}.",
        "",
        durability_fact(ctx),
        "",
        "CPU (median over the runs; 100% = one core of the two):",
        "",
        *[f"- {x}" for x in ctx.cpu],
    ]
    if ctx.notes:
        lines += ["", "Notes:", "", *[f"- {x}" for x in ctx.notes]]
    return "\n".join(lines) + "\n"


# -- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small counts and short runs (< 1 minute)"
    )
    parser.add_argument(
        "--results", type=Path, metavar="FILE", help="also write the Markdown report to FILE"
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(SCENARIOS),
        help=f"comma-separated subset of {', '.join(SCENARIOS)} [default: all]",
    )
    parser.add_argument(
        "--batch-client",
        choices=("wrk", "python"),
        default="wrk",
        help="load generator for batch ingest [default: wrk]",
    )
    parser.add_argument(
        "--fanout-rate",
        type=float,
        metavar="N",
        help="events/s the fan-out scenario publishes [default: 100]",
    )
    parser.add_argument("--keep", action="store_true", help="keep the servers' data dirs")
    return parser.parse_args(argv)


@contextlib.contextmanager
def cleanup() -> Iterator[None]:
    """Stop every server on the way out, including on Ctrl-C and SIGTERM."""

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        peers.stop_all()
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    config = QUICK if args.quick else FULL
    if args.fanout_rate:
        config = dataclasses.replace(config, fanout_rate=args.fanout_rate)
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    if not wrk.available():
        print(
            "wrk not found: run bench/run, which installs it (apt-get install wrk)", file=sys.stderr
        )
        return 2
    started = datetime.now(UTC)
    for leftover in WORK.glob("run-*/*-data*"):  # from runs killed before their cleanup
        shutil.rmtree(leftover, ignore_errors=True)
    work = WORK / f"run-{started:%Y%m%dT%H%M%S}"
    work.mkdir(parents=True, exist_ok=True)
    ctx = Context(config, args, work, WORK / "data", peers.SUBJECT, list(peers.PEERS))
    ctx.log(f"{config.name} run, scenarios {', '.join(names)}; logs in {work.relative_to(ROOT)}")
    t0 = time.monotonic()
    busy0, own0 = cpu_ticks()[0], own_cpu()
    rows: list[Row] = []
    try:
        with cleanup():
            for name in names:
                rows += SCENARIOS[name](ctx)
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130
    finally:
        if not args.keep:
            for d in work.glob("*-data*"):
                shutil.rmtree(d, ignore_errors=True)
    elapsed = time.monotonic() - t0
    others = (cpu_ticks()[0] - busy0 - (own_cpu() - own0)) / elapsed
    ctx.notes.append(
        f"Other processes on the machine used {others:.2f} cores on average during the run "
        f"(of {os.cpu_count()}; near 0 on a quiet machine)"
    )
    print()
    print(text_table(table(ctx, rows)))
    print()
    markdown = report(ctx, rows, started, elapsed)
    print(markdown)
    if args.results:
        args.results.write_text(markdown)
        ctx.log(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
