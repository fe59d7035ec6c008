"""Every endpoint of the HTTP API as a `Call`: the request to send and how to read its answer,
built here once and run by either client (`FluxClient` sends it with `httpx.Client`,
`AsyncFluxClient` with `httpx.AsyncClient`). Nothing here does I/O.

Each builder takes the method's arguments and documents the method: the clients expose them
under the same names with the same signatures (flux.client.endpoints)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypedDict, TypeVar, Unpack
from urllib.parse import quote

import httpx

from flux.client.errors import FluxClientError, FluxUnavailable, error_of, no_answer
from flux.client.types import (
    Accepted,
    BatchDeleted,
    BatchResult,
    Changes,
    Deleted,
    Entity,
    Health,
    HistoryEvent,
    JSONList,
    JSONObject,
    Lease,
    LeaseReleased,
    Namespace,
    NamespaceToken,
)
from flux.events import now_ms, uuid7

T = TypeVar("T")
Params = Mapping[str, str | int]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and the reading of its answer.

    `admin`: sent with the client's admin token when it has one. `idempotent`: sending it twice
    has the effect of sending it once (reads, and writes whose events carry their eventIds), so
    it may be sent again after an answer that did not come back or a 503. `on_error` turns the
    error of a failed answer into another; `timeout` (seconds) replaces the client's."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: Any = None
    params: Params | None = None
    admin: bool = False
    idempotent: bool = False
    on_error: Callable[[FluxClientError], FluxClientError] | None = None
    timeout: float | None = None

    def request(self, admin_token: str | None) -> dict[str, Any]:
        """The arguments of `httpx.Client.build_request` for this call."""
        headers: dict[str, str] = {}
        content = None
        if self.body is not None:
            content = json.dumps(self.body, ensure_ascii=False, allow_nan=False).encode()
            headers["Content-Type"] = "application/json"
        if self.admin and admin_token:
            headers["Authorization"] = f"Bearer {admin_token}"
        request: dict[str, Any] = {
            "method": self.method,
            "url": self.path,
            "content": content,
            "params": self.params,
            "headers": headers,
        }
        if self.timeout is not None:
            request["timeout"] = self.timeout
        return request

    def answer(self, answer: httpx.Response | httpx.TransportError, base_url: str) -> T:
        """The result of an answer (or of a request that got none). Raises FluxClientError."""
        if isinstance(answer, httpx.TransportError):
            raise no_answer(answer, base_url) from answer
        if answer.status_code >= 400:
            error = error_of(answer)
            raise error if self.on_error is None else self.on_error(error)
        return self.parse(answer)


def path_segment(text: str) -> str:
    """`text` as one URL path segment: `/` is sent as `%2F` and every other reserved character
    is percent-encoded too (and `.`/`..`, which URL normalization would otherwise resolve
    away)."""
    segment = quote(text, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return segment


def entity_path(entity_id: str) -> str:
    """The URL path of an entity."""
    return "/api/state/entities/" + path_segment(entity_id)


# -- reading answers ---------------------------------------------------------------------------


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        raise FluxClientError(
            response.status_code, f"the server at {response.request.url} did not answer with JSON"
        ) from None


def _object(response: httpx.Response) -> Any:
    """The answer's JSON object (typed by the builder that asks for it)."""
    body = _json(response)
    if not isinstance(body, dict):
        raise FluxClientError(response.status_code, "the server's answer is not a JSON object")
    return body


def _list(response: httpx.Response) -> Any:
    body = _json(response)
    if not isinstance(body, list):
        raise FluxClientError(response.status_code, "the server's answer is not a JSON list")
    return body


def _nothing(response: httpx.Response) -> None:
    return None


def _field(name: str) -> Callable[[httpx.Response], Any]:
    return lambda response: _object(response)[name]


def _call(method: str, path: str, parse: Callable[[httpx.Response], T], **kw: Any) -> Call[T]:
    """A Call (its parser's Any takes the builder's declared type: the server's schema)."""
    return Call(method, path, parse, **kw)


# -- events ------------------------------------------------------------------------------------


class EventOptions(TypedDict, total=False):
    """The conditions and options of an event (`make_event`, `publish`): see `make_event`."""

    expected_version: int | None
    expected_properties: Mapping[str, Any] | None
    fencing_token: int | None
    ttl_ms: int | None
    if_absent: bool
    event_id: str | None


