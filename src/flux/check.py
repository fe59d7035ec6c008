"""`flux check`: a full check of a data dir's SQLite event log and its snapshots.

What the server checks at start is cheap (docs/architecture.md, "A damaged log"); this reads
everything: SQLite's integrity_check, every sequence (consecutive above the retention floor,
but for holes the log recorded itself), `meta` against the newest row, `entity_history` against
`events`, every stored event decoded, and every snapshot loaded and compared, after replaying
the log from its sequence, with the state a replay of the whole log gives (or, when retention
removed the log's start, with the newest snapshot's). All of it in one read transaction, so it
may run beside a running server (which goes on writing to the WAL meanwhile).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flux.engine import StateEngine
from flux.log.sqlite import BUCKET_BITS, Damaged, fetch_batch
from flux.snapshots import SnapshotStore

Say = Callable[[str], None]

_REPLAY_BATCH = 10_000
_PROGRESS_EVERY = 500_000  # sequences between two progress lines of a scan
_MAX_LISTED = 10  # holes or problems listed one by one before "and N more"


@dataclass
class Report:
    """What the check found: `problems` make `flux check` exit 1; `notes` are information."""

    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class _Log:
    low: int | None = None  # lowest stored sequence
    high: int | None = None  # highest stored sequence
    count: int = 0
    last_seq: int = 0  # highest ever assigned (meta included)
    gaps: dict[int, int] = field(default_factory=dict)
    bits: int = BUCKET_BITS
    history_upto: int | None = None  # events up to here have history rows (None: all do)


def check_data_dir(
    log_path: Path, snapshots_dir: Path, say: Say, progress: Say | None = None
) -> Report:
    """Check the log at `log_path` and the snapshots in `snapshots_dir`; `say` prints the
    report's lines, `progress` the progress of long steps (both may be the same)."""
    report = Report()
    tell = progress or say

    def problem(text: str) -> None:
        report.problems.append(text)
        say(f"PROBLEM: {text}")

    snapshot_paths = SnapshotStore(snapshots_dir).paths()  # listed before the log's snapshot
    if not log_path.is_file():
        problem(f"no event log at {log_path}")
        return report
    say(f"event log {log_path} ({log_path.stat().st_size:,} bytes)")
    try:
        conn = sqlite3.connect(f"{log_path.resolve().as_uri()}?mode=rw", uri=True)
    except sqlite3.Error as exc:
        problem(f"cannot open {log_path}: {exc}")
        return report
    try:
        conn.execute("PRAGMA query_only=ON")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("BEGIN")
        log = _Log()
        try:
            _structure(conn, log, say, tell, problem)
        except sqlite3.DatabaseError as exc:
            problem(f"the event log cannot be read: {exc}")
            return report
        try:
            _sequences(conn, log, say, tell, problem)
            _history(conn, log, say, problem)
        except sqlite3.DatabaseError as exc:
            problem(f"reading the event log failed: {exc}")
        _snapshots(conn, log, snapshot_paths, say, tell, problem, report)
    finally:
        conn.close()
    return report


def _structure(conn: sqlite3.Connection, log: _Log, say: Say, tell: Say, problem: Say) -> None:
    """SQLite's own check of every page and index, then the figures the others need."""
    tell("running SQLite's integrity_check (reads the whole file)...")
    began = time.monotonic()
    last_tick = [began]

    def ticking() -> int:
        now = time.monotonic()
        if now - last_tick[0] >= 5:
            last_tick[0] = now
            tell(f"  ... integrity_check still running ({now - began:.0f}s)")
        return 0

    conn.set_progress_handler(ticking, 100_000)
    try:
        found = [str(row[0]) for row in conn.execute("PRAGMA integrity_check(100)")]
    finally:
        conn.set_progress_handler(None, 0)
    if found == ["ok"]:
        say(f"integrity_check: ok ({time.monotonic() - began:.1f}s)")
    else:
        for line in found[:_MAX_LISTED]:
            problem(f"integrity_check: {line}")
        if len(found) > _MAX_LISTED:
            problem(f"integrity_check: and {len(found) - _MAX_LISTED} more")
    marks = {str(k): int(v) for k, v in conn.execute("SELECT key, value FROM meta")}
    log.bits = marks.get("history_bucket_bits", BUCKET_BITS)
    log.history_upto = marks.get("history_upto")
    log.gaps = {
        int(key[4:]): value
        for key, value in marks.items()
        if key.startswith("gap:") and key[4:].isdigit()
    }
    low, high, count = conn.execute("SELECT MIN(seq), MAX(seq), COUNT(*) FROM events").fetchone()
    log.low, log.high, log.count = low, high, int(count)
    marked = marks.get("last_seq", 0)
    log.last_seq = max(int(high or 0), marked)
    if high is None:
        say(f"events: none stored; last sequence {log.last_seq}")
    else:
        say(f"events: {count:,} stored, sequences {low}..{high}; last sequence {log.last_seq}")
    for start, end in sorted(log.gaps.items()):
        say(f"note: sequences {start + 1}..{end} were never used (the state was ahead of the log)")
    if high is not None and marked > high and log.gaps.get(int(high)) != marked:
        problem(
            f"meta: sequence {marked} was stored but the newest row is {high}: "
            f"events {high + 1}..{marked} are lost"
        )


