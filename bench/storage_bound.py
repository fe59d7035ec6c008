"""`flux serve` with its log's storage replaced, to bound what another storage engine could give.

Not Flux: a measuring aid for bench/run's `--peers bound`. Everything but the SQLite statement is
Flux as it is (HTTP, the hot path, the writer thread and its group commit, applying the state,
the answers); the statement that stores a group is replaced by

- `BENCH_STORAGE=none`: nothing (no write, no fsync): the most any storage engine could give;
- `BENCH_STORAGE=file`: one `write` of the group's encoded events to a flat file and one
  `fdatasync`: the core of an append-only segment log, without the event-id index, recovery
  or framing a real one needs.
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
import os
import sqlite3
import sys
from collections.abc import Sequence

from flux.cli import main
from flux.events import now_us
from flux.log import Appended, Entry
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


def _inline_submit(
    self: sqlite_log.SQLiteLog,
    entries: Sequence[Entry],
    *,
    checked: bool = False,
    atomic: bool = False,
) -> asyncio.Future[list[Appended]]:
    loop = self._loop
    assert loop is not None
    future: asyncio.Future[list[Appended]] = loop.create_future()
    pending: list[sqlite_log._Append] = self.__dict__.setdefault("_bench_pending", [])
    if not pending:
        loop.call_soon(_inline_commit, self)
    pending.append(sqlite_log._Append(entries, future, checked, atomic))
    return future


def _inline_commit(self: sqlite_log.SQLiteLog) -> None:
    appends: list[sqlite_log._Append] = self.__dict__["_bench_pending"]
    self.__dict__["_bench_pending"] = []
    first = self._next_seq
    at = max(now_us(), self._last_at)
    records = sqlite_log._results_in_order(appends, first, at)
    self._next_seq = first + len(records)
    self._last_at = at
    self._deliver(appends, records)


if __name__ == "__main__":
    storage = os.environ.get("BENCH_STORAGE")
    if storage not in ("none", "file", "inline"):
        sys.exit("set BENCH_STORAGE to none, file or inline")
    if storage == "inline":
        sqlite_log.SQLiteLog.submit = _inline_submit  # type: ignore[method-assign]
    sqlite_log.SQLiteLog._insert = _insert  # type: ignore[method-assign]
    sys.argv[0] = "flux"
    main()
