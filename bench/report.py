"""The report: the table (text and Markdown) and the facts printed with it (machine,
durability, CPU use)."""

from __future__ import annotations

import contextlib
import inspect
import os
import platform
import resource
import shlex
import sys
from datetime import datetime
from pathlib import Path

from bench import peers, wrk
from bench.harness import Context, Row


def fmt(value: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.{decimals}f}"


def table(ctx: Context, rows: list[Row]) -> list[list[str]]:
    """The cells: Flux's figure, then each peer's with the ratio Flux / peer, except for Flux's
    other modes (peers.MODES), whose ratio is mode / Flux: how the mode compares with the
    embedded SQLite log."""
    subject = ctx.subject.name
    head = ["scenario", subject]
    for p in ctx.peers:
        head += [p.name, f"{p.name}/{subject}" if p in peers.MODES else f"{subject}/{p.name}"]
    head.append("unit")
    out = [head]
    for row in rows:
        mine = row.values.get(subject)
        line = [row.scenario.strip(), fmt(mine, row.decimals)]
        if row.scenario.startswith(" "):
            line[0] = "· " + line[0]
        for p in ctx.peers:
            theirs = row.values.get(p.name)
            if p in peers.MODES:
                ratio = theirs / mine if theirs is not None and mine else None
            else:
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
    from flux.log import writer

    source = inspect.getsource(writer.connect)
    if "synchronous=FULL" in source and "journal_mode=WAL" in source:
        return (
            "Durable writes: Flux's event log is SQLite in WAL mode with `synchronous=FULL`, so "
            "every acknowledged event (each 200 above) was fsynced before the reply; the data "
            f"dirs were on {fs_type(ctx.work)}. The ceiling stores nothing. Redis: append-only "
            "file with `appendfsync everysec` (a crash may lose the last second of acknowledged "
            "writes). NATS JetStream: file storage with its default sync (the server fsyncs "
            "every 2 minutes; an ack means stored, not yet fsynced)."
            + (
                " Flux JetStream N node(s): `flux serve --nats` on a nats-server started with "
                "`sync_interval: always` (every acknowledged event fsynced by JetStream before "
                "its 200, as with SQLite), one stream, replicas 1, a fresh store per run; "
                "NATS KV sync: NATS KV on a nats-server with that configuration."
                if any(isinstance(p, peers.FluxJetStreamPeer) for p in ctx.peers)
                else ""
            )
            + (
                " Flux without a log (bench/storage_bound.py): Flux with its log's writer "
                "taken out of the path; its events are not kept (a bound, not a log)."
                if any(isinstance(p, peers.FluxStorageBoundPeer) for p in ctx.peers)
                else ""
            )
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
    if ctx.args.batch_client == "wrk":
        batch = (
            f"batch ingest: wrk -t{cfg.batch_threads} -c{cfg.batch_connections} for "
            f"{cfg.duration:g} s per run"
        )
    else:
        batch = (
            f"batch ingest: a warm-up pass over every entity, then {cfg.batch_requests} batches "
            f"per run, {cfg.batch_connections} in flight (Flux: the asyncio client)"
        )
    names = ", ".join(p.name for p in [*ctx.peers, *ctx.stacks])
    lines = [
        f"## {started:%Y-%m-%d %H:%M} UTC, {cfg.name} run",
        "",
        f"Command: `{command}` ({elapsed / 60:.1f} min)",
        "",
        f"Machine: {machine()}",
        "",
        markdown_table(cells),
        "",
        *targets(ctx, rows),
        f"Each figure is the median of {cfg.repeats} runs of {cfg.duration:g} s after a "
        f"{cfg.warmup:g} s warm-up ({batch}; restart: as its rows say). "
        "Ratio = Flux / peer (for Flux's own other modes, `Flux JetStream ...`: mode / Flux, "
        "Flux being the embedded SQLite log): below 1 is slower for throughput, above 1 is "
        "slower for latency, time and memory. "
        f"Flux: wrk -t{cfg.threads} -c{cfg.connections} for single publish and "
        f"read; the peers ({names or 'none'}) are driven as bench/README.md describes, with the "
        "same concurrency. Rows `server stack X` are Flux and the ceiling served by X instead of "
        "uvicorn.",
        "",
        durability_fact(ctx),
        "",
        "CPU (median over the runs; 100% = one core of the two):",
        "",
        *[f"- {x}" for x in ctx.cpu],
    ]
    if ctx.checks:
        lines += ["", "Checked:", "", *[f"- {x}" for x in ctx.checks]]
    if ctx.notes:
        lines += ["", "Notes:", "", *[f"- {x}" for x in ctx.notes]]
    return "\n".join(lines) + "\n"


# Issue 17's targets: (row label start, what, the figure's test). `figure` picks Flux's figure
# from a row or its ratio to a peer; each test says whether the target is met.
TARGETS = (
    ("single-event publish (", "single publish, of the bare ASGI ceiling", "bare ceiling", 0.60),
    ("read one entity", "GET entity, of the bare ASGI ceiling", "bare ceiling", 0.90),
    ("batch ingest", "batch ingest, events/s", None, 100_000),
    ("batch ingest", "batch ingest, of Redis", "Redis", 1.0),
    # Everything offered (500 events/s x 100): the messages published in the 5 s window, as
    # counted by their send time; the window's edges can cut one event either way (100
    # messages, 20 msgs/s), so 0.1% below 50,000 is everything.
    ("fan-out delivered", "fan-out delivered, msgs/s", None, 49_950),
    ("  delivery p99 latency", "fan-out delivery p99, ms", None, -50),
)


def targets(ctx: Context, rows: list[Row]) -> list[str]:
    """A list of issue 17's targets with this run's figure and whether it is met, for the
    scenarios the run measured (a negative bound is an upper one)."""
    subject = ctx.subject.name
    lines = []
    for start, what, peer, bound in TARGETS:
        row = next((r for r in rows if r.scenario.startswith(start)), None)
        if row is None:
            continue
        mine = row.values.get(subject)
        figure = mine
        if peer is not None:
            theirs = row.values.get(peer)
            figure = mine / theirs if mine is not None and theirs else None
        if figure is None:
            lines.append(f"- {what}: not measured in this run")
            continue
        met = figure <= -bound if bound < 0 else figure >= bound
        shown = f"{figure:,.2f}" if abs(figure) < 100 else f"{figure:,.0f}"
        lines.append(
            f"- {what}: {shown} (target {'at most ' if bound < 0 else 'at least '}"
            f"{abs(bound):,g}): {'met' if met else '**not met**'}"
        )
    return ["Targets (issue 17):", "", *lines, ""] if lines else []
