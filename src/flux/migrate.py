"""`flux migrate`: move an embedded data dir into a cluster's NATS JetStream, part by part.

A migration is a list of steps (`STEPS`), one per part of the data dir, run in order. Each step
is safe to run again: it finds what an earlier run (maybe interrupted) already moved, checks
that it is the same, and moves the rest; and it refuses, moving nothing, when the cluster
already holds something else there. The server must be stopped while it runs (nothing stops a
running server from writing after the step has read its data dir; running the command again
afterwards moves what came since), and the nodes started once it has finished.

Events (`copy_events`). Every event of the SQLite log goes into the JetStream stream at the
sequence it has in the log, with its event id (the message id) and its log time, and the
log's holes (numbers it skipped on purpose) become skipped numbers of the stream. So versions,
history and changes cursors are the same on every node afterwards as on the embedded server,
and a node started on the stream with an empty data dir rebuilds the same state. A stream that
is not empty must hold exactly a prefix of the log (every record the same, compared one by
one): the copy then goes on after it. When retention removed the log's first events, their
state is only in the data dir's snapshots: the stream then begins at the log's first retained
sequence, and the data dir must hold a snapshot that covers the removed ones (else the step
refuses: a node would miss their state).

Snapshot (`copy_snapshot`). The data dir's newest snapshot goes into the cluster's object store
(`<stream>_snapshots`, where the nodes keep theirs), under its own name: a node started on an
empty data dir loads it and replays only the stream after it, as it would after the cluster
wrote it. It runs after the events: a snapshot is never ahead of the stream it goes with.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from flux.cluster import Cluster, ObjectSnapshots
from flux.errors import MigrationRefused
from flux.log import Record
from flux.log.jetstream import JetStreamLog
from flux.log.sqlite import SQLiteLog
from flux.snapshots import FileSnapshots, Snapshots, SnapshotStore

Say = Callable[[str], None]

_PROGRESS_SECONDS = 5.0  # between two progress lines of a long step
_COPY_BATCH = 5_000  # events read from the log and copied at a time


@dataclass
class Migration:
    """What every step works on: the data dir's parts and the cluster's, opened."""

    data_dir: Path
    source: SQLiteLog
    target: JetStreamLog
    snapshots: Snapshots  # the data dir's
    cluster_snapshots: Snapshots  # the cluster's object store
    say: Say  # progress lines

    async def newest_snapshot(self) -> tuple[str, int] | None:
        """The data dir's newest snapshot (name, sequence), or None. Raises MigrationRefused
        when it is ahead of the log (the log was replaced or lost: `flux check` says more)."""
        listing = await self.snapshots.listing()
        if not listing:
            return None
        last = await self.source.last_seq()
        name, seq = listing[0]
        if seq > last:
            raise MigrationRefused(
                "snapshot",
                f"the data dir's snapshot {name} is at sequence {seq:,}, ahead of its event "
                f"log ({last:,}): was the log replaced? (`flux check` says more)",
            )
        return name, seq


@dataclass
class StepResult:
    """What one step did: `moved` items copied now, `present` found already there."""

    step: str
    moved: int
    present: int
    seconds: float
    detail: str = ""

    def summary(self) -> str:
        line = (
            f"{self.step}: {self.moved:,} copied, {self.present:,} already there "
            f"({self.seconds:.1f}s)"
        )
        return f"{line}; {self.detail}" if self.detail else line


class _Progress:
    """A progress line every `_PROGRESS_SECONDS` while `done` grows towards `last`."""

    def __init__(self, say: Say, doing: str, last: int) -> None:
        self.say, self.doing, self.last = say, doing, last
        self.began = self.shown = time.monotonic()

    def __call__(self, done: int, seq: int) -> None:
        now = time.monotonic()
        if now - self.shown >= _PROGRESS_SECONDS:
            self.shown = now
            rate = done / (now - self.began)
            self.say(
                f"events: {done:,} {self.doing}, at sequence {seq:,} of {self.last:,} "
                f"({rate:,.0f} events/s)"
            )


async def _records(batches: AsyncIterator[list[Record]]) -> AsyncIterator[Record]:
    async for batch in batches:
        for record in batch:
            yield record


def _same(ours: Record, theirs: Record) -> bool:
    return ours.seq == theirs.seq and ours.at == theirs.at and ours.event == theirs.event


async def _present(m: Migration, source_last: int) -> tuple[int, int]:
    """The stream's last sequence and how many records it holds, after checking that they
    are a prefix of the log: each of the log's records up to that sequence is in the stream,
    the same, and the stream holds no other. Raises MigrationRefused otherwise."""
    stream_last = await m.target.last_seq()
    if stream_last == 0:
        return 0, 0
    where = f"the stream {m.target.stream!r}"
    if stream_last > source_last:
        raise MigrationRefused(
            "events",
            f"{where} already holds sequences up to {stream_last:,}, beyond this log's "
            f"{source_last:,}: it holds other events (another data dir's, or a cluster's own); "
            "migrate into an empty stream (FLUX_NATS_STREAM names another)",
        )
    m.say(f"events: {where} holds sequences up to {stream_last:,}; checking they are this log's")
    theirs = _records(m.target.read(0))
    count = 0
    progress = _Progress(m.say, "checked", stream_last)
    async for ours in _records(m.source.read(0)):
        if ours.seq > stream_last:
            break
        found = await anext(theirs, None)
        if found is None or not _same(ours, found):
            at = found.seq if found is not None and found.seq < ours.seq else ours.seq
            raise MigrationRefused(
                "events",
                f"{where} holds other events than this log (they differ at sequence {at:,}); "
                "migrate into an empty stream (FLUX_NATS_STREAM names another)",
            )
        count += 1
        progress(count, ours.seq)
    extra = await anext(theirs, None)
    if extra is not None:
        raise MigrationRefused(
            "events",
            f"{where} holds an event at sequence {extra.seq:,} where this log has none; "
            "migrate into an empty stream (FLUX_NATS_STREAM names another)",
        )
    return stream_last, count


async def copy_events(m: Migration) -> StepResult:
    """The log's events into the stream, at their own sequences (see the module docstring)."""
    began = time.monotonic()
    first, last = await m.source.first_seq(), await m.source.last_seq()
    if first > 1:
        newest = await m.newest_snapshot()
        if newest is None or newest[1] < first - 1:
            which = f"the newest is at {newest[1]:,}" if newest else "it has none"
            raise MigrationRefused(
                "events",
                f"the event log starts at sequence {first:,}: retention removed the events "
                f"before it, and no snapshot in the data dir covers them ({which}); a node "
                "would miss their state. Nothing was copied",
            )
    stream_last, present = await _present(m, last)
    if stream_last < first - 1:  # an empty stream: it begins where the log does
        await m.target.begin_at(first)
        stream_last = first - 1
    if stream_last == last:
        return StepResult("events", 0, present, time.monotonic() - began, "nothing to do")
    m.say(f"events: copying sequences {stream_last + 1:,} to {last:,}")
    moved = 0
    progress = _Progress(m.say, "copied", last)
    async for batch in m.source.read(stream_last, batch_size=_COPY_BATCH):
        await m.target.copy_in(batch)
        moved += len(batch)
        progress(moved, batch[-1].seq)
    stream_last = await m.target.copy_in([], upto_seq=last)  # the log's trailing hole, if any
    took = time.monotonic() - began
    return StepResult(
        "events", moved, present, took, f"the stream ends at sequence {stream_last:,}"
    )


