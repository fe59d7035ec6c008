"""The tools' results, as the output schemas MCP hosts see: the HTTP API's answers
(flux.client.types), declared again with `typing_extensions.TypedDict`, which pydantic needs to
build a schema on Python 3.11 (it refuses `typing.TypedDict` there)."""

from __future__ import annotations

from typing import Any, NotRequired

from typing_extensions import TypedDict


class Entity(TypedDict):
    """An entity as it is now; `version` grows with every change."""

    id: str
    properties: dict[str, Any]
    version: int
    lastUpdated: str


class Published(TypedDict):
    """A stored event: `version` is the entity's new version (the event's log sequence)."""

    entity_id: str
    version: int
    eventId: str
    stream: str


class Entities(TypedDict):
    entities: list[Entity]
    count: int


class HistoryEvent(TypedDict):
    eventId: str
    stream: str
    source: str
    timestamp: int
    payload: dict[str, Any]


class History(TypedDict):
    """The entity's stored events, newest first."""

    entity_id: str
    events: list[HistoryEvent]


class DeletedRef(TypedDict):
    id: str
    version: int


class Changes(TypedDict):
    """One page of changes after the cursor, oldest first; call again with since=`next`."""

    changes: list[Entity]
    deleted: list[DeletedRef]
    next: int
    more: bool


class Deleted(TypedDict):
    entity_id: str
    deleted: bool
    eventId: NotRequired[str]


class Lease(TypedDict):
    """A lease held: `token` is the fencing token (pass it to publish, renew and release)."""

    entity_id: str
    version: int
    owner: str
    token: int
    acquired_at: int
    expires_at: int
    presence: NotRequired[bool]


class Released(TypedDict):
    entity_id: str
    version: int
    released: bool
