"""Live state: fan committed changes out to WebSocket and SSE connections.

Each connection has an `Outbox` (flux.outbox): a queue bounded by messages and by bytes, drained
by the connection's own sender task. The service calls `Live.on_changes` on the event loop after
each commit; it encodes every message once and puts each change's messages on each matching
outbox, never awaiting a socket, so a slow client cannot slow ingestion or the other clients. An
outbox that overflows drops its messages and leaves the hub at once; its connection is then closed
with a reason. A watchdog closes the connections whose send has made no progress for
`live_send_timeout_seconds` (a client that stopped reading, with nothing new to overflow it).

A subscription is registered first (`register`: the filter is in the hub and the connection's
live messages wait in a staging list), then completed (`complete`): a replay from the log of the
changes after `since` up to the sequence the state had at registration, or a snapshot of the
matching entities, then `subscribed`, then the staged messages. So the client sees every change
once, in order. Replays and snapshots are produced as the client reads (the outbox is fed from
an iterator), so they are bounded by the outbox, not by the log or the state. SSE streams and
WebSockets subscribed in their URL are registered as they connect, so they never receive a
message their subscription would not send, nor one out of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import operator
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from flux.auth import ANONYMOUS, Credential
from flux.engine import Change, Entity
from flux.events import DELETED, entity_of, format_time, now_us
from flux.hub import WILDCARD, Hub
from flux.log import Record
from flux.metrics import EventMetrics
from flux.outbox import Message, Outbox, size_of
from flux.permissions import Permissions
from flux.service import FluxService

__all__ = ["Filter", "Live", "Message", "Outbox", "Pending", "change_messages", "encode"]

logger = logging.getLogger("flux.live")

CHANGE_TYPES = ("state_update", "entity_deleted")
TRANSPORTS = ("ws", "sse")
# A record's event, and an event's source: fetched in C for every event of a batch.
_event = operator.itemgetter(2)
_source = operator.itemgetter("source")
CLOSE_WAIT_SECONDS = 10.0  # how long a slow consumer's close may wait (at most the send timeout)


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
    if message[1] not in CHANGE_TYPES:
        return False
    entity_id = orjson.loads(message[2]).get("entity_id")
    return type(entity_id) is str and flt.matches(entity_id)


def _covered(covered: dict[str, int], message: Message) -> bool:
    """Whether a queued message is a change a snapshot already sent holds: `covered` maps the
    entities whose snapshot was newer than the subscription's version to that snapshot's
    version (decodes the message: rare path)."""
    if message[1] not in CHANGE_TYPES:
        return False
    data = orjson.loads(message[2])
    version = covered.get(data.get("entity_id"))
    return version is not None and data.get("version", 0) <= version


@dataclass(frozen=True, slots=True)
class Pending:
    """A registered subscription that `Live.complete` has still to bring up to date: changes up
    to `upto` come from the replay or the snapshot, later ones are staged on the outbox."""

    flt: Filter
    upto: int


class Live:
    def __init__(self, service: FluxService, permissions: Permissions) -> None:
        self.service = service
        self.permissions = permissions
        self.settings = service.settings
        self.hub: Hub[Outbox] = Hub()
        self.metrics = EventMetrics()
        self.slow_closes = dict.fromkeys(TRANSPORTS, 0)  # slow consumers closed, by transport
        self._round = 0  # fan-out rounds (see Outbox.push_change)
        self._tasks: list[asyncio.Task[None]] = []
        service.listeners.append(self.on_changes)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._metrics_ticker(), name="flux-metrics"),
            asyncio.create_task(self._watchdog(), name="flux-live-watchdog"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.close_all()

    def close_all(self) -> None:
        """End every live connection's queue: WebSocket senders return and SSE streams end."""
        for outbox in self.hub.connections():
            self.disconnect(outbox)

    def connect(self, credential: Credential = ANONYMOUS) -> Outbox:
        """A new connection: until it subscribes, it receives every change (the original's
        rule for WebSockets)."""
        outbox = Outbox(self.settings.ws_queue_limit, credential, self.settings.live_outbox_bytes)
        outbox.on_overflow = functools.partial(self.hub.remove, outbox)
        self.hub.add(outbox)
        return outbox

    def open(self, credential: Credential, flt: Filter) -> tuple[Outbox, Pending]:
        """A new connection with its subscription registered at once, so it never receives a
        message the subscription would not send (SSE streams, WebSockets subscribed in their
        URL). Raises AuthError or Forbidden (nothing is connected then)."""
        self.check(credential, flt)
        outbox = self.connect(credential)
        return outbox, self.register(outbox, flt)

    def disconnect(self, outbox: Outbox) -> None:
        outbox.close()
        self.hub.remove(outbox)

    @property
    def connections(self) -> int:
        return len(self.hub)

    def slow_consumer(self, transport: str) -> None:
        """Count one connection closed because its client did not keep up."""
        self.slow_closes[transport] += 1

    @property
    def close_wait(self) -> float:
        """How long a slow consumer's close (frame, or final event) may wait for socket room
        before the connection is aborted."""
        return min(CLOSE_WAIT_SECONDS, self.settings.live_send_timeout_seconds)

    # -- fan-out ---------------------------------------------------------------------------

    def on_changes(self, changes: list[Change], records: list[Record]) -> None:
        self.metrics.record(len(records), map(_source, map(_event, records)))
        if not len(self.hub):
            return
        self._round += 1
        round = self._round
        match = self.hub.match
        is_public = self.permissions.is_public
        can_read = self.permissions.can_read
        for change in changes:
            targets = match(change.entity_id)
            if not targets:
                continue
            if not is_public(change.entity_id):
                targets = {o for o in targets if can_read(o.credential, change.entity_id)}
            messages = change_messages(change)
            if len(messages) == 1:
                message = messages[0]
                size = len(message[2])
                for outbox in targets:
                    outbox.push_one(message, size, round)
            else:
                size = size_of(messages)
                for outbox in targets:
                    outbox.push_change(messages, size, round)

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

    async def _watchdog(self) -> None:
        """Every quarter of the send timeout (at most 5 s), end the outboxes whose sender has
        been in one send, without progress, for the whole timeout."""
        timeout = self.settings.live_send_timeout_seconds
        interval = min(max(timeout / 4, 0.05), 5.0)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for outbox in self.hub.connections():
                if not outbox.busy or outbox.sent != outbox.mark:
                    outbox.mark = outbox.sent
                    outbox.since = now
                elif now - outbox.since >= timeout:
                    outbox.stall(timeout)

    # -- subscriptions ---------------------------------------------------------------------

    def check(self, credential: Credential, flt: Filter) -> None:
        """Raises AuthError or Forbidden when the filter names an entity the credential may
        not read (wider filters leave such entities out instead)."""
        if flt.entity_id is not None and flt.entity_id != WILDCARD:
            self.permissions.check_read(credential, flt.entity_id)

    def register(self, outbox: Outbox, flt: Filter) -> Pending:
        """Install a subscription: from now on its live messages are staged on the outbox, after
        whatever else it has queued, until `complete` releases them. Raises AuthError or
        Forbidden. Awaits nothing: the state at `upto` is what the subscription starts after."""
        self.check(outbox.credential, flt)
        upto = self.service.engine.last_seq
        self.hub.subscribe(outbox, entity_id=flt.entity_id, prefix=flt.prefix)
        outbox.begin_staging()
        return Pending(flt, upto)

    async def subscribe(
        self, outbox: Outbox, flt: Filter, *, snapshot: bool = False, since: int | None = None
    ) -> None:
        """Register a subscription and complete it (see `complete`). Raises AuthError,
        Forbidden, or LogError when the log cannot be read."""
        if outbox.ended:
            return
        await self.complete(outbox, self.register(outbox, flt), snapshot=snapshot, since=since)

    async def complete(
        self, outbox: Outbox, pending: Pending, *, snapshot: bool = False, since: int | None = None
    ) -> None:
        """Bring a registered subscription up to date and end with `subscribed` (version V:
        everything up to V has been sent, everything after it follows live).

        With `since`, first replay from the log every matching change after that version (and
        ignore `snapshot`). When the log no longer holds them all (retention), or `since` is
        ahead of the log, send `resync` and the matching entities' current state instead. With
        `snapshot` alone, first send the matching entities' current state. Then the staged live
        messages follow, less the changes a snapshot already held, so nothing is missed or sent
        twice. Raises LogError when the log cannot be read."""
        flt, upto = pending.flt, pending.upto
        covered: dict[str, int] = {}  # entities whose snapshot is newer than `upto`
        subscribed = False
        try:
            if outbox.ended:
                return
            if since is None:
                if snapshot:
                    await outbox.feed(self._snapshot(outbox, flt, upto, covered))
            elif since > upto:
                upto = await self._resync(
                    outbox,
                    flt,
                    f"version {since} is ahead of this server's log (at {upto})",
                    covered,
                )
            elif since < upto:
                refused = await self._replay(outbox, flt, since, upto)
                if refused is not None:
                    upto = await self._resync(outbox, flt, refused, covered)
            if outbox.ended:
                return
            if covered:
                outbox.drop_staged(functools.partial(_covered, covered))
            await outbox.wait_for_room(1)  # the staged messages are bounded like the queue
            outbox.end_staging(
                encode({"type": "subscribed", **flt.describe(), "version": upto}, upto)
            )
            subscribed = True
        finally:
            if not subscribed:
                outbox.end_staging()

    async def _resync(
        self, outbox: Outbox, flt: Filter, reason: str, covered: dict[str, int]
    ) -> int:
        """Send `resync` and the current state of the matching entities; returns its version.
        Staged changes to those entities are dropped: the snapshot already holds them."""
        if outbox.ended:
            return 0
        now = self.service.engine.last_seq
        outbox.drop_staged(functools.partial(_about, flt=flt))
        message = encode(
            {
                "type": "resync",
                "reason": f"{reason}; sending the current state instead",
                "version": now,
            }
        )
        await outbox.feed(itertools.chain([[message]], self._snapshot(outbox, flt, now, covered)))
        return now

    def _snapshot(
        self, outbox: Outbox, flt: Filter, version: int, covered: dict[str, int]
    ) -> Iterator[list[Message]]:
        """The matching entities the connection may read, one `snapshot` message each, encoded
        as they are taken (the outbox takes them as the client reads). Holds only a list of
        references to the entities that matched at the start; one deleted since is skipped
        (its deletion is staged). An entity changed after `version` is sent as it is now and
        noted in `covered`, so that its staged changes up to that state are not sent again."""
        engine = self.service.engine
        if flt.prefix is not None:
            found: list[Entity] = list(engine.select(prefix=flt.prefix))
        elif flt.entity_id == WILDCARD:
            found = list(engine.entities.values())
        else:
            entity = engine.get(flt.entity_id or "")
            found = [entity] if entity is not None else []
        current = engine.entities
        can_read = self.permissions.can_read
        credential = outbox.credential
        for entity in found:
            if current.get(entity.id) is not entity or not can_read(credential, entity.id):
                continue
            if entity.version > version:
                covered[entity.id] = entity.version
            yield [snapshot_message(entity)]

    def _readable(self, changes: list[Change], credential: Credential) -> Iterator[list[Message]]:
        """The messages of the changes the credential may read (asked as each is taken, so a
        namespace made private meanwhile is respected), one group per change, encoded as the
        outbox takes them."""
        can_read = self.permissions.can_read
        for change in changes:
            if can_read(credential, change.entity_id):
                yield change_messages(change)

    async def _replay(self, outbox: Outbox, flt: Filter, since: int, upto: int) -> str | None:
        """Queue the logged changes in (since, upto] that match, in order; None when done. Else
        why the replay stopped, for the `resync` that replaces it: the log has a gap there
        (retention removed records), or a matching change is one that is no longer served (a
        deleted namespace's past: see `Permissions.history_floor`; skipping it silently would
        leave the client holding entities that are gone), or the outbox ended."""
        expected = since + 1
        floor_of = self.permissions.history_floor
        gone = f"the log no longer reaches back to version {since}"
        batches = self.service.log.read(since)
        try:
            async for batch in batches:
                changes: list[Change] = []
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
                    changes.append(change)
                if not await outbox.feed(self._readable(changes, outbox.credential)):
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
