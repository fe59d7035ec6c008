"""Expiries: entities whose time to live ran out, and leases that fell due, end through logged
events, so every subscriber sees them and a replay agrees (docs/coordination.md).

An entity with a `__ttl_ms__` property (an event's `ttl_ms`) expires `ttl_ms` after its last
change (`lastUpdated`); a lease (`__lease__`) at its `expires_at`. One task keeps a heap of due
times, fed by the changes that set either property and, at start, by a scan of the restored
state: what fell due while the server was down is logged at once. When an item falls due the
state is read again (a newer change may have moved its time) and the ending is appended with a
condition the log decides: a tombstone that applies only to the version that expired, a lease
expiry only to the lease that fell due. A write that wins the race keeps the entity.

Expiries run where the `expiries` job is held (`flux.jobs`): always on an embedded server, on
one node at a time in a cluster. Taking the job scans the state and runs; losing it stops the
task and forgets the heap (the next holder scans its own state), so when a holder dies the node
that takes over logs what fell due meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from typing import Any

from flux.conditions import Check, LeaseOp
from flux.engine import Change, Entity
from flux.errors import LogError
from flux.events import EXPIRED, LEASE, TTL, now_ms, tombstone
from flux.jobs import Job
from flux.log import Record
from flux.service import FluxService

logger = logging.getLogger("flux.expiry")

RETRY_MS = 1000  # after the log failed to take an expiry
BATCH = 1000  # expiries handed to the log at once


class Expiries:
    def __init__(self, service: FluxService, job: Job, clock: Callable[[], int] = now_ms) -> None:
        """Expiries of `service`'s state, logged while this node holds `job`."""
        self.service = service
        self.job = job
        self.engine = service.engine
        self.clock = clock
        self._heap: list[tuple[int, str, str]] = []  # (due ms, kind "ttl"/"lease", entity id)
        self._due: dict[tuple[str, str], int] = {}  # the earliest due time queued per item
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.expired = {"ttl": 0, "lease": 0}  # endings logged since start
        service.listeners.append(self.on_changes)
        job.on_change(self._held)

    async def _held(self, held: bool) -> None:
        if held:
            self.start()
        else:
            await self.stop()

    def start(self) -> None:
        """Queue every TTL and lease of the state, then run."""
        if self._task is not None:
            return
        for entity in self.engine.entities.values():
            self._track(entity)
        self._task = asyncio.create_task(self._run(), name="flux-expiry")

    async def stop(self) -> None:
        """Stop running and forget what was queued."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._heap.clear()
        self._due.clear()

    def on_changes(self, changes: list[Change], records: list[Record]) -> None:
        if self._task is None:
            return  # not running: the next `start` scans the state
        engine = self.engine
        for change in changes:
            props = change.properties
            if props is not None and (TTL in props or LEASE in props):
                entity = engine.get(change.entity_id)
                if entity is not None:
                    self._track(entity)

    def _track(self, entity: Entity) -> None:
        props = entity.properties
        ttl = props.get(TTL)
        if type(ttl) is int and ttl > 0:
            self._queue("ttl", entity.id, entity.last_updated // 1000 + ttl)
        lease = props.get(LEASE)
        if type(lease) is dict and lease.get("owner") is not None:
            due = lease.get("expires_at")
            if type(due) is int:
                self._queue("lease", entity.id, due)

    def _queue(self, kind: str, entity_id: str, due: int) -> None:
        key = (kind, entity_id)
        queued = self._due.get(key)
        if queued is not None and queued <= due:
            return  # an earlier check is queued; it looks at the state again then
        self._due[key] = due
        first = self._heap[0][0] if self._heap else None
        heapq.heappush(self._heap, (due, kind, entity_id))
        if first is None or due < first:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            now = self.clock()
            while self._heap and self._heap[0][0] <= now:
                fallen: list[tuple[str, str]] = []
                while self._heap and self._heap[0][0] <= now and len(fallen) < BATCH:
                    due, kind, entity_id = heapq.heappop(self._heap)
                    if self._due.get((kind, entity_id)) != due:
                        continue  # superseded by an earlier entry
                    del self._due[(kind, entity_id)]
                    fallen.append((kind, entity_id))
                # Together, so the log commits them in a few groups, not one by one.
                await asyncio.gather(*(self._end(kind, entity_id) for kind, entity_id in fallen))
                now = self.clock()
            self._wake.clear()
            timeout = (self._heap[0][0] - now) / 1000 if self._heap else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    async def _end(self, kind: str, entity_id: str) -> None:
        """Log the ending of an item that fell due, if the state still says so and this node
        holds the job now (else the node that does logs it)."""
        entity = self.engine.get(entity_id)
        if entity is None:
            return
        if not self.job.held:  # lost (then `stop` clears the heap) or held again in a moment
            self._queue(kind, entity_id, self.clock() + RETRY_MS)
            return
        now = self.clock()
        try:
            if kind == "ttl":
                ttl = entity.properties.get(TTL)
                if type(ttl) is not int or ttl <= 0:
                    return
                due = entity.last_updated // 1000 + ttl
                if due > now:
                    self._queue(kind, entity_id, due)
                    return
                event = tombstone(entity_id)
                event["source"] = "flux"
                event["payload"]["properties"][EXPIRED] = "ttl"
                done = await self.service.publish_checked(
                    event, Check(expected_version=entity.version)
                )
            else:
                lease: Any = entity.properties.get(LEASE)
                if type(lease) is not dict or lease.get("owner") is None:
                    return
                expires = lease.get("expires_at")
                if type(expires) is int and expires > now:
                    self._queue(kind, entity_id, expires)
                    return
                done = await self.service.publish_checked(
                    self.service.lease_event(None, entity_id, expired=True),
                    Check(lease=LeaseOp("expire", None, lease.get("token"), None)),
                )
        except LogError as exc:
            logger.error("could not log the %s expiry of %s: %s", kind, entity_id, exc.message)
            self._queue(kind, entity_id, self.clock() + RETRY_MS)
            return
        if done.failure is None:
            self.expired[kind] += 1
            return
        # Changed meanwhile (updated, renewed, released, deleted): look again.
        entity = self.engine.get(entity_id)
        if entity is not None:
            self._track(entity)
