"""The subscription hub: which connections want a change to an entity. Pure: no I/O.

A connection subscribes to exact entity ids, to id prefixes, or to everything (`*`). As in the
original Flux, a connection that has never subscribed receives everything; once it has
subscribed, it receives only what matches (so unsubscribing from everything means silence).
Matching a change is a dict lookup for the exact id plus, for prefix subscriptions, one slice
and one dict lookup per distinct prefix length (prefixes are indexed by their length), never a
scan of all connections. Its cost does not grow with the number of prefixes held, only with the
number of distinct prefix lengths no longer than the id (at most the longest id allowed,
FLUX_MAX_ENTITY_ID_LENGTH, and in practice a handful). The walk it replaced tried every prefix
(or every prefix of the id): about id length x prefixes, which let anyone stall the server.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Generic, TypeVar

C = TypeVar("C", bound=Hashable)

WILDCARD = "*"


class Hub(Generic[C]):
    def __init__(self) -> None:
        self._fresh: set[C] = set()  # never subscribed: receive everything
        self._wildcard: set[C] = set()
        self._exact: dict[str, set[C]] = {}
        # prefix length -> {prefix -> subscribers}; `_lengths` is its keys, ascending
        self._prefix: dict[int, dict[str, set[C]]] = {}
        self._lengths: list[int] = []
        self._subs: dict[C, set[tuple[str, str]]] = {}

    def __len__(self) -> int:
        return len(self._subs)

    def connections(self) -> list[C]:
        return list(self._subs)

    def add(self, conn: C) -> None:
        self._subs[conn] = set()
        self._fresh.add(conn)

    def remove(self, conn: C) -> None:
        for kind, key in self._subs.pop(conn, set()):
            self._drop(conn, kind, key)
        self._fresh.discard(conn)

    def subscribe(self, conn: C, entity_id: str | None = None, prefix: str | None = None) -> None:
        """Subscribe to one entity id (`*` for all) or to every id starting with `prefix` (the
        empty prefix is everything). Raises KeyError for a connection that was not added."""
        if prefix is None and entity_id is None:
            return
        subs = self._subs[conn]
        self._fresh.discard(conn)
        if prefix is not None:
            if prefix == "":
                subs.add(("all", ""))
                self._wildcard.add(conn)
            else:
                subs.add(("prefix", prefix))
                size = len(prefix)
                by_prefix = self._prefix.get(size)
                if by_prefix is None:
                    by_prefix = self._prefix[size] = {}
                    self._lengths = sorted(self._prefix)
                by_prefix.setdefault(prefix, set()).add(conn)
        elif entity_id == WILDCARD:
            subs.add(("all", ""))
            self._wildcard.add(conn)
        else:
            assert entity_id is not None
            subs.add(("exact", entity_id))
            self._exact.setdefault(entity_id, set()).add(conn)

    def unsubscribe(self, conn: C, entity_id: str | None = None, prefix: str | None = None) -> None:
        """Drop one subscription. Like any subscribe, it ends a fresh connection's "everything"
        default, so a connection that unsubscribes without having subscribed receives nothing."""
        subs = self._subs.get(conn)
        if subs is None:
            return
        if prefix is not None:
            key = ("all", "") if prefix == "" else ("prefix", prefix)
        elif entity_id == WILDCARD:
            key = ("all", "")
        elif entity_id is not None:
            key = ("exact", entity_id)
        else:
            return
        self._fresh.discard(conn)
        if key in subs:
            subs.discard(key)
            self._drop(conn, *key)

    def _drop(self, conn: C, kind: str, key: str) -> None:
        if kind == "all":
            self._wildcard.discard(conn)
            return
        if kind == "exact":
            _discard(self._exact, key, conn)
            return
        size = len(key)
        by_prefix = self._prefix.get(size)
        if by_prefix is not None:
            _discard(by_prefix, key, conn)
            if not by_prefix:
                del self._prefix[size]
                self._lengths = sorted(self._prefix)

    def count(self, conn: C) -> int:
        """How many subscriptions a connection holds."""
        return len(self._subs.get(conn, ()))

    def subscriptions(self, conn: C) -> set[tuple[str, str]]:
        """(kind, key) pairs of a connection: kind is "all", "exact" or "prefix"."""
        return set(self._subs.get(conn, ()))

    def wants(self, conn: C, entity_id: str) -> bool:
        """Whether one connection's subscriptions match an entity id."""
        if conn in self._fresh or conn in self._wildcard:
            return True
        for kind, key in self._subs.get(conn, ()):
            if (kind == "exact" and key == entity_id) or (
                kind == "prefix" and entity_id.startswith(key)
            ):
                return True
        return False

    def match(self, entity_id: str) -> set[C]:
        """Every connection that wants changes to `entity_id`."""
        found = self._fresh | self._wildcard
        exact = self._exact.get(entity_id)
        if exact:
            found |= exact
        if self._lengths:
            prefixes = self._prefix
            longest = len(entity_id)
            for size in self._lengths:
                if size > longest:
                    break
                bucket = prefixes[size].get(entity_id[:size])
                if bucket:
                    found |= bucket
        return found


def _discard(index: dict[str, set[C]], key: str, conn: C) -> None:
    """Take `conn` out of `index[key]`, dropping the key once nobody is left."""
    bucket = index.get(key)
    if bucket is not None:
        bucket.discard(conn)
        if not bucket:
            del index[key]
