"""FluxStore: LangGraph's `BaseStore` on a Flux server, through flux.client.

Each operation is planned once, as a generator of `Call`s (flux.client.calls) that receives
each call's result (or has its error thrown in), and run by either client: `batch` sends the
calls with a `FluxClient`, `abatch` with an `AsyncFluxClient`, so the two cannot differ.
flux.langgraph.mapping says where an item lives; docs/langgraph.md is the guide."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar

from langgraph.store.base import (
    BaseStore,
    GetOp,
    Item,
    ListNamespacesOp,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
)

from flux.client import AsyncFluxClient, Call, FluxClient, FluxClientError, FluxNotFound
from flux.client import calls as api
from flux.client.types import BatchItem, JSONObject
from flux.langgraph import mapping, query
from flux.langgraph.mapping import Layout, Stored

T = TypeVar("T")
Steps = Generator[Call[Any], Any, T]
PUT_ATTEMPTS = 3  # a put that loses a race with a create and a delete is sent again


class NotAnItemError(ValueError):
    """A `put` found an entity at the item's id that the store did not write (its properties
    are not an item's): the store does not overwrite it."""

    def __init__(self, entity_id: str) -> None:
        super().__init__(
            f"entity {entity_id!r} exists and is not a LangGraph item: the store will not "
            "overwrite it (delete it, or give the store another prefix)"
        )
        self.entity_id = entity_id