def _sequences(conn: sqlite3.Connection, log: _Log, say: Say, tell: Say, problem: Say) -> None:
    """Every stored sequence, in order: consecutive but for the holes the log recorded."""
    if log.low is None or log.high is None:
        return
    holes: list[tuple[int, int]] = []
    prev: int | None = None
    seen = 0
    next_tick = log.low + _PROGRESS_EVERY
    for (seq,) in conn.execute("SELECT seq FROM events ORDER BY seq"):
        if (
            prev is not None
            and seq != prev + 1
            and not any(start <= prev and end == seq - 1 for start, end in log.gaps.items())
        ):
            holes.append((prev + 1, seq - 1))
        prev = seq
        seen += 1
        if seq >= next_tick:
            tell(f"  ... sequences checked up to {seq:,} of {log.high:,}")
            next_tick = seq + _PROGRESS_EVERY
    for low, high in holes[:_MAX_LISTED]:
        problem(f"sequences {low}..{high} are missing from the log ({high - low + 1} events)")
    if len(holes) > _MAX_LISTED:
        problem(f"and {len(holes) - _MAX_LISTED} more ranges of missing sequences")
    if not holes:
        say(f"sequences: consecutive from {log.low} to {log.high}")
    if seen != log.count:
        problem(f"the events table counts {log.count} rows but {seen} were read")


def _history(conn: sqlite3.Connection, log: _Log, say: Say, problem: Say) -> None:
    """`entity_history` holds exactly one row per stored event that names an entity, up to
    `meta`'s history_upto (the writer indexes in batches; above the mark there are none)."""
    upto = log.history_upto if log.history_upto is not None else (1 << 62)
    dangling, first = conn.execute(
        "SELECT COUNT(*), MIN(h.seq) FROM entity_history h LEFT JOIN events e ON e.seq = h.seq "
        "WHERE e.seq IS NULL OR e.entity_id IS NOT h.entity_id OR h.bucket != h.seq >> ? "
        "OR h.seq > ?",
        (log.bits, upto),
    ).fetchone()
    missing, first_missing = conn.execute(
        "SELECT COUNT(*), MIN(e.seq) FROM events e WHERE e.seq <= ? AND e.entity_id IS NOT NULL "
        "AND NOT EXISTS (SELECT 1 FROM entity_history h WHERE h.bucket = e.seq >> ? "
        "AND h.entity_id = e.entity_id AND h.seq = e.seq)",
        (upto, log.bits),
    ).fetchone()
    if dangling:
        problem(
            f"entity_history: {dangling} rows point at no matching event (first at "
            f"sequence {first})"
        )
    if missing:
        problem(
            f"entity_history: {missing} events have no history row (first at sequence "
            f"{first_missing})"
        )
    if not dangling and not missing:
        say("entity_history: consistent with events")


def _replay(
    conn: sqlite3.Connection, log: _Log, engine: StateEngine, after: int, tell: Say
) -> None:
    """Apply the stored events above `after` to `engine`. Raises Damaged."""
    next_tick = after + _PROGRESS_EVERY
    while True:
        batch = fetch_batch(conn, after, _REPLAY_BATCH, log.gaps)
        if not batch:
            return
        engine.apply_all(batch)
        after = batch[-1].seq
        if after >= next_tick:
            tell(f"  ... replayed up to {after:,} of {log.high or 0:,}")
            next_tick = after + _PROGRESS_EVERY


def _snapshots(
    conn: sqlite3.Connection,
    log: _Log,
    paths: list[Path],
    say: Say,
    tell: Say,
    problem: Say,
    report: Report,
) -> None:
    """Each snapshot loads, is not ahead of the log, and, replayed to the log's end, gives the
    state the whole log gives (or, the log's start pruned, the newest snapshot's)."""
    if not paths:
        say("snapshots: none")
    loaded: list[tuple[Path, StateEngine]] = []
    for path in paths:
        try:
            engine = StateEngine.restore(SnapshotStore.load(path))
        except FileNotFoundError:
            say(f"note: snapshot {path.name} was removed during the check")
            continue
        except (OSError, ValueError) as exc:
            problem(f"snapshot {path.name} does not load: {exc}")
            continue
        if engine.last_seq > log.last_seq:
            problem(
                f"snapshot {path.name} is at sequence {engine.last_seq}, beyond the log's "
                f"last sequence {log.last_seq}: the log lost events the state has"
            )
            continue
        loaded.append((path, engine))
    first = log.low if log.low is not None else log.last_seq + 1
    whole = first == 1 or (log.low is None and log.last_seq == 0)
    reference: dict[str, tuple[dict[str, Any], int, int]] | None = None
    try:
        if whole:
            tell("replaying the whole log...")
            full = StateEngine()
            _replay(conn, log, full, 0, tell)
            reference = dict(full.state())
            say(f"replay: {len(full):,} entities at sequence {full.last_seq}")
        for path, engine in loaded:
            if engine.last_seq + 1 < first:
                report.notes.append(path.name)
                say(
                    f"note: snapshot {path.name} (sequence {engine.last_seq}) is older than the "
                    f"log's start ({first}); not compared"
                )
                continue
            tell(f"replaying the log after snapshot {path.name}...")
            _replay(conn, log, engine, engine.last_seq, tell)
            state = dict(engine.state())
            if reference is None:
                reference = state
                say(f"snapshot {path.name}: loads; the reference state (the log starts at {first})")
                continue
            if state == reference:
                say(f"snapshot {path.name}: loads and matches the log")
                continue
            differ = sorted(
                key
                for key in state.keys() | reference.keys()
                if state.get(key) != reference.get(key)
            )
            problem(
                f"snapshot {path.name} replayed to the log's end differs from "
                f"{'a full replay' if whole else 'the newest snapshot'} in {len(differ)} "
                f"entities (e.g. {differ[0]!r})"
            )
    except (Damaged, sqlite3.DatabaseError) as exc:
        problem(f"replaying the log failed: {exc}")
