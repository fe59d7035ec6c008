"""Live state: fan committed changes out to WebSocket and SSE connections.

Each connection has an `Outbox`: a bounded queue of encoded messages and a wake-up event, drained
by the connection's own sender task. The service calls `Live.on_changes` on the event loop after
each commit; it encodes every message once and puts it on each matching outbox, never awaiting a
socket, so a slow client cannot slow ingestion or the other clients. An outbox that overflows
drops its messages and leaves the hub at once; its connection is then closed with a reason.

A subscription with `since` replays the log from that version up to the sequence the state had
when the subscription was registered, while live messages for the connection wait in a staging
list; then the staged messages follow. So the client sees every change once, in order. The
replay waits for the sender to drain the queue, so it is bounded by the queue, not the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from flux.auth import ANONYMOUS, Credential
from flux.engine import Change, Entity
from flux.events import DELETED, entity_of, format_time, now_us
from flux.hub import WILDCARD, Hub
from flux.log import Record
from flux.metrics import EventMetrics
from flux.permissions import Permissions
from flux.service import FluxService

logger = logging.getLogger("flux.live")

# A queued message: (resume version or None, type, JSON text). Encoded once, shared by every
# outbox. The resume version is set only on a message after which a client has everything up to
# that version: the last message of a change (an update sends one message per property) and
# `subscribed`. SSE turns it into the event `id`, so a Last-Event-ID resume never skips the rest
# of a half-received change.
Message = tuple[int | None, str, str]


class Outbox:
    """One live connection's outgoing side: a bounded queue drained by the connection's sender.

    `push` never waits: past `limit` queued messages the outbox overflows (it drops everything,
    calls `on_overflow`, and its sender closes the connection). While a subscription replays,
    live messages wait in `staging` (bounded by `limit` too) and the replay `feed`s the queue,
    waiting for room as the sender drains it, so a long replay needs no large queue."""

    __slots__ = (
        "messages",
        "limit",
        "wake",
        "room",
        "overflowed",
        "staging",
        "closed",
        "on_overflow",
        "credential",
    )

    def __init__(self, limit: int, credential: Credential = ANONYMOUS) -> None:
        self.credential = credential  # whose private namespaces this connection may read
        self.messages: deque[Message] = deque()
        self.limit = limit
        self.wake = asyncio.Event()  # set when there is something for the sender
        self.room = asyncio.Event()  # set when the sender took messages (or the outbox ended)
        self.overflowed = False
        self.staging: list[Message] | None = None
        self.closed = False
        self.on_overflow: Callable[[], None] | None = None

    @property
    def ended(self) -> bool:
        return self.overflowed or self.closed

    def push(self, message: Message) -> None:
        if self.overflowed or self.closed:
            return
        if self.staging is not None:
            self.staging.append(message)
            if len(self.staging) > self.limit:
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
        self.room.set()
        if self.on_overflow is not None:
            self.on_overflow()

    def close(self) -> None:
        self.closed = True
        self.messages.clear()
        self.staging = None
        self.wake.set()
        self.room.set()

    def begin_staging(self) -> None:
        if self.staging is None:
            self.staging = []

    def end_staging(self, first: Message | None = None) -> None:
        """Queue `first`, then the staged live messages, and go back to queueing directly."""
        staged, self.staging = self.staging, None
        if self.ended:
            return
        if first is not None:
            self.messages.append(first)
        self.messages.extend(staged or ())
        self.wake.set()

    async def feed(self, groups: Iterable[list[Message]]) -> bool:
        """Queue groups of messages (a group stays whole: one change's messages), bypassing the
        staging list and waiting for room whenever the queue is full. False once it ended."""
        for group in groups:
            if len(self.messages) >= self.limit:
                await self.wait_for_room(self.limit)
            if self.ended:
                return False
            self.messages.extend(group)
            self.wake.set()
        return not self.ended

    async def wait_for_room(self, below: int) -> None:
        """Wait until fewer than `below` messages are queued (or the outbox ended)."""
        while not self.ended and len(self.messages) >= max(below, 1):
            self.room.clear()
            await self.room.wait()

    async def take(self) -> list[Message]:
        """Wait for messages and take them all (empty when the outbox overflowed or closed)."""
        while not self.messages and not self.ended:
            self.wake.clear()
            await self.wake.wait()
        if self.ended:
            return []
        taken = list(self.messages)
        self.messages.clear()
        self.room.set()
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
        return {"entity_id": WILDCARD if self.entity_id is None else self.entity_id}


def encode(message: dict[str, Any], version: int | None = None) -> Message:
    """Encode once; `version` is the resume version (see `Message`)."""
    return (version, message["type"], orjson.dumps(message).decode())


def change_messages(change: Change) -> list[Message]:
    """The messages for one change: one `entity_deleted`, or one `state_update` per property
    (only the last one carries the resume version)."""
    ts = format_time(change.at, zulu=True)
    version = change.version
    if change.kind == "delete":
        return [
            encode(
                {
                    "type": "entity_deleted",
                    "entity_id": change.entity_id,
                    "timestamp": ts,
                    "version": version,
                },
                version,
            )
        ]
    assert change.properties is not None
    messages = [
        encode(
            {
                "type": "state_update",
                "entity_id": change.entity_id,
                "property": name,
                "value": value,
                "timestamp": ts,
                "version": version,
            }
        )
        for name, value in change.properties.items()
    ]
    _, kind, text = messages[-1]
    messages[-1] = (version, kind, text)
    return messages


def record_change(record: Record) -> Change | None:
    """The change a logged event stands for, without state (for replay): an update for every
    event with properties, a delete for every tombstone (even one for an entity that did not
    exist, which sent nothing live: replay has no state to tell)."""
    entity_id = entity_of(record.event)
    props = record.event["payload"].get("properties")
    if entity_id is None or type(props) is not dict or not props:
        return None
    if props.get(DELETED) is True:
        return Change("delete", entity_id, None, record.seq, record.at)
    return Change("update", entity_id, props, record.seq, record.at)


def snapshot_message(entity: Entity) -> Message:
    """An entity's current state. No resume version: snapshots go out in no version order."""
    return encode(
        {
            "type": "snapshot",
            "entity_id": entity.id,
            "properties": entity.properties,
            "timestamp": format_time(entity.last_updated, zulu=True),
            "version": entity.version,
        }
    )


def _about(message: Message, flt: Filter) -> bool:
    """Whether a queued message is a change to an entity `flt` matches (decodes it: rare path)."""
    if message[1] not in ("state_update", "entity_deleted"):
        return False
    entity_id = orjson.loads(message[2]).get("entity_id")
    return type(entity_id) is str and flt.matches(entity_id)


class Live:
    def __init__(self, service: FluxService, permissions: Permissions) -> None:
        self.service = service
        self.permissions = permissions
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
        self.close_all()

    def close_all(self) -> None:
        """End every live connection's queue: WebSocket senders return and SSE streams end."""
        for outbox in self.hub.connections():
            self.disconnect(outbox)

    def connect(self, credential: Credential = ANONYMOUS) -> Outbox:
        outbox = Outbox(self.settings.ws_queue_limit, credential)
        outbox.on_overflow = functools.partial(self.hub.remove, outbox)
        self.hub.add(outbox)
        return outbox

    def disconnect(self, outbox: Outbox) -> None:
        outbox.close()
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
        is_public = self.permissions.is_public
        can_read = self.permissions.can_read
        for change in changes:
            targets = match(change.entity_id)
            if not targets:
                continue
            if not is_public(change.entity_id):
                targets = {o for o in targets if can_read(o.credential, change.entity_id)}
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
        """Register a subscription and end with `subscribed` (version V: everything up to V has
        been sent, everything after it follows live).

        With `since`, first replay from the log every matching change after that version (and
        ignore `snapshot`). When the log no longer holds them all (retention), or `since` is
        ahead of the log, send `resync` and the matching entities' current state instead. With
        `snapshot` alone, first send the matching entities' current state. Live messages for
        the connection wait in the outbox's staging list meanwhile, so nothing is missed or
        sent twice. Raises LogError when the log cannot be read."""
        if outbox.ended:
            return
        if flt.entity_id is not None and flt.entity_id != WILDCARD:
            self.permissions.check_read(outbox.credential, flt.entity_id)
        engine = self.service.engine
        # From here to begin_staging() nothing awaits: the state at `upto` is what the hub
        # subscription starts after.
        upto = engine.last_seq
        self.hub.subscribe(outbox, entity_id=flt.entity_id, prefix=flt.prefix)
        outbox.begin_staging()
        subscribed = False
        try:
            if since is None:
                if snapshot:
                    selected = self._select(flt, outbox.credential)
                    messages = [snapshot_message(entity) for entity in selected]
                    await outbox.feed([m] for m in messages)
            elif since > upto:
                upto = await self._resync(
                    outbox, flt, f"version {since} is ahead of this server's log (at {upto})"
                )
            elif since < upto:
                refused = await self._replay(outbox, flt, since, upto)
                if refused is not None:
                    upto = await self._resync(outbox, flt, refused)
            if outbox.ended:
                return
            await outbox.wait_for_room(1)  # the staged messages are at most `limit`
            outbox.end_staging(
                encode({"type": "subscribed", **flt.describe(), "version": upto}, upto)
            )
            subscribed = True
        finally:
            if not subscribed:
                outbox.end_staging()

    async def _resync(self, outbox: Outbox, flt: Filter, reason: str) -> int:
        """Send `resync` and the current state of the matching entities; returns its version.
        Staged changes to those entities are dropped: the snapshot already holds them."""
        if outbox.ended:
            return 0
        now = self.service.engine.last_seq
        if outbox.staging:
            outbox.staging = [m for m in outbox.staging if not _about(m, flt)]
        messages = [
            encode(
                {
                    "type": "resync",
                    "reason": f"{reason}; sending the current state instead",
                    "version": now,
                }
            )
        ]
        messages += [snapshot_message(e) for e in self._select(flt, outbox.credential)]
        await outbox.feed([m] for m in messages)
        return now

    def _select(self, flt: Filter, credential: Credential) -> list[Entity]:
        """The matching entities the credential may read."""
        engine = self.service.engine
        if flt.prefix is not None:
            found: Iterable[Entity] = engine.select(prefix=flt.prefix)
        elif flt.entity_id == WILDCARD:
            found = engine.entities.values()
        else:
            entity = engine.get(flt.entity_id or "")
            found = [entity] if entity is not None else []
        can_read = self.permissions.can_read
        return [e for e in found if can_read(credential, e.id)]

    async def _replay(self, outbox: Outbox, flt: Filter, since: int, upto: int) -> str | None:
        """Queue the logged changes in (since, upto] that match, in order; None when done. Else
        why the replay stopped, for the `resync` that replaces it: the log has a gap there
        (retention removed records), or a matching change is one that is no longer served (a
        deleted namespace's past: see `Permissions.history_floor`; skipping it silently would
        leave the client holding entities that are gone), or the outbox ended."""
        expected = since + 1
        can_read = self.permissions.can_read
        floor_of = self.permissions.history_floor
        gone = f"the log no longer reaches back to version {since}"
        batches = self.service.log.read(since)
        try:
            async for batch in batches:
                groups = []
                for record in batch:
                    if record.seq > upto:
                        break
                    if record.seq != expected:
                        return gone
                    expected += 1
                    change = record_change(record)
                    if change is None or not flt.matches(change.entity_id):
                        continue
                    if record.seq <= floor_of(change.entity_id):
                        return (
                            f"the changes after version {since} include a deleted namespace's "
                            "past, which is not replayed"
                        )
                    if can_read(outbox.credential, change.entity_id):
                        groups.append(change_messages(change))
                if not await outbox.feed(groups):
                    return "the connection ended"
                if expected > upto:
                    return None
        finally:
            aclose = getattr(batches, "aclose", None)
            if aclose is not None:
                await aclose()
        return None if expected > upto else gone

    def unsubscribe(self, outbox: Outbox, flt: Filter) -> None:
        self.hub.unsubscribe(outbox, entity_id=flt.entity_id, prefix=flt.prefix)