def make_event(
    stream: str,
    source: str,
    entity_id: str,
    properties: Mapping[str, Any],
    *,
    timestamp: int | None = None,
    **options: Unpack[EventOptions],
) -> JSONObject:
    """One event as `POST /api/events` and the batch take it, with the conditions it carries
    (docs/coordination.md); `publish` sends one, `batch` a list of them.

    - `expected_version`: the entity's `version` must be this (0: it must not exist);
      `if_absent=True` is `expected_version=0` (create only, a claim).
    - `expected_properties`: these property values must hold now (None as a value: absent).
    - `fencing_token`: the token of the entity's lease; refused once a newer lease was issued.
    - `ttl_ms`: the entity is deleted when not updated within it (0: no time to live any more).
    - `timestamp`: epoch ms, now when omitted.
    - `event_id`: the event's id; `publish` and `batch` give one to an event that has none, so
      that sending it again is never storing it twice.

    Raises ValueError when `if_absent` is given with a non-zero `expected_version`."""
    expected_version = options.get("expected_version")
    if options.get("if_absent"):
        if expected_version not in (None, 0):
            raise ValueError(
                f"if_absent expects version 0, not expected_version={expected_version}"
            )
        expected_version = 0
    event: JSONObject = {}
    event_id = options.get("event_id")
    if event_id is not None:
        event["eventId"] = event_id
    event.update(
        stream=stream,
        source=source,
        timestamp=now_ms() if timestamp is None else timestamp,
        payload={"entity_id": entity_id, "properties": dict(properties)},
    )
    if expected_version is not None:
        event["expected_version"] = expected_version
    expected_properties = options.get("expected_properties")
    if expected_properties is not None:
        event["expected_properties"] = dict(expected_properties)
    fencing_token, ttl_ms = options.get("fencing_token"), options.get("ttl_ms")
    if fencing_token is not None:
        event["fencing_token"] = fencing_token
    if ttl_ms is not None:
        event["ttl_ms"] = ttl_ms
    return event


def with_event_id(event: Mapping[str, Any]) -> JSONObject:
    """The event with an `eventId`: its own, else a new UUIDv7 (as the server would give)."""
    return dict(event) if event.get("eventId") else {"eventId": uuid7(), **event}


def publish(
    stream: str,
    source: str,
    entity_id: str,
    properties: Mapping[str, Any],
    timestamp: int | None = None,
    **options: Unpack[EventOptions],
) -> Call[Accepted]:
    """POST /api/events: merge `properties` into the entity. `timestamp` is epoch ms (now when
    omitted); the conditions, `ttl_ms` and `event_id` are `make_event`'s. The event's id is
    chosen before the first attempt, so a retry after a lost answer or a 503 is answered as the
    stored event, never stored twice. Returns `{"eventId", "stream", "sequence"}` (`sequence`:
    the entity's new version). Raises FluxConflict when a condition fails (nothing stored)."""
    if not options.get("event_id"):
        options["event_id"] = uuid7()
    event = make_event(stream, source, entity_id, properties, timestamp=timestamp, **options)
    return _call("POST", "/api/events", _object, body=event, idempotent=True)


def batch(events: Sequence[Mapping[str, Any]], atomic: bool = False) -> Call[BatchResult]:
    """POST /api/events/batch with full event envelopes (each needs its own `timestamp`;
    `make_event` builds them; an event without `eventId` is given one, for safe retries).
    Returns `{"successful", "failed", "results"}`.

    By default one bad event does not fail the others: a failed condition shows in its result
    as `"error": "condition failed: ..."`, `"sequence": null` and `"conflict"`. `atomic=True`
    stores every event, in consecutive sequences, or none: an event whose condition fails
    raises FluxConflict (its `index` names it), any other bad event FluxClientError."""
    body: JSONObject = {"events": [with_event_id(e) for e in events]}
    if atomic:
        body["atomic"] = True
    return _call("POST", "/api/events/batch", _object, body=body, idempotent=True)


def history(
    entity: str, since: str | datetime | None = None, limit: int | None = None
) -> Call[list[HistoryEvent]]:
    """GET /api/events: the entity's stored events, newest first. `since` is ISO 8601 text or a
    datetime (server default: the last 24 hours); `limit` is clamped to 1..500."""
    params: dict[str, str | int] = {"entity": entity}
    if since is not None:
        params["since"] = since.isoformat() if isinstance(since, datetime) else since
    if limit is not None:
        params["limit"] = limit
    return _call("GET", "/api/events", _list, params=params, idempotent=True)


# -- state -------------------------------------------------------------------------------------


def get(entity_id: str) -> Call[Entity]:
    """GET /api/state/entities/{id}: `{"id", "properties", "version", "lastUpdated"}`; a missing
    entity raises FluxClientError with status 404."""
    return _call("GET", entity_path(entity_id), _object, idempotent=True)


