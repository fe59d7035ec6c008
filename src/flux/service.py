"""FluxService is the core write path: publish -> log.append -> engine.apply -> listeners, and
the snapshots and retention that keep the log and the state in step.

It builds nothing above it: authorization and rate limits (`flux.permissions`), namespaces
(`flux.namespaces`), connectors, the directory and live delivery are built by the composition
root (`flux.server`), which hands them `publish`, `delete` and `engine` and adds listeners.

Committed records reach `_on_records` on the event loop in sequence order (the log guarantees
it); they are applied to the engine there, before the appends that wrote them return, so a
client's read after its write's 200 sees the write. On a shared log (several nodes on one JetStream
stream) other nodes write while this one starts: the log delivers their records from the end
it found at `start`, while `start` replays up to the end it finds when reading, which may be
further. Until the replay is done `_on_records` only keeps what it is handed; then the replay's
records and the kept ones are applied in sequence order, each once: whatever either path hands
over at or below the state's sequence is already applied and is dropped (one comparison per
delivery). This keeps the log contract as it is (deliveries from `start` on, `read` to the
end) and needs nothing of the backend: the SQLite log, written only through this service,
simply delivers nothing during the replay. Snapshots are taken on the loop (one C call
to encode) and written in a thread.

Snapshots go to a `flux.snapshots.Snapshots` store: the data dir's files, or in a cluster the
object store every node shares. There, only the node holding the `snapshots` job
(`snapshot_writer`, see `flux.jobs`) writes them and applies retention, so the shared stream is
pruned only up to what the shared snapshots cover; a node that starts with an empty data dir
restores the newest of them and replays the stream after it.

A delete writes a tombstone only for an entity that exists where the log orders it (see
`delete`): never one for an entity that does not exist, and one, not several, when deletes of
an entity race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from itertools import islice, repeat
from pathlib import Path
from typing import NamedTuple

import orjson

from flux.conditions import Check, Failure, LeaseOp, Verdict, check_of, evaluate
from flux.config import Settings
from flux.engine import Change, StateEngine
from flux.errors import ConditionFailed, LogCorrupt, LogError, ValidationError
from flux.events import (
    LEASE,
    Event,
    conditions_of,
    format_time,
    now_ms,
    now_us,
    tombstone,
    uuid7,
)
from flux.jobs import Job
from flux.log import Appended, Entry, EventLog, Record, open_log
from flux.snapshots import FileSnapshots, Snapshots, SnapshotStore

logger = logging.getLogger("flux.service")

Listener = Callable[[list[Change], list[Record]], None]

LEASE_STREAM = "flux.leases"
# A lease that ran out is ended by an event of its own stream: the reason is in the event,
# not left in the entity's state.
LEASE_EXPIRED_STREAM = "flux.leases.expired"

# A NamedTuple's own constructor is a Python-level __new__; the C one skips it (once per event).
_new_tuple = tuple.__new__
_EVENT_ID = "eventId"


class Deletion(NamedTuple):
    """What `FluxService.delete` did: the tombstone logged for each entity it deleted (by id,
    in the order they were logged) and the ids of entities that did not exist (nothing logged)."""

    deleted: dict[str, tuple[Event, Appended]]
    not_found: list[str]


class FluxService:
    def __init__(
        self,
        settings: Settings,
        log: EventLog | None = None,
        snapshots: Snapshots | None = None,
    ) -> None:
        """The log is opened from `settings` (FLUX_EVENT_LOG) unless one is given; snapshots
        go to the data dir's `snapshots` unless a store is given."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.log = log if log is not None else open_log(settings.event_log_url())
        self.snapshots: Snapshots = snapshots or FileSnapshots(
            SnapshotStore(self.data_dir / "snapshots", keep=settings.snapshot_keep)
        )
        # The job whose holder writes snapshots and applies retention (None: this service
        # always does, as an embedded server).
        self.snapshot_writer: Job | None = None
        # One engine for the server's life: start-up restores into it (`StateEngine.replace`),
        # so the parts handed it at construction keep the right one.
        self.engine = StateEngine(settings.tombstones_kept)
        self.listeners: list[Listener] = []
        self.events_total = 0  # events applied since start (replay excluded)
        self.started_at = time.monotonic()
        self.ready = False
        self._snapshot_seq = 0
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._verifier: asyncio.Task[None] | None = None
        # Tombstones `delete` has handed to the log and that are not applied yet: event id ->
        # entity id, and entity id -> a future done once that tombstone is applied (or failed).
        self._tombstones: dict[str, str] = {}
        self._deleting: dict[str, asyncio.Future[bool]] = {}
        # Events whose stored form a caller waits to see (a lease the log's check filled in).
        self._captures: dict[str, Event | None] = {}
        # Records the log delivered while `start` was still replaying (a shared log).
        self._early: list[Record] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, floor: int = 0) -> None:
        """Restore the newest valid snapshot, replay the log after it, then accept writes. New
        events get sequences above `floor` too (the namespace registry's history floors: a log
        that lost its end must not hand out again a sequence that a floor hides). Raises
        LogCorrupt when the log fails its start-up checks (see docs/architecture.md, "A damaged
        log"): the server then refuses to start."""
        try:
            await self._start(floor)
        except LogCorrupt as exc:
            logger.critical(
                "refusing to start: %s (event log %s). `flux check --data-dir %s` reports "
                "what is damaged",
                exc.message,
                self.settings.event_log_url(),
                self.settings.data_dir,
            )
            raise

    async def _start(self, floor: int) -> None:
        began = time.monotonic()
        await self.snapshots.prepare()
        self.engine.replace(await self._restore_snapshot())
        self._snapshot_seq = self.engine.last_seq
        self._early = []
        # New events must get sequences above the state's, even when the log is behind the
        # snapshot (the log file was lost or replaced): else a later replay would skip them.
        await self.log.start(
            self._on_records, after_seq=max(self.engine.last_seq, floor), checker=self._check
        )
        first = await self.log.first_seq()
        if first > self.engine.last_seq + 1:
            logger.error(
                "the log starts at sequence %d but the state covers only up to %d: "
                "events %d..%d are gone and no snapshot holds them",
                first,
                self.engine.last_seq,
                self.engine.last_seq + 1,
                first - 1,
            )
        if first - 1 > self.engine.last_seq:  # deletions before the log's start are unknown
            self.engine.deleted_floor = max(self.engine.deleted_floor, first - 1)
        replayed = 0
        async for batch in self.log.read(self.engine.last_seq):
            self.engine.apply_all(batch)  # its changes go nowhere: nobody listens yet
            replayed += len(batch)
        early, self._early = self._early, None
        if early:
            self._on_records(early)
        self.ready = True
        logger.info(
            "state ready: %d entities at sequence %d (%d events replayed) in %.2fs",
            len(self.engine),
            self.engine.last_seq,
            replayed,
            time.monotonic() - began,
        )
        self._ticker = asyncio.create_task(self._snapshot_ticker(), name="flux-snapshots")
        if self.settings.log_check_after_start:
            self._verifier = asyncio.create_task(self._verify_log(), name="flux-log-check")

    @property
    def log_damage(self) -> str | None:
        """Why the event log is known to be damaged, or None (the health check reports it)."""
        return self.log.damage

    @property
    def log_unavailable(self) -> str | None:
        """Why the event log cannot take writes now (its store unreachable), or None; the
        health check reports it."""
        return self.log.unavailable

    async def _verify_log(self) -> None:
        """The full check of the log after start-up (FLUX_LOG_CHECK_AFTER_START): damage marks
        the log (health turns `degraded`) and is logged; the server keeps serving its state."""
        began = time.monotonic()
        try:
            await self.log.verify()
        except LogCorrupt:
            return  # logged by the log, and reported by the health check from now on
        except LogError as exc:
            logger.error("could not check the event log: %s", exc.message)
            return
        logger.info("event log checked: no damage found (%.2fs)", time.monotonic() - began)

    async def _restore_snapshot(self) -> StateEngine:
        """The newest snapshot that loads. A shared store may drop the ones listed while they
        are read (another node wrote newer ones meanwhile): then it is listed again, once."""
        listing = await self.snapshots.listing()
        tried: set[str] = set()
        for _ in range(2):
            for name, _seq in listing:
                if name in tried:
                    continue
                tried.add(name)
                try:
                    data = await self.snapshots.load(name)
                    engine = await asyncio.to_thread(
                        StateEngine.restore, data, self.settings.tombstones_kept
                    )
                except (OSError, ValueError, LogError) as exc:
                    logger.warning("snapshot %s is unusable (%s); trying an older one", name, exc)
                    continue
                logger.info(
                    "loaded snapshot %s: %d entities at sequence %d",
                    name,
                    len(engine),
                    engine.last_seq,
                )
                return engine
            if not listing:
                break
            listing = [item for item in await self.snapshots.listing() if item[0] not in tried]
        if tried:
            logger.warning("no usable snapshot; rebuilding state from the whole log")
        return StateEngine(self.settings.tombstones_kept)

    @property
    def writes_snapshots(self) -> bool:
        """Whether this node writes snapshots now (it holds the snapshot job)."""
        writer = self.snapshot_writer
        return writer is None or writer.held

    async def stop(self) -> None:
        """Write a final snapshot and close the log."""
        if self._verifier is not None:
            self._verifier.cancel()  # the log's close interrupts the check's thread
            with contextlib.suppress(asyncio.CancelledError):
                await self._verifier
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        try:
            if self.ready and self.engine.last_seq > self._snapshot_seq and self.writes_snapshots:
                try:
                    await self.snapshot()
                except (OSError, LogError) as exc:
                    logger.error("final snapshot failed: %s", exc)
        finally:
            await self.log.close()
            self.ready = False

    # -- writing ---------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event], *, atomic: bool = False) -> list[Appended]:
        """Append validated events durably; returns after the state has them. An event with
        conditions (`expected_version`, `expected_properties`, `fencing_token`) is stored only
        if they hold where the log orders it; otherwise its result carries the `Failure`
        (`failure`, sequence 0). `atomic`: all of them are stored, in consecutive sequences,
        or none (each refused one's result says why)."""
        return await self.submit(events, atomic=atomic)

    def submit(
        self, events: Sequence[Event], *, atomic: bool = False
    ) -> asyncio.Future[list[Appended]]:
        """`publish` as a future (`flux.log.EventLog.submit`): done once the state has them."""
        datas = encode_events(events)
        entries: list[Entry] = []
        append = entries.append
        checked = False
        for event, data in zip(events, datas, strict=True):
            entity_id = event["payload"].get("entity_id")  # entity_of, inlined: per event
            if type(entity_id) is not str:
                entity_id = None
            check = None
            if len(event) > 5 and conditions_of(event):
                check = check_of(event)
                checked = True
            append(_new_tuple(Entry, (event, event["eventId"], entity_id, data, check)))
        return self.log.submit(entries, checked=checked, atomic=atomic)

    async def publish_checked(self, event: Event, check: Check) -> Appended:
        """Append one event that Flux made, with a check of Flux's own (leases, expiries,
        presence); its result carries the `Failure` when the check did not hold."""
        entity_id = event["payload"]["entity_id"]
        data = orjson.dumps(event)
        (done,) = await self.log.append(
            [Entry(event, event["eventId"], entity_id, data, check)], checked=True
        )
        return done

    @staticmethod
    def lease_event(
        owner: str | None,
        entity_id: str,
        expired: bool = False,
        properties: dict[str, object] | None = None,
    ) -> Event:
        """The event of a lease operation (with `properties` to set with it); the log's check
        writes the lease into it."""
        props: dict[str, object] = {**(properties or {}), LEASE: None}
        return {
            "eventId": uuid7(),
            "stream": LEASE_EXPIRED_STREAM if expired else LEASE_STREAM,
            "source": owner or "flux",
            "timestamp": now_ms(),
            "payload": {"entity_id": entity_id, "properties": props},
        }

    async def lease(
        self, op: LeaseOp, entity_id: str, properties: dict[str, object] | None = None
    ) -> tuple[dict[str, object], Appended]:
        """Acquire, renew or release a lease on an entity (docs/coordination.md); returns the
        lease as stored (empty after a release) and the append's result. Raises
        ConditionFailed when the lease is not the caller's to take or keep."""
        event = self.lease_event(op.owner, entity_id, properties=properties)
        event_id = event["eventId"]
        self._captures[event_id] = None  # `_on_records` keeps the event as it was stored
        try:
            done = await self.publish_checked(event, Check(lease=op))
            stored = self._captures[event_id]
        finally:
            del self._captures[event_id]
        if done.failure is not None:
            raise await self.condition_failed(done.failure)
        lease = stored["payload"]["properties"].get(LEASE) if stored is not None else None
        return (lease if isinstance(lease, dict) else {}), done

    def _check(
        self,
        groups: list[tuple[list[tuple[Event, Check | None]], bool]],
        first_seq: int,
        unapplied: list[Record],
        now_ms: int,
    ) -> list[list[Verdict]]:
        """The log's checker (see `flux.log`): conditions against the state plus the records
        sequenced but not applied yet. Called on the event loop by both logs (the SQLite log
        when every earlier append is applied, so it hands no unapplied records)."""
        return evaluate(self.engine, groups, first_seq, now_ms, unapplied)

    async def condition_failed(self, failure: Failure, index: int | None = None) -> ConditionFailed:
        """The 409 for a failed condition: what was expected, the entity as it is now and the
        source and timestamp of the event that last changed it (from the log)."""
        details = await self.conflict_details(failure)
        if index is not None:
            details = {"index": index, **details}
        return ConditionFailed(f"condition failed: {failure.reason}", details)

    async def conflict_details(self, failure: Failure) -> dict[str, object]:
        """The entity as the condition found it (version 0 and `current` null: it did not
        exist), and the source and timestamp of the newest event the log holds for it."""
        last_source = last_timestamp = None
        current: dict[str, object] | None = None
        if failure.current_properties is not None:
            current = {
                "id": failure.entity_id,
                "properties": failure.current_properties,
                "version": failure.current_version,
            }
            entity = self.engine.get(failure.entity_id)
            if entity is not None and entity.version == failure.current_version:
                current["lastUpdated"] = format_time(entity.last_updated)
            try:
                newest = await self.log.history(failure.entity_id, 0, 1)
            except LogError:
                newest = []
            if newest:
                last = orjson.loads(newest[0])
                last_source, last_timestamp = last.get("source"), last.get("timestamp")
        return {
            "entity_id": failure.entity_id,
            "expected": failure.expected,
            "current_version": failure.current_version,
            "current": current,
            "last_source": last_source,
            "last_timestamp": last_timestamp,
        }

    async def delete(self, entity_ids: Sequence[str]) -> Deletion:
        """Delete the entities that exist: one tombstone each, none for an id whose entity does
        not exist (it is listed in `not_found`). Raises LogError when the log fails.

        Existence is decided where the log orders the tombstones. The check and the hand-over
        to the log happen in one step of the event loop (the log sequences appends in the order
        they are handed over), against the state plus the tombstones of earlier deletes that
        are sequenced but not applied yet: so two deletes of one entity never both log one, and
        an id whose entity another delete is removing counts as not found once that tombstone
        is applied (if its append fails, the id is checked again). Other writes still in flight
        (not applied, so not acknowledged) are concurrent with the delete, which is ordered
        before them: an update in flight that creates the entity leaves it created.

        Shielded: a client going away does not stop it half-way (nor leave its tombstones
        marked as in flight after they were applied)."""
        return await asyncio.shield(self._delete(list(dict.fromkeys(entity_ids))))

    async def _delete(self, pending: list[str]) -> Deletion:
        deleted: dict[str, tuple[Event, Appended]] = {}
        not_found: list[str] = []
        while pending:
            entities = self.engine.entities
            deleting = self._deleting
            found: list[str] = []
            waits: dict[str, asyncio.Future[bool]] = {}
            for entity_id in pending:
                other = deleting.get(entity_id)
                if other is not None:
                    waits[entity_id] = other
                elif entity_id in entities:
                    found.append(entity_id)
                else:
                    not_found.append(entity_id)
            if found:
                events = [tombstone(entity_id) for entity_id in found]
                appended = await self._log_tombstones(events)
                for entity_id, event, done in zip(found, events, appended, strict=True):
                    deleted[entity_id] = (event, done)
            pending = []
            if waits:
                await asyncio.wait(set(waits.values()))
                for entity_id, outcome in waits.items():
                    failed = outcome.cancelled() or outcome.result()
                    (pending if failed else not_found).append(entity_id)
        return Deletion(deleted, not_found)

    async def _log_tombstones(self, events: list[Event]) -> list[Appended]:
        """Publish tombstones, marked as in flight (`_deleting`) from the moment they are
        handed to the log until they are applied (`_on_records`) or their append failed."""
        loop = asyncio.get_running_loop()
        for event in events:
            entity_id = event["payload"]["entity_id"]
            self._tombstones[event["eventId"]] = entity_id
            self._deleting[entity_id] = loop.create_future()
        try:
            return await self.publish(events)
        finally:
            for event in events:  # still marked: not applied, so the append failed
                entity_id = self._tombstones.pop(event["eventId"], None)
                if entity_id is not None:
                    self._applied_or_failed(entity_id, failed=True)

    def _applied_or_failed(self, entity_id: str, failed: bool) -> None:
        future = self._deleting.pop(entity_id, None)
        if future is not None and not future.done():
            future.set_result(failed)

    def _on_records(self, records: list[Record]) -> None:
        if self._early is not None:  # still replaying: applied once the replay is done
            self._early += records
            return
        if records[0].seq <= self.engine.last_seq:  # already replayed (a shared log)
            records = [record for record in records if record.seq > self.engine.last_seq]
            if not records:
                return
        changes = self.engine.apply_all(records)
        self.events_total += len(records)
        if self._captures:
            captures = self._captures
            for record in records:
                if record.event["eventId"] in captures:
                    captures[record.event["eventId"]] = record.event
        if self._tombstones:
            pop = self._tombstones.pop
            for record in records:
                entity_id = pop(record.event["eventId"], None)
                if entity_id is not None:
                    self._applied_or_failed(entity_id, failed=False)
        for listener in self.listeners:
            try:
                listener(changes, records)
            except Exception:
                logger.exception("a state listener failed")
        if (
            self.engine.last_seq - self._snapshot_seq >= self.settings.snapshot_every_events
            and self._snapshot_task is None
            and self.writes_snapshots
        ):
            self._snapshot_task = asyncio.create_task(self._background_snapshot())

    # -- snapshots and retention -----------------------------------------------------------

    async def snapshot(self) -> int:
        """Write a snapshot of the current state, then apply retention; returns its sequence.

        Retention removes only events that every kept snapshot covers (up to the oldest kept
        one's sequence), so falling back to an older snapshot at start-up still finds the
        events after it."""
        async with self._snapshot_lock:
            began = time.monotonic()
            seq = self.engine.last_seq
            # Encoded a piece at a time, letting requests run between pieces (a whole 100k
            # entity state in one call held the loop for 100-300 ms); a fuzzy snapshot,
            # exact after replay from `seq` (see StateEngine.snapshot_parts).
            parts = []
            for part in self.engine.snapshot_parts():
                parts.append(part)
                await asyncio.sleep(0)
            data = b"".join(parts)
            name = await self.snapshots.save(data, seq)
            self._snapshot_seq = seq
            kept = await self.snapshots.listing()
            covered = min((kept_seq for _, kept_seq in kept), default=seq)
            logger.info(
                "snapshot %s written: %d entities, %d bytes of state, %.2fs",
                name,
                len(self.engine),
                len(data),
                time.monotonic() - began,
            )
        if self.writes_snapshots:  # a writer that lost its job meanwhile leaves it to the next
            await self._apply_retention(min(covered, seq))
        return seq

    async def _apply_retention(self, covered_seq: int) -> None:
        s = self.settings
        if not s.retention_max_age_seconds and not s.retention_max_events:
            return
        before = now_us() - s.retention_max_age_seconds * 1_000_000
        try:
            removed = await self.log.prune(
                covered_seq,
                before if s.retention_max_age_seconds else None,
                s.retention_max_events or None,
            )
        except LogError as exc:
            logger.error("retention pass failed: %s", exc)
            return
        if removed:
            logger.info("retention removed %d events up to sequence %d", removed, covered_seq)

    async def _background_snapshot(self) -> None:
        try:
            await self.snapshot()
        except Exception:
            logger.exception("snapshot failed")
        finally:
            self._snapshot_task = None

    async def _snapshot_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_seconds)
            if (
                self.engine.last_seq > self._snapshot_seq
                and self._snapshot_task is None
                and self.writes_snapshots
            ):
                self._snapshot_task = asyncio.create_task(self._background_snapshot())


