"""`flux serve` with its log's storage replaced, to bound what another storage engine could give.

Not Flux: a measuring aid for bench/run's `--peers bound`. Everything but the SQLite statement is
Flux as it is (HTTP, the hot path, the writer thread and its group commit, applying the state,
the answers); the statement that stores a group is replaced by

- `BENCH_STORAGE=none`: nothing (no write, no fsync): the most any storage engine could give;
- `BENCH_STORAGE=file`: one `write` of the group's encoded events to a flat file and one
  `fdatasync`: the core of an append-only segment log, without the event-id index, recovery
  or framing a real one needs.
- `BENCH_STORAGE=process`: the log's statement run by a child process with its own SQLite
  connection (`synchronous=FULL`, the same statement, fsync before the answer): `submit`
  queues the append, one callback per pass sends the pass's group down a pipe, and the child
  commits what it has read in one transaction and answers a byte per group, which the loop
  reads (`add_reader`). No second thread takes the GIL; the events are stored, but with none
  of the log's recovery, jobs or condition checks.
- `BENCH_STORAGE=inline`: no log thread in the path at all. `submit` queues the append on the
  event loop, and one callback per pass "commits" the pass's appends (sequences, results,
  records: what the writer does, nothing stored) and delivers them. That is the most a log
  writer outside the interpreter (a process of its own, native code) could give: no GIL
  hand-over, no storage, no messages between them.

Events acknowledged by these servers are not stored; only the single-publish scenario runs
on them. Usage: `BENCH_STORAGE=none python bench/storage_bound.py serve --port 8000 ...`.
"""

from __future__ import annotations

import asyncio
import collections
import os
import select
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable, Sequence

from flux.cli import main
from flux.events import now_us
from flux.log import Appended, Entry, Record
from flux.log import sqlite as sqlite_log


def _flat_file(self: sqlite_log.SQLiteLog) -> int:
    fd: int | None = getattr(self, "_bench_fd", None)
    if fd is None:
        fd = os.open(self.path + ".segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._bench_fd = fd  # type: ignore[attr-defined]
    return fd


def _insert(
    self: sqlite_log.SQLiteLog,
    conn: sqlite3.Connection,
    entries: list[Entry],
    first: int,
    at: int,
    fresh_only: bool = False,
) -> tuple[list[Appended] | None, int]:
    if entries and os.environ["BENCH_STORAGE"] == "file":
        fd = _flat_file(self)
        os.write(fd, b"\n".join(entry.data for entry in entries) + b"\n")
        os.fdatasync(fd)
    return None, len(entries)


def _queued(
    self: sqlite_log.SQLiteLog,
    entries: Sequence[Entry],
    checked: bool,
    atomic: bool,
    flush: Callable[[sqlite_log.SQLiteLog], None],
) -> asyncio.Future[list[Appended]]:
    """Queue an append on the event loop; the first of a pass asks for `flush` after it."""
    loop = self._loop
    assert loop is not None
    future: asyncio.Future[list[Appended]] = loop.create_future()
    pending: list[sqlite_log._Append] = self.__dict__.setdefault("_bench_pending", [])
    if not pending:
        loop.call_soon(flush, self)
    pending.append(sqlite_log._Append(entries, future, checked, atomic))
    return future


def _sequenced(
    self: sqlite_log.SQLiteLog,
) -> tuple[list[sqlite_log._Append], list[Record], int, int]:
    """The pass's appends, given their sequences and results as the writer gives them."""
    appends: list[sqlite_log._Append] = self.__dict__["_bench_pending"]
    self.__dict__["_bench_pending"] = []
    first = self._next_seq
    at = max(now_us(), self._last_at)
    records = sqlite_log._results_in_order(appends, first, at)
    self._next_seq = first + len(records)
    self._last_at = at
    return appends, records, first, at


def _inline_submit(
    self: sqlite_log.SQLiteLog,
    entries: Sequence[Entry],
    *,
    checked: bool = False,
    atomic: bool = False,
) -> asyncio.Future[list[Appended]]:
    return _queued(self, entries, checked, atomic, _inline_commit)


def _inline_commit(self: sqlite_log.SQLiteLog) -> None:
    appends, records, _, _ = _sequenced(self)
    self._deliver(appends, records)


_FRAME = struct.Struct("<IIqq")  # rows length, blob length, first sequence, time (µs)


def _process_submit(
    self: sqlite_log.SQLiteLog,
    entries: Sequence[Entry],
    *,
    checked: bool = False,
    atomic: bool = False,
) -> asyncio.Future[list[Appended]]:
    state = self.__dict__
    if "_bench_child" not in state:
        loop = self._loop
        assert loop is not None
        child = subprocess.Popen(
            [sys.executable, __file__, "--child", self.path],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert child.stdout is not None
        state["_bench_child"] = child
        state["_bench_in_flight"] = collections.deque()
        loop.add_reader(child.stdout.fileno(), _process_answers, self)
    return _queued(self, entries, checked, atomic, _process_send)


def _process_send(self: sqlite_log.SQLiteLog) -> None:
    appends, records, first, at = _sequenced(self)
    rows, blob = sqlite_log._group_params([e for a in appends for e in a.entries])
    state = self.__dict__
    child = state["_bench_child"]
    os.write(child.stdin.fileno(), _FRAME.pack(len(rows), len(blob), first, at) + rows + blob)
    state["_bench_in_flight"].append((appends, records))


def _process_answers(self: sqlite_log.SQLiteLog) -> None:
    state = self.__dict__
    answers = os.read(state["_bench_child"].stdout.fileno(), 65536)
    if not answers:
        raise RuntimeError("the bench writer process ended")
    in_flight = state["_bench_in_flight"]
    for _ in answers:
        appends, records = in_flight.popleft()
        self._deliver(appends, records)


def _child(path: str) -> None:
    """The writer process: frames from stdin, each batch of them read together committed in
    one transaction, a byte per frame to stdout once committed."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    source = sys.stdin.fileno()
    buffer = b""
    while True:
        chunk = os.read(source, 1 << 20)
        if not chunk:
            return
        buffer += chunk
        while select.select([source], [], [], 0)[0]:  # everything that has come: one commit
            more = os.read(source, 1 << 20)
            if not more:
                break
            buffer += more
        frames = 0
        conn.execute("BEGIN IMMEDIATE")
        while len(buffer) >= _FRAME.size:
            rows_len, blob_len, first, at = _FRAME.unpack_from(buffer)
            end = _FRAME.size + rows_len + blob_len
            if len(buffer) < end:
                break
            rows = buffer[_FRAME.size : _FRAME.size + rows_len]
            blob = buffer[_FRAME.size + rows_len : end]
            conn.execute(sqlite_log._INSERT_GROUP, (first, at, rows, blob))
            buffer = buffer[end:]
            frames += 1
        conn.execute("COMMIT")
        if frames:
            os.write(sys.stdout.fileno(), b"." * frames)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        _child(sys.argv[2])
        sys.exit(0)
    storage = os.environ.get("BENCH_STORAGE")
    if storage not in ("none", "file", "inline", "process"):
        sys.exit("set BENCH_STORAGE to none, file, inline or process")
    if storage == "inline":
        sqlite_log.SQLiteLog.submit = _inline_submit  # type: ignore[method-assign]
    if storage == "process":
        sqlite_log.SQLiteLog.submit = _process_submit  # type: ignore[method-assign]
    sqlite_log.SQLiteLog._insert = _insert  # type: ignore[method-assign]
    sys.argv[0] = "flux"
    main()
