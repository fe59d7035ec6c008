"""The embedded log's writer: a process of its own that stores the groups `SQLiteLog` sends it.

`flux.log.sqlite.SQLiteLog` starts it as `python -P writer.py PATH OPTIONS` with pipes for its
standard input and output, and it is the only connection that writes to the database. Why a
process: with the writer on a thread, every commit handed the GIL between the event loop and
that thread several times (futex wake-ups on the other core), and single publishes reached
0.42-0.54 of the bare ASGI ceiling whatever the storage did; a process shares no GIL
(docs/architecture.md, "The log's writer process"; bench/RESULTS.md).

The conversation, over the pipes: every message is a `HEAD` (kind, payload length) and its
payload. The log sends APPEND (a group of encoded events, as rows and one blob), SYNC, PRUNE and
STOP; the writer answers each in the order received (READY first, once the database is open),
and may send LOG lines (for the server's log) between answers. The writer reads everything that
has arrived, stores all the APPENDs among it in one transaction (group commit: one fsync) and
answers them once committed. It gives the sequences: each group's events take consecutive ones
from the writer's next, and an event whose id is stored already (or earlier in the group) takes
none and is answered as a duplicate. A checked group (decided by the log against the state, see
`SQLiteLog._send_checked`) carries the first sequence and the time it was decided for; it is
stored only when none of its ids is stored, and otherwise answered REPEATED with the stored
ones, for the log to decide it again.

It uses the standard library only (json, not orjson: its import alone took 33 ms; the
JSON here is a few small documents), so it starts in a few tens of milliseconds, and
writes nothing to its standard output but answers. It stops on STOP (after a last checkpoint),
and at once, storing nothing more, when its input ends without one: the server is gone.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    entity_id TEXT,
    stored_at INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS events_event_id ON events(event_id);
CREATE TABLE IF NOT EXISTS entity_history (
    bucket INTEGER NOT NULL,
    entity_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (bucket, entity_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""

# Entity history is indexed by (bucket, entity_id, seq) with bucket = seq >> BUCKET_BITS, not by
# (entity_id, seq): a group's index rows then land in the newest bucket's few pages instead of
# one random page per event across an index of the whole log. Measured with 1,000-event groups
# over 100,000 entities: the old index cost 40-70 ms per group at 300k rows and grew with the
# log; the bucketed one stays at 2-5 ms. A history query reads the buckets newest first (with
# the default width, a bucket holds 16,384 sequences).
# The bucket width is recorded in `meta` (key `history_bucket_bits`) when the log is created, so
# a log keeps the width it was written with; tests make narrow buckets to cross their boundaries.
BUCKET_BITS = 14

# The layout before entity_history: a B-tree index over (entity_id, seq). A log that still has
# it is migrated on open (the index's rows are copied into entity_history, then it is dropped).
_OLD_ENTITY_INDEX = "events_entity"

# A whole group goes in with one statement. The rows come as a small JSON array of
# [event_id, entity_id, offset, length]; the encoded events come as one blob that each row
# slices (SQLite re-rendering every event from a parsed JSON array cost about 7 ms per 1,000
# events).
INSERT_GROUP = (
    "INSERT INTO events(seq, event_id, entity_id, stored_at, data) "
    "SELECT ?1 + key, value->>0, value->>1, ?2, CAST(substr(?4, value->>2, value->>3) AS TEXT) "
    "FROM json_each(?3)"
)
# History rows are written behind the events, in batches: every event up to `meta`'s
# `history_upto` that names an entity has its row, none above it has one, and a history query
# reads the events above the mark directly (a range of the table's own key, at most a batch and
# a group long). Writing each group's history rows in its own commit (a trigger did, until
# issue 17) dirtied one page of the newest bucket per event, about 25 of a 28-event group's 30
# WAL pages; a batch of thousands sorted by (bucket, entity) writes each page once.
HISTORY_BATCH = 4096
_OLD_HISTORY_TRIGGER = "events_history"
_INDEX_HISTORY = (
    "INSERT OR IGNORE INTO entity_history(bucket, entity_id, seq) "
    "SELECT seq >> ?3, entity_id, seq FROM events "
    "WHERE seq > ?1 AND seq <= ?2 AND entity_id IS NOT NULL ORDER BY 1, 2, 3"
)
_HISTORY_MARK = (
    "INSERT INTO meta(key, value) VALUES ('history_upto', ?) "
    "ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
_RAISE_MARKS = (
    "INSERT INTO meta(key, value) VALUES ('last_seq', ?), ('last_at', ?) "
    "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)"
)
CHECKPOINT_BYTES = 4 << 20  # committed event bytes between two checkpoints
# The WAL is restarted (written again from its start) only once a checkpoint has copied every
# frame and no commit came after it; under writes without a pause that never happens on its
# own, and the WAL grew without end (measured: 977 MB after 40 s of single publishes, every
# page read searching a larger index). When a PASSIVE pass of the checkpointer finds the WAL
# past this size, it asks the writer (`wal_full`), which runs a RESTART checkpoint itself
# after its next commit (the checkpointer cannot: waiting for the write lock, it starves behind
# a writer that takes it every millisecond). The pass has just copied most frames, so the
# pause is about one fsync of the database file. The next commit writes the WAL from its start
# and cuts the file back to this size (`journal_size_limit`). Readers still on old frames make
# a restart wait at most _RESTART_WAIT_MS; if they are not done, the next pass asks again.
WAL_LIMIT = 64 << 20
_RESTART_WAIT_MS = 50  # how long a restart waits for readers still on old frames
_PRUNE_CHUNK = 20_000
_READ_AHEAD = 32 << 20  # bytes of messages read before they are stored
_LOOKUP_CHUNK = 500
# A hole the log made on purpose: when the state (a snapshot) was ahead of the log at start,
# new sequences continue above the state's, and `meta` records `gap:<last stored seq>` ->
# <the state's seq>, so that readers and `flux check` tell it from rows gone missing.
GAP_KEY = "gap:{}"
# SQLite's primary result codes for a damaged file (the extended codes keep them in the low byte).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26
LOCK_WAIT_S = 10.0  # how long a new writer waits for an old one to let go of the database

# -- the messages ------------------------------------------------------------------------------

HEAD = struct.Struct("<BI")  # kind, payload length
# An APPEND's payload: this header, then the rows (JSON), the refused ids (JSON, may be empty)
# and the blob. Time in µs (0: the writer's clock), the first sequence the group was decided for
# (0: any), whether it must be stored only when none of its ids is stored, its row count and
# the lengths of the rows and of the refused ids.
APPEND_HEAD = struct.Struct("<qqBIII")
APPEND, SYNC, PRUNE, STOP = b"ASPX"  # from the log
READY, DONE, DUPLICATES, REPEATED, FAILED, SYNCED, PRUNED, LOG = b"RODQESPL"  # to the log
DONE_BODY = struct.Struct("<qqq")  # first sequence, time (µs), events stored
COUNT = struct.Struct("<q")
PRUNED_BODY = struct.Struct("<qB")  # removed, more to remove

_WARNING, _ERROR, _INFO = 30, 40, 20  # logging's levels, without importing logging


def _dumps(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def message(kind: int, payload: bytes = b"") -> bytes:
    return HEAD.pack(kind, len(payload)) + payload


class Damaged(Exception):
    """Damage found by Flux itself (not by SQLite)."""


def is_corruption(exc: BaseException) -> bool:
    """Whether a driver error says the database file is damaged."""
    if isinstance(exc, Damaged):
        return True
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    text = str(exc)
    return "malformed" in text or "not a database" in text


def failure(exc: BaseException) -> bytes:
    """A FAILED payload: what kind of error (`corrupt`, `unavailable` for the driver's
    operational errors such as a full disk, `error` otherwise) and its text."""
    if is_corruption(exc):
        kind = "corrupt"
    elif isinstance(exc, sqlite3.DatabaseError):
        kind = "unavailable"
    else:
        kind = "error"
    text = str(exc) if isinstance(exc, sqlite3.Error | Damaged) else repr(exc)
    return _dumps({"kind": kind, "message": text})


def now_us() -> int:
    return time.time_ns() // 1000


def connect(path: str, wal_limit: int, max_page_count: int | None) -> sqlite3.Connection:
    """The writer's connection: WAL, `synchronous=FULL` (every commit is fsynced before it is
    answered). It never checkpoints: the checkpointer thread does, on its own connection, so a
    commit never waits for the WAL to be copied into the database file and that file's fsync
    (measured: a quarter of the writer's time)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        conn.execute("PRAGMA wal_autocheckpoint=0")
        conn.execute(f"PRAGMA journal_size_limit={int(wal_limit)}")
        if max_page_count is not None:
            conn.execute(f"PRAGMA max_page_count={int(max_page_count)}")
    except BaseException:
        conn.close()
        raise
    return conn


def lookup(conn: sqlite3.Connection, event_ids: Sequence[str]) -> dict[str, tuple[int, int]]:
    """Stored (seq, stored_at) by event id, for those of `event_ids` that are in the log."""
    known: dict[str, tuple[int, int]] = {}
    for i in range(0, len(event_ids), _LOOKUP_CHUNK):
        part = event_ids[i : i + _LOOKUP_CHUNK]
        marks = ",".join("?" * len(part))
        for event_id, seq, at in conn.execute(
            f"SELECT event_id, seq, stored_at FROM events WHERE event_id IN ({marks})", part
        ):
            known[event_id] = (int(seq), int(at))
    return known


def first_seq_at_or_after(conn: sqlite3.Connection, at_us: int) -> int | None:
    """The lowest sequence logged at or after `at_us`, by bisection over the sequence (stored_at
    never decreases with seq; sequences may have gaps). Call it inside a transaction."""

    def first_from(seq: int) -> tuple[int, int]:
        row = conn.execute(
            "SELECT seq, stored_at FROM events WHERE seq >= ? ORDER BY seq LIMIT 1", (seq,)
        ).fetchone()
        return int(row[0]), int(row[1])

    low, high = conn.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
    if low is None or first_from(high)[1] < at_us:
        return None
    while low < high:
        mid = (low + high) // 2
        if first_from(mid)[1] >= at_us:
            high = mid
        else:
            low = mid + 1
    first: int = first_from(low)[0]
    return first


def rollback(conn: sqlite3.Connection) -> None:
    with contextlib.suppress(sqlite3.Error):
        if conn.in_transaction:
            conn.execute("ROLLBACK")


class _Append:
    """One APPEND as read from the pipe."""

    __slots__ = ("at", "blob", "count", "expect", "fresh_only", "refused", "rows")

    def __init__(self, payload: memoryview) -> None:
        at, expect, fresh_only, count, rows_len, refused_len = APPEND_HEAD.unpack_from(payload)
        start = APPEND_HEAD.size
        self.at, self.expect, self.fresh_only, self.count = at, expect, bool(fresh_only), count
        self.rows = bytes(payload[start : start + rows_len])
        start += rows_len
        self.refused: list[str] = (
            json.loads(bytes(payload[start : start + refused_len])) if refused_len else []
        )
        self.blob = bytes(payload[start + refused_len :])

    def ids(self) -> list[str]:
        """The group's event ids, those refused by their conditions included."""
        return [row[0] for row in json.loads(self.rows)] + self.refused


class Writer:
    def __init__(self, path: str, options: dict[str, Any], out: int) -> None:
        self.path = path
        self.after_seq = int(options.get("after_seq", 0))
        self.bucket_bits = int(options.get("bucket_bits", BUCKET_BITS))
        self.history_batch = int(options.get("history_batch", HISTORY_BATCH))
        self.checkpoint_bytes = int(options.get("checkpoint_bytes", CHECKPOINT_BYTES))
        self.wal_limit = int(options.get("wal_limit", WAL_LIMIT))
        self.lock_wait_s = float(options.get("lock_wait_s", LOCK_WAIT_S))
        max_pages = options.get("max_page_count")
        self.max_page_count = int(max_pages) if max_pages is not None else None
        self.out = out
        self.next_seq = 1
        self.last_at = 0
        self.history_upto = 0
        self.history_next = 0  # index once the log's last sequence reaches this
        self.gaps: dict[int, int] = {}
        self.damage: str | None = None
        self.unchecked_bytes = 0  # event bytes committed since the last checkpoint was asked
        self.wal_full = False  # set by the checkpointer: restart the WAL after the next commit
        self.checkpointing = threading.Lock()  # held by the checkpointer during a pass
        self.checkpoint_wake = threading.Event()
        self.stopping = False
        self.lock_fd: int | None = None
        self.sending = threading.Lock()  # the checkpointer logs too; a message goes out whole

    # -- talking to the log ---------------------------------------------------------------

    def send(self, data: bytes) -> None:
        with self.sending:
            view = memoryview(data)
            while view:
                view = view[os.write(self.out, view) :]

    def log(self, level: int, text: str) -> None:
        self.send(message(LOG, _dumps([level, text])))

    # -- opening ---------------------------------------------------------------------------

    def open(self) -> sqlite3.Connection:
        conn = connect(self.path, self.wal_limit, self.max_page_count)
        try:
            conn.executescript(SCHEMA)
            self.take_lock()
            self.bucket_bits = self.recorded_bucket_bits(conn)
            self.migrate(conn)
            self.history_upto = self.history_mark(conn)
            row = conn.execute(
                "SELECT seq, stored_at FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            marks = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            stored_seq = int(row[0]) if row else 0
            self.gaps = {
                int(key[4:]): int(value)
                for key, value in marks.items()
                if key.startswith("gap:") and key[4:].isdigit()
            }
            self.check_open(conn, stored_seq, int(marks.get("last_seq", 0)))
            last_seq = max(stored_seq, int(marks.get("last_seq", 0)))
            self.last_at = max(int(row[1]) if row else 0, int(marks.get("last_at", 0)))
            if self.after_seq > last_seq:
                self.log(
                    _WARNING,
                    f"the event log ends at sequence {last_seq} but the state is at "
                    f"{self.after_seq} (was the log replaced or lost?); new events get "
                    f"sequences from {self.after_seq + 1}",
                )
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_RAISE_MARKS, (self.after_seq, self.last_at))
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (GAP_KEY.format(stored_seq), self.after_seq),
                )
                conn.execute("COMMIT")
                self.gaps[stored_seq] = self.after_seq
                last_seq = self.after_seq
            self.next_seq = last_seq + 1
            self.index_history(conn)
        except BaseException:
            rollback(conn)
            conn.close()
            raise
        return conn

    def take_lock(self) -> None:
        """Hold an exclusive lock on the database file for as long as this process lives: a
        writer left by a server that was killed stops once it sees its input end, and a new
        one waits for that instead of giving sequences the old one may still be giving. (An
        flock, not SQLite's own POSIX locks, which it would release when this descriptor
        closed; this one is never closed before the process ends.)"""
        fd = os.open(self.path, os.O_RDONLY)
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(fd)
                    raise sqlite3.OperationalError(
                        "another process writes to this event log (is another Flux server "
                        "running on this data dir?)"
                    ) from None
                time.sleep(0.02)
                continue
            self.lock_fd = fd
            return

    def check_open(self, conn: sqlite3.Connection, stored_seq: int, marked_seq: int) -> None:
        """The start-up checks that cost no scan: SQLite has read the header, the schema, `meta`
        and the newest row by now (damage there has raised already); the file must hold every
        page its header counts (unless the WAL holds the rest); `meta` must not remember a
        sequence above the newest row (rows lost from the end) unless the log recorded that
        hole itself. Raises Damaged for a truncated file; the `meta` mismatch only marks the
        log damaged (an older Flux made such holes without recording them)."""
        page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        size = os.path.getsize(self.path)
        wal = self.path + "-wal"
        wal_size = os.path.getsize(wal) if os.path.exists(wal) else 0
        if wal_size == 0 and size < pages * page_size:
            raise Damaged(
                f"the file is {size} bytes but its header counts {pages} pages of {page_size} "
                "bytes (truncated?)"
            )
        if stored_seq and marked_seq > stored_seq and self.gaps.get(stored_seq) != marked_seq:
            self.damage = f"sequence {marked_seq} was stored but the newest row is {stored_seq}"

    def recorded_bucket_bits(self, conn: sqlite3.Connection) -> int:
        """The history bucket width of this log: the recorded one, else the one asked for
        (recorded now)."""
        row = conn.execute("SELECT value FROM meta WHERE key = 'history_bucket_bits'").fetchone()
        if row is not None:
            return int(row[0])
        conn.execute(
            "INSERT INTO meta(key, value) VALUES ('history_bucket_bits', ?)", (self.bucket_bits,)
        )
        return self.bucket_bits

    def history_mark(self, conn: sqlite3.Connection) -> int:
        """`meta`'s history_upto, set on a log that has none. Flux wrote history rows by trigger
        before the mark existed, so such a log is indexed up to its newest event; the trigger is
        dropped (also when an older Flux re-created it: its rows are then ignored when
        indexed)."""
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute("SELECT value FROM meta WHERE key = 'history_upto'").fetchone()
        if row is None:
            high = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
            row = (int(high or 0),)
            conn.execute(_HISTORY_MARK, row)
        conn.execute(f"DROP TRIGGER IF EXISTS {_OLD_HISTORY_TRIGGER}")
        conn.execute("COMMIT")
        return int(row[0])

    def migrate(self, conn: sqlite3.Connection) -> None:
        """Move a log from the old layout (an `(entity_id, seq)` index over `events`) to the
        bucketed `entity_history` table, in one transaction. Also repairs a log that an older
        Flux wrote to after a newer one (it re-creates the old index): the history is rebuilt
        whole."""
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_OLD_ENTITY_INDEX,)
        ).fetchone()
        if exists is None:
            return
        self.log(_INFO, "migrating the event log's entity index to the bucketed layout")
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("DELETE FROM entity_history")
        conn.execute(
            "INSERT INTO entity_history(bucket, entity_id, seq) SELECT seq >> ?, entity_id, seq "
            "FROM events WHERE entity_id IS NOT NULL ORDER BY seq",
            (self.bucket_bits,),
        )
        conn.execute(f"DROP INDEX {_OLD_ENTITY_INDEX}")
        conn.execute("COMMIT")

    # -- serving ---------------------------------------------------------------------------

    def run(self) -> int:
        try:
            conn = self.open()
        except Exception as exc:
            self.send(message(FAILED, failure(exc)))
            return 1
        ready = {
            "next_seq": self.next_seq,
            "last_at": self.last_at,
            "bucket_bits": self.bucket_bits,
            "gaps": [[start, end] for start, end in self.gaps.items()],
            "damage": self.damage,
        }
        self.send(message(READY, _dumps(ready)))
        checkpointer = threading.Thread(target=self.checkpoints, name="flux-log-checkpoint")
        checkpointer.start()
        try:
            self.serve(conn)
        finally:
            self.stopping = True
            self.checkpoint_wake.set()
            checkpointer.join()
            conn.close()
        return 0

    def serve(self, conn: sqlite3.Connection) -> None:
        """Read what has arrived, handle it, answer; until STOP or the end of the input."""
        source = sys.stdin.fileno()
        buffer = bytearray()
        while True:
            chunk = os.read(source, 1 << 20)
            if not chunk:
                return  # the server is gone: what it sent last was never answered; drop it
            buffer += chunk
            # Everything that has come goes in one commit (up to _READ_AHEAD bytes of it).
            while len(buffer) < _READ_AHEAD and select.select([source], [], [], 0)[0]:
                more = os.read(source, 1 << 20)
                if not more:
                    return
                buffer += more
            view = memoryview(buffer)
            messages: list[tuple[int, memoryview]] = []
            pos = 0
            while len(view) - pos >= HEAD.size:
                kind, length = HEAD.unpack_from(view, pos)
                end = pos + HEAD.size + length
                if end > len(view):
                    break
                messages.append((kind, view[pos + HEAD.size : end]))
                pos = end
            stop = self.handle(conn, messages)
            messages.clear()
            view.release()
            del buffer[:pos]
            if stop:
                return

    def handle(self, conn: sqlite3.Connection, messages: list[tuple[int, memoryview]]) -> bool:
        """Answer `messages` in order: consecutive APPENDs are stored in one transaction.
        Returns whether STOP was among them (nothing after it is handled)."""
        appends: list[_Append] = []
        for kind, payload in messages:
            if kind == APPEND:
                appends.append(_Append(payload))
                continue
            if appends:
                self.commit(conn, appends)
                appends = []
            if kind == STOP:
                return True
            if kind == SYNC:
                self.send(message(SYNCED, COUNT.pack(self.next_seq - 1)))
            elif kind == PRUNE:
                (bound,) = COUNT.unpack_from(payload)
                try:
                    removed, more = self.prune(conn, bound)
                except Exception as exc:
                    rollback(conn)
                    self.send(message(FAILED, failure(exc)))
                else:
                    self.send(message(PRUNED, PRUNED_BODY.pack(removed, more)))
            else:
                self.send(message(FAILED, failure(ValueError(f"unknown message {kind}"))))
        if appends:
            self.commit(conn, appends)
        return False

    def commit(self, conn: sqlite3.Connection, appends: list[_Append]) -> None:
        """Store the groups in one transaction and answer each once it is committed."""
        next_seq, last_at = self.next_seq, self.last_at
        at = max(now_us(), last_at)
        answers: list[bytes] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for append in appends:
                answers.append(self.insert(conn, append, append.at or at))
            conn.execute("COMMIT")
        except Exception as exc:
            rollback(conn)
            self.next_seq, self.last_at = next_seq, last_at
            self.log(_ERROR, f"append of {sum(a.count for a in appends)} events failed: {exc}")
            self.send(message(FAILED, failure(exc)) * len(appends))
            return
        self.send(b"".join(answers))
        self.unchecked_bytes += sum(len(append.blob) for append in appends)
        if self.unchecked_bytes >= self.checkpoint_bytes:
            self.unchecked_bytes = 0
            self.checkpoint_wake.set()
        if self.next_seq > self.history_next:
            self.index_history(conn)
        if self.wal_full and self.checkpointing.acquire(blocking=False):
            try:
                self.restart_wal(conn)
            finally:
                self.checkpointing.release()

    def insert(self, conn: sqlite3.Connection, append: _Append, at: int) -> bytes:
        """Store one group inside the open transaction; returns its answer."""
        first = self.next_seq
        if append.expect and append.expect != first:
            raise RuntimeError(f"a group decided for sequence {append.expect} came at {first}")
        if append.fresh_only and append.refused and lookup(conn, append.refused):
            # A refused entry is not inserted, so the insert cannot tell whether it repeats a
            # stored event (a retried write whose condition no longer holds: a duplicate).
            return self.repeated(conn, append)
        try:
            conn.execute(INSERT_GROUP, (first, at, append.rows, append.blob))
        except sqlite3.IntegrityError:
            # Some ids are stored already or repeat within the group (the statement was undone,
            # the transaction goes on): redo without them, so the new events keep consecutive
            # sequences.
            if append.fresh_only:
                return self.repeated(conn, append)
            return self.insert_new(conn, append, first, at)
        self.next_seq = first + append.count
        self.last_at = max(self.last_at, at)
        return message(DONE, DONE_BODY.pack(first, at, append.count))

    def repeated(self, conn: sqlite3.Connection, append: _Append) -> bytes:
        known = lookup(conn, list(dict.fromkeys(append.ids())))
        return message(REPEATED, _dumps(known))

    def insert_new(self, conn: sqlite3.Connection, append: _Append, first: int, at: int) -> bytes:
        """Insert the rows whose event ids are not stored yet (nor earlier in the group);
        answers each row's (seq, time, duplicate)."""
        rows = json.loads(append.rows)
        known = lookup(conn, list(dict.fromkeys(row[0] for row in rows)))
        outcome: list[tuple[int, int, bool]] = []
        fresh: list[list[Any]] = []
        parts: list[bytes] = []
        offset = 1
        seq = first
        for event_id, entity_id, start, length in rows:
            stored = known.get(event_id)
            if stored is not None:
                outcome.append((stored[0], stored[1], True))
                continue
            known[event_id] = (seq, at)
            outcome.append((seq, at, False))
            parts.append(append.blob[start - 1 : start - 1 + length])
            fresh.append([event_id, entity_id, offset, length])
            offset += length
            seq += 1
        conn.execute(INSERT_GROUP, (first, at, _dumps(fresh), b"".join(parts)))
        self.next_seq = seq
        self.last_at = max(self.last_at, at)
        return message(DUPLICATES, _dumps(outcome))

    def index_history(self, conn: sqlite3.Connection) -> None:
        """Write the history rows of every event above the mark, and move the mark, in one
        transaction. A failure (a full disk) leaves the mark where it was: history reads cover
        the events above it from the events table, and the next try is a batch later."""
        last = self.next_seq - 1
        self.history_next = last + self.history_batch + 1
        if last <= self.history_upto:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_INDEX_HISTORY, (self.history_upto, last, self.bucket_bits))
            conn.execute(_HISTORY_MARK, (last,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            rollback(conn)
            self.log(
                _WARNING,
                f"indexing the history of events {self.history_upto + 1}-{last} failed: {exc}",
            )
            return
        self.history_upto = last

    def restart_wal(self, conn: sqlite3.Connection) -> None:
        """Between commits: copy the rest of the WAL into the database and restart it (see
        WAL_LIMIT)."""
        self.wal_full = False
        try:
            conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
            try:
                conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            self.log(_WARNING, f"restarting the event log's WAL failed: {exc}")

    def prune(self, conn: sqlite3.Connection, bound: int) -> tuple[int, bool]:
        """Remove up to one chunk of records at or below `bound`, in one transaction, keeping
        the highest sequence and time ever assigned in `meta`; returns how many went and
        whether more are left."""
        lowest = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
        if lowest is None or bound < lowest:
            return 0, False
        chunk_end = min(bound, lowest + _PRUNE_CHUNK - 1)
        conn.execute("BEGIN IMMEDIATE")
        conn.execute(_RAISE_MARKS, (self.next_seq - 1, self.last_at))
        removed = conn.execute("DELETE FROM events WHERE seq <= ?", (chunk_end,)).rowcount
        last_bucket = chunk_end >> self.bucket_bits
        conn.execute("DELETE FROM entity_history WHERE bucket < ?", (last_bucket,))
        conn.execute(
            "DELETE FROM entity_history WHERE bucket = ? AND seq <= ?", (last_bucket, chunk_end)
        )
        conn.execute("COMMIT")
        return removed, chunk_end < bound

    def checkpoints(self) -> None:
        """The checkpointer thread: copy the WAL into the database (PASSIVE: it never blocks
        the writer or readers) each time the writer has committed `checkpoint_bytes` more,
        and once more when stopping; past `wal_limit`, it asks the writer to restart the WAL
        (see WAL_LIMIT). A failed checkpoint is logged and retried on the next wake; commits
        stay durable in the WAL meanwhile."""
        conn: sqlite3.Connection | None = None
        page_size = 4096
        while True:
            self.checkpoint_wake.wait()
            self.checkpoint_wake.clear()
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None)
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute("PRAGMA busy_timeout=10000")
                    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                with self.checkpointing:
                    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                if frames * page_size > self.wal_limit:
                    self.wal_full = True
            except sqlite3.Error as exc:
                with contextlib.suppress(OSError):
                    self.log(_WARNING, f"checkpoint of the event log failed: {exc}")
            if self.stopping:
                break
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


def main(argv: list[str]) -> int:
    """`writer.py PATH OPTIONS`: OPTIONS is a JSON object (see `Writer.__init__`)."""
    if len(argv) != 3:
        sys.stderr.write("usage: writer.py PATH OPTIONS (started by the Flux server)\n")
        return 2
    # Ctrl-C reaches the whole process group, and a service manager's SIGTERM often does: the
    # server then shuts down cleanly, and needs its writer until it sends STOP. The writer
    # lives as long as its input: it ends on STOP, or when the server is gone.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Whatever the server had open and inheritable when it started this process (uvloop's
    # spawn closes nothing; uvicorn's listening socket is inheritable): held here, it would
    # stay open after the server closed it.
    os.closerange(3, os.sysconf("SC_OPEN_MAX"))
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not garble answers
    try:
        return Writer(argv[1], json.loads(argv[2]), out).run()
    except BrokenPipeError:
        return 1  # the server is gone


if __name__ == "__main__":
    sys.exit(main(sys.argv))
