"""Who may write, read and administer what, and how fast: every authorization and rate-limit
decision in front of the state, made from the namespace index (`flux.auth.Access`) and the
runtime settings.

With auth off everyone may do everything except write to Flux's reserved namespace, and no rate
limit applies. With auth on a write needs its namespace's token and takes a place under that
namespace's rate limit; a read of a private namespace needs its token or the admin's.

`is_public` is the one answer to "may anyone read this entity": the hot read
(`flux.api.reads`) serves an entity without a credential only when it says yes, and
`can_read`/`check_read` (the router's handlers, live subscriptions) ask it first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple, cast

from flux.auth import (
    RESERVED_NAMESPACE,
    UNKNOWN_TOKEN,
    Access,
    Credential,
    check_not_reserved,
    entity_namespace,
)
from flux.config import RuntimeConfig, Settings
from flux.engine import Entity, StateEngine
from flux.errors import AuthError, Forbidden, NamespaceNotFound, RateLimited, ValidationError
from flux.events import Event, entity_of, namespace_of, validate_event
from flux.ratelimit import RateLimiter, retry_after

_PAYLOAD = itemgetter("payload")
_RESERVED_AFTER_NUL = "\x00" + RESERVED_NAMESPACE + "/"


class AdmittedDeletes(NamedTuple):
    """The ids a delete may remove under the rate limit (in request order), the ids refused
    for it, and the Retry-After seconds for those (0 when none was refused)."""

    admitted: list[str]
    refused: list[str]
    retry_after: int


class Permissions:
    def __init__(
        self,
        settings: Settings,
        access: Access,
        runtime: RuntimeConfig,
        engine: StateEngine,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """`clock` (monotonic seconds) drives the rate limiter; tests pass a fake one."""
        self.auth_enabled = settings.auth_enabled
        self.max_id_length = settings.max_entity_id_length
        self.access = access
        self.runtime = runtime
        self.engine = engine
        self.limiter = RateLimiter(clock) if clock is not None else RateLimiter()
        # The private namespaces' names (the index's own set, changed in place): none with
        # auth off, where every namespace reads as public.
        self._private: set[str] | frozenset[str] = (
            access.private if self.auth_enabled else frozenset()
        )

    # -- writes ------------------------------------------------------------------------------

    def authorize_write(self, credential: Credential, entity_id: str | None) -> str | None:
        """May this credential write (or delete) this entity? Auth on: returns its namespace,
        or raises AuthError, InvalidEntityId, NamespaceNotFound or Forbidden (see
        `Access.authorize_write`). Auth off: returns None; only Flux's reserved namespace is
        refused (Forbidden)."""
        if not self.auth_enabled:
            check_not_reserved(entity_id)
            return None
        return self.access.authorize_write(credential, entity_id)

    def admit(self, credential: Credential, event: Event) -> None:
        """Authorize one event and take its place under its namespace's rate limit. Raises as
        `authorize_write`, or RateLimited."""
        namespace = self.authorize_write(credential, entity_of(event))
        if namespace is not None:
            self.rate_limit(namespace)

    def admits_all(self, events: Sequence[Event | ValidationError]) -> bool:
        """True when `admit` would let every item through without a step of its own: each is
        an event, auth is off (so no rate limit applies) and none is in Flux's reserved
        namespace. Decided with C calls over the whole batch (calling `admit` per event was 9% of
        the event loop's instructions in batch ingest). False: ask `admit` event by
        event, which says which ones it refuses and why."""
        if self.auth_enabled or set(map(type, events)) != {dict}:
            return False
        payloads = map(_PAYLOAD, cast(Sequence[Event], events))
        ids: list[Any] = list(map(dict.get, payloads, repeat("entity_id")))
        if set(map(type, ids)) != {str}:
            return False
        # Each id follows a NUL in the text, so an id that starts in the reserved namespace
        # is found (and one with a NUL of its own can only make this say False).
        return _RESERVED_AFTER_NUL not in "\x00" + "\x00".join(ids)

    def admit_as(self, namespace: str | None, items: Sequence[object]) -> list[Event]:
        """Validate event objects published on behalf of a namespace (None: auth off), as
        connectors do, and admit them all or none: the checks of `POST /api/events/batch`
        (validation, the namespace of every id, the reserved namespace, the rate limit) with
        the namespace standing in for its token. Returns the validated events. Raises
        ValidationError, Forbidden, NamespaceNotFound or RateLimited."""
        events = [validate_event(item, self.max_id_length) for item in items]
        for event in events:
            entity_id = entity_of(event)
            check_not_reserved(entity_id)
            if not self.auth_enabled:
                continue
            name = entity_namespace(entity_id)
            if name != namespace:
                raise Forbidden(f"Token does not have permission to write to namespace '{name}'")
            if self.access.get(name) is None:
                raise NamespaceNotFound(
                    f"Namespace '{name}' not found. Register it with POST /api/namespaces"
                )
        if namespace is not None:
            for _ in events:
                self.rate_limit(namespace)
        return events

    def admit_deletes(self, entity_ids: Sequence[str]) -> AdmittedDeletes:
        """Take one event of the namespace's rate limit for each id to delete (ids already
        authorized: with auth on they are all in the caller's namespace), as events do: with
        auth on and rate limiting on. A batch is admitted in part: its first ids, as many as
        the namespace's bucket holds; the rest are refused."""
        runtime = self.runtime
        if not (self.auth_enabled and runtime.current.rate_limit_enabled):
            return AdmittedDeletes(list(entity_ids), [], 0)
        per_minute = runtime.current.rate_limit_per_namespace_per_minute
        by_namespace: dict[str | None, list[str]] = {}
        for entity_id in entity_ids:
            by_namespace.setdefault(namespace_of(entity_id), []).append(entity_id)
        allowed: set[str] = set()
        wait = 0.0
        for name, ids in by_namespace.items():
            if name is None:  # not reached: an authorized id has a namespace
                allowed.update(ids)
                continue
            taken, pause = self.limiter.take_many(name, per_minute, len(ids))
            allowed.update(ids[:taken])
            wait = max(wait, pause)
        admitted = [i for i in entity_ids if i in allowed]
        refused = [i for i in entity_ids if i not in allowed]
        return AdmittedDeletes(admitted, refused, retry_after(wait) if refused else 0)

    def rate_limit(self, key: str) -> None:
        """Count one event against `key` (a namespace) when rate limiting is on; raises
        RateLimited with the real wait when the key is over its limit."""
        runtime = self.runtime
        if not runtime.current.rate_limit_enabled:
            return
        wait = self.limiter.take(key, runtime.current.rate_limit_per_namespace_per_minute)
        if wait:
            raise RateLimited(retry_after(wait))

    def writable(self, credential: Credential, namespace: str | None, prefix: str) -> list[str]:
        """The ids a batch delete by `namespace` (or else by `prefix`) may remove. Auth on: only
        in the caller's own namespace (another namespace is Forbidden; a prefix is narrowed to
        the caller's namespace). Auth off: everything but Flux's reserved namespace."""
        engine = self.engine
        if not self.auth_enabled:
            selected: Iterator[Entity] = (
                engine.select(namespace=namespace)
                if namespace is not None
                else engine.select(prefix=prefix)
            )
            reserved = RESERVED_NAMESPACE + "/"
            return [e.id for e in selected if not e.id.startswith(reserved)]
        own = self.access.own_namespace(credential)
        if namespace is not None:
            if namespace != own:
                raise Forbidden(
                    f"Token does not have permission to write to namespace '{namespace}'"
                )
            return [e.id for e in engine.select(namespace=own)]
        return [e.id for e in engine.select(prefix=prefix, namespace=own)]

    # -- reads -------------------------------------------------------------------------------

    def is_public(self, entity_id: str) -> bool:
        """Whether anyone may read the entity, with or without a credential: always with auth
        off, else unless it is in a private namespace. One set lookup (none while no namespace
        is private), and current: a namespace made private takes effect on the next call."""
        private = self._private
        if not private:
            return True
        head, sep, _ = entity_id.partition("/")
        return not (sep and head in private)

    def can_read(self, token: str | Credential | None, entity_id: str) -> bool:
        """Whether the holder of `token` (a bare token, None, or a Credential) may read the
        entity: a public one always (`is_public`); a private one only with its namespace's
        token or the admin's. A rotated token takes effect on the next call."""
        if self.is_public(entity_id):
            return True
        credential = token if isinstance(token, Credential) else Credential.from_token(token)
        return self.access.can_read(credential, entity_id)

    def check_known(self, credential: Credential) -> None:
        """Raises AuthError unless the credential is a namespace's token or the admin's."""
        if self.access.owner(credential) is None and not self.access.is_admin(credential):
            raise AuthError(UNKNOWN_TOKEN)

    def check_read(self, credential: Credential, entity_id: str) -> None:
        """Raises AuthError (401) or Forbidden (403) when the entity is in a private namespace
        the credential may not read."""
        if not self.is_public(entity_id):
            self.access.check_read(credential, entity_id)

    def hidden(self, credential: Credential) -> frozenset[str]:
        """Private namespaces the credential may not read: listings leave them out."""
        if not self.auth_enabled:
            return frozenset()
        return self.access.hidden(credential)

    def history_floor(self, entity_id: str) -> int:
        """The sequence at or below which the entity's events are not served by history and
        replays: a deleted namespace's past (0 when nothing is hidden)."""
        return self.access.history_floor(entity_id)

    # -- admin -------------------------------------------------------------------------------

    def check_admin(self, credential: Credential, message: str = "Unauthorized") -> None:
        """The admin gate (`Access.check_admin`): raises AuthError or Forbidden."""
        self.access.check_admin(credential, self.auth_enabled, message)
