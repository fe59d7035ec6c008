"""Presence: a WebSocket connection declares properties for an entity (an agent online, with
its capabilities), and when the connection ends (closed, or dropped for not answering pings)
Flux logs the deletion of that entity, so subscribers and history see the agent leave
(docs/coordination.md, "Presence").

The declared entity carries `__presence__` (`{"connection": <id>, "since": <ms>}`, the holder;
in a cluster also `"node": <node id>`, the node whose WebSocket holds it). The removal is a
tombstone on condition that the entity still carries this connection's marker: if another
connection declared the same entity since, or it was deleted, nothing is logged. Entities still
marked by this node when it starts belong to its connections of a previous run, which are gone:
they are removed at start. Other nodes' presences are alive while their node is: in a cluster
the holder of the `presence` job (`flux.jobs`) removes, every job TTL, the presences of nodes
whose liveness key aged out (a node killed without closing its connections).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from flux.auth import Credential
from flux.conditions import Check
from flux.errors import LogError, ValidationError
from flux.events import EXPIRED, PRESENCE, Event, now_ms, tombstone, uuid7, validate_event
from flux.jobs import Jobs
from flux.log import Appended
from flux.permissions import Permissions
from flux.service import FluxService

logger = logging.getLogger("flux.presence")

PRESENCE_STREAM = "flux.presence"
MAX_PER_CONNECTION = 16  # entities one connection may hold presence on


class Presence:
    def __init__(self, service: FluxService, permissions: Permissions, jobs: Jobs) -> None:
        """Presence on `service`; `jobs` tell this node's id and which nodes are alive."""
        self.service = service
        self.permissions = permissions
        self.jobs = jobs
        self.job = jobs.job("presence")
        self.job.on_change(self._held)
        self._janitor: asyncio.Task[None] | None = None
        # Per connection (any hashable holder, e.g. a live outbox): entity id -> its marker.
        self.held: dict[object, dict[str, dict[str, Any]]] = {}
        self.removed = 0  # presences removed since start

    async def start(self) -> None:
        """Remove the presence of this node's connections from before this start (embedded:
        every presence)."""
        node = self.jobs.node
        stale = [
            (entity_id, marker)
            for entity_id, marker in self._marked()
            if node is None or marker.get("node") == node
        ]
        if stale:
            await asyncio.gather(*(self._remove(i, m) for i, m in stale))
            logger.info("removed %d presences left by connections of the previous run", len(stale))

    async def stop(self) -> None:
        await self._held(False)

    def _marked(self) -> list[tuple[str, dict[str, Any]]]:
        return [
            (entity.id, marker)
            for entity in self.service.engine.entities.values()
            if type(marker := entity.properties.get(PRESENCE)) is dict
        ]

    async def _held(self, held: bool) -> None:
        if held and self.jobs.node is not None and self._janitor is None:
            self._janitor = asyncio.create_task(self._sweeping(), name="flux-presence-janitor")
        elif not held and self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
            self._janitor = None

    async def _sweeping(self) -> None:
        while True:
            try:
                await self.sweep()
            except LogError as exc:
                logger.warning("presences of dead nodes not removed: %s", exc.message)
            await asyncio.sleep(self.jobs.ttl)

    async def sweep(self) -> int:
        """Remove the presences of nodes no longer alive; returns how many. The state is read
        before the liveness keys: a presence in it was declared after its node announced
        itself, so a live node is never taken for dead. Raises LogError when NATS does not
        answer."""
        node = self.jobs.node
        candidates = [(i, m) for i, m in self._marked() if m.get("node") != node]
        if not candidates:
            return 0
        alive = await self.jobs.alive()
        gone = [(i, m) for i, m in candidates if m.get("node") not in alive]
        if not gone or not self.job.held:
            return 0
        before = self.removed
        await asyncio.gather(*(self._remove(i, m) for i, m in gone))
        removed = self.removed - before
        nodes = sorted({str(m.get("node")) for _, m in gone})
        logger.info(
            "node %s removed %d presences of nodes no longer alive (%s)",
            node,
            removed,
            ", ".join(nodes),
        )
        return removed

    async def declare(
        self,
        holder: object,
        credential: Credential,
        entity_id: Any,
        properties: Any,
        source: Any = None,
    ) -> Appended:
        """Publish `properties` for the entity as the connection's presence (the same checks
        as a published event: validation, write permission, rate limit). Raises FluxError."""
        if type(entity_id) is not str or type(properties) is not dict or not properties:
            raise ValidationError(
                "presence needs `entity_id` (a string) and `properties` (a non-empty object)"
            )
        held = self.held.setdefault(holder, {})
        if entity_id not in held and len(held) >= MAX_PER_CONNECTION:
            raise ValidationError(
                f"a connection holds presence on at most {MAX_PER_CONNECTION} entities"
            )
        marker = held.get(entity_id)
        if marker is None:
            marker = {"connection": uuid7(), "since": now_ms()}
            if self.jobs.node is not None:
                marker["node"] = self.jobs.node
        event = validate_event(
            {
                "stream": PRESENCE_STREAM,
                "source": source if source is not None else "presence",
                "timestamp": now_ms(),
                "payload": {"entity_id": entity_id, "properties": properties},
            },
            self.service.settings.max_entity_id_length,
        )
        self.permissions.admit(credential, event)
        event["payload"]["properties"] = {**properties, PRESENCE: marker}
        (done,) = await self.service.publish([event])
        held[entity_id] = marker
        if self.held.get(holder) is not held:  # the connection ended meanwhile
            await self._remove(entity_id, marker)
        return done

    async def leave(self, holder: object) -> None:
        """The connection ended: remove each presence it still holds."""
        held = self.held.pop(holder, None)
        if held:
            await asyncio.gather(*(self._remove(i, m) for i, m in held.items()))

    async def _remove(self, entity_id: str, marker: Any) -> None:
        event: Event = tombstone(entity_id)
        event["source"] = "flux"
        event["payload"]["properties"][EXPIRED] = "presence"
        try:
            done = await self.service.publish_checked(
                event, Check(expected_properties={PRESENCE: marker})
            )
        except LogError as exc:
            logger.error("could not log the end of %s's presence: %s", entity_id, exc.message)
            return
        if done.failure is None:
            self.removed += 1