_EVENT_START = b',{"eventId":"'
_EVENT_HEAD = _EVENT_START[1:]


def encode_events(events: Sequence[Event]) -> list[bytes]:
    """Each event's compact JSON, for the log. Raises ValidationError for an event orjson
    cannot encode.

    Several events are encoded in one `orjson` call and the result is cut between them (one
    call per event cost 3-4x as much in a 1,000-event batch). An event that `validate_event`
    or `tombstone` made starts with `{"eventId":"`, and inside an event that text can only
    start a nested object (a quote inside a string is escaped): so when every event starts
    with `eventId` and the text occurs exactly once per boundary, the cuts are the
    boundaries. Otherwise each event is encoded on its own. The checks and the cuts are C
    calls over the whole batch (`map`, `bytes.split`), not a Python step per event."""
    dumps = orjson.dumps
    n = len(events)
    if n > 1 and all(map(_EVENT_ID.__eq__, map(next, map(iter, events), repeat(None)))):
        try:
            blob = dumps(events)
        except orjson.JSONEncodeError:
            pass  # find the event to blame, below
        else:
            pieces = blob[1:-1].split(_EVENT_START)
            if len(pieces) == n:
                pieces[1:] = map(_EVENT_HEAD.__add__, islice(pieces, 1, None))
                return pieces
    out = []
    for event in events:
        try:
            out.append(dumps(event))
        except orjson.JSONEncodeError as exc:
            raise ValidationError(f"event cannot be stored: {exc}") from None
    return out
