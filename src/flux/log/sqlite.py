"""The embedded event log: SQLite in WAL mode with `synchronous=FULL`, written by a process of its
own (`flux.log.writer`), read here.

The event loop hands the writer every append of a pass in one message; the writer stores
everything that has arrived in one transaction and commits once (group commit: one fsync for the
whole group), then answers each message. The answer's callback, on the loop, builds the
records, passes them to `on_records` and resolves the waiting appends. Reads (replay, history)
use their own connections on a small thread pool, each query in one read transaction (a
consistent view even while the writer prunes).

Sequences are given by the writer and are consecutive: a group takes consecutive numbers and an
event whose id is already stored (or repeated within the group) takes none. The highest sequence
ever assigned (and its time) is kept in the `meta` table before pruning removes rows, and a
floor can be set at start (`after_seq`), so numbers never go back, even when every row was
pruned or the log is younger than the snapshot that rebuilt the state.

Conditions are decided here, on the loop, when nothing sent before is still unanswered: the
state `on_records` built then holds every committed record, and the next sequence is known. The
checked group goes alone, carrying the sequence and time it was decided for, and nothing more is
sent until it is answered; the writer stores it only when none of its ids is stored, and
otherwise answers with the stored ones, for the group to be decided again (see `_send_checked`).

If the writer process ends without being asked to (killed, out of memory), a new writer is
started, the log catches the state up with what the old one stored, and then answers the appends
it had left unanswered from the file (`_settle_orphans`): those it stored get the answer it would
have given, the others fail with `LogUnavailable` saying they were not stored. If the new writer
cannot be started or the file cannot be read, those appends fail saying they may or may not be
stored (a retry with the same event id finds out), and the log turns unavailable: every later
append fails instead of hanging.

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
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Any, NamedTuple, cast

import orjson

from flux.conditions import Check, Failure, Verdict
from flux.errors import LogCorrupt, LogError, LogUnavailable
from flux.events import Event
from flux.log import Appended, Checker, Entry, OnRecords, Record
from flux.log import writer as w
from flux.log.writer import BUCKET_BITS, HISTORY_BATCH, WAL_LIMIT, Damaged, is_corruption

__all__ = ["BUCKET_BITS", "Damaged", "SQLiteLog", "fetch_batch", "is_corruption", "translate"]

logger = logging.getLogger("flux.log")

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

# An entry's event id, entity id and encoded event (`flux.log.Entry`'s fields 1, 2 and 3).
_event_id, _entity_id, _data = itemgetter(1), itemgetter(2), itemgetter(3)
_MAX_GROUP = 20_000  # entries per message; more go in the next
_RESTARTS = 3  # writers started again in a row, each after the previous one ended, before giving up


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
    """A message other than APPEND (SYNC, PRUNE), answered in its turn."""

    __slots__ = ("future", "kind", "payload")

    def __init__(self, kind: int, payload: bytes, future: asyncio.Future[Any]) -> None:
        self.kind = kind
        self.payload = payload
        self.future = future


class _Decision(NamedTuple):
    """A checked group as decided on the loop, to be stored from `first` at `at`."""

    checked: list[_Append]
    plain: list[_Append]
    # Per checked append: for each entry, the (seq, at) of the stored event it repeats, or the
    # index of the earlier entry of this group it repeats, or None (it was checked).
    repeats: list[list[tuple[int, int] | int | None]]
    verdicts: list[list[Verdict]]
    entries: list[Entry]  # to store: the checked ones that passed, then every plain one
    n_checked: int
    refused: list[str]  # the ids of entries that failed their condition
    first: int
    at: int


class _Sent(NamedTuple):
    """A message the writer has not answered yet."""

    appends: list[_Append]  # empty for a job
    decision: _Decision | None = None
    job: _Job | None = None


class _Pipe(asyncio.SubprocessProtocol):
    """The writer process's pipes, for `SQLiteLog`."""

    def __init__(self, log: SQLiteLog) -> None:
        self.log = log
        loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = loop.create_future()  # its output ended
        self.exited: asyncio.Future[None] = loop.create_future()  # the process ended

    def pipe_data_received(self, fd: int, data: bytes | str) -> None:
        if fd == 1 and isinstance(data, bytes):
            self.log._received(self, data)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        if fd == 1 and not self.ended.done():  # every answer has been read
            self.ended.set_result(None)
            self.log._ended(self)

    def process_exited(self) -> None:
        if not self.exited.done():
            self.exited.set_result(None)


