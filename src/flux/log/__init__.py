"""The event log: one protocol, several backends (chosen by URL in `open_log`).

Contract (tests/log/contract.py runs it against every backend):
- `start(on_records)` opens the log; from then on every committed record reaches `on_records`
  exactly once, in sequence order, on the event loop, including records other writers appended
  (a shared log). The callback must not block.
- `append(entries)` makes the entries durable and returns after `on_records` has seen them, with
  their sequence numbers. An entry whose `eventId` is already in the log (or earlier in the same
  group) is not appended again: its result points at the stored record and says `duplicate`.
  Every backend remembers an id at least for the dedupe window (FLUX_DEDUPE_WINDOW_SECONDS):
  the SQLite log as long as it holds the event, the JetStream log for the window only.
- Conditions (`append(..., checked=True)`: some entries carry a `flux.conditions.Check`) are
  decided where the log gives the entries their sequences, by the `checker` given to `start`:
  so two appends can never both pass against the same state. The checker reads the state
  `on_records` builds, and is handed the records sequenced before the entries that
  `on_records` has not seen yet, to count as applied. An entry that fails is not stored; its
  result carries the `Failure` (and sequence 0). A duplicate is reported as a duplicate
  before any condition is looked at (a retried conditional write is not refused by its own
  first success). With `atomic=True` an append's entries are stored all, in consecutive
  sequences, or none. The SQLite log calls the checker on the event loop once every earlier
  append is committed and applied, and sends nothing more to its writer until the checked
  group is stored; the JetStream log on the event loop, then has JetStream refuse the write if
  an entity moved meanwhile (docs/architecture.md). A lease acquired gets the sequence the log
  expects it to be stored at as its token: on SQLite its own; on JetStream its own unless
  another write came first, and always above the entity's earlier tokens.
- Sequences increase by one per stored record (a rejected duplicate takes no number) and never go
  back: not after `prune` removed every record, nor below `start(..., after_seq=N)` (the state's
  sequence, when a snapshot is ahead of the log).
- `read(after_seq)` iterates over committed records with a sequence above `after_seq`, in order,
  in batches; `history(...)` answers an entity's newest stored events, only those above its
  `after_seq` (the history floor of a deleted namespace, see flux.namespaces).
- `sync()` is a barrier: it returns, with the highest sequence assigned so far, once every
  append begun before it has been committed (or has failed) and `on_records` has seen its
  records.
- Errors are `flux.errors.LogError` subclasses; driver errors never leak. Damage is never
  served as data: a damaged store, a record that does not decode, or a sequence missing inside
  a range `read` walks or `history` points at raises `LogCorrupt`, and `damage` then says why.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from typing import NamedTuple, Protocol

from flux.conditions import Check, Failure, Verdict
from flux.events import Event


class Entry(NamedTuple):
    """One event on its way into the log, already encoded."""

    event: Event
    event_id: str
    entity_id: str | None
    data: bytes  # the compact JSON of `event`
    check: Check | None = None  # conditions decided where the log orders it


class Record(NamedTuple):
    """One committed event: its sequence, when it was logged (µs) and the event."""

    seq: int
    at: int
    event: Event


class Appended(NamedTuple):
    seq: int  # 0 when refused
    at: int
    duplicate: bool
    failure: Failure | None = None  # why a checked entry was not stored


# The checker the log asks about checked entries (see the contract above): `groups` holds each
# checked append's (entries, atomic) in log order; the entries that pass will be stored in that
# order from `first_seq` on; `unapplied` are the records sequenced before them that
# `on_records` has not seen yet; `now_ms` is the time to decide at: the log time (in ms) the
# entries will be stored with, so that a lease a write passed under covers its stored time.
# Returns a verdict per entry (`flux.conditions.evaluate`).
Checker = Callable[
    [list[tuple[list[tuple[Event, Check | None]], bool]], int, list["Record"], int],
    list[list[Verdict]],
]


OnRecords = Callable[[list[Record]], None]


class EventLog(Protocol):
    async def start(
        self, on_records: OnRecords, *, after_seq: int = 0, checker: Checker | None = None
    ) -> None: ...

    async def append(
        self, entries: Sequence[Entry], *, checked: bool = False, atomic: bool = False
    ) -> list[Appended]: ...

    def submit(
        self, entries: Sequence[Entry], *, checked: bool = False, atomic: bool = False
    ) -> asyncio.Future[list[Appended]]:
        """`append` as a future, for a caller that is not a coroutine (the hot publish answers
        from the future's callback, without a task per request). Raises what `append` would
        raise before anything is handed to the log."""
        ...

    def read(self, after_seq: int, batch_size: int = 10_000) -> AsyncIterator[list[Record]]: ...

    async def history(
        self, entity_id: str, since_us: int, limit: int, after_seq: int = 0
    ) -> list[bytes]:
        """The entity's newest stored events logged at or after `since_us` with a sequence
        above `after_seq`, newest first, at most `limit`, each as its stored JSON."""
        ...

    async def sync(self) -> int:
        """The barrier (see above); returns the highest sequence assigned so far."""
        ...

    async def first_seq(self) -> int:
        """Lowest sequence still stored (last_seq + 1 when empty)."""
        ...

    async def last_seq(self) -> int:
        """Highest sequence ever assigned (kept even when pruning removed that record)."""
        ...

    async def prune(self, upto_seq: int, before_us: int | None, keep_events: int | None) -> int:
        """Drop records at or below `upto_seq` that are older than `before_us` or beyond the
        newest `keep_events`; returns how many went."""
        ...

    @property
    def damage(self) -> str | None:
        """Why the log is known to be damaged (the first `LogCorrupt` it raised), or None."""
        ...

    @property
    def unavailable(self) -> str | None:
        """Why the log cannot take writes now while it may again later by itself (its store is
        unreachable), or None."""
        ...

    async def verify(self) -> None:
        """A full check of the store's structure (may read all of it); raises LogCorrupt."""
        ...

    async def close(self) -> None: ...


def open_log(url: str) -> EventLog:
    """The backend for a URL: `sqlite:///path/to/events.db` (the embedded default), or
    `nats://host:port[,host2:port2][?stream=S&subject=P&replicas=N&dedupe_window=SECONDS&
    timeout=SECONDS]` (NATS JetStream; parameters not given take the defaults of
    FLUX_NATS_STREAM, FLUX_NATS_SUBJECT, FLUX_NATS_REPLICAS, FLUX_DEDUPE_WINDOW_SECONDS and
    FLUX_NATS_TIMEOUT_SECONDS). Raises ValueError
    for a URL it cannot use."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(f"event log URL {url!r} has no scheme; expected sqlite:///PATH")
    if scheme == "sqlite":
        from flux.log.sqlite import SQLiteLog

        return SQLiteLog(rest[1:] if rest.startswith("/") else rest)
    if scheme == "nats":
        from flux.config import Settings
        from flux.log.jetstream import from_url

        return from_url(url, Settings().nats_parameters())
    raise ValueError(f"unknown event log scheme {scheme!r} in {url!r}; known: sqlite, nats")