def list_entities(prefix: str | None = None, namespace: str | None = None) -> Call[list[Entity]]:
    """GET /api/state/entities, filtered by id prefix and/or namespace (both must match)."""
    params: dict[str, str | int] = {}
    if prefix:
        params["prefix"] = prefix
    if namespace:
        params["namespace"] = namespace
    return _call("GET", "/api/state/entities", _list, params=params, idempotent=True)


def delete(entity_id: str) -> Call[Deleted]:
    """DELETE /api/state/entities/{id}: logs a deletion if the entity exists. Returns
    `{"entity_id", "eventId", "deleted": true}`, or `{"entity_id", "deleted": false}` when
    there was nothing to delete (nothing logged)."""
    return _call("DELETE", entity_path(entity_id), _object)


def batch_delete(filter: Mapping[str, Any]) -> Call[BatchDeleted]:
    """POST /api/state/entities/delete with `{"namespace": ...}`, `{"prefix": ...}` or
    `{"entity_ids": [...]}`. Returns `{"deleted", "deleted_ids", "not_found", "failed",
    "errors"}` (`not_found`: ids with nothing to delete; `failed`: ids over the rate limit)."""
    return _call("POST", "/api/state/entities/delete", _object, body=dict(filter))


def changes(
    since: int = 0,
    *,
    prefix: str | None = None,
    namespace: str | None = None,
    limit: int | None = None,
) -> Call[Changes]:
    """GET /api/state/changes: one page of what changed after version `since`, oldest first:
    `{"changes": [entity, ...], "deleted": [{"id", "version"}, ...], "next", "more"}`, each
    changed entity as it is now. Ask from `next` for the following page (`more` says whether
    one is waiting). `limit` caps the page (the server caps it at FLUX_CHANGES_PAGE_LIMIT).
    Raises FluxResync when `since` is older than the deletions the server remembers."""
    params: dict[str, str | int] = {"since": since}
    if prefix:
        params["prefix"] = prefix
    if namespace:
        params["namespace"] = namespace
    if limit is not None:
        params["limit"] = limit
    return _call("GET", "/api/state/changes", _object, params=params, idempotent=True)


# -- leases ------------------------------------------------------------------------------------


def lease_acquire(
    entity_id: str,
    owner: str,
    ttl_ms: int,
    *,
    properties: Mapping[str, Any] | None = None,
    presence: bool = False,
) -> Call[Lease]:
    """POST /api/leases/acquire: take the lease on the entity for `owner`, for `ttl_ms` (its
    holder acquiring again extends it, with the same token: so a retry is safe). Returns
    `{"entity_id", "version", "owner", "token", "acquired_at", "expires_at"}`; `token` is the
    fencing token for writes (it only grows). `properties` are set on the entity with the
    lease; `presence=True` deletes the entity when the lease ends (released, or not renewed in
    time). Raises FluxConflict while another owner holds it (`lease` names the holder)."""
    body: JSONObject = {"entity_id": entity_id, "owner": owner, "ttl_ms": ttl_ms}
    if properties is not None:
        body["properties"] = dict(properties)
    if presence:
        body["presence"] = True
    return _call("POST", "/api/leases/acquire", _object, body=body, idempotent=True)


def lease_renew(entity_id: str, owner: str, token: int, ttl_ms: int) -> Call[Lease]:
    """POST /api/leases/renew: the lease lasts `ttl_ms` from now. Returns the lease as
    `lease_acquire` does. Raises FluxConflict when it was lost (expired, released or taken by
    another): stop working on its behalf."""
    body = {"entity_id": entity_id, "owner": owner, "token": token, "ttl_ms": ttl_ms}
    return _call("POST", "/api/leases/renew", _object, body=body, idempotent=True)


def lease_release(entity_id: str, owner: str, token: int) -> Call[LeaseReleased]:
    """POST /api/leases/release: give the lease back. Returns `{"entity_id", "version",
    "released": true}`. Raises FluxConflict when it is not this owner's lease or token."""
    body = {"entity_id": entity_id, "owner": owner, "token": token}
    return _call("POST", "/api/leases/release", _object, body=body)


# -- server ------------------------------------------------------------------------------------


def _health_error(error: FluxClientError) -> FluxClientError:
    if error.status != 503:
        return error
    if error.message.startswith("event log"):
        return FluxUnavailable(f"Flux is degraded: {error.message}", None)
    return FluxUnavailable("Flux is starting: its state is not ready yet", None)


