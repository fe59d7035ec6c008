"""The directory: the entity `flux-core/directory`, which Flux itself keeps current.

Its properties list the active namespaces with their entity counts, and the total number of
entities:

    {"namespaces": [{"name": "matt", "entityCount": 3}, ...],   # sorted by name
     "namespaceCount": 1,
     "totalEntities": 4}

With auth on, the active namespaces are the registered public ones (a private namespace is left
out; a registered one with no entities yet is listed with 0). With auth off they are the id
prefixes in use (the part of an id before its first `/`). Flux's own `flux-core` is not listed;
`totalEntities` counts every entity on the server, the directory and private ones included
(`/api/health`'s `entities` plus its `systemEntities`: health counts Flux's own entities apart).

The directory is an ordinary entity, written by ordinary events (source `flux`, stream
`flux.directory`) through the service's `publish` (which the composition root hands over), so it
is in the state, the history and live updates like any other. A timer
(`FLUX_DIRECTORY_INTERVAL_SECONDS`) coalesces the changes: at each tick the directory is
computed and an event is appended only if it differs from the entity's current properties.
`directory_properties` is pure; `Directory` runs the timer. In a cluster only the node holding
the `directory` job (`flux.jobs`) writes at its ticks, so the nodes do not each write it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

from flux.auth import RESERVED_NAMESPACE, Access
from flux.engine import StateEngine
from flux.errors import FluxError
from flux.events import Event, now_ms, uuid7
from flux.jobs import Job

logger = logging.getLogger("flux.directory")

DIRECTORY_ID = f"{RESERVED_NAMESPACE}/directory"
DIRECTORY_STREAM = "flux.directory"
DIRECTORY_SOURCE = "flux"


def directory_properties(counts: Mapping[str, int], total: int) -> dict[str, Any]:
    """The directory's properties for these namespace entity counts and this total."""
    names = sorted(name for name in counts if name != RESERVED_NAMESPACE)
    return {
        "namespaces": [{"name": name, "entityCount": counts[name]} for name in names],
        "namespaceCount": len(names),
        "totalEntities": total,
    }


def registered_counts(
    names: Iterable[str], hidden: Iterable[str], counts: Mapping[str, int]
) -> dict[str, int]:
    """Auth on: every registered namespace not hidden (private), with its entity count."""
    skip = set(hidden)
    return {name: counts.get(name, 0) for name in names if name not in skip}


def directory_event(properties: dict[str, Any]) -> Event:
    """The event that sets the directory (already in canonical form)."""
    return {
        "eventId": uuid7(),
        "stream": DIRECTORY_STREAM,
        "source": DIRECTORY_SOURCE,
        "timestamp": now_ms(),
        "key": DIRECTORY_ID,
        "payload": {"entity_id": DIRECTORY_ID, "properties": properties},
    }


class Directory:
    """Keeps the directory entity of `engine` current, appending through `publish`. `access`
    is the namespace index with auth on (the registered namespaces are listed), None with auth
    off (the id prefixes in use are). The timer writes only while this node holds `job`."""

    def __init__(
        self,
        interval: float,
        *,
        engine: StateEngine,
        publish: Callable[[Sequence[Event]], Awaitable[object]],
        access: Access | None,
        job: Job,
    ) -> None:
        self.interval = interval
        self.job = job
        self.engine = engine
        self._publish = publish
        self.access = access
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    def current(self) -> dict[str, Any]:
        """What the directory should say now."""
        engine = self.engine
        counts = engine.namespace_counts()
        access = self.access
        if access is not None:
            counts = registered_counts(access.namespaces, access.private, counts)
        total = len(engine) + (0 if engine.get(DIRECTORY_ID) is not None else 1)
        return directory_properties(counts, total)

    def stale(self) -> dict[str, Any] | None:
        """The new properties when the entity does not already say them, else None."""
        wanted = self.current()
        entity = self.engine.get(DIRECTORY_ID)
        if entity is not None and all(entity.properties.get(k) == v for k, v in wanted.items()):
            return None
        return wanted

    async def refresh(self) -> bool:
        """Append a directory event if the directory changed; True if one was appended.
        Raises LogError when the log refuses it."""
        async with self._lock:
            wanted = self.stale()
            if wanted is None:
                return False
            await self._publish([directory_event(wanted)])
            return True

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._ticker(), name="flux-directory")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self.job.held:
                continue
            try:
                await self.refresh()
            except FluxError as exc:
                logger.warning("directory not updated: %s", exc.message)
            except Exception:
                logger.exception("directory update failed")
