"""`flux serve` with its log's storage replaced, to bound what another storage engine could give.

Not Flux: a measuring aid for bench/run's `--peers bound`. Everything but the SQLite statement is
Flux as it is (HTTP, the hot path, the writer thread and its group commit, applying the state,
the answers); the statement that stores a group is replaced by

- `BENCH_STORAGE=none`: nothing (no write, no fsync): the most any storage engine could give;
- `BENCH_STORAGE=file`: one `write` of the group's encoded events to a flat file and one
  `fdatasync`: the core of an append-only segment log, without the event-id index, recovery
  or framing a real one needs.

Events acknowledged by these servers are not stored; only the single-publish scenario runs
on them. Usage: `BENCH_STORAGE=none python bench/storage_bound.py serve --port 8000 ...`.
"""

from __future__ import annotations

import os
import sqlite3
import sys

from flux.cli import main
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


if __name__ == "__main__":
    if os.environ.get("BENCH_STORAGE") not in ("none", "file"):
        sys.exit("set BENCH_STORAGE to none or file")
    sqlite_log.SQLiteLog._insert = _insert  # type: ignore[method-assign]
    sys.argv[0] = "flux"
    main()