async def copy_snapshot(m: Migration) -> StepResult:
    """The data dir's newest snapshot into the cluster's object store (see the module
    docstring); a snapshot of that name there already counts as moved."""
    began = time.monotonic()
    last = await m.source.last_seq()
    theirs = await m.cluster_snapshots.listing()
    beyond = [name for name, seq in theirs if seq > last]
    if beyond:
        raise MigrationRefused(
            "snapshot",
            f"the cluster's snapshot store holds {beyond[0]}, beyond this log's last sequence "
            f"({last:,}): it belongs to other events",
        )
    newest = await m.newest_snapshot()
    if newest is None:
        return StepResult("snapshot", 0, 0, time.monotonic() - began, "none in the data dir")
    name, seq = newest
    if name in {n for n, _ in theirs}:
        return StepResult("snapshot", 0, 1, time.monotonic() - began, name)
    m.say(f"snapshot: copying {name}")
    await m.cluster_snapshots.save(await m.snapshots.load(name), seq)
    return StepResult("snapshot", 1, 0, time.monotonic() - began, name)


Step = Callable[[Migration], Awaitable[StepResult]]

# The parts of a data dir, in the order they move.
STEPS: list[tuple[str, Step]] = [("events", copy_events), ("snapshot", copy_snapshot)]


async def migrate(
    data_dir: Path, target: JetStreamLog, say: Say, *, snapshot_keep: int
) -> list[StepResult]:
    """Run every step from the data dir `data_dir` into `target` (not started: this opens
    it, creating the stream when missing, and closes it) and the object store beside it, which
    keeps `snapshot_keep` snapshots. Returns each step's result. Raises MigrationRefused when
    a step refuses, LogError when a log or store fails (NATS unreachable, damage); the steps
    before it are done."""
    source = SQLiteLog(str(data_dir / "events.db"))
    cluster = Cluster(
        target.servers,
        stream=target.stream,
        replicas=target.replicas,
        node="flux-migrate",
        data_dir=data_dir,
        timeout=target.timeout,
    )
    await source.start(_ignore)
    try:
        await target.start(_ignore)
        try:
            await cluster.start()
            m = Migration(
                data_dir,
                source,
                target,
                FileSnapshots(SnapshotStore(data_dir / "snapshots")),
                ObjectSnapshots(cluster, keep=snapshot_keep),
                say,
            )
            results = []
            for name, step in STEPS:
                say(f"{name}: from {data_dir} into the stream {target.stream!r}")
                results.append(await step(m))
            return results
        finally:
            await cluster.close()
            await target.close()
    finally:
        await source.close()


def _ignore(records: list[Record]) -> None:
    """Neither log's new records matter here: the steps read what they need."""
