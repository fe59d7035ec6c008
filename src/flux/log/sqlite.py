"""The embedded event log: SQLite in WAL mode with `synchronous=FULL`, one writer thread.

The writer drains everything queued since its last commit, appends it in one transaction and
commits once (group commit: one fsync for the whole group). Only then does it hand the records to
the event loop, in one callback, which passes them to `on_records` and resolves the waiting
appends. Reads (replay, history) use their own connections on a small thread pool, each query in
one read transaction (a consistent view even while the writer prunes).

Sequences are consecutive: a group is inserted with consecutive numbers and, when some of its
event ids are already stored (or repeated within the group), the transaction is redone without
them, so a rejected duplicate never uses up a number. The highest sequence ever assigned (and
its time) is kept in the `meta` table before pruning removes rows, and a floor can be set at
start (`after_seq`), so numbers never go back, even when every row was pruned or the log is
younger than the snapshot that rebuilt the state.

If the writer thread ever fails outside a transaction (a bug, memory), the log turns unavailable:
every waiting and later append fails with `LogUnavailable` instead of hanging.

Damage is never served as data (docs/architecture.md, "A damaged log"). SQLite's corruption
errors (a malformed page, a file that is not a database), rows missing inside a sequence range
that `read` walks or that `history` points at, and stored events that do not decode all raise
`LogCorrupt`; the first one is kept in `damage` (the server's health reports it). Opening
checks the cheap things (the header and schema, the page count against the file size, the
newest row against `meta`); `verify()` runs SQLite's `quick_check` over the whole file.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Any

import orjson

from flux.conditions import Check, Failure
from flux.errors import LogCorrupt, LogError, LogUnavailable
from flux.events import Event, now_us
from flux.log import Appended, Checker, Entry, OnRecords, Record

logger = logging.getLogger("flux.log")

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

# A whole group goes in with one statement, so the writer releases the GIL once for all of its
# rows (a per-row executemany re-acquires the GIL after every row and, while the event loop is
# busy, waits a switch interval each time: a convoy that cut throughput by 7x). The rows come as
# a small JSON array of [event_id, entity_id, offset, length]; the encoded events come as one
# blob that each row slices (SQLite re-rendering every event from a parsed JSON array cost
# about 7 ms per 1,000 events).
_INSERT_GROUP = (
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
# The newest events of one entity that are not in entity_history yet, newest first.
_HISTORY_TAIL = (
    "SELECT seq, entity_id, data FROM events WHERE seq >= ? AND entity_id = ? "
    "ORDER BY seq DESC LIMIT ?"
)
# A LEFT JOIN: a history row whose event is not there (a damaged page, a lost row) comes back
# with NULLs and is refused, instead of being skipped by the join.
_HISTORY_BUCKET = (
    "SELECT h.seq, e.entity_id, e.data FROM entity_history h LEFT JOIN events e ON e.seq = h.seq "
    "WHERE h.bucket = ? AND h.entity_id = ? AND h.seq >= ? ORDER BY h.seq DESC LIMIT ?"
)
# A read batch comes back as three texts: the sequences and the times as comma-separated
# numbers and the stored events joined with commas, so `[...]` around each is one JSON document
# for one orjson call. The stored JSON is passed through as it is (the old query re-parsed every
# event with SQLite's json(), the larger part of a replay's time). The aggregates of one query
# see the rows in one order, so the three line up.
_READ_BATCH = (
    "SELECT group_concat(seq), group_concat(stored_at), group_concat(data, ',') FROM "
    "(SELECT seq, stored_at, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?)"
)
_RAISE_MARKS = (
    "INSERT INTO meta(key, value) VALUES ('last_seq', ?), ('last_at', ?) "
    "ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)"
)

_STOP = object()
# An entry's event id, entity id and encoded event (`flux.log.Entry`'s fields 1, 2 and 3).
_event_id, _entity_id, _data = itemgetter(1), itemgetter(2), itemgetter(3)
_CHECKPOINT_BYTES = 4 << 20  # committed event bytes between two checkpoints
# The WAL is restarted (written again from its start) only once a checkpoint has copied every
# frame and no commit came after it; under writes without a pause that never happens on its
# own, and the WAL grew without end (measured: 977 MB after 40 s of single publishes, every
# page read searching a larger index). When a PASSIVE pass of the checkpointer finds the WAL
# past this size, it asks the writer (`_wal_full`), which runs a RESTART checkpoint itself
# after its next commit (the checkpointer cannot: waiting for the write lock, it starves behind
# a writer that takes it every millisecond). The pass has just copied most frames, so the
# pause is about one fsync of the database file. The next commit writes the WAL from its start
# and cuts the file back to this size (`journal_size_limit`). Readers still on old frames make
# a restart wait at most _RESTART_WAIT_MS; if they are not done, the next pass asks again. (The
# writer does not look at the file itself: a stat releases the GIL, and taking it back from a
# busy event loop can cost a commit up to a switch interval.)
WAL_LIMIT = 64 << 20
_RESTART_WAIT_MS = 50  # how long a restart waits for readers still on old frames
_MAX_GROUP = 20_000  # entries per transaction; more waits for the next commit
_PRUNE_CHUNK = 20_000
_LOOKUP_CHUNK = 500
# A hole the log made on purpose: when the state (a snapshot) was ahead of the log at start,
# new sequences continue above the state's, and `meta` records `gap:<last stored seq>` ->
# <the state's seq>, so that readers and `flux check` tell it from rows gone missing.
_GAP_KEY = "gap:{}"
# SQLite's primary result codes for a damaged file (the extended codes keep them in the low byte).
_SQLITE_CORRUPT = 11
_SQLITE_NOTADB = 26


class _Repeated(Exception):
    """A checked group decided as if none of its event ids were stored held one that is; its
    insert was undone whole (see `SQLiteLog._commit_checked`)."""


class Damaged(Exception):
    """Raised inside the log's reader and writer threads for damage found by Flux itself (not
    by SQLite); translated into `LogCorrupt` with the log's file name."""


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


