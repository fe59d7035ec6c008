"""The restart scenario: time from process start to serving, with `restart_events` events over
`restart_entities` entities in the log, from the newest snapshot (a normal restart) and from the
log alone (snapshots deleted: a full replay).

The log is the batch scenario's when it can be: batch ingest gives Flux a fresh server and
sends it exactly that many events (a warm-up pass over every entity, then the measured
batches), so `hand_over` stops it (SIGTERM: Flux writes its final snapshot) and keeps its data
dir instead of filling another server the same way. Run alone, or with other counts, the
scenario fills a fresh Flux itself.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from bench import client, data
from bench.harness import (
    Context,
    Row,
    flux_counts,
    mcp_loaded,
    median,
    read_lines,
    request_file,
)
from bench.peers import HOST, Server

HANDED_OVER = "restart-data"  # ctx.shared key of the batch scenario's stopped Flux


@dataclass
class Filled:
    """A stopped Flux's data dir, with what it held when stopped."""

    data_dir: Path
    expected: tuple[int, int]  # (entities, events) before the stop, less Flux's own
    how: str  # how it was filled, for the notes


def check_health(server: Server, expected: tuple[int, int] | None) -> tuple[int, int]:
    """(entities, events) the server holds, less Flux's own `flux-core/` ones (it may write
    one while stopping); raises if they differ from `expected`."""
    found = flux_counts(server.port)
    if found is None:
        raise RuntimeError(f"{server.name}: /api/health does not answer 200")
    if expected is not None and found != expected:
        raise RuntimeError(f"after restart: (entities, events) {found}, expected {expected}")
    return found


def takes_batch_log(ctx: Context, names: list[str], events: int, entities: int) -> bool:
    """True when the restart scenario is to run and the batch scenario's log has its counts."""
    cfg = ctx.config
    return "restart" in names and (events, entities) == (
        cfg.restart_events,
        cfg.restart_entities,
    )


def hand_over(ctx: Context, server: Server, data_dir: Path, how: str) -> None:
    """Stop the batch scenario's Flux and keep its data dir for the restart scenario."""
    expected = check_health(server, None)
    stop_s = server.stop()
    ctx.shared[HANDED_OVER] = Filled(
        data_dir, expected, f"{how}; stop with final snapshot (SIGTERM to exit): {stop_s:.2f} s"
    )


def _fill(ctx: Context) -> Filled:
    """A fresh Flux filled with `restart_events` events by the asyncio client, then stopped."""
    cfg = ctx.config
    file = request_file(
        ctx,
        f"batch-{cfg.restart_entities}x{cfg.batch_size}.ndjson",
        lambda: data.batch_bodies(cfg.restart_entities, cfg.batch_size),
    )
    data_dir = ctx.work / "restart-data"
    shutil.rmtree(data_dir, ignore_errors=True)
    server = ctx.subject.start(ctx.work, data_dir, wait=False)
    empty_start = server.wait_ready()
    ctx.notes.append(f"Flux start with an empty data dir: {empty_start:.2f} s")
    batches = cfg.restart_events // cfg.batch_size
    ctx.log(f"restart: filling Flux with {batches * cfg.batch_size:,} events")
    reqs = [
        client.post_request(HOST, server.port, "/api/events/batch", b) for b in read_lines(file)
    ]
    fill = client.run(HOST, server.port, reqs, connections=4, count=batches)
    rate = fill.rps * cfg.batch_size
    ctx.log(f"restart: filled in {fill.seconds:.1f}s ({rate:,.0f} events/s)")
    expected = check_health(server, None)
    stop_s = server.stop()
    how = (
        f"filled by the restart scenario at {rate:,.0f} events/s (Python client, 4 conns); "
        f"stop with final snapshot (SIGTERM to exit): {stop_s:.2f} s"
    )
    return Filled(data_dir, expected, how)


def scenario_restart(ctx: Context) -> list[Row]:
    """Time process start -> /api/health 200: from the snapshot (`restart_repeats` times) and
    after deleting the snapshots (full replay, `replay_repeats` times); the state (entities,
    last sequence) is checked after each restart."""
    cfg = ctx.config
    peer = ctx.subject
    filled = ctx.shared.pop(HANDED_OVER, None) or _fill(ctx)
    data_dir, expected = filled.data_dir, filled.expected
    ctx.notes.append(f"Flux log for the restart scenario: {filled.how}")
    size = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())
    ctx.notes.append(
        f"Flux data dir for the restart scenario: {size / 2**20:,.0f} MiB, "
        f"{expected[0]:,} entities, {expected[1]:,} events"
    )

    mcp_after: list[float] = []

    def restart(kind: str) -> float:
        if kind == "replay":
            shutil.rmtree(data_dir / "snapshots", ignore_errors=True)
        server = peer.start(ctx.work, data_dir, wait=False)
        try:
            seconds = server.wait_ready(timeout=600)
            check_health(server, expected)
            if kind == "snapshot":
                mcp_loaded(server.port)
                mcp_after.append(time.monotonic() - server.started_at)
        finally:
            server.stop()
        ctx.log(f"restart ({kind}): ready after {seconds:.2f}s")
        return seconds

    times: dict[str, list[float]] = {"snapshot": [], "replay": []}
    for i in range(max(cfg.restart_repeats, cfg.replay_repeats)):
        if i < cfg.restart_repeats:
            times["snapshot"].append(restart("snapshot"))
        if i < cfg.replay_repeats:  # its stop writes a new snapshot for the next one
            times["replay"].append(restart("replay"))
    ctx.notes.append(
        f"restart from snapshot: /mcp answering after {median(mcp_after):.2f} s (median; the "
        "row is the API's readiness: the MCP SDK loads on a thread once the API answers)"
    )
    ctx.checks.append(
        f"restart: after each restart Flux had the same {expected[0]:,} entities and "
        f"{expected[1]:,} events as before the stop (less its own `flux-core/` ones)"
    )
    if not ctx.args.keep:
        shutil.rmtree(data_dir, ignore_errors=True)
    what = f"{cfg.restart_events:,} events / {cfg.restart_entities:,} entities"
    rows = []
    for kind, label in (("snapshot", "from snapshot"), ("replay", "full log replay")):
        values: dict[str, float | None] = {p.name: None for p in ctx.everyone}
        values[peer.name] = median(times[kind])
        rows.append(
            Row(
                f"restart, {label} ({what}; median of {len(times[kind])})",
                "s",
                values,
                higher_is_better=False,
                decimals=2,
            )
        )
    return rows
