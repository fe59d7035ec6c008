"""The `instructions` scenario: CPU instructions per operation, counted by Valgrind's callgrind.

Throughput on this machine swings 2x within minutes (a shared host), and even side-by-side
ratios move with it. An instruction count does not: it is the same on every run to within a
fraction of a percent, and it says where a server's work goes. Each server (Flux, Redis, the
bare and the Starlette ceiling) is started under `valgrind --tool=callgrind
--separate-threads=yes`, filled with every entity once, and then for each operation callgrind's
counters are zeroed (`callgrind_control -z`), a fixed number of operations is sent by the same
clients as the load scenarios, and the counters are dumped (`callgrind_control -d`): the dump
holds exactly the instructions each thread ran for those operations. Rows: batch ingest per
event, single publish and GET entity per request, each split into the server's main thread (the
event loop), its other threads (Redis's background I/O) and its child processes (Flux's log
writer, traced by callgrind with `--trace-children=yes`), and for Flux the part inside SQLite's
`sqlite3_step`. Then Flux's batch path in one process (bench/pipeline.py),
stage by stage, next to the least each stage could do with the C libraries alone.

Under valgrind everything runs much slower, so how requests fall into the log writer's groups
differs from a native run: the writer's figure per single publish (a group's fixed cost shared
by fewer or more events) is less exact than the loop's; a batch is one group either way.

Not in the default run (`bench/run --scenarios instructions`): under callgrind each server runs
50-100x slower, so it takes about 6 minutes (3.5 with --quick). A server's figure is its
instructions, not its speed: a peer's instructions may be cheaper or dearer ones (C runs more of
them per cycle than the interpreter), which bench/RESULTS.md takes into account.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench import client, data, redis_load
from bench.harness import Context, Row, mcp_loaded, request
from bench.peers import HOST, ROOT, Peer, Server, free_port

BATCH_PATH = "/api/events/batch"
PUBLISH_PATH = "/api/events"
MEASURED = ("Redis", "bare ceiling", "ceiling")  # the peers counted next to Flux
CHILD = 1000  # a child process's threads are counted as CHILD + its thread number


@dataclass(frozen=True)
class Counts:
    entities: int  # batch ingest fills these first, then sends `batches` more over them
    batches: int
    requests: int  # single publish and GET requests each
    connections: int  # for single publish and GET, as wrk -c64 in the load scenarios


FULL_COUNTS = Counts(entities=20_000, batches=40, requests=4_000, connections=64)
QUICK_COUNTS = Counts(entities=5_000, batches=10, requests=1_000, connections=64)


def available() -> str | None:
    """None when callgrind can run here, else why not."""
    for program in ("valgrind", "callgrind_control"):
        if shutil.which(program) is None:
            return f"{program} not installed (bench/run installs valgrind with apt-get as root)"
    return None


class Counted:
    """A process under callgrind, with the child processes it starts (Flux's log writer), whose
    counters can be zeroed and dumped while they run."""

    def __init__(self, out: Path, pid: int) -> None:
        self.out = out  # callgrind's output prefix; a dump writes <out>.<pid>.<n>-<thread>
        self.pid = pid

    @staticmethod
    def argv(out: Path, argv: list[str]) -> list[str]:
        return [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            "--trace-children=yes",
            f"--callgrind-out-file={out}.%p",
            *argv,
        ]

    def pids(self) -> list[int]:
        """The process and its children."""
        children = []
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in (task / "children").read_text().split()]
        return [self.pid, *children]

    def _control(self, *args: str) -> None:
        for pid in self.pids():
            done = subprocess.run(
                ["callgrind_control", *args, str(pid)],
                capture_output=True,
                text=True,
                timeout=600,
            )
            if done.returncode != 0 or "OK" not in done.stdout:
                raise RuntimeError(
                    f"callgrind_control {' '.join(args)} {pid}: {done.stdout}{done.stderr}"
                )

    def count(self, label: str, work: Callable[[], object]) -> Dump:
        """The instructions that `work` made the processes run, per thread: the process's
        own threads by number (1: its main thread), a child's as CHILD + its thread."""
        self._control("-z")
        work()
        self._control(f"--dump={label}")
        dump = Dump({}, [])
        for path in sorted(self.out.parent.glob(f"{self.out.name}.*.*-*")):
            head = path.read_text(errors="replace").split("\nfn=", 1)[0]
            if f"desc: Trigger: dump {label}\n" not in head + "\n":
                continue
            pid = int(path.name[len(self.out.name) + 1 :].split(".", 1)[0])
            for line in head.splitlines():
                if line.startswith("summary:"):
                    thread = int(path.name.rsplit("-", 1)[1]) + (CHILD if pid != self.pid else 0)
                    dump.threads[thread] = dump.threads.get(thread, 0) + int(line.split()[1])
                    dump.files.append(path)
        if not dump.threads:
            raise RuntimeError(f"no callgrind dump {label!r} next to {self.out}")
        return dump


@dataclass
class Dump:
    threads: dict[int, int]  # thread (1: the main thread) -> instructions
    files: list[Path]  # callgrind's files of the dump, one per thread

    @property
    def total(self) -> int:
        return sum(self.threads.values())

    def inclusive(self, function: str) -> int:
        """Instructions inside `function` and what it called, in all threads (from
        callgrind_annotate; 0 when it did not run)."""
        total = 0
        for path in self.files:
            listing = subprocess.run(
                ["callgrind_annotate", "--inclusive=yes", "--auto=no", "--threshold=100", path],
                capture_output=True,
                text=True,
                timeout=600,
            ).stdout
            for line in listing.splitlines():
                fields = line.split()
                if len(fields) >= 3 and fields[2].endswith(f":{function}"):
                    total += int(fields[0].replace(",", ""))
                    break
        return total


def start(ctx: Context, peer: Peer) -> tuple[Server, Counted]:
    """`peer` under callgrind on a free port with a fresh data dir, ready."""
    port = free_port()
    stamp = time.monotonic_ns()
    data_dir = ctx.work / f"instructions-{peer.name.replace(' ', '-')}-data-{stamp}"
    data_dir.mkdir(parents=True)
    out = ctx.work / "callgrind" / f"{peer.name.replace(' ', '-')}-{stamp}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    ctx.log(f"instructions: starting {peer.name} under callgrind")
    server = Server(
        peer.name,
        Counted.argv(out, peer.argv(port, data_dir)),
        port,
        ctx.work / "logs" / f"callgrind-{peer.name.replace(' ', '-')}-{port}.log",
        peer.env(),
        peer.probe,
    )
    server.wait_ready(timeout=900, interval=0.5)
    if peer is ctx.subject:
        # Flux loads the MCP SDK on a thread once it answers (flux.api.mcp); under callgrind
        # that takes a minute or more, and counted it would land in the first operation's
        # "other threads".
        for _ in range(15):
            with contextlib.suppress(TimeoutError):
                mcp_loaded(port)
                break
    return server, Counted(out, server.pid)


def get_request(port: int, path: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n" % (path, HOST.encode(), port)


def measure_server(ctx: Context, peer: Peer, counts: Counts) -> dict[str, Dump]:
    """Instructions per thread for batch ingest (per event), single publish and GET (per
    request) on `peer`."""
    bodies = data.batch_bodies(counts.entities, 1000)
    singles = data.single_bodies(counts.entities, counts.requests)
    paths = data.get_paths(counts.entities, counts.requests)
    server, counted = start(ctx, peer)
    port = server.port
    out: dict[str, Dump] = {}
    try:
        if peer.kind == "redis":
            batch = redis_load.batch_pipelines(bodies)
            redis_load.run_pipelines(port, batch, connections=4, count=len(bodies))
            out["batch"] = counted.count(
                "batch",
                lambda: redis_load.run_pipelines(port, batch, connections=4, count=counts.batches),
            )
            single = redis_load.single_pipelines(singles)
            out["single"] = counted.count(
                "single",
                lambda: redis_load.run_pipelines(
                    port, single, connections=counts.connections, count=counts.requests
                ),
            )
            gets = redis_load.get_commands(paths)
            out["get"] = counted.count(
                "get",
                lambda: redis_load.run_pipelines(
                    port,
                    gets,
                    connections=counts.connections,
                    count=counts.requests,
                    check_nonempty=True,
                ),
            )
        else:
            status, doc = request(port, "POST", BATCH_PATH, bodies[0])
            if status != 200 or (peer is ctx.subject and doc.get("successful") != 1000):
                raise RuntimeError(f"{peer.name}: batch preflight got {status}: {doc!r:.300}")
            posts = [client.post_request(HOST, port, BATCH_PATH, b) for b in bodies]
            client.run(HOST, port, posts, connections=4, count=len(posts))
            out["batch"] = counted.count(
                "batch",
                lambda: client.run(HOST, port, posts, connections=4, count=counts.batches),
            )
            publish = [client.post_request(HOST, port, PUBLISH_PATH, b) for b in singles]
            out["single"] = counted.count(
                "single",
                lambda: client.run(
                    HOST, port, publish, connections=counts.connections, count=counts.requests
                ),
            )
            gets_http = [get_request(port, p) for p in paths]
            out["get"] = counted.count(
                "get",
                lambda: client.run(
                    HOST, port, gets_http, connections=counts.connections, count=counts.requests
                ),
            )
    finally:
        server.stop(timeout=300)
    ctx.log(f"instructions: {peer.name}: " + ", ".join(f"{k} {v.total:,}" for k, v in out.items()))
    return out


def measure_pipeline(ctx: Context, counts: Counts) -> dict[str, int]:
    """Instructions per event of each stage of bench/pipeline.py."""
    from bench import pipeline

    out = ctx.work / "callgrind" / f"pipeline-{time.monotonic_ns()}.out"
    out.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "bench.pipeline", "--serve", "--entities", str(counts.entities)]
    ctx.log("instructions: Flux's batch path in one process under callgrind")
    proc = subprocess.Popen(
        Counted.argv(out, argv),
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    stdin, stdout = proc.stdin, proc.stdout
    try:
        ready = stdout.readline().split()
        if not ready or ready[0] != "ready":
            raise RuntimeError(f"bench.pipeline under callgrind did not start: {ready}")
        events = int(ready[1])
        counted = Counted(out, proc.pid)

        def stage(name: str) -> Callable[[], None]:
            def run() -> None:
                stdin.write(name + "\n")
                stdin.flush()
                if stdout.readline().strip() != "done":
                    raise RuntimeError(f"bench.pipeline: stage {name} did not finish")

            return run

        per_event: dict[str, int] = {}
        for name in (*pipeline.STAGES, *pipeline.FLOORS):
            label = name.replace(" ", "-")
            per_event[name] = round(counted.count(label, stage(name)).total / events)
        return per_event
    finally:
        stdin.close()
        proc.wait(timeout=300)


def scenario_instructions(ctx: Context) -> list[Row]:
    why = available()
    if why:
        ctx.notes.append(f"instructions: not measured: {why}")
        ctx.log(f"instructions: not measured: {why}")
        return []
    counts = QUICK_COUNTS if ctx.config.name == "quick" else FULL_COUNTS
    measured = [ctx.subject, *(p for p in ctx.peers if p.name in MEASURED)]
    per_peer = {p.name: measure_server(ctx, p, counts) for p in measured}
    ops = {"batch": counts.batches * 1000, "single": counts.requests, "get": counts.requests}
    rows = []
    titles = {
        "batch": ("instructions: batch ingest", "instr/event"),
        "single": ("instructions: single publish", "instr/req"),
        "get": ("instructions: GET entity", "instr/req"),
    }
    subject = ctx.subject.name
    for op, (title, unit) in titles.items():
        n = ops[op]
        total: dict[str, float | None] = {}
        main: dict[str, float | None] = {}
        other: dict[str, float | None] = {}
        children: dict[str, float | None] = {}
        for name, dumps in per_peer.items():
            threads = dumps[op].threads
            all_threads = round(dumps[op].total / n)
            main_thread = round(threads.get(1, 0) / n)
            child = round(sum(v for k, v in threads.items() if k > CHILD) / n)
            total[name], main[name], children[name] = all_threads, main_thread, child
            other[name] = all_threads - main_thread - child
        rows += [
            Row(title, unit, total, higher_is_better=False),
            Row("  main thread (event loop)", unit, main, higher_is_better=False),
            Row("  other threads", unit, other, higher_is_better=False),
            Row(
                "  child processes (Flux: the log's writer)", unit, children, higher_is_better=False
            ),
        ]
        if op != "get":  # Flux's log writer
            sqlite = per_peer[subject][op].inclusive("sqlite3_step")
            rows.append(
                Row(
                    "  of which in SQLite (sqlite3_step)",
                    unit,
                    {subject: round(sqlite / n)},
                    higher_is_better=False,
                )
            )
    stages = measure_pipeline(ctx, counts)
    rows.append(
        Row(
            "instructions: batch path in one process",
            "instr/event",
            {subject: sum(stages[s] for s in ("decode", "validate", "encode", "apply"))},
            higher_is_better=False,
        )
    )
    rows += [
        Row(f"  {name}", "instr/event", {subject: value}, higher_is_better=False)
        for name, value in stages.items()
    ]
    ctx.checks.append(
        f"instructions: {counts.batches:,} batches of 1,000 events over {counts.entities:,} "
        f"entities (after one pass over every entity), {counts.requests:,} single publishes "
        f"and {counts.requests:,} GETs on {counts.connections} connections, per server under "
        "callgrind; every request answered 200"
    )
    return rows
