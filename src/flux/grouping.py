"""Entities grouped by id prefix, one level at a time, in pages (pure).

The console's entity browser shows a level of the id tree: the groups under a prefix (the ids
that continue past a delimiter, counted) and the entities that end at that level. With 100,000
entities a browser cannot take the whole listing, so the server groups and pages it: one page is
at most `limit` items (groups and entities together, sorted by key), and `after` (the last key of
the previous page) asks for the next one.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Level(Generic[T]):
    """One page of a level: `groups` as (prefix, entity count) and `entities`, both sorted by
    key; `total` is how many entities the whole level holds (in its groups or directly);
    `next` is the key to pass as `after` for the next page (None on the last page)."""

    groups: list[tuple[str, int]]
    entities: list[T]
    total: int
    next: str | None


def group_level(
    items: Iterable[tuple[str, T]],
    prefix: str,
    delimiters: str,
    limit: int,
    after: str = "",
    contains: str = "",
) -> Level[T]:
    """Group `items` (id, value), all of whose ids start with `prefix`, at the level below
    `prefix`: an id whose rest (after `prefix`) holds one of `delimiters` belongs to the group
    `prefix + rest up to and including that delimiter`; an id without one is an entity of the
    level. Only ids containing `contains` count (case-insensitive). Returns the page of keys
    greater than `after`, at most `limit` of them."""
    start = len(prefix)
    needle = contains.lower()
    counts: dict[str, int] = {}
    direct: list[tuple[str, T]] = []
    total = 0
    for entity_id, value in items:
        if needle and needle not in entity_id.lower():
            continue
        total += 1
        cut = -1
        for char in delimiters:
            at = entity_id.find(char, start)
            if at != -1 and (cut == -1 or at < cut):
                cut = at
        if cut == -1:
            if entity_id > after:
                direct.append((entity_id, value))
        else:
            key = entity_id[: cut + 1]
            counts[key] = counts.get(key, 0) + 1
    group_keys = heapq.nsmallest(limit + 1, (key for key in counts if key > after))
    entity_keys = heapq.nsmallest(limit + 1, direct, key=lambda pair: pair[0])
    merged = heapq.nsmallest(
        limit + 1,
        [(key, True) for key in group_keys] + [(key, False) for key, _ in entity_keys],
    )
    page = merged[:limit]
    taken = {key for key, is_group in page if not is_group}
    return Level(
        groups=[(key, counts[key]) for key, is_group in page if is_group],
        entities=[value for key, value in entity_keys if key in taken],
        total=total,
        next=page[-1][0] if len(merged) > limit else None,
    )
