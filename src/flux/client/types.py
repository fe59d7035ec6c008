"""The shapes of the server's answers, as TypedDicts (src/flux/api/openapi.json has the same
schemas). A result is the JSON the server sent, decoded: a plain dict, so it prints, goes
through `json.dumps` and compares as the HTTP docs show it, while a type checker knows its keys.
Only the answers that agents use are spelled out; the operator's (connectors, sources, runtime
config) stay `JSONObject`."""

from __future__ import annotations

from typing import Any, Literal, NotRequired, Required, TypedDict

JSONObject = dict[str, Any]
JSONList = list[Any]


class Entity(TypedDict):
    """An entity as it is now. `version` is the log sequence of the event that last changed it;
    a held lease shows as the property `__lease__`."""

    id: str
    properties: JSONObject
    version: int
    lastUpdated: str


class Accepted(TypedDict):
    """A stored event: `sequence` is its log sequence, the entity's new `version`."""

    eventId: str
    stream: str
    sequence: int


class BatchItem(TypedDict):
    """One event of a batch: `error` is None when it was stored (then `sequence` is set);
    `conflict` holds the 409 fields of an event whose condition failed."""

    index: int
    eventId: str
    stream: str
    error: str | None
    sequence: NotRequired[int | None]
    conflict: NotRequired[JSONObject]


class BatchResult(TypedDict):
    successful: int
    failed: int
    results: list[BatchItem]


class HistoryEvent(TypedDict):
    """A stored event as `history` returns it (newest first)."""

    eventId: str
    stream: str
    source: str
    timestamp: int
    payload: JSONObject


class Deleted(TypedDict):
    """A delete's answer: `eventId` only when something was deleted."""

    entity_id: str
    deleted: bool
    eventId: NotRequired[str]


class BatchDeleted(TypedDict):
    deleted: int
    deleted_ids: list[str]
    not_found: list[str]
    failed: int
    errors: JSONList


class Lease(TypedDict):
    """A lease held: `token` is the fencing token for writes (it only grows); times are the
    server's, Unix ms."""

    entity_id: str
    version: int
    owner: str
    token: int
    acquired_at: int
    expires_at: int
    presence: NotRequired[bool]


class LeaseReleased(TypedDict):
    entity_id: str
    version: int
    released: bool


class DeletedRef(TypedDict):
    id: str
    version: int


class Changes(TypedDict):
    """One page of the changes feed: the entities changed after the cursor (as they are now)
    and those deleted, oldest first; ask from `next` for the following page."""

    changes: list[Entity]
    deleted: list[DeletedRef]
    next: int
    more: bool


class Health(TypedDict):
    status: str
    version: str
    entities: int
    lastSequence: int


class Namespace(TypedDict):
    namespaceId: str
    name: str
    createdAt: str
    entityCount: int
    private: bool


class NamespaceToken(TypedDict):
    """A namespace's token, shown only when it is created or rotated."""

    namespaceId: str
    name: str
    token: str
    private: bool


WatchType = Literal["state_update", "entity_deleted", "snapshot", "subscribed", "resync"]


class WatchMessage(TypedDict, total=False):
    """A message of `watch()` (docs/websocket.md#server-messages): `type` is always there, the
    other keys as the type has them (`state_update`: `entity_id`, `property`, `value`,
    `version`, `timestamp`; `entity_deleted`: `entity_id`, `version`; `snapshot`:
    `entity_id`, `properties`, `version`; `subscribed`: `version`; `resync`: `reason`,
    `version`)."""

    type: Required[WatchType]
    entity_id: str
    property: str
    value: Any
    properties: JSONObject
    version: int
    timestamp: str
    reason: str
    prefix: str
