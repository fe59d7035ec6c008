"""The embedded event log: SQLite in WAL mode with `synchronous=FULL`, one writer thread.

The writer drains everything queued since its last commit, appends it in one transaction and
commits once (group commit: one fsync for the whole group). Only then does it hand the records to
the event loop, in one callback, which passes them to `on_records` and resolves the waiting
appends. Reads (replay, history) use their own connections on a small thread pool.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson

from flux.errors import LogError, LogUnavailable
from flux.events import now_us
from flux.log import Appended, Entry, OnRecords, Record

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
CREATE INDEX IF NOT EXISTS events_entity ON events(entity_id, seq) WHERE entity_id IS NOT NULL;
"""

_STOP = object()
_MAX_GROUP = 20_000  # entries per transaction; more waits for the next commit
_PRUNE_CHUNK = 20_000


def translate(exc: sqlite3.Error) -> LogError:
    """Map a driver error to the Flux error tree."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError):
        return LogUnavailable(f"event log unavailable: {text}")
    return LogError(f"event log error: {text}")


class _Append:
    __slots__ = ("entries", "future", "results")

    def __init__(self, entries: Sequence[Entry], future: asyncio.Future[list[Appended]]) -> None:
        self.entries = entries
        self.future = future
        self.results: list[Appended] | BaseException | None = None


class _Job:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], future: asyncio.Future[Any]):
        self.fn = fn
        self.future = future


class SQLiteLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_records: OnRecords | None = None
        self._readers = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flux-log-read")
        self._local = threading.local()
        self._next_seq = 1
        self._last_at = 0
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, on_records: OnRecords) -> None:
        self._loop = asyncio.get_running_loop()
        self._on_records = on_records
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(
            target=self._run, args=(ready,), name="flux-log-writer", daemon=True
        )
        self._thread.start()
        await ready

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join)
        self._readers.shutdown(wait=True)

    # -- writing ---------------------------------------------------------------------------

    async def append(self, entries: Sequence[Entry]) -> list[Appended]:
        if self._closed or self._loop is None:
            raise LogUnavailable("event log unavailable: the log is closed")
        if not entries:
            return []
        future: asyncio.Future[list[Appended]] = self._loop.create_future()
        self._queue.put(_Append(entries, future))
        return await future

    async def _job(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        if self._closed or self._loop is None:
            raise LogUnavailable("event log unavailable: the log is closed")
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue.put(_Job(fn, future))
        return await future

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=10000")
        return conn

    def _run(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT MAX(seq), MAX(stored_at) FROM events").fetchone()
            self._next_seq = (row[0] or 0) + 1
            self._last_at = row[1] or 0
        except sqlite3.Error as exc:
            error = translate(exc)
            loop.call_soon_threadsafe(_settle, ready, None, error)
            return
        loop.call_soon_threadsafe(_settle, ready, None, None)
        try:
            self._serve(conn, loop)
        finally:
            conn.close()

    def _serve(self, conn: sqlite3.Connection, loop: asyncio.AbstractEventLoop) -> None:
        stop = False
        while not stop:
            items = [self._queue.get()]
            count = 0
            while count < _MAX_GROUP:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                if isinstance(item, _Append):
                    count += len(item.entries)
            appends = [i for i in items if isinstance(i, _Append)]
            jobs = [i for i in items if isinstance(i, _Job)]
            stop = any(i is _STOP for i in items)
            if appends:
                records = self._commit(conn, appends)
                loop.call_soon_threadsafe(self._deliver, appends, records)
            for job in jobs:
                try:
                    result = job.fn(conn)
                except sqlite3.Error as exc:
                    _rollback(conn)
                    loop.call_soon_threadsafe(_settle, job.future, None, translate(exc))
                except Exception as exc:  # a job's own bug must not kill the writer
                    _rollback(conn)
                    loop.call_soon_threadsafe(_settle, job.future, None, exc)
                else:
                    loop.call_soon_threadsafe(_settle, job.future, result, None)

    def _commit(self, conn: sqlite3.Connection, appends: list[_Append]) -> list[Record]:
        """Append every entry of the group in one transaction; set each append's results."""
        at = max(now_us(), self._last_at)
        first = self._next_seq
        rows = []
        seq = first
        for append in appends:
            for entry in append.entries:
                rows.append((seq, entry.event_id, entry.entity_id, at, entry.data))
                seq += 1
        try:
            conn.execute("BEGIN IMMEDIATE")
            before = conn.total_changes
            conn.executemany(
                "INSERT OR IGNORE INTO events(seq, event_id, entity_id, stored_at, data) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
            inserted = conn.total_changes - before
            known: dict[str, tuple[int, int]] = {}
            present: set[int] | None = None
            if inserted != len(rows):
                present = {
                    r[0]
                    for r in conn.execute(
                        "SELECT seq FROM events WHERE seq BETWEEN ? AND ?", (first, seq - 1)
                    )
                }
                missing = [r[1] for r in rows if r[0] not in present]
                for i in range(0, len(missing), 500):
                    part = missing[i : i + 500]
                    marks = ",".join("?" * len(part))
                    for event_id, old_seq, old_at in conn.execute(
                        f"SELECT event_id, seq, stored_at FROM events WHERE event_id IN ({marks})",
                        part,
                    ):
                        known[event_id] = (old_seq, old_at)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn)
            error = translate(exc)
            logger.error("append of %d events failed: %s", len(rows), exc)
            for append in appends:
                append.results = error
            return []
        self._next_seq = seq
        self._last_at = at
        records: list[Record] = []
        seq = first
        for append in appends:
            results = []
            for entry in append.entries:
                if present is None or seq in present:
                    results.append(Appended(seq, at, False))
                    records.append(Record(seq, at, entry.event))
                else:
                    old_seq, old_at = known[entry.event_id]
                    results.append(Appended(old_seq, old_at, True))
                seq += 1
            append.results = results
        return records

    def _deliver(self, appends: list[_Append], records: list[Record]) -> None:
        """On the loop: hand the committed records on, then wake the appenders."""
        if records and self._on_records is not None:
            try:
                self._on_records(records)
            except Exception:  # the log stays correct; state is the caller's to fix
                logger.exception("applying %d committed records failed", len(records))
        for append in appends:
            results = append.results
            if isinstance(results, BaseException):
                _settle(append.future, None, results)
            else:
                _settle(append.future, results, None)

    # -- reading ---------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")
            conn.execute("PRAGMA busy_timeout=10000")
            self._local.conn = conn
        return conn

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        loop = asyncio.get_running_loop()

        def call() -> Any:
            try:
                return fn(self._reader())
            except sqlite3.Error as exc:
                raise translate(exc) from exc

        return await loop.run_in_executor(self._readers, call)

    async def read(self, after_seq: int, batch_size: int = 10_000) -> AsyncIterator[list[Record]]:
        def fetch(conn: sqlite3.Connection, *, after: int) -> list[Record]:
            loads = orjson.loads
            return [
                Record(seq, at, loads(data))
                for seq, at, data in conn.execute(
                    "SELECT seq, stored_at, data FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                    (after, batch_size),
                )
            ]

        after = after_seq
        while True:
            batch: list[Record] = await self._read(functools.partial(fetch, after=after))
            if not batch:
                return
            yield batch
            after = batch[-1].seq
            if len(batch) < batch_size:
                return

    async def first_seq(self) -> int:
        def query(conn: sqlite3.Connection) -> int:
            row = conn.execute("SELECT MIN(seq), MAX(seq) FROM events").fetchone()
            return int(row[0]) if row[0] is not None else int(row[1] or 0) + 1

        result: int = await self._read(query)
        return result

    async def last_seq(self) -> int:
        result: int = await self._read(
            lambda conn: int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])
        )
        return result

    async def history(self, entity_id: str, since_us: int, limit: int) -> list[bytes]:
        def query(conn: sqlite3.Connection) -> list[bytes]:
            bound = _first_seq_at_or_after(conn, since_us)
            if bound is None:
                return []
            return [
                bytes(row[0])
                for row in conn.execute(
                    "SELECT data FROM events WHERE entity_id = ? AND seq >= ? "
                    "ORDER BY seq DESC LIMIT ?",
                    (entity_id, bound, limit),
                )
            ]

        result: list[bytes] = await self._read(query)
        return result

    # -- retention -------------------------------------------------------------------------

    async def prune(self, upto_seq: int, before_us: int | None, keep_events: int | None) -> int:
        def work(conn: sqlite3.Connection) -> tuple[int, bool]:
            bound = upto_seq
            limits = []
            if before_us is not None:
                first_kept = _first_seq_at_or_after(conn, before_us)
                limits.append(first_kept - 1 if first_kept is not None else bound)
            if keep_events is not None:
                limits.append(self._next_seq - 1 - keep_events)
            if not limits:
                return 0, False
            bound = min(bound, max(limits))
            lowest = conn.execute("SELECT MIN(seq) FROM events").fetchone()[0]
            if lowest is None or bound < lowest:
                return 0, False
            chunk_end = min(bound, lowest + _PRUNE_CHUNK - 1)
            conn.execute("BEGIN IMMEDIATE")
            cursor = conn.execute("DELETE FROM events WHERE seq <= ?", (chunk_end,))
            conn.execute("COMMIT")
            return cursor.rowcount, chunk_end < bound

        total = 0
        while True:
            step: tuple[int, bool] = await self._job(work)
            removed, more = step
            total += removed
            if not more:
                return total


def _first_seq_at_or_after(conn: sqlite3.Connection, at_us: int) -> int | None:
    """The lowest sequence logged at or after `at_us`, by bisection over the sequence (stored_at
    never decreases with seq; sequences may have gaps)."""

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
