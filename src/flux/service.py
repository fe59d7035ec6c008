"""FluxService joins the parts: ingest -> log.append -> engine.apply -> listeners, and the
namespace registry, authorization and rate limits in front of them.

Committed records reach `_on_records` on the event loop in sequence order (the log guarantees
it); they are applied to the engine there, before the appends that wrote them return, so a
client's read after its write's 200 sees the write. Snapshots are taken on the loop (one C call
to encode) and written in a thread.

A delete writes a tombstone only for an entity that exists where the log orders it (see
`delete`): never one for an entity that does not exist, and one, not several, when deletes of
an entity race.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import orjson

from flux.auth import (
    REGISTRATION_UNAVAILABLE,
    RESERVED_NAMESPACE,
    Access,
    Credential,
    Namespace,
    check_not_reserved,
    entity_namespace,
)
from flux.config import Settings, check_runtime
from flux.connectors.manager import ConnectorManager
from flux.credentials import CredentialStore
from flux.directory import Directory
from flux.engine import Change, Entity, StateEngine
from flux.errors import (
    Forbidden,
    LogCorrupt,
    LogError,
    NamespaceNotFound,
    NotFound,
    RateLimited,
    ValidationError,
)
from flux.events import Event, entity_of, namespace_of, now_us, tombstone, validate_event
from flux.files import write_atomic
from flux.log import Appended, Entry, EventLog, Record, open_log
from flux.namespaces import NamespaceRegistry
from flux.ratelimit import RateLimiter, retry_after
from flux.snapshots import SnapshotStore

logger = logging.getLogger("flux.service")

Listener = Callable[[list[Change], list[Record]], None]

# A NamedTuple's own constructor is a Python-level __new__; the C one skips it (once per event).
_new_tuple = tuple.__new__


class Deletion(NamedTuple):
    """What `FluxService.delete` did: the tombstone logged for each entity it deleted (by id,
    in the order they were logged) and the ids of entities that did not exist (nothing logged)."""

    deleted: dict[str, tuple[Event, Appended]]
    not_found: list[str]


class AdmittedDeletes(NamedTuple):
    """The ids a delete may remove under the rate limit (in request order), the ids refused
    for it, and the Retry-After seconds for those (0 when none was refused)."""

    admitted: list[str]
    refused: list[str]
    retry_after: int


class FluxService:
    def __init__(
        self,
        settings: Settings,
        log: EventLog | None = None,
        snapshots: SnapshotStore | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` (monotonic seconds) drives the rate limiter; tests pass a fake one."""
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.log = log if log is not None else open_log(settings.event_log_url())
        self.snapshots = snapshots or SnapshotStore(
            self.data_dir / "snapshots", keep=settings.snapshot_keep
        )
        self.engine = StateEngine()
        # The settings in effect: `settings` with the admin's runtime changes (RUNTIME_SETTINGS)
        # applied, from runtime-config.json at start and `update_runtime` since.
        self.runtime = settings
        self.access = Access(admin_token=settings.admin_token)
        self.registry = NamespaceRegistry(self.data_dir / "namespaces.db", self.access)
        self.limiter = RateLimiter(clock) if clock is not None else RateLimiter()
        self.directory = Directory(self, settings.directory_interval_seconds)
        # Connector credentials (encrypted; None without FLUX_ENCRYPTION_KEY) and the
        # connectors running inside the server.
        self.credentials: CredentialStore | None = None
        self.connectors = ConnectorManager(self)
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

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore the newest valid snapshot, replay the log after it, then accept writes.
        Raises LogCorrupt when the log fails its start-up checks (see docs/architecture.md, "A
        damaged log"): the server then refuses to start."""
        try:
            await self._start()
        except LogCorrupt as exc:
            logger.critical(
                "refusing to start: %s (event log %s). `flux check --data-dir %s` reports "
                "what is damaged",
                exc.message,
                self.settings.event_log_url(),
                self.settings.data_dir,
            )
            raise

    async def _start(self) -> None:
        began = time.monotonic()
        self._load_runtime()
        if self.settings.encryption_key is not None and self.credentials is None:
            self.credentials = CredentialStore.open(self.data_dir, self.settings.encryption_key)
        if self.settings.auth_enabled:
            await self.registry.open()
        self.snapshots.clean_temp_files()
        self.engine = await asyncio.to_thread(self._restore_snapshot)
        self._snapshot_seq = self.engine.last_seq
        # New events must get sequences above the state's, even when the log is behind the
        # snapshot (the log file was lost or replaced): else a later replay would skip them.
        # And above every history floor: a log that lost its end must not hand out again a
        # sequence that a deleted namespace's floor hides.
        floors = max(self.access.floors.values(), default=0)
        await self.log.start(self._on_records, after_seq=max(self.engine.last_seq, floors))
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
        replayed = 0
        async for batch in self.log.read(self.engine.last_seq):
            self.engine.apply_all(batch)  # its changes go nowhere: nobody listens yet
            replayed += len(batch)
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
        self.directory.start()
        await self.connectors.start()

    @property
    def log_damage(self) -> str | None:
        """Why the event log is known to be damaged, or None (the health check reports it)."""
        return self.log.damage

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

    def _restore_snapshot(self) -> StateEngine:
        for path in self.snapshots.paths():
            try:
                engine = StateEngine.restore(self.snapshots.load(path))
            except (OSError, ValueError) as exc:
                logger.warning("snapshot %s is unusable (%s); trying an older one", path, exc)
                continue
            logger.info(
                "loaded snapshot %s: %d entities at sequence %d",
                path.name,
                len(engine),
                engine.last_seq,
            )
            return engine
        if self.snapshots.paths():
            logger.warning("no usable snapshot; rebuilding state from the whole log")
        return StateEngine()

    async def stop(self) -> None:
        """Stop the connectors, write a final snapshot and close the log."""
        await self.connectors.stop()
        await self.directory.stop()
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
            if self.ready and self.engine.last_seq > self._snapshot_seq:
                try:
                    await self.snapshot()
                except OSError as exc:
                    logger.error("final snapshot failed: %s", exc)
        finally:
            await self.log.close()
            await self.registry.close()
            if self.credentials is not None:
                self.credentials.close()
                self.credentials = None
            self.ready = False

    # -- runtime config --------------------------------------------------------------------

    @property
    def _runtime_path(self) -> Path:
        return self.data_dir / "runtime-config.json"

    def _load_runtime(self) -> None:
        path = self._runtime_path
        if not path.exists():
            return
        try:
            self.runtime = self.runtime.replace(**check_runtime(orjson.loads(path.read_bytes())))
        except (OSError, ValueError) as exc:
            logger.error("ignoring %s: %s", path, exc)
            return
        logger.info("runtime config loaded from %s", path)

    async def update_runtime(self, changes: dict[str, object]) -> None:
        """Validate, persist, then apply runtime config changes. Raises ValueError."""
        checked = check_runtime(changes)
        merged = {**self.runtime.runtime_values(), **checked}
        await asyncio.to_thread(write_atomic, self._runtime_path, orjson.dumps(merged))
        self.runtime = self.runtime.replace(**checked)
        if checked:
            logger.info("runtime config changed: %s", checked)

    # -- authorization and rate limits -------------------------------------------------------

    @property
    def auth_enabled(self) -> bool:
        return self.settings.auth_enabled

    def authorize_write(self, credential: Credential, entity_id: str | None) -> str | None:
        """May this credential write (or delete) this entity? Auth on: returns its namespace,
        or raises AuthError, InvalidEntityId, NamespaceNotFound or Forbidden (see
        `Access.authorize_write`). Auth off: returns None; only Flux's reserved namespace is
        refused (Forbidden)."""
        if not self.settings.auth_enabled:
            check_not_reserved(entity_id)
            return None
        return self.access.authorize_write(credential, entity_id)

    def admit(self, credential: Credential, event: Event) -> None:
        """Authorize one event and take its place under its namespace's rate limit. Raises as
        `authorize_write`, or RateLimited."""
        namespace = self.authorize_write(credential, entity_of(event))
        if namespace is not None:
            self.rate_limit(namespace)

    def admit_deletes(self, entity_ids: Sequence[str]) -> AdmittedDeletes:
        """Take one event of the namespace's rate limit for each id to delete (ids already
        authorized: with auth on they are all in the caller's namespace), as events do: with
        auth on and rate limiting on. A batch is admitted in part: its first ids, as many as
        the namespace's bucket holds; the rest are refused."""
        runtime = self.runtime
        if not (self.settings.auth_enabled and runtime.rate_limit_enabled):
            return AdmittedDeletes(list(entity_ids), [], 0)
        per_minute = runtime.rate_limit_per_namespace_per_minute
        by_namespace: dict[str | None, list[str]] = {}
        for entity_id in entity_ids:
            by_namespace.setdefault(namespace_of(entity_id), []).append(entity_id)
        allowed: set[str] = set()
        wait = 0.0
        for name, ids in by_namespace.items():
            if name is None:  # not reached: an authorized id has a namespace
                allowed.update(ids)
                continue
            taken, pause = self.limiter.take_many(name, per_minute, len(ids))
            allowed.update(ids[:taken])
            wait = max(wait, pause)
        admitted = [i for i in entity_ids if i in allowed]
        refused = [i for i in entity_ids if i not in allowed]
        return AdmittedDeletes(admitted, refused, retry_after(wait) if refused else 0)

    def rate_limit(self, key: str) -> None:
        """Count one event against `key` (a namespace) when rate limiting is on; raises
        RateLimited with the real wait when the key is over its limit."""
        runtime = self.runtime
        if not runtime.rate_limit_enabled:
            return
        wait = self.limiter.take(key, runtime.rate_limit_per_namespace_per_minute)
        if wait:
            raise RateLimited(retry_after(wait))

    def can_read(self, token: str | Credential | None, entity_id: str) -> bool:
        """Whether the holder of `token` (a bare token, None, or a Credential) may read the
        entity: always with auth off or for a public namespace; for a private one only with its
        token or the admin's. Cheap (a set lookup for public entities), and current: a rotated
        token or a namespace made private takes effect on the next call."""
        if not self.settings.auth_enabled or not self.access.is_private(entity_id):
            return True
        credential = token if isinstance(token, Credential) else Credential.from_token(token)
        return self.access.can_read(credential, entity_id)

    def check_read(self, credential: Credential, entity_id: str) -> None:
        """Raises AuthError (401) or Forbidden (403) when the entity is in a private namespace
        the credential may not read."""
        if self.settings.auth_enabled:
            self.access.check_read(credential, entity_id)

    def hidden_namespaces(self, credential: Credential) -> frozenset[str]:
        """Private namespaces the credential may not read: listings leave them out."""
        if not self.settings.auth_enabled:
            return frozenset()
        return self.access.hidden(credential)

    def check_admin(self, credential: Credential, message: str = "Unauthorized") -> None:
        """The admin gate (`Access.check_admin`): raises AuthError or Forbidden."""
        self.access.check_admin(credential, self.settings.auth_enabled, message)

    # -- namespaces --------------------------------------------------------------------------

    def _namespaces_available(self) -> None:
        if not self.settings.auth_enabled:
            raise NotFound(REGISTRATION_UNAVAILABLE)

    async def register_namespace(
        self, credential: Credential, name: str, private: bool = False
    ) -> tuple[Namespace, str]:
        """Register `name`; returns it and its token (the only time the token is shown).
        Self-service, unless an admin token is configured: then only the admin may. Raises
        NotFound (auth off), AuthError, ValidationError, Conflict or StorageError."""
        self._namespaces_available()
        if self.access.admin_hash is not None:
            self.check_admin(credential, "Admin token required")
        namespace, token = await self.registry.register(name, private, now_us())
        logger.info("namespace %s registered (%s)", name, namespace.id)
        return namespace, token

    def namespace(self, credential: Credential, name: str) -> tuple[Namespace, int]:
        """A namespace and its current entity count. A private one needs its token or the
        admin's. Raises NotFound, AuthError or Forbidden."""
        self._namespaces_available()
        namespace = self.access.require(name)
        self.access.check_read_namespace(credential, name)
        return namespace, self.entity_count(name)

    def entity_count(self, name: str) -> int:
        return sum(1 for _ in self.engine.select(namespace=name))

    async def delete_namespace(self, credential: Credential, name: str) -> int:
        """Admin only. Revokes the namespace's token at once, deletes its entities (tombstones),
        then removes it with its history floor; returns how many entities were deleted. From
        the moment it begins, nothing of the namespace's past is served: not its history, not a
        replay, not to anyone, nor to a later namespace of the same name (see docs/auth.md).
        If a step fails the namespace is put back (retry the delete). Raises NotFound,
        AuthError, Forbidden, LogError or StorageError."""
        self._namespaces_available()
        self.check_admin(credential, "Admin token required")
        # Shielded: a client going away must not stop it half-way.
        return await asyncio.shield(self._delete_namespace(name))

    async def _delete_namespace(self, name: str) -> int:
        """In this order, so that no step (nor a crash between two) reveals the past:
        1. in memory: no more writes (the token is revoked), history and replays of the name
           hidden from everyone, a private namespace kept private;
        2. wait for the writes admitted before that (already handed to the log: admission and
           the hand-over share one step of the event loop) to be applied, so the entities they
           made are in the state and get tombstones, and none of them lands above the floor;
        3. tombstones for every entity;
        4. the floor (the log's sequence after the tombstones) and the removal, in one
           transaction of the registry; after a crash before it, the namespace is still there
           and still private, and a retry finishes the job."""
        async with self.registry.lock:
            namespace, previous_floor = self.access.begin_delete(name)
            try:
                await self.log.sync()
                ids = [entity.id for entity in self.engine.select(namespace=name)]
                deleted = 0
                for chunk in _chunks(ids, 10_000):
                    deleted += len((await self.delete(chunk)).deleted)
                floor = await self.log.sync()
                await self.registry.delete(name, floor)
            except BaseException:
                self.access.undo_delete(namespace, previous_floor)
                raise
        await self.connectors.forget_namespace(name)
        logger.info(
            "namespace %s deleted with its %d entities; its history up to sequence %d is hidden",
            name,
            deleted,
            floor,
        )
        return deleted

    def history_floor(self, entity_id: str) -> int:
        """The sequence at or below which the entity's events are not served by history and
        replays: a deleted namespace's past (0 when nothing is hidden)."""
        return self.access.history_floor(entity_id)

    async def rotate_token(self, credential: Credential, name: str) -> tuple[Namespace, str]:
        """A new token for the namespace (the admin's or the current token's request); the old
        token is revoked when this returns. Raises NotFound, AuthError, Forbidden or
        StorageError."""
        self._namespaces_available()
        self.access.authorize_manage(credential, name)
        namespace, token = await self.registry.rotate(name)
        logger.info("namespace %s: token rotated", name)
        return namespace, token

    async def set_private(self, credential: Credential, name: str, private: bool) -> Namespace:
        """Make a namespace private or public (the admin's or the namespace's own request)."""
        self._namespaces_available()
        self.access.authorize_manage(credential, name)
        namespace = await self.registry.set_private(name, private)
        logger.info("namespace %s is now %s", name, "private" if private else "public")
        return namespace

    def writable(self, credential: Credential, namespace: str | None, prefix: str) -> list[str]:
        """The ids a batch delete by `namespace` (or else by `prefix`) may remove. Auth on: only
        in the caller's own namespace (another namespace is Forbidden; a prefix is narrowed to
        the caller's namespace). Auth off: everything but Flux's reserved namespace."""
        if not self.settings.auth_enabled:
            selected: Iterator[Entity] = (
                self.engine.select(namespace=namespace)
                if namespace is not None
                else self.engine.select(prefix=prefix)
            )
            reserved = RESERVED_NAMESPACE + "/"
            return [e.id for e in selected if not e.id.startswith(reserved)]
        own = self.access.own_namespace(credential)
        if namespace is not None:
            if namespace != own:
                raise Forbidden(
                    f"Token does not have permission to write to namespace '{namespace}'"
                )
            return [e.id for e in self.engine.select(namespace=own)]
        return [e.id for e in self.engine.select(prefix=prefix, namespace=own)]

    async def ingest_as(self, namespace: str | None, items: Sequence[object]) -> list[Appended]:
        """Publish event objects on behalf of a namespace (None: auth off), as connectors do:
        the checks of `POST /api/events/batch` (validation, the namespace of every id, the
        reserved namespace, the rate limit) with the namespace standing in for its token; all
        or nothing. Raises ValidationError, Forbidden, NamespaceNotFound or RateLimited."""
        max_id_length = self.settings.max_entity_id_length
        events = [validate_event(item, max_id_length) for item in items]
        for event in events:
            entity_id = entity_of(event)
            check_not_reserved(entity_id)
            if not self.settings.auth_enabled:
                continue
            name = entity_namespace(entity_id)
            if name != namespace:
                raise Forbidden(f"Token does not have permission to write to namespace '{name}'")
            if self.access.get(name) is None:
                raise NamespaceNotFound(
                    f"Namespace '{name}' not found. Register it with POST /api/namespaces"
                )
        if namespace is not None:
            for _ in events:
                self.rate_limit(namespace)
        return await self.publish(events)

    # -- writing ---------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> list[Appended]:
        """Append validated events durably; returns after the state has them."""
        datas = encode_events(events)
        entries: list[Entry] = []
        append = entries.append
        for event, data in zip(events, datas, strict=True):
            entity_id = event["payload"].get("entity_id")  # entity_of, inlined: per event
            if type(entity_id) is not str:
                entity_id = None
            append(_new_tuple(Entry, (event, event["eventId"], entity_id, data)))
        return await self.log.append(entries)

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
        changes = self.engine.apply_all(records)
        self.events_total += len(records)
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
            path = await asyncio.to_thread(self.snapshots.save, data, seq)
            self._snapshot_seq = seq
            kept = self.snapshots.paths()
            covered = min((self.snapshots.sequence_of(p) for p in kept), default=seq)
            logger.info(
                "snapshot %s written: %d entities, %d bytes of state, %.2fs",
                path.name,
                len(self.engine),
                len(data),
                time.monotonic() - began,
            )
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
            if self.engine.last_seq > self._snapshot_seq and self._snapshot_task is None:
                self._snapshot_task = asyncio.create_task(self._background_snapshot())


_EVENT_START = b',{"eventId":"'


def encode_events(events: Sequence[Event]) -> list[bytes]:
    """Each event's compact JSON, for the log. Raises ValidationError for an event orjson
    cannot encode.

    Several events are encoded in one `orjson` call and the result is cut between them (one
    call per event cost 3-4x as much in a 1,000-event batch). An event that `validate_event`
    or `tombstone` made starts with `{"eventId":"`, and inside an event that text can only
    start a nested object (a quote inside a string is escaped): so when every event starts
    with `eventId` and the text occurs exactly once per boundary, the cuts are the
    boundaries. Otherwise each event is encoded on its own."""
    dumps = orjson.dumps
    n = len(events)
    if n > 1 and all(next(iter(event), None) == "eventId" for event in events):
        try:
            blob = dumps(events)
        except orjson.JSONEncodeError:
            pass  # find the event to blame, below
        else:
            if blob.count(_EVENT_START) == n - 1:
                datas = []
                find = blob.find
                start = 1
                for _ in range(n - 1):
                    cut = find(_EVENT_START, start)
                    datas.append(blob[start:cut])
                    start = cut + 1
                datas.append(blob[start:-1])
                return datas
    out = []
    for event in events:
        try:
            out.append(dumps(event))
        except orjson.JSONEncodeError as exc:
            raise ValidationError(f"event cannot be stored: {exc}") from None
    return out


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