def corrupt_error(path: str, detail: str) -> LogCorrupt:
    """The error for damage in the log at `path`. Clients read it: it names the file, not its
    directory."""
    name = os.path.basename(path)
    return LogCorrupt(
        f"event log is damaged: {detail} (in {name}); stop the server and run `flux check` "
        "on its data dir"
    )


def translate(exc: BaseException) -> LogError:
    """Map a driver error (or an unexpected one) to the Flux error tree (damage: see
    `SQLiteLog._translate`, which names the file)."""
    if isinstance(exc, LogError):
        return exc
    if is_corruption(exc):
        return LogCorrupt(f"event log is damaged: {exc}; run `flux check`")
    if isinstance(exc, sqlite3.DatabaseError):  # operational, integrity, corrupt file, full disk
        return LogUnavailable(f"event log unavailable: {exc}")
    if isinstance(exc, sqlite3.Error):
        return LogError(f"event log error: {exc}")
    return LogError(f"event log error: {exc!r}")


class _Append:
    __slots__ = ("atomic", "checked", "entries", "future", "results")

    def __init__(
        self,
        entries: Sequence[Entry],
        future: asyncio.Future[list[Appended]],
        checked: bool = False,
        atomic: bool = False,
    ) -> None:
        self.entries = entries
        self.future = future
        self.checked = checked
        self.atomic = atomic
        self.results: list[Appended] | BaseException | None = None


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future


