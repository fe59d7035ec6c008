"""What every scenario shares: the run's configuration, the table's rows, the context a scenario
gets, and the load helpers (wrk for HTTP, the peers' own clients through `Load`).

A scenario is a function `(ctx) -> list[Row]` (bench/run.py registers them in `SCENARIOS`).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench import client, data, peers, wrk
from bench.client import ClientResult
from bench.driver import in_processes
from bench.peers import HOST, Peer, Server

ROOT = peers.ROOT
WORK = ROOT / "bench" / ".work"


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    name: str
    entities: int  # entities the batch/single/get scenarios spread over
    batch_size: int
    batch_threads: int  # wrk threads for batch ingest (with --batch-client wrk)
    batch_connections: int
    batch_requests: int  # batches per measured run (after a warm-up pass over every entity)
    threads: int  # wrk threads for the single-event and GET scenarios
    connections: int  # keep-alive connections for the single-event and GET scenarios
    warmup: float  # seconds of load before the measured runs, per scenario and server
    duration: float  # seconds of each measured run
    repeats: int  # measured runs per scenario and server; the table shows the median
    single_bodies: int  # distinct single-event bodies wrk cycles over
    get_paths: int  # distinct GET paths wrk cycles over
    restart_events: int
    restart_entities: int
    restart_repeats: int  # restarts from the snapshot
    replay_repeats: int  # restarts from the log alone (snapshots deleted)
    fanout_subscribers: int  # WebSocket connections subscribed to `*`
    fanout_processes: int  # processes the subscribers are spread over
    fanout_rate: float  # events/s the publisher sends, paced
    fanout_settle: float  # seconds of publishing before each measured window
    list_entities: int  # entities of the list and memory scenarios
    list_groups: int  # prefixes they are spread over; one list returns entities / groups
    list_connections: int  # concurrent listers
    peer_processes: int  # processes the Redis / NATS clients run in (single, get)


FULL = Config(
    name="full",
    entities=100_000,
    batch_size=1000,
    batch_threads=2,
    batch_connections=4,
    batch_requests=300,  # 100k warm-up + 3 x 300k = 1M events over 100k entities
    threads=2,
    connections=64,
    warmup=2.0,
    duration=5.0,
    repeats=3,
    single_bodies=20_000,
    get_paths=20_000,
    restart_events=1_000_000,
    restart_entities=100_000,
    restart_repeats=3,
    replay_repeats=1,  # about 35-60 s each on 2 cores: one keeps the run within 15 minutes
    fanout_subscribers=100,
    fanout_processes=2,
    fanout_rate=100.0,
    fanout_settle=1.0,
    list_entities=100_000,
    list_groups=10,
    list_connections=4,
    peer_processes=2,
)

QUICK = Config(
    name="quick",
    entities=10_000,
    batch_size=1000,
    batch_threads=2,
    batch_connections=4,
    batch_requests=20,
    threads=2,
    connections=64,
    warmup=1.0,
    duration=2.0,
    repeats=3,
    single_bodies=5_000,
    get_paths=5_000,
    restart_events=70_000,  # = the batch scenario's log (10 + 3 x 20 batches), reused
    restart_entities=10_000,
    restart_repeats=1,
    replay_repeats=1,
    fanout_subscribers=100,
    fanout_processes=2,
    fanout_rate=100.0,
    fanout_settle=1.0,
    list_entities=20_000,
    list_groups=10,
    list_connections=4,
    peer_processes=2,
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
    stacks: list[Peer] = field(default_factory=list)  # extra rows: Flux on other servers
    servers: dict[str, Server] = field(default_factory=dict)
    shared: dict[str, Any] = field(default_factory=dict)  # state scenarios share (list, memory)
    notes: list[str] = field(default_factory=list)
    checks: list[str] = field(default_factory=list)  # what was verified (counts stored etc.)
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


def mcp_loaded(port: int) -> int:
    """Wait until a Flux server's `/mcp` answers: `flux serve` loads the MCP SDK on a thread
    once the API answers (flux.api.mcp), and a request to `/mcp` returns only after that (any
    status will do; the ping carries no session). Returns the status."""
    status, _ = request(port, "POST", "/mcp", b'{"jsonrpc": "2.0", "id": 1, "method": "ping"}')
    return status


def flux_counts(port: int) -> tuple[int, int] | None:
    """(entities, events) a Flux server holds, less its own: Flux writes its `flux-core/`
    entities (the namespace directory, refreshed now and then) by itself, so they are counted
    out (their events from their history). None when it does not answer."""
    status, health = request(port, "GET", "/api/health")
    if status != 200:
        return None
    status, own = request(port, "GET", "/api/state/entities?prefix=flux-core/")
    if status != 200:
        return None
    events = 0
    for entity in own:
        query = urlencode({"entity": entity["id"], "since": "1970-01-01T00:00:00Z", "limit": 1000})
        status, history = request(port, "GET", f"/api/events?{query}")
        events += len(history) if status == 200 else 0
    return int(health["entities"]) - len(own), int(health["lastSequence"]) - events


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
    requests: int = 0  # requests (operations) answered with success
    server_system: float | None = None  # cores the kernel spent for the server (of server_cpu)


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
    cpu0 = server.cpu_split()
    urls = getattr(server, "urls", [server.url])
    if len(urls) == 1:
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
    else:  # a cluster: the clients split evenly over its nodes, one wrk per node at once
        with ThreadPoolExecutor(len(urls)) as pool:
            parts = list(
                pool.map(
                    lambda url: wrk.run(
                        url,
                        method=method,
                        mode=mode,
                        file=file,
                        path=path,
                        threads=max(1, threads // len(urls)),
                        connections=connections // len(urls),
                        seconds=seconds,
                    ),
                    urls,
                )
            )
        result = wrk.merge(parts)
    cpu1 = server.cpu_split()
    server_cpu = (sum(cpu1) - sum(cpu0)) / result.seconds
    log_path = ctx.work / "wrk" / f"{label}.txt"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(result.text + "\n")
    ok = result.requests - result.errors["status"]
    if result.failed:
        ctx.notes.append(f"{label}: wrk counted errors {result.errors} (see {log_path.name})")
    return Load(
        requests=ok,
        rps=ok / result.seconds,
        p50_ms=result.p50_ms,
        p99_ms=result.p99_ms,
        server_cpu=server_cpu,
        client_cpu=result.cpu_seconds / result.seconds,
        server_system=(cpu1[1] - cpu0[1]) / result.seconds,
    )


def client_load(server: Server, run: Callable[[], ClientResult]) -> Load:
    """Run a Python load generator (`run`) against `server`; its figures as a Load."""
    cpu0 = server.cpu_split()
    result = run()
    if not result.requests:
        raise RuntimeError(f"{server.name}: the load generator completed no request")
    cpu1 = server.cpu_split()
    server_cpu = (sum(cpu1) - sum(cpu0)) / result.seconds
    lat = sorted(result.latencies_ms)
    return Load(
        requests=result.requests,
        rps=result.rps,
        p50_ms=lat[len(lat) // 2],
        p99_ms=lat[min(len(lat) - 1, int(len(lat) * 0.99))],
        server_cpu=server_cpu,
        client_cpu=result.cpu_seconds / result.seconds,
        server_system=(cpu1[1] - cpu0[1]) / result.seconds,
    )


def python_load(
    ctx: Context,
    server: Server,
    *,
    file: Path,
    path: str,
    connections: int,
    seconds: float | None = None,
    count: int | None = None,
) -> Load:
    """bench/client.py (asyncio HTTP) sending the bodies in `file` to `path`, for `count`
    requests or `seconds`."""
    lines = read_lines(file)
    ports: list[int] = getattr(server, "ports", [server.port])
    if len(ports) == 1:
        bodies = [client.post_request(HOST, server.port, path, b) for b in lines]
        return client_load(
            server,
            lambda: client.run(
                HOST, server.port, bodies, connections=connections, count=count, seconds=seconds
            ),
        )

    # A cluster: one client process per node, with its share of the connections and the count.
    def one(k: int) -> ClientResult:
        port = ports[k]
        bodies = [client.post_request(HOST, port, path, b) for b in lines[k :: len(ports)]]
        share = None if count is None else count // len(ports) + (k < count % len(ports))
        return client.run(
            HOST, port, bodies, connections=connections // len(ports), count=share, seconds=seconds
        )

    return client_load(server, lambda: in_processes(one, len(ports)))


def interleaved(
    ctx: Context,
    scenario: str,
    measure: Callable[[Peer, Server, str], Load],
    unit: str = "req/s",
    servers: dict[str, Server] | None = None,
) -> dict[str, list[Load]]:
    """Warm each server up, then run `measure` `repeats` times per server, alternating servers.
    `measure(peer, server, label)` gets `label` '<scenario>-<peer>-<run>'. The servers are the
    long-running ones (`ctx.server`), except for the peers `servers` gives another one."""
    taking_part = [p for p in [*ctx.everyone, *ctx.stacks] if scenario in p.scenarios]

    def server_of(peer: Peer) -> Server:
        return (servers or {}).get(peer.name) or ctx.server(peer)

    failed: set[str] = set()

    def attempt(peer: Peer, label: str) -> Load | None:
        """`measure`, except that a peer that fails is left out of the rest of the scenario
        (with a note) instead of ending the run; Flux failing still ends it."""
        if peer.name in failed:
            return None
        try:
            return measure(peer, server_of(peer), label)
        except Exception as exc:
            if peer is ctx.subject:
                raise
            failed.add(peer.name)
            message = f"{scenario}, {peer.name}: failed and left out: {type(exc).__name__}: {exc}"
            ctx.log(message)
            ctx.notes.append(message[:500])
            return None

    for peer in taking_part:
        ctx.log(f"{scenario}: warming up {peer.name}")
        attempt(peer, f"{scenario}-{peer.name}-warmup")
    loads: dict[str, list[Load]] = {p.name: [] for p in taking_part}
    for run in range(1, ctx.config.repeats + 1):
        for peer in taking_part:
            load = attempt(peer, f"{scenario}-{peer.name}-{run}")
            if load is None:
                continue
            ctx.log(
                f"{scenario}: {peer.name} run {run}: {load.rps:,.0f} {unit}, "
                f"p50 {load.p50_ms:.2f} ms, p99 {load.p99_ms:.2f} ms, "
                f"server CPU {load.server_cpu:.0%}, client CPU {load.client_cpu:.0%}"
            )
            loads[peer.name].append(load)
    for name in failed:
        loads.pop(name, None)
    for name, runs in loads.items():
        ctx.cpu.append(f"{scenario}, {name}: {cpu_line(runs, unit)}")
    return loads


_SINGULAR = {
    "req/s": "request",
    "events/s": "event",
    "batches/s": "batch",
    "msgs/s": "message",
    "lists/s": "list",
}


def cpu_line(runs: list[Load], unit: str) -> str:
    """The server's and the load generator's CPU over `runs` (medians), and the server's CPU
    time per operation split into user and system (kernel) time where it was measured: the
    throughput of a server that uses one core is one second over its CPU time per operation,
    so the split says where a difference between two servers lies."""
    line = (
        f"server {median([x.server_cpu for x in runs]):.0%} of a core, "
        f"load generator {median([x.client_cpu for x in runs]):.0%}"
    )
    split = [x for x in runs if x.server_system is not None and x.rps > 0]
    if split:
        per = _SINGULAR.get(unit, unit)
        total = median([x.server_cpu / x.rps * 1e6 for x in split])
        system = median([(x.server_system or 0.0) / x.rps * 1e6 for x in split])
        line += (
            f"; server CPU per {per}: {total:,.1f} µs "
            f"(user {total - system:,.1f}, system {system:,.1f})"
        )
    return line


def figures(
    ctx: Context, loads: dict[str, list[Load]], pick: Callable[[Load], float]
) -> dict[str, float | None]:
    return {
        p.name: median([pick(x) for x in loads[p.name]]) if p.name in loads else None
        for p in ctx.everyone
    }


def duration_of(ctx: Context, label: str) -> float:
    return ctx.config.warmup if label.endswith("-warmup") else ctx.config.duration


def latency_rows(
    ctx: Context, loads: dict[str, list[Load]], what: str, decimals: int = 2
) -> list[Row]:
    return [
        Row(
            f"  {what} p50 latency",
            "ms",
            figures(ctx, loads, lambda x: x.p50_ms),
            higher_is_better=False,
            decimals=decimals,
        ),
        Row(
            f"  {what} p99 latency",
            "ms",
            figures(ctx, loads, lambda x: x.p99_ms),
            higher_is_better=False,
            decimals=decimals,
        ),
    ]