class SQLiteLog:
    def __init__(
        self,
        path: str,
        *,
        max_page_count: int | None = None,
        bucket_bits: int = BUCKET_BITS,
        history_batch: int = HISTORY_BATCH,
        checkpoint_bytes: int = w.CHECKPOINT_BYTES,
        wal_limit: int = WAL_LIMIT,
        lock_wait_s: float = w.LOCK_WAIT_S,
    ) -> None:
        """`max_page_count` caps the database size in pages (SQLite's pragma); tests use it to
        make the disk look full. `bucket_bits` sets the history bucket width of a new log
        (2**bits sequences; an existing log keeps its own); tests use narrow ones.
        `history_batch`: how many events the history index may lag behind before the writer
        indexes them (tests use small batches to cross the mark often). `checkpoint_bytes`:
        committed event bytes between two checkpoints; `wal_limit`: the WAL size past which
        the writer restarts it (tests use small ones). `lock_wait_s`: how long a new writer
        waits for another process writing to the same file (an old writer finishing its
        commit) before the log refuses to open."""
        self.path = path
        self.bucket_bits = bucket_bits
        self._options: dict[str, Any] = {
            "max_page_count": max_page_count,
            "bucket_bits": bucket_bits,
            "history_batch": history_batch,
            "checkpoint_bytes": checkpoint_bytes,
            "wal_limit": wal_limit,
            "lock_wait_s": lock_wait_s,
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_records: OnRecords | None = None
        self._checker: Checker | None = None
        self._transport: asyncio.SubprocessTransport | None = None
        self._pipe: _Pipe | None = None
        self._stdin: asyncio.WriteTransport | None = None
        self._answers = bytearray()
        self._ready: asyncio.Future[dict[str, Any]] | None = None
        self._pending: list[_Append | _Job] = []  # not sent yet, in order
        self._flushing = False  # a `_flush` is scheduled
        self._in_flight: collections.deque[_Sent] = collections.deque()
        self._holding = False  # a checked group is unanswered: nothing more is sent
        self._restarting: asyncio.Task[None] | None = None
        self._applied_seq = 0  # the newest sequence `on_records` has seen
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

    # -- lifecycle -------------------------------------------------------------------------

    async def start(
        self, on_records: OnRecords, *, after_seq: int = 0, checker: Checker | None = None
    ) -> None:
        """Open the log: start its writer. New records get sequences above every stored one and
        above `after_seq`. Raises LogUnavailable when the database cannot be opened, LogCorrupt
        when it fails the checks made on opening."""
        self._loop = asyncio.get_running_loop()
        self._on_records = on_records
        self._checker = checker
        directory = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise LogUnavailable(f"event log unavailable: {exc}") from exc
        try:
            await self._spawn(after_seq)
        except LogError as error:
            self._broken = error
            raise
        self._applied_seq = self._next_seq - 1  # `on_records` gets what is committed from now

    async def _spawn(self, after_seq: int) -> None:
        """Start a writer and wait for it to open the database."""
        loop = self._loop
        assert loop is not None
        self._ready = loop.create_future()
        self._answers = bytearray()
        options = orjson.dumps({**self._options, "after_seq": after_seq}).decode()

        def connected() -> _Pipe:
            self._pipe = _Pipe(self)  # before any answer can arrive
            return self._pipe

        try:
            transport, pipe = await loop.subprocess_exec(
                connected,
                sys.executable,
                "-P",  # the script's directory is not put on the path
                w.__file__,
                self.path,
                options,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=None,
            )
        except OSError as exc:
            raise LogUnavailable(f"event log unavailable: cannot start its writer: {exc}") from exc
        self._transport = transport
        # uvloop's pipe transports write like asyncio.WriteTransport without subclassing it.
        stdin = cast(asyncio.WriteTransport, transport.get_pipe_transport(0))
        assert stdin is not None
        try:
            opened = await self._ready
        except BaseException:
            await self._wait_exit(transport, pipe)
            raise
        self._stdin = stdin
        self._next_seq = int(opened["next_seq"])
        self._last_at = int(opened["last_at"])
        self.bucket_bits = int(opened["bucket_bits"])
        self._known_gaps = {int(start): int(end) for start, end in opened["gaps"]}
        if opened["damage"] and self._damage is None:
            self._note(corrupt_error(self.path, str(opened["damage"])))

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        verifying = self._verifying
        if verifying is not None:
            verifying.interrupt()
        if self._restarting is not None:
            await asyncio.gather(self._restarting, return_exceptions=True)
        pipe, transport = self._pipe, self._transport
        if pipe is not None and transport is not None:
            self._flush()
            stdin = self._stdin
            if stdin is not None and not stdin.is_closing():
                stdin.write(w.message(w.STOP))
            await asyncio.shield(pipe.ended)
            await self._wait_exit(transport, pipe)
            # Anything the writer did not answer (a checked group held the rest back, or the
            # writer died meanwhile) is settled, not left waiting.
            self._fail_all(LogUnavailable("event log unavailable: the log is closed"))
        self._readers.shutdown(wait=True)
        with self._reader_lock:
            conns, self._reader_conns = self._reader_conns, []
        for conn in conns:
            conn.close()

    async def _wait_exit(self, transport: asyncio.SubprocessTransport, pipe: _Pipe) -> None:
        """Let the writer end (it stops once its input ends), then release its pipes."""
        stdin = transport.get_pipe_transport(0)
        if stdin is not None:
            stdin.close()
        with contextlib.suppress(TimeoutError):  # 10 s: the last checkpoint of a large WAL
            await asyncio.wait_for(asyncio.shield(pipe.exited), 10)
        transport.close()  # kills it if it is still there

    @property
    def damage(self) -> str | None:
        """Why the log is known to be damaged (the first corruption seen), or None."""
        return self._damage

    @property
    def unavailable(self) -> str | None:
        """Why the log takes no writes for the moment: its writer is being started again.
        Otherwise None: the file is local, and its failures are answered per write."""
        if self._restarting is not None:
            return "event log unavailable: its writer is restarting"
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

    def _failure(self, payload: bytes) -> LogError:
        """The error a FAILED answer reports (see `flux.log.writer.failure`)."""
        said = orjson.loads(payload)
        text = str(said["message"])
        if said["kind"] == "corrupt":
            return self._note(corrupt_error(self.path, text))
        if said["kind"] == "unavailable":
            return LogUnavailable(f"event log unavailable: {text}")
        return LogError(f"event log error: {text}")

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
        if self._restarting is not None:
            return LogUnavailable("event log unavailable: its writer is restarting; try again")
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
        self._queue(_Append(entries, future, checked, atomic))
        return future

    async def sync(self) -> int:
        """Returns the highest sequence assigned so far, once every append queued before this
        call has been committed (or has failed) and handed to `on_records`: the writer answers
        messages in order, and each answer is handled before the next."""
        result: int = await self._job(w.SYNC)
        return result

    async def _job(self, kind: int, payload: bytes = b"") -> Any:
        error = self._unavailable()
        if error is not None:
            raise error
        assert self._loop is not None
        future: asyncio.Future[Any] = self._loop.create_future()
        self._queue(_Job(kind, payload, future))
        return await future

    def _queue(self, item: _Append | _Job) -> None:
        """Send `item` with the rest of this pass's: one message per pass to the writer."""
        self._pending.append(item)
        if not self._flushing:
            self._flushing = True
            assert self._loop is not None
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        """Send what is pending, in order: jobs one by one, appends as one group per run of
        them (up to `_MAX_GROUP` entries). A run with a checked append waits until every
        earlier message is answered (see the module's docstring)."""
        self._flushing = False
        pending = self._pending
        while pending and not self._holding and self._stdin is not None:
            head = pending[0]
            if isinstance(head, _Job):
                del pending[0]
                self._in_flight.append(_Sent([], job=head))
                self._write(w.message(head.kind, head.payload))
                continue
            take: list[_Append] = []
            count = 0
            checked = False
            for item in pending:
                if not isinstance(item, _Append) or (
                    take and count + len(item.entries) > _MAX_GROUP
                ):
                    break
                take.append(item)
                count += len(item.entries)
                checked = checked or item.checked
            if checked and self._in_flight:
                return  # `_received` flushes again once everything sent is answered
            del pending[: len(take)]
            if checked:
                self._send_checked(take, None)
            else:
                self._send(take)

    def _write(self, data: bytes) -> None:
        stdin = self._stdin
        assert stdin is not None
        stdin.write(data)

    def _send(self, appends: list[_Append]) -> None:
        entries = (
            appends[0].entries if len(appends) == 1 else [e for a in appends for e in a.entries]
        )
        try:
            rows, blob = _group_params(entries)
        except Exception as exc:  # not entries: fail the group, not the log
            self._refuse(appends, exc)
            return
        head = w.APPEND_HEAD.pack(0, 0, 0, len(entries), len(rows), 0)
        size = len(head) + len(rows) + len(blob)
        self._in_flight.append(_Sent(appends))
        self._write(b"".join((w.HEAD.pack(w.APPEND, size), head, rows, blob)))

    def _send_checked(
        self, appends: list[_Append], known: dict[str, tuple[int, int]] | None
    ) -> None:
        """Decide a group with checked appends and send it, alone: nothing is in flight, so the
        state `on_records` built holds every committed record and `_next_seq` is the sequence
        the writer will give next. Checked appends were concurrent with the plain ones of the
        group (neither was answered), so storing them first is an order the clients may see.
        Duplicates of stored events are answered as duplicates, never checked: the group is
        first decided as if none of its ids were stored (`known` None; the common case: most
        ids are drawn by the server) and sent to be stored only if so; when the writer finds
        one that is, it answers with the stored ones and the group is decided again with them
        (looking them up first would cost a round trip per group)."""
        decision = self._decide(appends, known)
        if isinstance(decision, LogError):
            for append in appends:
                append.results = decision
            self._deliver(appends, [])
            return
        try:
            rows, blob = _group_params(decision.entries)
        except Exception as exc:
            self._refuse(appends, exc)
            return
        self._holding = True
        refused = orjson.dumps(decision.refused) if known is None and decision.refused else b""
        head = w.APPEND_HEAD.pack(
            decision.at,
            decision.first,
            known is None,
            len(decision.entries),
            len(rows),
            len(refused),
        )
        size = len(head) + len(rows) + len(refused) + len(blob)
        self._in_flight.append(_Sent(appends, decision))
        self._write(b"".join((w.HEAD.pack(w.APPEND, size), head, rows, refused, blob)))

    def _refuse(self, appends: list[_Append], exc: Exception) -> None:
        logger.error("append of %d events failed: %r", sum(len(a.entries) for a in appends), exc)
        error = translate(exc)
        for append in appends:
            append.results = error
        self._deliver(appends, [])

    def _decide(
        self, appends: list[_Append], known: dict[str, tuple[int, int]] | None
    ) -> _Decision | LogError:
        """Ask the checker about the checked appends' entries that are not stored (`known`)
        nor repeat an earlier entry of the group."""
        checked = [a for a in appends if a.checked]
        plain = [a for a in appends if not a.checked]
        known = known or {}
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
                    marks.append((int(stored[0]), int(stored[1])))
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
        at = max(w.now_us(), self._last_at)
        checker = self._checker
        assert checker is not None
        try:
            verdicts = checker(groups, first, [], at // 1000)
        except Exception as exc:
            logger.exception("deciding the conditions of %d appends failed", len(checked))
            return LogUnavailable(f"event log unavailable: conditions not decided: {exc!r}")
        entries: list[Entry] = []
        refused: list[str] = []
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
                entries.append(entry)
        n_checked = len(entries)
        for append in plain:
            entries.extend(append.entries)
        return _Decision(checked, plain, repeats, verdicts, entries, n_checked, refused, first, at)

    def _received(self, pipe: _Pipe, data: bytes) -> None:
        """On the loop: the writer's answers (whole messages are handled; a part waits for its
        rest), then whatever was held back for them is sent."""
        if pipe is not self._pipe:
            return
        buffer = self._answers
        buffer += data
        pos = 0
        size = len(buffer)
        while size - pos >= w.HEAD.size:
            kind, length = w.HEAD.unpack_from(buffer, pos)
            end = pos + w.HEAD.size + length
            if end > size:
                break
            self._answer(kind, bytes(buffer[pos + w.HEAD.size : end]))
            pos = end
        del buffer[:pos]
        if self._pending and not self._flushing:
            self._flush()

    def _answer(self, kind: int, payload: bytes) -> None:
        if kind == w.LOG:
            level, text = orjson.loads(payload)
            logger.log(int(level), "%s", text)
            return
        ready = self._ready
        if ready is not None and not ready.done():
            if kind == w.READY:
                ready.set_result(orjson.loads(payload))
            else:
                error = self._failure(payload) if kind == w.FAILED else LogError("bad answer")
                if not isinstance(error, LogCorrupt):
                    logger.error("cannot open the event log %s: %s", self.path, error.message)
                ready.set_exception(error)
            return
        sent = self._in_flight.popleft()
        if sent.job is not None:
            if kind == w.SYNCED:
                _settle(sent.job.future, w.COUNT.unpack(payload)[0], None)
            elif kind == w.PRUNED:
                removed, more = w.PRUNED_BODY.unpack(payload)
                _settle(sent.job.future, (removed, bool(more)), None)
            else:
                _settle(sent.job.future, None, self._failure(payload))
            return
        appends, decision = sent.appends, sent.decision
        if decision is not None:
            self._holding = False
        if kind == w.DONE:
            first, at, count = w.DONE_BODY.unpack(payload)
            self._next_seq = first + count
            self._last_at = max(self._last_at, at)
            if decision is None:
                records = _results_in_order(appends, first, at)
            else:
                outcome = [Appended(first + i, at, False) for i in range(count)]
                records = self._checked_results(decision, outcome)
        elif kind == w.DUPLICATES:
            outcome = [Appended(seq, at, bool(dup)) for seq, at, dup in orjson.loads(payload)]
            fresh = [done for done in outcome if not done.duplicate]
            if fresh:
                self._next_seq = fresh[-1].seq + 1
                self._last_at = max(self._last_at, fresh[-1].at)
            if decision is None:
                records = self._plain_results(appends, outcome)
            else:
                records = self._checked_results(decision, outcome)
        elif kind == w.REPEATED and decision is not None:
            known = {key: (int(v[0]), int(v[1])) for key, v in orjson.loads(payload).items()}
            self._send_checked(appends, known)
            return
        else:
            error = self._failure(payload) if kind == w.FAILED else LogError("bad answer")
            for append in appends:
                append.results = error
            records = []
        self._deliver(appends, records)

    @staticmethod
    def _plain_results(appends: list[_Append], outcome: list[Appended]) -> list[Record]:
        records: list[Record] = []
        index = 0
        for append in appends:
            results = []
            for entry in append.entries:
                done = outcome[index]
                results.append(done)
                if not done.duplicate:
                    records.append(Record(done.seq, done.at, entry.event))
                index += 1
            append.results = results
        return records

    @staticmethod
    def _checked_results(decision: _Decision, outcome: list[Appended]) -> list[Record]:
        """Each append's results, entry by entry, from the outcome of the stored entries."""
        at = decision.at
        records = [
            Record(done.seq, done.at, entry.event)
            for done, entry in zip(outcome, decision.entries, strict=True)
            if not done.duplicate
        ]
        slot = 0
        flat: list[Appended] = []
        for marks, asked_verdicts, append in zip(
            decision.repeats, decision.verdicts, decision.checked, strict=True
        ):
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
        assert slot == decision.n_checked
        for append in decision.plain:
            append.results = outcome[slot : slot + len(append.entries)]
            slot += len(append.entries)
        return records

    def _deliver(self, appends: list[_Append], records: list[Record]) -> None:
        """On the loop: hand the committed records on, then wake the appenders."""
        if records:
            self._apply(records)
        for append in appends:
            results = append.results
            if isinstance(results, BaseException):
                _settle(append.future, None, results)
            else:
                _settle(append.future, results, None)

    def _apply(self, records: list[Record]) -> None:
        if self._on_records is not None:
            try:
                self._on_records(records)
            except Exception:  # the log stays correct; state is the caller's to fix
                logger.exception("applying %d committed records failed", len(records))
        self._applied_seq = records[-1].seq

    # -- when the writer ends --------------------------------------------------------------

    def _ended(self, pipe: _Pipe) -> None:
        """The writer's output ended, every answer read. Unless the log is closing, the writer
        ended on its own: fail what it did not answer and start another."""
        if pipe is not self._pipe or self._closed:
            return
        ready = self._ready
        if ready is None or not ready.done():
            if ready is not None:
                ready.set_exception(
                    LogUnavailable("event log unavailable: its writer ended before opening it")
                )
            return
        if ready.cancelled() or ready.exception() is not None:
            return  # it could not open the log: `_spawn` says so
        self._stdin = None
        transport = self._transport
        code = transport.get_returncode() if transport is not None else None
        said = f" (exit code {code})" if code is not None else ""
        logger.critical("the event log's writer process ended%s; starting another", said)
        # What was never sent is not stored; what was sent is looked up once the state has
        # caught up (`_settle_orphans`).
        orphans, self._in_flight = list(self._in_flight), collections.deque()
        lost = LogUnavailable(
            f"event log unavailable: its writer process ended{said} before storing these "
            "events; they were not stored (publish them again)"
        )
        self._fail_all(lost)
        unknown = LogUnavailable(
            f"event log unavailable: its writer process ended{said} before answering; the "
            "events may or may not be stored (publish them again with the same eventId to "
            "find out)"
        )
        for item in orphans:
            if item.job is not None:
                _settle(item.job.future, None, unknown)
        orphans = [item for item in orphans if item.job is None]
        assert self._loop is not None
        self._restarting = self._loop.create_task(
            self._restart(transport, pipe, orphans, self._applied_seq, lost, unknown)
        )

    def _fail_all(self, error: LogError) -> None:
        sent, self._in_flight = list(self._in_flight), collections.deque()
        pending, self._pending = self._pending, []
        self._holding = False
        for item in sent:
            if item.job is not None:
                _settle(item.job.future, None, error)
            for append in item.appends:
                _settle(append.future, None, error)
        for queued in pending:
            _settle(queued.future, None, error)

    async def _restart(
        self,
        old: asyncio.SubprocessTransport | None,
        pipe: _Pipe,
        orphans: list[_Sent],
        applied: int,
        lost: LogError,
        unknown: LogError,
    ) -> None:
        """Start a new writer (it continues the sequences from the database), hand
        `on_records` what the old one stored but did not answer (everything above `applied`),
        then answer the `orphans` it left unanswered from what is stored (`lost`: not stored).
        Gives up, leaving the log unavailable, after `_RESTARTS` tries, or when what was
        stored cannot be read; the orphans then fail with `unknown`."""
        try:
            if old is not None:
                await self._wait_exit(old, pipe)
            for attempt in range(1, _RESTARTS + 1):
                try:
                    await self._spawn(self._applied_seq)
                except LogError as exc:
                    logger.error("starting the event log's writer again failed: %s", exc.message)
                    if attempt == _RESTARTS or self._closed:
                        self._broken = LogUnavailable(
                            f"event log unavailable: its writer could not be started: {exc.message}"
                        )
                        return
                    await asyncio.sleep(0.1 * attempt)
                    continue
                break
            try:
                async for records in self.read(self._applied_seq):
                    self._apply(records)
                await self._settle_orphans(orphans, applied, lost, unknown)
            except LogError as exc:
                logger.error("reading what the event log's writer stored failed: %s", exc.message)
                self._broken = LogUnavailable(
                    f"event log unavailable: the state cannot catch up with it: {exc.message}"
                )
                return
            logger.warning("the event log's writer was started again; writes resume")
        finally:
            for item in orphans:
                for append in item.appends:
                    _settle(append.future, None, unknown)
            self._restarting = None
            if self._broken is not None:
                self._fail_all(self._broken)

    async def _settle_orphans(
        self, orphans: list[_Sent], applied: int, lost: LogError, unknown: LogError
    ) -> None:
        """Answer the appends a dead writer left unanswered, message by message, from what the
        file holds: a message was stored whole or not at all (it was one part of a
        transaction). An entry found above `applied` (the newest sequence answered before the
        writer died) was stored by that writer; one found at or below it was stored before,
        so it is a duplicate. Stored messages get the answer the writer would have given, the
        others fail with `lost` (a retry stores them). `on_records` has seen the records
        already (the catch-up)."""
        messages = [(item, _sent_entries(item)) for item in orphans]
        ids = list({e.event_id for _, entries in messages for e in entries})
        found: dict[str, tuple[int, int]] = await self._read(lambda c: w.lookup(c, ids))
        seen: set[str] = set()  # ids stored by the orphans answered so far, in their order
        counts = collections.Counter[str]()
        for item, entries in messages:
            outcome: list[Appended] = []
            mine: set[str] = set()
            for entry in entries:
                stored = found.get(entry.event_id)
                if stored is None:
                    break
                seq, at = stored
                key = entry.event_id
                outcome.append(Appended(seq, at, seq <= applied or key in seen or key in mine))
                mine.add(key)
            fresh = any(not done.duplicate for done in outcome)
            if fresh:
                seen |= mine
            if len(outcome) < len(entries):
                error = unknown if fresh else lost  # part of a transaction cannot be stored
                for append in item.appends:
                    append.results = error
                counts["unknown" if fresh else "not stored"] += len(item.appends)
            elif item.decision is None:
                self._plain_results(item.appends, outcome)
                counts["stored"] += len(item.appends)
            elif fresh:
                self._checked_results(item.decision, outcome)
                counts["stored"] += len(item.appends)
            else:  # nothing of it was stored (the writer may have refused it as repeated)
                for append in item.appends:
                    append.results = lost
                counts["not stored"] += len(item.appends)
            self._deliver(item.appends, [])
        if counts:
            logger.warning(
                "appends the old writer left unanswered, answered from the log: %d stored, "
                "%d not stored, %d unknown",
                counts["stored"],
                counts["not stored"],
                counts["unknown"],
            )

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
            bound = w.first_seq_at_or_after(conn, since_us)
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
                first_kept = w.first_seq_at_or_after(conn, before_us)
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
        total = 0
        while True:  # the writer removes a chunk per message: appends go on between them
            step: tuple[int, bool] = await self._job(w.PRUNE, w.COUNT.pack(bound))
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


def _sent_entries(sent: _Sent) -> list[Entry]:
    """The entries a message asked the writer to store, in order."""
    if sent.decision is not None:
        return sent.decision.entries
    return [entry for append in sent.appends for entry in append.entries]


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
