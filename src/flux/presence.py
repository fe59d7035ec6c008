"""Presence: a WebSocket connection declares properties for an entity (an agent online, with
its capabilities), and when the connection ends (closed, or dropped for not answering pings)
Flux logs the deletion of that entity, so subscribers and history see the agent leave
(docs/coordination.md, "Presence").

The declared entity carries `__presence__` (`{"connection": <id>, "since": <ms>}`, the holder).
The removal is a tombstone on condition that the entity still carries this connection's marker:
if another connection declared the same entity since, or it was deleted, nothing is logged.
Entities still marked when the server starts belong to connections of a previous run, which are
gone: they are removed at start.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from flux.auth import Credential
from flux.conditions import Check
from flux.errors import LogError, ValidationError
from flux.events import EXPIRED, PRESENCE, Event, now_ms, tombstone, uuid7, validate_event
from flux.log import Appended
from flux.permissions import Permissions
from flux.service import FluxService

logger = logging.getLogger("flux.presence")

PRESENCE_STREAM = "flux.presence"
MAX_PER_CONNECTION = 16  # entities one connection may hold presence on


class Presence:
    def __init__(self, service: FluxService, permissions: Permissions) -> None:
        self.service = service
        self.permissions = permissions
        # Per connection (any hashable holder, e.g. a live outbox): entity id -> its marker.
        self.held: dict[object, dict[str, dict[str, Any]]] = {}
        self.removed = 0  # presences removed since start

    async def start(self) -> None:
        """Remove the presence of connections from before this start."""
        stale = [
            (entity.id, entity.properties[PRESENCE])
            for entity in self.service.engine.entities.values()
            if PRESENCE in entity.properties
        ]
        if stale:
            await asyncio.gather(*(self._remove(i, m) for i, m in stale))
            logger.info("removed %d presences left by connections of the previous run", len(stale))

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
