"""StateEngine: derives entity state from events. Pure: no I/O, no event loop.

`apply(event, seq, at_us)` merges one logged event into the state and returns the change it made
(or None). Entities keep `properties`, `last_updated` (the time the event was logged, so replay
gives the same state, unlike the original, which re-stamps it) and `version` (the log sequence of
the entity's last change). Deletion is an event too: a `properties.__deleted__ == true` tombstone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import orjson

from flux.events import DELETED, Event

SNAPSHOT_FORMAT = 4  # format 3 plus the kept deletions (`deleted`, `deleted_floor`)
_ARRAY_FORMAT = 3  # entities as [id, properties, last_updated, version] arrays; still read
_OBJECT_FORMAT = 2  # entities as objects; still read
TOMBSTONES_KEPT = 100_000  # deletions remembered for `changes_since` (FLUX_TOMBSTONES_KEPT)
SNAPSHOT_CHUNK = 5_000  # entities per piece of `snapshot_parts` (a few ms of encoding)


@dataclass(slots=True)
class Entity:
    id: str
    properties: dict[str, Any]
    last_updated: int  # microseconds since the epoch, when its last change was logged
    version: int  # log sequence of its last change


class Change(NamedTuple):
    """What one event did to the state. A tuple, not a frozen dataclass: the engine makes one
    per applied event, and a frozen dataclass's `__init__` (one `object.__setattr__` per field)
    cost more than the merge itself."""

    kind: Literal["update", "delete"]
    entity_id: str
    properties: dict[str, Any] | None  # the properties the event set (None for a delete)
    version: int
    at: int  # microseconds


_new_change = tuple.__new__  # Change(...) runs a Python-level __new__; this is the C one


def _head(entity_id: str) -> str:
    """Index key: the part before the first `/`, or the whole id when it has none."""
    return entity_id.partition("/")[0]


class Changed(NamedTuple):
    """One page of `StateEngine.changes_since`: the entities changed after the cursor (as they
    are now, oldest change first), the deletions after it (id, sequence), the cursor to ask
    from next, and whether more changes wait past it."""

    entities: list[Entity]
    deleted: list[tuple[str, int]]
    next: int
    more: bool


class StateEngine:
    """The state. `entities` is kept in the order of their versions (a changed entity moves to
    the end), so the changes after a version are a walk back from the end; `deleted` keeps
    the newest deletions (entity id -> sequence, oldest first, at most `tombstones_kept`);
    `deleted_floor` is the newest sequence whose deletion may have been forgotten. Only the
    event loop changes it (`apply_all`, under `lock`)."""

    def __init__(self, tombstones_kept: int = TOMBSTONES_KEPT) -> None:
        self.entities: dict[str, Entity] = {}
        self.last_seq = 0
        self._by_head: dict[str, dict[str, Entity]] = {}
        self.deleted: dict[str, int] = {}
        self.deleted_floor = 0
        self.tombstones_kept = tombstones_kept
        # Held while events are applied, and by whoever reads the state from another thread
        # (`flux.conditions.evaluate` may be called off the loop): an entity being applied is
        # briefly out of `entities` (moved to the end), which such a reader must not see.
        self.lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.entities)

    def replace(self, other: StateEngine) -> None:
        """Take `other`'s state (and leave `other` empty). Start-up restores a snapshot into
        the engine every other part already holds, so none of them needs a new reference."""
        self.entities, other.entities = other.entities, {}
        self._by_head, other._by_head = other._by_head, {}
        self.last_seq, other.last_seq = other.last_seq, 0
        self.deleted, other.deleted = other.deleted, {}
        self.deleted_floor, other.deleted_floor = other.deleted_floor, 0

    def apply(self, event: Event, seq: int, at: int) -> Change | None:
        """Merge one event (logged at sequence `seq`, time `at` in µs) and return its change."""
        self.last_seq = seq
        payload = event["payload"]
        entity_id = payload.get("entity_id")
        if type(entity_id) is not str:
            return None
        props = payload.get("properties")
        if type(props) is not dict:
            return None
        if props.get(DELETED) is True:
            return self._delete(entity_id, seq, at)
        if not props:
            return None
        entities = self.entities
        entity = entities.pop(entity_id, None)
        if entity is None:
            entity = Entity(entity_id, dict(props), at, seq)
            head = _head(entity_id)
            bucket = self._by_head.get(head)
            if bucket is None:
                self._by_head[head] = {entity_id: entity}
            else:
                bucket[entity_id] = entity
            if self.deleted:
                self.deleted.pop(entity_id, None)
        else:
            entity.properties.update(props)
            entity.last_updated = at
            entity.version = seq
        entities[entity_id] = entity  # at the end: the newest version
        return _new_change(Change, ("update", entity_id, props, seq, at))

    def _delete(self, entity_id: str, seq: int, at: int) -> Change | None:
        entity = self.entities.pop(entity_id, None)
        if entity is None:
            return None
        head = _head(entity_id)
        bucket = self._by_head[head]
        del bucket[entity_id]
        if not bucket:
            del self._by_head[head]
        deleted = self.deleted
        deleted[entity_id] = seq
        if len(deleted) > self.tombstones_kept:
            oldest = next(iter(deleted))
            self.deleted_floor = deleted.pop(oldest)
        return _new_change(Change, ("delete", entity_id, None, seq, at))

    def apply_all(self, records: Iterable[tuple[int, int, Event]]) -> list[Change]:
        """Apply (seq, at, event) records in order; returns the changes made. Holds `lock`
        meanwhile (a reader on another thread, such as a condition check, holds it).

        The common case (an update of an existing entity) is inlined here: this loop runs for
        every committed event, and a method call per event was a fifth of its cost."""
        with self.lock:
            return self._apply_all(records)

    def _apply_all(self, records: Iterable[tuple[int, int, Event]]) -> list[Change]:
        changes: list[Change] = []
        append = changes.append
        entities = self.entities
        pop = entities.pop
        seq = self.last_seq
        for seq, at, event in records:
            props = event["payload"].get("properties")
            entity_id = event["payload"].get("entity_id")
            if type(props) is dict and props and type(entity_id) is str:
                entity = pop(entity_id, None)
                if entity is not None:
                    entities[entity_id] = entity  # back, at the end: the newest version
                    if props.get(DELETED) is not True:
                        entity.properties.update(props)
                        entity.last_updated = at
                        entity.version = seq
                        append(_new_change(Change, ("update", entity_id, props, seq, at)))
                        continue
            change = self.apply(event, seq, at)
            if change is not None:
                append(change)
        self.last_seq = seq
        return changes

    def get(self, entity_id: str) -> Entity | None:
        return self.entities.get(entity_id)

    def changes_since(
        self,
        since: int,
        limit: int,
        keep: Callable[[str], bool] | None = None,
    ) -> Changed:
        """The entities changed after version `since` and the deletions after it, oldest first,
        at most `limit` of both together, only those whose id `keep` accepts (all when None).
        Costs a walk over the changes after `since`, not over every entity. The caller checks
        `since` against `deleted_floor` first (older deletions may be forgotten)."""
        changed: list[Entity] = []
        for entity in reversed(self.entities.values()):
            if entity.version <= since:
                break
            changed.append(entity)
        changed.reverse()
        gone: list[tuple[str, int]] = []
        for entity_id, seq in reversed(self.deleted.items()):
            if seq <= since:
                break
            gone.append((entity_id, seq))
        gone.reverse()
        if keep is not None:
            changed = [e for e in changed if keep(e.id)]
            gone = [g for g in gone if keep(g[0])]
        if len(changed) + len(gone) <= limit:
            return Changed(changed, gone, max(self.last_seq, since), False)
        # Merge by version and cut after `limit` items; the cursor is the last one taken.
        page_entities: list[Entity] = []
        page_deleted: list[tuple[str, int]] = []
        i = j = 0
        cursor = since
        for _ in range(limit):
            if j >= len(gone) or (i < len(changed) and changed[i].version < gone[j][1]):
                cursor = changed[i].version
                page_entities.append(changed[i])
                i += 1
            else:
                cursor = gone[j][1]
                page_deleted.append(gone[j])
                j += 1
        return Changed(page_entities, page_deleted, cursor, True)

    def select(self, prefix: str = "", namespace: str | None = None) -> Iterator[Entity]:
        """Entities whose id starts with `prefix` and, if given, whose namespace (the part before
        the first `/`) is `namespace`. Uses the index, not a scan of every entity."""
        if namespace is not None:
            bucket = self._by_head.get(namespace, {})
            for entity_id, entity in bucket.items():
                if entity_id != namespace and entity_id.startswith(prefix):
                    yield entity
            return
        if not prefix:
            yield from self.entities.values()
            return
        head, sep, _ = prefix.partition("/")
        if sep:
            for entity_id, entity in self._by_head.get(head, {}).items():
                if entity_id.startswith(prefix):
                    yield entity
            return
        for key, bucket in self._by_head.items():
            if key.startswith(prefix):
                yield from bucket.values()

    def count_in(self, namespace: str) -> int:
        """How many entities the namespace holds (ids `<namespace>/...`)."""
        bucket = self._by_head.get(namespace)
        return 0 if bucket is None else len(bucket) - (namespace in bucket)

    def namespace_counts(self) -> dict[str, int]:
        """Entity count per namespace (ids without a `/` are not counted)."""
        counts = {}
        for head, bucket in self._by_head.items():
            n = len(bucket) - (head in bucket)
            if n:
                counts[head] = n
        return counts

    def snapshot_parts(self, chunk: int = SNAPSHOT_CHUNK) -> Iterator[bytes]:
        """The whole state as JSON, in pieces to be joined: `chunk` entities per piece, each
        one `orjson` call (an array per entity: about twice as fast to encode as the object
        of a slotted dataclass).

        The caller may let other work run between pieces, including events applied to this
        engine: the document is then a fuzzy snapshot. The entities are the ones present when
        the first piece was made, each as of some sequence at or after `sequence_number` (the
        sequence when the first piece was made). Replaying the log after `sequence_number`
        onto it gives exactly the state replay gives onto a snapshot taken at once, because
        the merge is last-writer-wins per property: an event that a piece already reflects is
        applied again, in order, followed by every event after it."""
        entities = list(self.entities.values())  # in version order (see the class)
        yield b'{"snapshot_format":%d,"sequence_number":%d,"deleted_floor":%d,"deleted":%s,' % (
            SNAPSHOT_FORMAT,
            self.last_seq,
            self.deleted_floor,
            orjson.dumps(list(self.deleted.items())),
        )
        yield b'"entities":['

        for start in range(0, len(entities), chunk):
            part = orjson.dumps(
                [
                    (e.id, e.properties, e.last_updated, e.version)
                    for e in entities[start : start + chunk]
                ]
            )
            yield (b"," if start else b"") + part[1:-1]
        yield b"]}"

    def snapshot(self) -> bytes:
        """The whole state as JSON bytes, consistent at `last_seq` (see `snapshot_parts`)."""
        return b"".join(self.snapshot_parts())

    @classmethod
    def restore(cls, data: bytes, tombstones_kept: int = TOMBSTONES_KEPT) -> StateEngine:
        """Rebuild an engine from `snapshot()` bytes (or an object-format snapshot of an older
        Flux). Raises ValueError on a malformed snapshot."""
        try:
            doc = orjson.loads(data)
            kind = doc.get("snapshot_format")
            if kind not in (SNAPSHOT_FORMAT, _ARRAY_FORMAT, _OBJECT_FORMAT):
                raise ValueError(f"unknown snapshot format {kind!r}")
            engine = cls(tombstones_kept)
            engine.last_seq = int(doc["sequence_number"])
            if kind == SNAPSHOT_FORMAT:
                engine.deleted_floor = int(doc["deleted_floor"])
                for entity_id, seq in doc["deleted"]:
                    if type(entity_id) is not str or type(seq) is not int:
                        raise ValueError("malformed snapshot: bad deletion")
                    engine.deleted[entity_id] = seq
            else:  # an older snapshot kept no deletions: none before it can be listed
                engine.deleted_floor = engine.last_seq
            for item in doc["entities"]:
                if kind != _OBJECT_FORMAT:
                    if type(item) is not list or len(item) != 4:
                        raise ValueError(f"malformed snapshot: bad entity {str(item)[:200]}")
                    entity = Entity(*item)
                else:
                    entity = Entity(
                        item["id"], item["properties"], item["last_updated"], item["version"]
                    )
                if (
                    type(entity.id) is not str
                    or type(entity.properties) is not dict
                    or type(entity.last_updated) is not int
                    or type(entity.version) is not int
                ):
                    raise ValueError(f"malformed snapshot: bad entity {str(item)[:200]}")
                engine.entities[entity.id] = entity
                engine._by_head.setdefault(_head(entity.id), {})[entity.id] = entity
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise ValueError(f"malformed snapshot: {exc}") from exc
        engine._order_by_version()
        return engine

    def _order_by_version(self) -> None:
        """Put `entities` in version order when it is not (a snapshot of an older Flux, or
        a fuzzy one: replay moves the entities changed after it to the end anyway)."""
        entities = self.entities
        last = 0
        for entity in entities.values():
            if entity.version < last:
                break
            last = entity.version
        else:
            return
        self.entities = dict(sorted(entities.items(), key=lambda item: item[1].version))

    def state(self) -> dict[str, tuple[dict[str, Any], int, int]]:
        """A plain comparable view: id -> (properties, last_updated, version). For tests."""
        return {e.id: (e.properties, e.last_updated, e.version) for e in self.entities.values()}