def health() -> Call[Health]:
    """GET /api/health: `{"status", "version", "entities", "lastSequence"}`. A server still
    restoring its state, or one whose event log is damaged or unreachable (`degraded`), answers
    503, raised as FluxUnavailable (never retried: health is asked to learn that)."""
    return _call("GET", "/api/health", _object, on_error=_health_error)


def connectors() -> Call[JSONObject]:
    """GET /api/connectors: `{"connectors": [{"name", "enabled", "status"}, ...]}`."""
    return _call("GET", "/api/connectors", _object, idempotent=True)


def connector(name: str) -> Call[JSONObject]:
    """GET /api/connectors/NAME: status, poll interval, last poll and error, counts."""
    return _call("GET", f"/api/connectors/{path_segment(name)}", _object, idempotent=True)


def connector_store_token(name: str, token: str) -> Call[JSONObject]:
    """POST /api/connectors/NAME/token: store the caller's token (encrypted on the server) and
    (re)start the connector. Returns `{"success": true}`."""
    path = f"/api/connectors/{path_segment(name)}/token"
    return _call("POST", path, _object, body={"token": token})


def connector_delete_token(name: str) -> Call[JSONObject]:
    """DELETE /api/connectors/NAME/token: the connector stops and its token is deleted."""
    return _call("DELETE", f"/api/connectors/{path_segment(name)}/token", _object)


def _location(response: httpx.Response) -> str:
    location: str | None = response.headers.get("location")
    if not response.is_redirect or not location:
        raise FluxClientError(
            response.status_code, "the server did not answer with a redirect to the provider"
        )
    return location


def connector_oauth_url(name: str) -> Call[str]:
    """GET /api/connectors/NAME/oauth/start without following it: the provider's sign-in URL
    (the redirect's `Location`) for a person to open in a browser."""
    return _call("GET", f"/api/connectors/{path_segment(name)}/oauth/start", _location)


def source_add(config: Mapping[str, Any]) -> Call[JSONObject]:
    """POST /api/connectors/generic: create a generic HTTP source (see
    docs/connectors/generic.md). Returns `{"source_id": "<uuid>"}`."""
    return _call("POST", "/api/connectors/generic", _object, body=dict(config))


def sources() -> Call[JSONList]:
    """GET /api/connectors/generic: the caller's sources, each with its status."""
    return _call("GET", "/api/connectors/generic", _field("sources"), idempotent=True)


def source_show(source_id: str) -> Call[JSONObject]:
    """GET /api/connectors/generic/ID: one source with its status."""
    path = f"/api/connectors/generic/{path_segment(source_id)}"
    return _call("GET", path, _object, idempotent=True)


def source_remove(source_id: str) -> Call[None]:
    """DELETE /api/connectors/generic/ID: the source stops; its stored token is deleted."""
    return _call("DELETE", f"/api/connectors/generic/{path_segment(source_id)}", _nothing)


def admin_config(changes: Mapping[str, Any] | None = None) -> Call[JSONObject]:
    """GET /api/admin/config, or with `changes` a PUT (sent with the admin token) that updates
    those runtime settings. Returns the whole runtime config."""
    if changes is None:
        return _call("GET", "/api/admin/config", _object, idempotent=True)
    return _call("PUT", "/api/admin/config", _object, body=dict(changes), admin=True)


# -- namespaces --------------------------------------------------------------------------------


def namespace_create(name: str, private: bool = False) -> Call[NamespaceToken]:
    """POST /api/namespaces (with the admin token when one is set): returns `{"namespaceId",
    "name", "token", ...}`; the token is shown only this once."""
    body = {"name": name, "private": private}
    return _call("POST", "/api/namespaces", _object, body=body, admin=True)


def namespace_show(name: str) -> Call[Namespace]:
    """GET /api/namespaces/NAME: id, name, createdAt, entityCount (never the token)."""
    return _call("GET", f"/api/namespaces/{path_segment(name)}", _object, idempotent=True)


def namespace_set_private(name: str, private: bool) -> Call[Namespace]:
    """PUT /api/namespaces/NAME with the namespace's token (or the admin token)."""
    path = f"/api/namespaces/{path_segment(name)}"
    return _call("PUT", path, _object, body={"private": private}, admin=True)


def namespace_rotate_token(name: str) -> Call[NamespaceToken]:
    """POST /api/namespaces/NAME/token with the namespace's current token (or the admin token):
    returns the new token; the old one stops working at once."""
    return _call("POST", f"/api/namespaces/{path_segment(name)}/token", _object, admin=True)


def namespace_delete(name: str) -> Call[None]:
    """DELETE /api/namespaces/NAME (admin token): the namespace and its entities go."""
    return _call("DELETE", f"/api/namespaces/{path_segment(name)}", _nothing, admin=True)
