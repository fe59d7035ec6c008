"""Live state: fan committed changes out to WebSocket and SSE connections.

Each connection has an `Outbox`: a bounded queue of encoded messages and a wake-up event, drained
by the connection's own sender task. The service calls `Live.on_changes` on the event loop after
each commit; it encodes every message once and puts it on each matching outbox, never awaiting a
socket, so a slow client cannot slow ingestion or the other clients. An outbox that overflows is
marked, and its sender closes the connection with a reason.

A subscription with `since` replays the log from that version up to the sequence the state had
when the subscription was registered, while live messages for the connection wait in a staging
list; then the staged messages follow. So the client sees every change once, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from flux.engine import Change, Entity
from flux.events import DELETED, entity_of, format_time, now_us
from flux.hub import WILDCARD, Hub
from flux.log import Record
from flux.metrics import EventMetrics
from flux.service import FluxService

logger = logging.getLogger("flux.live")

# A queued message: (version or None, type, JSON text). Encoded once, shared by every outbox.
Message = tuple[int | None, str, str]


class Outbox:
    """One live connection's outgoing side."""

    __slots__ = ("messages", "limit", "wake", "overflowed", "staging", "closed")

    def __init__(self, limit: int) -> None:
        self.messages: deque[Message] = deque()
        self.limit = limit
        self.wake = asyncio.Event()
        self.overflowed = False
        self.staging: list[Message] | None = None
        self.closed = False

    def push(self, message: Message) -> None:
        if self.overflowed or self.closed:
            return
        if self.staging is not None:
            self.staging.append(message)
            if len(self.staging) + len(self.messages) > self.limit:
                self._overflow()
            return
        self.messages.append(message)
        if len(self.messages) > self.limit:
            self._overflow()
        self.wake.set()

    def _overflow(self) -> None:
        self.overflowed = True
        self.messages.clear()
        self.staging = None
        self.wake.set()

    def begin_staging(self) -> None:
        if self.staging is None:
            self.staging = []

    def end_staging(self) -> None:
        staged, self.staging = self.staging, None
        for message in staged or ():
            self.push(message)

    async def take(self) -> list[Message]:
        """Wait for messages and take them all (empty when the outbox overflowed or closed)."""
        while not self.messages and not self.overflowed and not self.closed:
            self.wake.clear()
            await self.wake.wait()
        if self.overflowed or self.closed:
            return []
        taken = list(self.messages)
        self.messages.clear()
        return taken


@dataclass(frozen=True)
class Filter:
    """What one subscription matches: an exact id, a prefix, or everything."""

    entity_id: str | None = None
    prefix: str | None = None

    def matches(self, entity_id: str) -> bool:
        if self.prefix is not None:
            return entity_id.startswith(self.prefix)
        return self.entity_id == WILDCARD or self.entity_id == entity_id

    def describe(self) -> dict[str, str]:
        if self.prefix is not None:
            return {"prefix": self.prefix}
        return {"entity_id": self.entity_id or WILDCARD}


def encode(message: dict[str, Any], version: int | None = None) -> Message:
    return (version, message["type"], orjson.dumps(message).decode())


def change_messages(change: Change) -> list[Message]:
    ts = format_time(change.at, zulu=True)
    if change.kind == "delete":
        return [
            encode(
                {
                    "type": "entity_deleted",
                    "entity_id": change.entity_id,
                    "timestamp": ts,
                    "version": change.version,
                },
                change.version,
            )
        ]
    assert change.properties is not None
    return [
        encode(
            {
                "type": "state_update",
                "entity_id": change.entity_id,
                "property": name,
                "value": value,
                "timestamp": ts,
                "version": change.version,
            },
            change.version,
        )
        for name, value in change.properties.items()
    ]


def record_change(record: Record) -> Change | None:
    """The change a logged event stands for, without state (for replay): an update for every
    event with properties, a delete for every tombstone."""
    entity_id = entity_of(record.event)
    props = record.event["payload"].get("properties")
    if entity_id is None or type(props) is not dict or not props:
        return None
    if props.get(DELETED) is True:
        return Change("delete", entity_id, None, record.seq, record.at)
    return Change("update", entity_id, props, record.seq, record.at)


def snapshot_message(entity: Entity) -> Message:
    return encode(
        {
            "type": "snapshot",
            "entity_id": entity.id,
            "properties": entity.properties,
            "timestamp": format_time(entity.last_updated, zulu=True),
            "version": entity.version,
        },
        entity.version,
    )