class FluxStore(BaseStore):
    """A LangGraph store whose items are Flux entities (one per item; flux.langgraph.mapping).

    `client` runs the sync methods (`get`, `put`, `search`, ..., `batch`), `aclient` the async
    ones (`aget`, ..., `abatch`); give at least one. The store does not close them.
    `prefix` (default `langgraph/`) starts every item's id, after `namespace`, the Flux
    namespace the client's token writes to (needed when the server has auth on). `ttl` is
    LangGraph's TTLConfig: `default_ttl` (minutes) for puts that give none, and
    `refresh_on_read` (default True). `stream` and `source` name the store's events."""

    supports_ttl = True

    def __init__(
        self,
        client: FluxClient | None = None,
        *,
        aclient: AsyncFluxClient | None = None,
        prefix: str = "langgraph/",
        namespace: str | None = None,
        ttl: TTLConfig | None = None,
        stream: str = "langgraph",
        source: str = "langgraph-store",
    ) -> None:
        if client is None and aclient is None:
            raise ValueError("FluxStore needs a FluxClient, an AsyncFluxClient, or both")
        self.client = client
        self.aclient = aclient
        self.layout = Layout.of(prefix, namespace)
        self.ttl_config = ttl
        self.stream = stream
        self.source = source

    # -- running -------------------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run the ops in order with the sync client; one result per op (None for a put).
        Raises RuntimeError when the store has no FluxClient, FluxClientError when Flux
        refuses a request, ValueError for a bad filter or match condition."""
        client = self.client
        if client is None:
            raise RuntimeError("this FluxStore has no FluxClient: use the async methods")
        results: list[Result] = []
        for op in ops:
            steps = self._plan(op)
            call = next(steps)
            try:
                while True:
                    try:
                        answer = client.run(call)
                    except FluxClientError as exc:
                        call = steps.throw(exc)
                    else:
                        call = steps.send(answer)
            except StopIteration as done:
                results.append(done.value)
        return results

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """`batch` with the async client (RuntimeError when the store has none)."""
        client = self.aclient
        if client is None:
            raise RuntimeError("this FluxStore has no AsyncFluxClient: use the sync methods")
        results: list[Result] = []
        for op in ops:
            steps = self._plan(op)
            call = next(steps)
            try:
                while True:
                    try:
                        answer = await client.run(call)
                    except FluxClientError as exc:
                        call = steps.throw(exc)
                    else:
                        call = steps.send(answer)
            except StopIteration as done:
                results.append(done.value)
        return results

    def _plan(self, op: Op) -> Steps[Result]:
        if isinstance(op, GetOp):
            return self._get(op)
        if isinstance(op, PutOp):
            return self._put(op)
        if isinstance(op, SearchOp):
            return self._search(op)
        if isinstance(op, ListNamespacesOp):
            return self._list_namespaces(op)
        raise ValueError(f"unknown store operation: {type(op).__name__}")

    # -- the operations ------------------------------------------------------------------------

    def _get(self, op: GetOp) -> Steps[Result]:
        entity_id = self.layout.entity_id(op.namespace, op.key)
        try:
            entity = yield api.get(entity_id)
        except FluxNotFound:
            return None
        item = mapping.stored(self.layout, entity)
        if item is None:
            return None
        if op.refresh_ttl:
            yield from self._refresh([item])
        return Item(
            value=item.value,
            key=item.key,
            namespace=item.namespace,
            created_at=item.created_at,
            updated_at=item.updated_at,
        )

    def _put(self, op: PutOp) -> Steps[Result]:
        """A delete, or one request with two events that Flux decides in order: an update,
        on condition that an item is there (its `key` property), and a create, on condition
        that nothing is. Exactly one is stored (a new `created_at` only on a create), unless
        the entity changed between the two: then the put is sent again."""
        entity_id = self.layout.entity_id(op.namespace, op.key)
        if op.value is None:
            yield api.delete(entity_id)
            return None
        now = _now()
        value = dict(op.value)
        ttl = None if op.ttl is None else mapping.ttl_ms(op.ttl)
        update = api.make_event(
            self.stream,
            self.source,
            entity_id,
            {mapping.VALUE: value, mapping.UPDATED_AT: now},
            expected_properties={mapping.KEY: op.key},
            ttl_ms=0 if ttl is None else ttl,  # a put without a TTL ends an earlier one
        )
        create = api.make_event(
            self.stream,
            self.source,
            entity_id,
            {
                mapping.NAMESPACE: list(op.namespace),
                mapping.KEY: op.key,
                mapping.VALUE: value,
                mapping.CREATED_AT: now,
                mapping.UPDATED_AT: now,
            },
            if_absent=True,
            ttl_ms=ttl,
        )
        for _ in range(PUT_ATTEMPTS):
            answer = yield api.batch([update, create])  # new eventIds for each attempt
            results: list[BatchItem] = answer["results"]
            if any(result["error"] is None for result in results):
                return None
            for result in results:
                if "conflict" not in result:  # refused for another reason than a condition
                    raise _refusal(entity_id, result["error"] or "")
            current = results[1]["conflict"].get("current")
            if current is not None and not mapping.is_item(current.get("properties", {})):
                raise NotAnItemError(entity_id)
        raise FluxClientError(409, f"the put of {entity_id!r} kept racing with other writes")

    def _search(self, op: SearchOp) -> Steps[Result]:
        """Every item under the namespace prefix whose value passes the filter, newest
        `updated_at` first, then `offset`/`limit`. `query` is not used (the store has no
        vector index): the items come in the same order, with `score` None, as LangGraph's
        InMemoryStore does when it has no index."""
        entities = yield api.list_entities(prefix=self.layout.namespace_prefix(op.namespace_prefix))
        items = [item for item in map(self._stored, entities) if item is not None]
        hits = [item for item in items if query.matches(item.value, op.filter)]
        hits.sort(key=lambda item: (item.updated_at, item.namespace, item.key), reverse=True)
        page = hits[op.offset : op.offset + op.limit]
        if op.refresh_ttl:
            yield from self._refresh(page)
        return [
            SearchItem(
                namespace=item.namespace,
                key=item.key,
                value=item.value,
                created_at=item.created_at,
                updated_at=item.updated_at,
            )
            for item in page
        ]

    def _list_namespaces(self, op: ListNamespacesOp) -> Steps[Result]:
        fixed = query.fixed_prefix(op.match_conditions)
        entities = yield api.list_entities(prefix=self.layout.namespace_prefix(fixed))
        namespaces = (item.namespace for item in map(self._stored, entities) if item is not None)
        return query.select_namespaces(
            namespaces, op.match_conditions, op.max_depth, op.limit, op.offset
        )

    # -- helpers -------------------------------------------------------------------------------

    def _stored(self, entity: Mapping[str, Any]) -> Stored | None:
        return mapping.stored(self.layout, entity)

    def _refresh(self, items: list[Stored]) -> Steps[None]:
        """Start the time to live of the items that have one again. Flux counts it from an
        entity's last change, so this is a write: `refreshed_at`, with the same `ttl_ms`, on
        condition that the entity is still at the version read (a newer write has refreshed
        it already; a deletion wins). One request for all of them."""
        now = _now()
        events: list[JSONObject] = [
            api.make_event(
                self.stream,
                self.source,
                self.layout.entity_id(item.namespace, item.key),
                {mapping.REFRESHED_AT: now},
                expected_version=item.version,
                ttl_ms=item.ttl_ms,
            )
            for item in items
            if item.ttl_ms is not None
        ]
        if events:
            yield api.batch(events)


# A batch's event refused before its condition is weighed says why in text; these are the
# statuses the same event would have been answered alone (flux.api.errors).
_REFUSALS = {
    "validation failed": 400,
    "authorization failed: Invalid entity ID": 400,
    "authorization failed: Invalid token": 401,
    "authorization failed: Namespace not found": 401,
    "authorization failed: Forbidden": 403,
    "rate limit exceeded": 429,
}


def _refusal(entity_id: str, error: str) -> FluxClientError:
    """The error for a put whose events Flux refused (not for a condition): a FluxClientError
    with the status a single event would have had, and Flux's text."""
    status = next((code for text, code in _REFUSALS.items() if error.startswith(text)), 400)
    return FluxClientError(status, f"Flux refused the put of {entity_id!r}: {error}")


def _now() -> str:
    return datetime.now(UTC).isoformat()
