"""Where a LangGraph item lives in Flux, and how its entity reads back as an item. Pure.

An item `(namespace, key)` is the entity `<root><label>/<label>/.../<key>`: the store's root
(its Flux namespace, if any, then its prefix: `langgraph/` by default), then each namespace
label and the key, each percent-encoded (every character but `A-Z a-z 0-9 - _ . ~` becomes
`%XX` of its UTF-8 bytes, so `/` is `%2F` and `%` is `%25`), joined by `/`. A label or key
therefore never contains the separator, and the id decodes back to the same tuple and key
whatever they hold (slashes, dots, spaces, any Unicode). The last segment is the key.

The whole item is one event's worth of properties, so a `put` that replaces the value is one
write, and the entity is readable on its own:

    {"namespace": ["users", "123"], "key": "prefs", "value": {...},
     "created_at": "2026-12-06T03:40:00.123456+00:00", "updated_at": "..."}

`value` is a single property on purpose: Flux merges an event's properties into the entity
(a property left out keeps its old value, and a null is stored as null, not removed), so a
value spread over several properties could not lose a field on `put`. As one property it is
replaced whole by each `put`, in one event, with one new version. `refreshed_at` is added
when a read refreshes the item's time to live (flux.langgraph.store)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, unquote

VALUE = "value"
KEY = "key"
NAMESPACE = "namespace"
CREATED_AT = "created_at"
UPDATED_AT = "updated_at"
REFRESHED_AT = "refreshed_at"
TTL = "__ttl_ms__"  # set by Flux from an event's `ttl_ms` (docs/coordination.md)


def encode(label: str) -> str:
    """One label (or key) as one segment of an entity id."""
    return quote(label, safe="")


def decode(segment: str) -> str | None:
    """The label a segment encodes, or None when `encode` does not give this segment (a
    segment written by hand, not by the store)."""
    try:
        label = unquote(segment, errors="strict")
    except UnicodeDecodeError:
        return None
    return label if encode(label) == segment else None


@dataclass(frozen=True)
class Layout:
    """The ids of one store's items: every id starts with `root`."""

    root: str

    @classmethod
    def of(cls, prefix: str, namespace: str | None) -> Layout:
        """The layout for `prefix` (empty, or ending with `/`) inside the Flux `namespace` (the
        one a token writes to when auth is on; None: none). Raises ValueError for a prefix that
        would run into the first label, or a namespace with a `/`."""
        if prefix and not prefix.endswith("/"):
            raise ValueError(f"the id prefix must be empty or end with '/', not {prefix!r}")
        if namespace is None:
            return cls(prefix)
        if not namespace or "/" in namespace:
            raise ValueError(f"a Flux namespace is a name without '/', not {namespace!r}")
        return cls(f"{namespace}/{prefix}")

    def entity_id(self, namespace: tuple[str, ...], key: str) -> str:
        """The id of the item `key` in `namespace`."""
        return self.root + "/".join(encode(part) for part in (*namespace, key))

    def namespace_prefix(self, namespace: tuple[str, ...]) -> str:
        """The id prefix shared by every item in `namespace` or below it (`()`: every item)."""
        return self.root + "".join(encode(label) + "/" for label in namespace)

    def parse(self, entity_id: str) -> tuple[tuple[str, ...], str] | None:
        """The (namespace, key) of an item's id; None for an id the store does not make."""
        if not entity_id.startswith(self.root):
            return None
        parts = [decode(segment) for segment in entity_id[len(self.root) :].split("/")]
        if any(part is None for part in parts):
            return None
        labels = tuple(part for part in parts[:-1] if part is not None)
        key = parts[-1]
        assert key is not None
        return labels, key


@dataclass(frozen=True)
class Stored:
    """An item as its entity holds it, with what the store needs to refresh its TTL."""

    namespace: tuple[str, ...]
    key: str
    value: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    version: int
    ttl_ms: int | None  # the entity's time to live, if it has one


def stored(layout: Layout, entity: Mapping[str, Any]) -> Stored | None:
    """The item an entity (as the HTTP API returns it) holds, or None when the entity is not
    one of the store's items (another id, or properties the store does not write)."""
    where = layout.parse(entity["id"])
    properties = entity["properties"]
    if where is None or not is_item(properties):
        return None
    try:
        created = datetime.fromisoformat(properties[CREATED_AT])
        updated = datetime.fromisoformat(properties[UPDATED_AT])
    except (TypeError, ValueError):
        return None
    ttl = properties.get(TTL)
    return Stored(
        namespace=where[0],
        key=where[1],
        value=properties[VALUE],
        created_at=created,
        updated_at=updated,
        version=entity["version"],
        ttl_ms=ttl if type(ttl) is int and ttl > 0 else None,
    )


def is_item(properties: Mapping[str, Any]) -> bool:
    """Whether an entity's properties are an item's (as the store writes them)."""
    return (
        isinstance(properties.get(VALUE), dict)
        and type(properties.get(KEY)) is str
        and type(properties.get(CREATED_AT)) is str
        and type(properties.get(UPDATED_AT)) is str
    )


def ttl_ms(minutes: float) -> int:
    """LangGraph's TTL (minutes) as Flux's `ttl_ms`: at least 1 ms, so a tiny TTL still
    expires instead of meaning "no TTL" (Flux's 0)."""
    return max(1, round(minutes * 60_000))