class Live:
    def __init__(self, service: FluxService) -> None:
        self.service = service
        self.settings = service.settings
        self.hub: Hub[Outbox] = Hub()
        self.metrics = EventMetrics()
        self._ticker: asyncio.Task[None] | None = None
        service.listeners.append(self.on_changes)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._metrics_ticker(), name="flux-metrics")

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for outbox in list(self.hub.connections()):
            outbox.closed = True
            outbox.wake.set()

    def connect(self) -> Outbox:
        outbox = Outbox(self.settings.ws_queue_limit)
        self.hub.add(outbox)
        return outbox

    def disconnect(self, outbox: Outbox) -> None:
        outbox.closed = True
        outbox.wake.set()
        self.hub.remove(outbox)

    @property
    def connections(self) -> int:
        return len(self.hub)

    # -- fan-out ---------------------------------------------------------------------------

    def on_changes(self, changes: list[Change], records: list[Record]) -> None:
        self.metrics.record(len(records), (r.event["source"] for r in records))
        if not len(self.hub):
            return
        match = self.hub.match
        for change in changes:
            targets = match(change.entity_id)
            if not targets:
                continue
            for message in change_messages(change):
                for outbox in targets:
                    outbox.push(message)

    def metrics_message(self) -> Message:
        service = self.service
        return encode(
            {
                "type": "metrics_update",
                "timestamp": format_time(now_us(), zulu=True),
                "entities": {"total": len(service.engine)},
                "events": {
                    "total": service.engine.last_seq,
                    "rate_per_second": self.metrics.rate_per_second(),
                },
                "websocket": {"connections": self.connections},
                "publishers": {"active": self.metrics.active_publishers()},
            }
        )

    async def _metrics_ticker(self) -> None:
        while True:
            if len(self.hub):
                message = self.metrics_message()
                for outbox in self.hub.connections():
                    outbox.push(message)
            await asyncio.sleep(self.settings.metrics_interval_seconds)

    # -- subscriptions ---------------------------------------------------------------------

    async def subscribe(
        self, outbox: Outbox, flt: Filter, *, snapshot: bool = False, since: int | None = None
    ) -> None:
        """Register a subscription; with `snapshot`, first send the matching entities' state;
        with `since`, first replay the changes after that version. Ends with `subscribed`."""
        first_seq = await self.service.log.first_seq() if since is not None else 0
        engine = self.service.engine
        upto = engine.last_seq  # from here on, everything is synchronous up to the staging
        self.hub.subscribe(outbox, entity_id=flt.entity_id, prefix=flt.prefix)
        too_old = since is not None and since + 1 < first_seq and since < upto
        if too_old:
            outbox.push(
                encode(
                    {
                        "type": "resync",
                        "reason": f"the log no longer reaches back to version {since}; "
                        "sending the current state instead",
                        "version": upto,
                    }
                )
            )
        if snapshot or too_old:
            for entity in self._select(flt):
                outbox.push(snapshot_message(entity))
        if since is not None and not too_old and since < upto:
            outbox.begin_staging()
            try:
                await self._replay(outbox, flt, since, upto)
            finally:
                ack = encode({"type": "subscribed", **flt.describe(), "version": upto})
                if outbox.staging is not None:
                    outbox.staging.insert(0, ack)
                outbox.end_staging()
            return
        outbox.push(encode({"type": "subscribed", **flt.describe(), "version": upto}))

    def _select(self, flt: Filter) -> Iterable[Entity]:
        engine = self.service.engine
        if flt.prefix is not None:
            return list(engine.select(prefix=flt.prefix))
        if flt.entity_id == WILDCARD:
            return list(engine.entities.values())
        entity = engine.get(flt.entity_id or "")
        return [entity] if entity is not None else []

    async def _replay(self, outbox: Outbox, flt: Filter, since: int, upto: int) -> None:
        """Push the logged changes in (since, upto] that match, bypassing the staging list."""
        async for batch in self.service.log.read(since):
            for record in batch:
                if record.seq > upto:
                    return
                change = record_change(record)
                if change is None or not flt.matches(change.entity_id):
                    continue
                for message in change_messages(change):
                    outbox.messages.append(message)
                if len(outbox.messages) > outbox.limit:
                    outbox._overflow()
                    return
            outbox.wake.set()
            if outbox.closed or outbox.overflowed:
                return

    def unsubscribe(self, outbox: Outbox, flt: Filter) -> None:
        self.hub.unsubscribe(outbox, entity_id=flt.entity_id, prefix=flt.prefix)