class SQLiteLog:
    def __init__(
        self,
        path: str,
        *,
        max_page_count: int | None = None,
        bucket_bits: int = BUCKET_BITS,
        history_batch: int = HISTORY_BATCH,
        checkpoint_bytes: int = _CHECKPOINT_BYTES,
        wal_limit: int = WAL_LIMIT,
    ) -> None:
        """`max_page_count` caps the database size in pages (SQLite's pragma); tests use it to
        make the disk look full. `bucket_bits` sets the history bucket width of a new log
        (2**bits sequences; an existing log keeps its own); tests use narrow ones.
        `history_batch`: how many events the history index may lag behind before the writer
        indexes them (tests use small batches to cross the mark often). `checkpoint_bytes`:
        committed event bytes between two checkpoints; `wal_limit`: the WAL size past which
        the writer restarts it (tests use small ones)."""
        self.path = path
        self.max_page_count = max_page_count
        self.bucket_bits = bucket_bits
        self.history_batch = history_batch
        self.checkpoint_bytes = checkpoint_bytes
        self.wal_limit = wal_limit
        self._wal_full = False  # set by the checkpointer: the writer restarts the WAL
        self._checkpointing = threading.Lock()  # held by the checkpointer during a pass
        self._history_upto = 0  # the writer's copy of `meta`'s history_upto
        self._history_next = 0  # index once the log's last sequence reaches this
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_records: OnRecords | None = None
        self._checker: Checker | None = None
        # Committed groups' records not yet handed to `on_records` (the writer's, for the
        # checker), and the newest sequence `on_records` has seen (written on the loop).
        self._unapplied: collections.deque[list[Record]] = collections.deque()
        self._applied_seq = 0
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flux-log-read")
        self._local = threading.local()
        self._reader_conns: list[sqlite3.Connection] = []
        self._reader_lock = threading.Lock()
        self._next_seq = 1
        self._last_at = 0
        self._closed = False
        self._broken: LogError | None = None
        self._damage: str | None = None
        self._verifying: sqlite3.Connection | None = None
        self._known_gaps: dict[int, int] = {}  # last stored seq -> the seq after the hole - 1
        self._checkpointer: threading.Thread | None = None
        self._checkpoint_wake = threading.Event()
        self._unchecked_bytes = 0  # event bytes committed since the last checkpoint was asked

    # -- lifecycle -------------------------------------------------------------------------

    async def start(
        self, on_records: OnRecords, *, after_seq: int = 0, checker: Checker | None = None
    ) -> None:
        """Open the log. New records get sequences above every stored one and above
        `after_seq`. Raises LogUnavailable when the database cannot be opened."""
        self._loop = asyncio.get_running_loop()
        self._on_records = on_records
        self._checker = checker
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise LogUnavailable(f"event log unavailable: {exc}") from exc
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready, after_seq), name="flux-log-writer", daemon=True
        )
        self._thread.start()
        await ready
        self._checkpointer = threading.Thread(
            target=self._checkpoints, name="flux-log-checkpoint", daemon=True
        )
        self._checkpointer.start()

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        verifying = self._verifying
        if verifying is not None:
            verifying.interrupt()
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        if self._checkpointer is not None:
            self._checkpoint_wake.set()
            await asyncio.to_thread(self._checkpointer.join)
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()

    @property
    def damage(self) -> str | None:
        """Why the log is known to be damaged (the first corruption seen), or None."""
        return self._damage

    @property
    def unavailable(self) -> str | None:
        """Always None: the file is local; its failures are answered per write."""
        return None

    def _note(self, error: LogCorrupt) -> LogCorrupt:
        if self._damage is None:
            self._damage = error.message
            logger.critical("the event log %s is damaged: %s", self.path, error.message)
        return error

    def _translate(self, exc: BaseException) -> LogError:
        """`translate`, with damage named after this log's file and remembered in `damage`."""
        if isinstance(exc, LogCorrupt):
            return self._note(exc)
        if is_corruption(exc):
            return self._note(corrupt_error(self.path, str(exc)))
        return translate(exc)

    async def verify(self) -> None:
        """Check every page of the file: SQLite's `quick_check` (O(file): measured 0.27 s for a
        million events with a warm cache), on a connection and thread of its own so reads and
        writes go on meanwhile. Raises LogCorrupt (kept in `damage`) when it finds damage;
        returns quietly when the log closes meanwhile (close interrupts it)."""

        def run() -> list[str]:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout=10000")
                self._verifying = conn
                if self._closed:
                    return []
                return [str(row[0]) for row in conn.execute("PRAGMA quick_check(20)")]
            finally:
                self._verifying = None
                conn.close()

        try:
            problems = await asyncio.to_thread(run)
        except Exception as exc:
            if self._closed:
                return
            raise self._translate(exc) from exc
        if problems and problems != ["ok"]:
            detail = "; ".join(problems[:3])
            raise self._note(corrupt_error(self.path, f"SQLite's quick_check found: {detail}"))

    def _unavailable(self) -> LogError | None:
        if self._broken is not None:
            return type(self._broken)(self._broken.message)  # a fresh one per caller
        if self._closed or self._loop is None:
            return LogUnavailable("event log unavailable: the log is closed")
        return None

    # -- writing ---------------------------------------------------------------------------

    async def append(
        self, entries: Sequence[Entry], *, checked: bool = False, atomic: bool = False
    ) -> list[Appended]:
        return await self.submit(entries, checked=checked, atomic=atomic)

    def submit(
        self, entries: Sequence[Entry], *, checked: bool = False, atomic: bool = False
    ) -> asyncio.Future[list[Appended]]:
        error = self._unavailable()
        if error is not None:
            raise error
        assert self._loop is not None
        future: asyncio.Future[list[Appended]] = self._loop.create_future()
        if not entries:
            future.set_result([])
            return future
        if checked and self._checker is None:
            raise LogUnavailable("event log unavailable: conditions need a checker")
        self._queue.put(_Append(entries, future, checked, atomic))
        if self._broken is not None:  # the writer died after the check: it may not see this one
            _settle(future, None, self._unavailable())
        return future

    async def sync(self) -> int:
        """Returns the highest sequence assigned so far, once every append queued before this
        call has been committed (or has failed) and handed to `on_records`: the writer runs
        this job after the appends it took with it, and their records reach the loop before
        the job's answer does (both go through `call_soon_threadsafe`, in that order)."""
        result: int = await self._job(lambda _conn: self._next_seq - 1)
        return result

    async def _job(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        error = self._unavailable()
        if error is not None:
            raise error
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Job(fn, future))
        if self._broken is not None:
            _settle(future, None, self._unavailable())
        return await future

    def _connect(self) -> sqlite3.Connection:
        """The writer's connection. It never checkpoints: `_checkpoints` does, on its own
        connection and thread, so a commit never waits for the WAL to be copied into the
        database file and that file's fsync (measured: a quarter of the writer's time)."""
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA wal_autocheckpoint=0")
            conn.execute(f"PRAGMA journal_size_limit={int(self.wal_limit)}")
            if self.max_page_count is not None:
                conn.execute(f"PRAGMA max_page_count={int(self.max_page_count)}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _open(self, after_seq: int) -> sqlite3.Connection:
        conn = self._connect()
        try:
            conn.executescript(SCHEMA)
            self.bucket_bits = _bucket_bits(conn, self.bucket_bits)
            _migrate(conn, self.bucket_bits)
            self._history_upto = _history_mark(conn)
            row = conn.execute(
                "SELECT seq, stored_at FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            marks = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            stored_seq = int(row[0]) if row else 0
            self._known_gaps = {
                int(key[4:]): int(value)
                for key, value in marks.items()
                if key.startswith("gap:") and key[4:].isdigit()
            }
            self._check_open(conn, stored_seq, int(marks.get("last_seq", 0)))
            last_seq = max(stored_seq, int(marks.get("last_seq", 0)))
            self._last_at = max(int(row[1]) if row else 0, int(marks.get("last_at", 0)))
            if after_seq > last_seq:
                logger.warning(
                    "the event log ends at sequence %d but the state is at %d (was the log "
                    "replaced or lost?); new events get sequences from %d",
                    last_seq,
                    after_seq,
                    after_seq + 1,
                )
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(_RAISE_MARKS, (after_seq, self._last_at))
                conn.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                    (_GAP_KEY.format(stored_seq), after_seq),
                )
                conn.execute("COMMIT")
                self._known_gaps[stored_seq] = after_seq
                last_seq = after_seq
            self._next_seq = last_seq + 1
            self._index_history(conn)
        except BaseException:
            _rollback(conn)
            conn.close()
            raise
        return conn

    def _check_open(self, conn: sqlite3.Connection, stored_seq: int, marked_seq: int) -> None:
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
        if (
            stored_seq
            and marked_seq > stored_seq
            and self._known_gaps.get(stored_seq) != marked_seq
        ):
            self._note(
                corrupt_error(
                    self.path,
                    f"sequence {marked_seq} was stored but the newest row is {stored_seq}",
                )
            )

    def _run(self, ready: asyncio.Future[None], after_seq: int) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._open(after_seq)
        except Exception as exc:
            error = self._translate(exc)
            if not isinstance(error, LogCorrupt):
                logger.error("cannot open the event log %s: %s", self.path, exc)
            self._broken = error
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        taken: list[Any] = []
        try:
            self._serve(conn, loop, taken)
        except BaseException as exc:
            error = LogUnavailable(f"event log unavailable: the log writer failed: {exc!r}")
            self._broken = error
            logger.critical("the event log writer failed; no more writes", exc_info=True)
            _rollback(conn)
            self._fail(loop, taken, error)
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    def _fail(self, loop: asyncio.AbstractEventLoop, taken: list[Any], error: LogError) -> None:
        """After the writer died: fail what it held and whatever is still queued."""
        pending = list(taken)
        while True:
            try:
                pending.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for item in pending:
            if isinstance(item, _Append | _Job):
                with contextlib.suppress(RuntimeError):  # the loop may be closed already
                    loop.call_soon_threadsafe(_settle, item.future, None, error)

    def _serve(
        self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop, taken: list[Any]
    ) -> None:
        stop = False
        while not stop:
            taken.clear()
            first = self._queue.get()
            taken.append(first)
            count = len(first.entries) if isinstance(first, _Append) else 0
            while count < _MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                taken.append(item)
                if isinstance(item, _Append):
                    count += len(item.entries)
            appends = [i for i in taken if isinstance(i, _Append)]
            jobs = [i for i in taken if isinstance(i, _Job)]
            stop = any(i is _STOP for i in taken)
            if appends:
                if any(a.checked for a in appends):
                    records = self._commit_checked(conn, appends)
                else:
                    records = self._commit(conn, appends)
                if records:
                    self._unapplied.append(records)
                    self._forget_applied()
                loop.call_soon_threadsafe(self._deliver, appends, records)
                if self._next_seq > self._history_next:
                    self._index_history(conn)
                if self._wal_full and self._checkpointing.acquire(blocking=False):
                    try:
                        self._restart_wal(conn)
                    finally:
                        self._checkpointing.release()
            for job in jobs:
                try:
                    result = job.fn(conn)
                except Exception as exc:  # a job's own failure must not kill the writer
                    _rollback(conn)
                    loop.call_soon_threadsafe(_settle, job.future, None, self._translate(exc))
                else:
                    loop.call_soon_threadsafe(_settle, job.future, result, None)
        taken.clear()

    def _commit(self, conn: sqlite3.Connection, appends: list[_Append]) -> list[Record]:
        """Append every entry of the group in one transaction; set each append's results.
        Returns the new records (none when the transaction failed)."""
        at = max(now_us(), self._last_at)
        first = self._next_seq
        try:
            entries = [entry for append in appends for entry in append.entries]
            outcome, count = self._insert(conn, entries, first, at)
        except Exception as exc:
            _rollback(conn)
            error = self._translate(exc)
            logger.error(
                "append of %d events failed: %s", sum(len(a.entries) for a in appends), exc
            )
            for append in appends:
                append.results = error
            return []
        self._next_seq = first + count
        self._last_at = at
        self._count_for_checkpoint(entries)
        if outcome is None:
            return _results_in_order(appends, first, at)
        records: list[Record] = []
        index = 0
        for append in appends:
            results = []
            for entry in append.entries:
                done = outcome[index]
                results.append(done)
                if not done.duplicate:
                    records.append(Record(done.seq, at, entry.event))
                index += 1
            append.results = results
        return records

    def _insert(
        self,
        conn: sqlite3.Connection,
        entries: list[Entry],
        first: int,
        at: int,
        fresh_only: bool = False,
    ) -> tuple[list[Appended] | None, int]:
        """Store `entries` from sequence `first` in one transaction; returns (None, count) when
        every entry was new, else (each entry's result, how many were new). `fresh_only`:
        raise `_Repeated`, storing nothing, when an id is stored already or repeats."""
        if not entries:
            return None, 0
        rows, blob = _group_params(entries)
        try:
            # Outside BEGIN ... COMMIT: the statement is its own transaction, so the whole
            # commit (rows, history rows by trigger, fsync) is one call that releases the GIL
            # once; each further call would wait up to a switch interval to take the GIL back
            # from a busy event loop.
            conn.execute(_INSERT_GROUP, (first, at, rows, blob))
        except sqlite3.IntegrityError:
            # Some ids are stored already or repeat within the group (the statement was undone
            # whole): redo without them, so the new events keep consecutive sequences.
            if fresh_only:
                raise _Repeated from None
            return self._insert_new(conn, entries, first, at)
        return None, len(entries)

    def _insert_new(
        self, conn: sqlite3.Connection, entries: list[Entry], first: int, at: int
    ) -> tuple[list[Appended], int]:
        """Insert the entries whose event ids are not stored yet (nor earlier in `entries`), in
        one transaction; returns every entry's result and how many were new."""
        conn.execute("BEGIN IMMEDIATE")
        known = _lookup(conn, list({entry.event_id for entry in entries}))
        outcome: list[Appended] = []
        fresh: list[Entry] = []
        seq = first
        for entry in entries:
            stored = known.get(entry.event_id)
            if stored is not None:
                outcome.append(Appended(stored[0], stored[1], True))
                continue
            known[entry.event_id] = (seq, at)
            outcome.append(Appended(seq, at, False))
            fresh.append(entry)
            seq += 1
        rows, blob = _group_params(fresh)
        conn.execute(_INSERT_GROUP, (first, at, rows, blob))
        conn.execute("COMMIT")
        return outcome, len(fresh)

    def _index_history(self, conn: sqlite3.Connection) -> None:
        """Write the history rows of every event above the mark, and move the mark, in one
        transaction. A failure (a full disk) leaves the mark where it was: history reads cover
        the events above it from the events table, and the next try is a batch later."""
        last = self._next_seq - 1
        self._history_next = last + self.history_batch + 1
        if last <= self._history_upto:
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_INDEX_HISTORY, (self._history_upto, last, self.bucket_bits))
            conn.execute(_HISTORY_MARK, (last,))
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            logger.warning(
                "indexing the history of events %d-%d failed: %s", self._history_upto + 1, last, exc
            )
            return
        self._history_upto = last

    def _restart_wal(self, conn: sqlite3.Connection) -> None:
        """On the writer, between commits: copy the rest of the WAL into the database and
        restart it (see WAL_LIMIT)."""
        self._wal_full = False
        try:
            conn.execute(f"PRAGMA busy_timeout={_RESTART_WAIT_MS}")
            try:
                conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchall()
            finally:
                conn.execute("PRAGMA busy_timeout=10000")
        except sqlite3.Error as exc:
            logger.warning("restarting the event log's WAL failed: %s", exc)

    def _count_for_checkpoint(self, entries: list[Entry]) -> None:
        """Wake the checkpointer once `checkpoint_bytes` more have been committed."""
        self._unchecked_bytes += sum(map(len, map(_data, entries)))
        if self._unchecked_bytes >= self.checkpoint_bytes:
            self._unchecked_bytes = 0
            self._checkpoint_wake.set()

    def _forget_applied(self) -> None:
        """Drop the committed groups `on_records` has seen (`_applied_seq`, set on the loop)."""
        unapplied = self._unapplied
        applied = self._applied_seq
        while unapplied and unapplied[0][-1].seq <= applied:
            unapplied.popleft()

    def _commit_checked(self, conn: sqlite3.Connection, appends: list[_Append]) -> list[Record]:
        """A group with checked appends. Their entries go first, each decided by the checker
        on this thread, against the state `on_records` has built plus the committed records it
        has not seen yet (`_unapplied`: the checker counts them as applied), then the plain
        appends' entries, all in one transaction. Checked appends were concurrent with the
        plain ones of the group (neither was answered), so storing them first is an order the
        clients may see. Duplicates of stored events are answered as duplicates, never
        checked: the group is first decided as if none of its ids were stored (the common
        case: most ids are drawn by the server), and when the insert finds one that is, it is
        undone whole and the group decided again with the stored ones looked up. Looking them
        up first cost a statement per group, more than the insert itself under load."""
        try:
            return self._decide_checked(conn, appends, None)
        except _Repeated:
            pass
        checked = [a for a in appends if a.checked]
        try:
            known = _lookup(conn, list({e.event_id for a in checked for e in a.entries}))
        except Exception as exc:
            error = self._translate(exc)
            for append in appends:
                append.results = error
            return []
        return self._decide_checked(conn, appends, known)

    def _decide_checked(
        self,
        conn: sqlite3.Connection,
        appends: list[_Append],
        known: dict[str, tuple[int, int]] | None,
    ) -> list[Record]:
        """`_commit_checked` with the stored events among the checked entries' ids in `known`;
        None: assume there are none, and raise `_Repeated` (nothing stored) if the insert finds
        a stored id."""
        checked = [a for a in appends if a.checked]
        plain = [a for a in appends if not a.checked]
        if known is None:
            known = {}
            fresh_only = True
        else:
            fresh_only = False
        # Per checked append: for each entry, the (seq, at) of the stored event it repeats, or
        # the index of the earlier entry of this group it repeats, or None (to be checked).
        repeats: list[list[tuple[int, int] | int | None]] = []
        first_index: dict[str, int] = {}
        groups: list[tuple[list[tuple[Event, Check | None]], bool]] = []
        position = 0
        for append in checked:
            marks: list[tuple[int, int] | int | None] = []
            asked: list[tuple[Event, Check | None]] = []
            for entry in append.entries:
                stored = known.get(entry.event_id)
                if stored is not None:
                    marks.append(stored)
                elif entry.event_id in first_index:
                    marks.append(first_index[entry.event_id])
                else:
                    first_index[entry.event_id] = position
                    marks.append(None)
                    asked.append((entry.event, entry.check))
                position += 1
            repeats.append(marks)
            groups.append((asked, append.atomic))
        first = self._next_seq
        # The group's log time, taken before the conditions are decided and given to the
        # checker as its clock: a write a lease allows is stored with a time the lease covers.
        at = max(now_us(), self._last_at)
        checker = self._checker
        assert checker is not None
        self._forget_applied()
        unapplied = [record for records in self._unapplied for record in records]
        try:
            verdicts = checker(groups, first, unapplied, at // 1000)
        except Exception as exc:
            logger.exception("deciding the conditions of %d appends failed", len(checked))
            error: LogError = LogUnavailable(
                f"event log unavailable: conditions not decided: {exc!r}"
            )
            for append in appends:
                append.results = error
            return []
        # The entries to store: the checked ones that passed (as the checker rewrote them),
        # in order, then every plain entry.
        stored_entries: list[Entry] = []
        refused: list[str] = []  # the ids of entries that failed their condition
        for marks, asked_verdicts, append in zip(repeats, verdicts, checked, strict=True):
            it = iter(asked_verdicts)
            for mark, entry in zip(marks, append.entries, strict=True):
                if mark is not None:
                    continue
                verdict = next(it)
                if isinstance(verdict, Failure):
                    refused.append(entry.event_id)
                    continue
                if verdict.event is not None:
                    event = verdict.event
                    entry = Entry(event, entry.event_id, entry.entity_id, orjson.dumps(event))
                stored_entries.append(entry)
        if fresh_only and refused:
            # A refused entry is not inserted, so the insert cannot tell whether it repeats a
            # stored event (a retried write whose condition no longer holds: a duplicate, not
            # a conflict). Rare: only when a condition fails.
            try:
                repeated = bool(_lookup(conn, refused))
            except Exception as exc:
                error = self._translate(exc)
                for append in appends:
                    append.results = error
                return []
            if repeated:
                raise _Repeated
        n_checked = len(stored_entries)
        for append in plain:
            stored_entries.extend(append.entries)
        try:
            outcome, count = self._insert(conn, stored_entries, first, at, fresh_only)
        except _Repeated:
            raise
        except Exception as exc:
            _rollback(conn)
            error = self._translate(exc)
            logger.error("append of %d events failed: %s", len(stored_entries), exc)
            for append in appends:
                append.results = error
            return []
        self._next_seq = first + count
        self._last_at = at
        self._count_for_checkpoint(stored_entries)
        if outcome is None:
            outcome = [Appended(first + i, at, False) for i in range(count)]
        records: list[Record] = []
        for done, entry in zip(outcome, stored_entries, strict=True):
            if not done.duplicate:
                records.append(Record(done.seq, at, entry.event))
        # Each append's results, entry by entry.
        slot = 0
        flat: list[Appended] = []
        for marks, asked_verdicts, append in zip(repeats, verdicts, checked, strict=True):
            it = iter(asked_verdicts)
            results: list[Appended] = []
            for mark in marks:
                if mark is None:
                    verdict = next(it)
                    if isinstance(verdict, Failure):
                        results.append(Appended(0, at, False, verdict))
                    else:
                        results.append(outcome[slot])
                        slot += 1
                elif isinstance(mark, int):
                    earlier = flat[mark]
                    results.append(
                        Appended(earlier.seq, earlier.at, True, earlier.failure)
                        if earlier.failure is None
                        else earlier
                    )
                else:
                    results.append(Appended(mark[0], mark[1], True))
                flat.append(results[-1])
            append.results = results
        assert slot == n_checked
        for append in plain:
            append.results = outcome[slot : slot + len(append.entries)]
            slot += len(append.entries)
        return records

    def _deliver(self, appends: list[_Append], records: list[Record]) -> None:
        """On the loop: hand the committed records on, then wake the appenders."""
        if records and self._on_records is not None:
            try:
                self._on_records(records)
            except Exception:  # the log stays correct; state is the caller's to fix
                logger.exception("applying %d committed records failed", len(records))
            self._applied_seq = records[-1].seq
        for append in appends:
            results = append.results
            if isinstance(results, BaseException):
                _settle(append.future, None, results)
            else:
                _settle(append.future, results, None)

    def _checkpoints(self) -> None:
        """The checkpointer thread: copy the WAL into the database (PASSIVE: it never blocks
        the writer or readers) each time the writer has committed `checkpoint_bytes` more,
        and once more at close; past `wal_limit`, it asks the writer to restart the WAL (see
        WAL_LIMIT). A failed checkpoint is logged and retried on the next wake; commits stay
        durable in the WAL meanwhile."""
        conn: sqlite3.Connection | None = None
        while True:
            self._checkpoint_wake.wait()
            self._checkpoint_wake.clear()
            if self._closed and self._thread is not None and self._thread.is_alive():
                continue  # close() wakes this thread again once the writer has stopped
            try:
                if conn is None:
                    conn = sqlite3.connect(self.path, isolation_level=None)
                    conn.execute("PRAGMA synchronous=FULL")
                    conn.execute("PRAGMA busy_timeout=10000")
                    page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
                with self._checkpointing:
                    frames = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
                if frames * page_size > self.wal_limit:
                    self._wal_full = True
            except sqlite3.Error as exc:
                logger.warning("checkpoint of the event log failed: %s", exc)
            if self._closed:
                break
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.close()

    # -- reading ---------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            with self._reader_lock:
                self._reader_conns.append(conn)
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run `fn` on a reader connection inside one read transaction."""
        if self._closed:
            raise LogUnavailable("event log unavailable: the log is closed")
        loop = asyncio.get_running_loop()

        def call() -> Any:
            conn = None
            try:
                conn = self._reader()
                conn.execute("BEGIN")
                try:
                    return fn(conn)
                finally:
                    conn.execute("COMMIT")
            except Exception as exc:  # driver errors, and stored data that does not decode
                if conn is not None:
                    _rollback(conn)
                raise self._translate(exc) from exc

        try:
            return await loop.run_in_executor(self._readers, call)
        except RuntimeError as exc:  # the pool shut down: the log was closed meanwhile
            if self._closed:
                raise LogUnavailable("event log unavailable: the log is closed") from exc
            raise

    async def read(self, after_seq: int, batch_size: int = 10_000) -> AsyncIterator[list[Record]]:
        """Committed records above `after_seq`, in batches. The next batch is fetched (in a
        reader thread) while the caller works on the current one, so a replay's decoding and
        its applying overlap instead of taking turns."""

        def fetch(conn: sqlite3.Connection, *, after: int) -> list[Record]:
            return fetch_batch(conn, after, batch_size, self._known_gaps)

        pending = asyncio.ensure_future(self._read(functools.partial(fetch, after=after_seq)))
        try:
            while True:
                batch: list[Record] = await pending
                if not batch:
                    return
                full = len(batch) >= batch_size
                if full:
                    after = batch[-1].seq
                    pending = asyncio.ensure_future(
                        self._read(functools.partial(fetch, after=after))
                    )
                yield batch
                if not full:
                    return
        finally:
            _discard(pending)

    async def first_seq(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            low = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            return int(low) if low is not None else _last_seq(conn) + 1

        result: int = await self._read(query)
        return result

    async def last_seq(self) -> int:
        result: int = await self._read(_last_seq)
        return result

    async def history(
        self, entity_id: str, since_us: int, limit: int, after_seq: int = 0
    ) -> list[bytes]:
        def query(conn: sqlite3.Connection) -> list[bytes]:
            bound = _first_seq_at_or_after(conn, since_us)
            if bound is None:
                return []
            high = int(conn.execute("SELECT MAX(seq) FROM events").fetchone()[0])
            if after_seq >= high:
                return []
            bound = max(bound, after_seq + 1)
            mark = conn.execute("SELECT value FROM meta WHERE key = 'history_upto'").fetchone()
            upto = int(mark[0]) if mark else high
            tail = conn.execute(_HISTORY_TAIL, (max(bound, upto + 1), entity_id, limit))
            found: list[bytes] = _checked_history(entity_id, tail.fetchall())
            bits = self.bucket_bits
            bucket = min(high, upto) >> bits
            while bucket >= bound >> bits and len(found) < limit:
                rows = conn.execute(
                    _HISTORY_BUCKET, (bucket, entity_id, bound, limit - len(found))
                ).fetchall()
                found.extend(_checked_history(entity_id, rows))
                bucket -= 1
            return found

        result: list[bytes] = await self._read(query)
        return result

    # -- retention -------------------------------------------------------------------------

    async def prune(self, upto_seq: int, before_us: int | None, keep_events: int | None) -> int:
        if before_us is None and keep_events is None:
            return 0

        def limit(conn: sqlite3.Connection) -> int | None:
            """The highest sequence to remove, or None when nothing goes."""
            lowest = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if lowest is None:
                return None
            limits = []
            if before_us is not None:
                first_kept = _first_seq_at_or_after(conn, before_us)
                limits.append(first_kept - 1 if first_kept is not None else upto_seq)
            if keep_events is not None:
                row = conn.execute(
                    "SELECT seq FROM events ORDER BY seq DESC LIMIT 1 OFFSET ?", (keep_events,)
                ).fetchone()
                limits.append(int(row[0]) if row is not None else lowest - 1)
            bound = min(upto_seq, max(limits))
            return bound if bound >= lowest else None

        bound: int | None = await self._read(limit)
        if bound is None:
            return 0

        def work(conn: sqlite3.Connection) -> tuple[int, bool]:
            lowest = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if lowest is None or bound < lowest:
                return 0, False
            chunk_end = min(bound, lowest + _PRUNE_CHUNK - 1)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_RAISE_MARKS, (self._next_seq - 1, self._last_at))
            cursor = conn.execute("DELETE FROM events WHERE seq <= ?", (chunk_end,))
            removed = cursor.rowcount
            last_bucket = chunk_end >> self.bucket_bits
            conn.execute("DELETE FROM entity_history WHERE bucket < ?", (last_bucket,))
            conn.execute(
                "DELETE FROM entity_history WHERE bucket = ? AND seq <= ?",
                (last_bucket, chunk_end),
            )
            conn.execute("COMMIT")
            return removed, chunk_end < bound

        total = 0
        while True:
            step: tuple[int, bool] = await self._job(work)
            removed, more = step
            total += removed
            if not more:
                return total


def _last_seq(conn: sqlite3.Connection) -> int:
    high = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
    mark = conn.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
    return max(int(high or 0), int(mark[0]) if mark else 0)


def _group_params(entries: Sequence[Entry]) -> tuple[bytes, bytes]:
    """A group's rows as one JSON array of [event_id, entity_id, offset, length] (1-based byte
    offsets, as SQLite's substr counts them in a blob), and its encoded events as one blob.
    Built with C calls over the whole group: the writer thread holds the GIL for this, so a
    Python step per entry here is also time taken from the event loop."""
    datas = list(map(_data, entries))
    sizes = list(map(len, datas))
    offsets = accumulate(sizes, initial=1)  # one more than the rows: zip stops at the last row
    rows = zip(map(_event_id, entries), map(_entity_id, entries), offsets, sizes, strict=False)
    return orjson.dumps(list(rows)), b"".join(datas)


def _results_in_order(appends: list[_Append], first: int, at: int) -> list[Record]:
    """Set each append's results and return the group's records when every entry was new (the
    common case). Built with C-level tuple construction: this runs on the writer thread, which
    holds the GIL for it, so every microsecond here is also taken from the event loop."""
    new = functools.partial(tuple.__new__, Appended)
    new_record = functools.partial(tuple.__new__, Record)
    records: list[Record] = []
    seq = first
    for append in appends:
        end = seq + len(append.entries)
        append.results = list(
            map(new, zip(range(seq, end), repeat(at), repeat(False), repeat(None)))
        )
        events = [entry.event for entry in append.entries]
        records.extend(map(new_record, zip(range(seq, end), repeat(at), events)))
        seq = end
    return records


def _bucket_bits(conn: sqlite3.Connection, wanted: int) -> int:
    """The history bucket width of this log: the recorded one, else `wanted` (recorded now)."""
    row = conn.execute("SELECT value FROM meta WHERE key = 'history_bucket_bits'").fetchone()
    if row is not None:
        return int(row[0])
    conn.execute("INSERT INTO meta(key, value) VALUES ('history_bucket_bits', ?)", (wanted,))
    return wanted


def _history_mark(conn: sqlite3.Connection) -> int:
    """`meta`'s history_upto, set on a log that has none. Flux wrote history rows by trigger
    before the mark existed, so such a log is indexed up to its newest event; the trigger is
    dropped (also when an older Flux re-created it: its rows are then ignored when indexed)."""
    conn.execute("BEGIN IMMEDIATE")
    row = conn.execute("SELECT value FROM meta WHERE key = 'history_upto'").fetchone()
    if row is None:
        high = conn.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        row = (int(high or 0),)
        conn.execute(_HISTORY_MARK, row)
    conn.execute(f"DROP TRIGGER IF EXISTS {_OLD_HISTORY_TRIGGER}")
    conn.execute("COMMIT")
    return int(row[0])


def _migrate(conn: sqlite3.Connection, bits: int) -> None:
    """Move a log from the old layout (an `(entity_id, seq)` index over `events`) to the
    bucketed `entity_history` table, in one transaction. Also repairs a log that an older Flux
    wrote to after a newer one (it re-creates the old index): the history is rebuilt whole."""
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", (_OLD_ENTITY_INDEX,)
    ).fetchone()
    if exists is None:
        return
    logger.info("migrating the event log's entity index to the bucketed layout")
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("DELETE FROM entity_history")
    conn.execute(
        "INSERT INTO entity_history(bucket, entity_id, seq) "
        "SELECT seq >> ?, entity_id, seq FROM events WHERE entity_id IS NOT NULL ORDER BY seq",
        (bits,),
    )
    conn.execute(f"DROP INDEX {_OLD_ENTITY_INDEX}")
    conn.execute("COMMIT")


def _lookup(conn: sqlite3.Connection, event_ids: list[str]) -> dict[str, tuple[int, int]]:
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


def _first_seq_at_or_after(conn: sqlite3.Connection, at_us: int) -> int | None:
    """The lowest sequence logged at or after `at_us`, by bisection over the sequence (stored_at
    never decreases with seq; sequences may have gaps). Call it inside a read transaction."""

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


def fetch_batch(
    conn: sqlite3.Connection, after: int, limit: int, gaps: dict[int, int]
) -> list[Record]:
    """Up to `limit` records above `after`, in order; one statement (one GIL release for the
    batch) and three orjson calls. Raises Damaged when stored data does not decode or rows are
    missing inside the range (see `_check_sequence`); checking costs O(1) per batch when the
    sequences run on from `after` without a hole, as they do but at the log's start."""
    seqs_text, ats_text, data = conn.execute(_READ_BATCH, (after, limit)).fetchone()
    if seqs_text is None:
        return []
    try:
        seqs = orjson.loads(f"[{seqs_text}]")
        ats = orjson.loads(f"[{ats_text}]")
        events = orjson.loads(f"[{data}]")
    except orjson.JSONDecodeError as exc:
        raise Damaged(f"stored events after sequence {after} do not decode: {exc}") from None
    if not len(seqs) == len(ats) == len(events):
        raise Damaged(f"stored events after sequence {after} do not decode one by one")
    rows = list(zip(seqs, ats, events, strict=True))
    if seqs != sorted(seqs):  # SQLite keeps the order; make sure of it (one C pass when sorted)
        raise Damaged(f"stored sequences after {after} are out of order")
    if seqs[0] != after + 1 or seqs[-1] - seqs[0] != len(seqs) - 1:
        _check_sequence(conn, after, seqs, gaps)
    return list(map(functools.partial(tuple.__new__, Record), rows))


def _check_sequence(
    conn: sqlite3.Connection, after: int, seqs: list[int], gaps: dict[int, int]
) -> None:
    """Raise Damaged unless every jump in `seqs` (read in order above `after`) is one the log
    made: the log starting above `after` (retention removed a prefix: no row below the jump),
    or a hole recorded in `meta` (`_GAP_KEY`). Sequences are otherwise consecutive: a group
    takes consecutive numbers, a duplicate takes none, and retention removes only a prefix."""
    lowest: int | None = None
    prev = after
    for seq in seqs:
        if seq == prev + 1:
            prev = seq
            continue
        if seq <= prev:
            raise Damaged(f"sequence {seq} is stored twice or out of order")
        if prev == after:
            if lowest is None:
                lowest = int(conn.execute("SELECT MIN(seq) FROM events").fetchone()[0])
            if lowest == seq:
                prev = seq
                continue
        if not any(start <= prev and end == seq - 1 for start, end in gaps.items()):
            raise Damaged(f"sequences {prev + 1}..{seq - 1} are missing from the log")
        prev = seq


def _checked_history(entity_id: str, rows: list[tuple[Any, ...]]) -> list[bytes]:
    """A history query's events, checked: each history row's event must be in the log, be the
    entity's and decode (a few microseconds per event; at most 500 per query)."""
    found = []
    for seq, owner, data in rows:
        if data is None:
            raise Damaged(f"event {seq} is in the entity history but missing from the log")
        if owner != entity_id:
            raise Damaged(f"event {seq} in the history of {entity_id!r} belongs to another")
        raw = _as_bytes(data)
        try:
            orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise Damaged(f"stored event {seq} does not decode") from None
        found.append(raw)
    return found


def _discard(pending: asyncio.Future[Any]) -> None:
    """Drop a prefetch nobody will read: cancel it, or retrieve its error so that asyncio does
    not report it as never retrieved."""
    if not pending.done():
        pending.cancel()
    elif not pending.cancelled():
        pending.exception()


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode() if isinstance(data, str) else bytes(data)


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
    except sqlite3.Error:
        logger.exception("rollback failed")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
