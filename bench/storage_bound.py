"""`flux serve` with its log's writer taken out of the path, to bound what any log could give.

Not Flux: a measuring aid for bench/run's `--peers bound`. Everything but the writer is Flux as
it is (HTTP, the hot path, sequencing, applying the state, the answers). With
`BENCH_STORAGE=inline`, `submit` queues the append on the event loop and one callback per pass
"commits" the pass's appends (sequences, results, records: what the writer's answer gives,
nothing stored) and delivers them: no writer process, no pipe, no storage. That is the most a
log could give single publish.

Events acknowledged by this server are not stored; only the single-publish scenario runs on
it. Usage: `BENCH_STORAGE=inline python bench/storage_bound.py serve --port 8000 ...`.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence

from flux.cli import main
from flux.events import now_us
from flux.log import Appended, Entry
from flux.log import sqlite as sqlite_log


def _inline_submit(
    self: sqlite_log.SQLiteLog,
    entries: Sequence[Entry],
    *,
    checked: bool = False,
    atomic: bool = False,
) -> asyncio.Future[list[Appended]]:
    """Queue an append on the event loop; the first of a pass asks for `_inline_commit`."""
    loop = self._loop
    assert loop is not None
    future: asyncio.Future[list[Appended]] = loop.create_future()
    pending: list[sqlite_log._Append] = self.__dict__.setdefault("_bench_pending", [])
    if not pending:
        loop.call_soon(_inline_commit, self)
    pending.append(sqlite_log._Append(entries, future, checked, atomic))
    return future


def _inline_commit(self: sqlite_log.SQLiteLog) -> None:
    """The pass's appends, given their sequences and results as the writer's answer gives
    them, and delivered."""
    appends: list[sqlite_log._Append] = self.__dict__["_bench_pending"]
    self.__dict__["_bench_pending"] = []
    first = self._next_seq
    at = max(now_us(), self._last_at)
    records = sqlite_log._results_in_order(appends, first, at)
    self._next_seq = first + len(records)
    self._last_at = at
    self._deliver(appends, records)


if __name__ == "__main__":
    if os.environ.get("BENCH_STORAGE") != "inline":
        sys.exit("set BENCH_STORAGE to inline")
    sqlite_log.SQLiteLog.submit = _inline_submit  # type: ignore[method-assign]
    sys.argv[0] = "flux"
    main()
