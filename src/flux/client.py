"""FluxClient: a small synchronous HTTP client for the Flux API (one method per endpoint).

    with FluxClient("http://localhost:3000") as flux:
        flux.publish("sensors", "agent-01", "dawn-coral/sensor-01", {"temperature": 22.5})
        flux.get("dawn-coral/sensor-01")["properties"]   # {'temperature': 22.5}

Every failure raises `FluxClientError`: `status` is the HTTP status and `message` the server's
`{"error": ...}` text; `FluxConnectionError` (status None) means no answer came back,
`FluxConflict` (409) that a write's condition failed or a lease is not the caller's, with the
entity as it is now, and `FluxResync` (410) that a changes cursor is too old. Pass an `httpx`
transport (e.g. `httpx.ASGITransport(app)` or `httpx.MockTransport`) to test without sockets.

Coordination (docs/coordination.md): conditional writes and retries on conflict,

    while True:
        entity = flux.get("dawn-coral/counter")
        try:
            flux.publish("counters", "agent-01", "dawn-coral/counter",
                         {"n": entity["properties"]["n"] + 1},
                         expected_version=entity["version"])
            break
        except FluxConflict:
            continue  # someone else wrote first: read again

leases (`lease_acquire`, `lease_renew`, `lease_release`) whose token fences writes
(`publish(..., fencing_token=token)`), atomic batches (`batch(events, atomic=True)`) and the
changes feed (`changes`, `iter_changes`).

`LiveWatch` follows the live changes over the WebSocket (docs/websocket.md), reconnecting and
resuming by itself:

    async for message, text in LiveWatch("http://localhost:3000", prefix="dawn-coral/"):
        print(message["type"], message.get("version"))
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

from flux import __version__
from flux.events import now_ms

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TIMEOUT = 10.0

JSONObject = dict[str, Any]
JSONList = list[Any]


class FluxClientError(Exception):
    """A request that did not succeed: `status` is the HTTP status (None when there was no
    response) and `message` what the server said."""

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __str__(self) -> str:
        return self.message if self.status is None else f"{self.message} (HTTP {self.status})"


class FluxConnectionError(FluxClientError):
    """No HTTP response: the server is down, the address is wrong, or the connection broke."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(None, f"cannot reach Flux at {url}: {reason}")
        self.url = url
        self.reason = reason


class FluxTimeoutError(FluxConnectionError, TimeoutError):
    """The server did not answer in time (a write may still have been stored)."""


class FluxConflict(FluxClientError):
    """A 409 for a failed condition: a conditional write found the entity not as expected, or a
    lease is not the caller's to take, renew or release. Nothing was stored. The fields are the
    server's answer, so an agent can act without reading the entity again:

    - `entity_id`; `expected`: what the request expected (`{"version": 3}`, `{"properties":
      {...}}`, `{"fencing_token": 7}`, `{"lease": {...}}`);
    - `current_version`: the entity's version now (0: it does not exist) and `current`: the
      entity now (`{"id", "properties", "version", ...}`, None when it does not exist);
    - `last_source`, `last_timestamp` (epoch ms): the event that last changed it;
    - `index`: the refused event of an atomic batch (None for other requests);
    - `lease`: the entity's lease as found (`{"owner", "token", "expires_at", ...}`), None when
      nobody holds one; `details`: the whole answer.
    """

    def __init__(self, message: str, details: Mapping[str, Any]) -> None:
        super().__init__(409, message)
        self.details = dict(details)
        self.entity_id: str | None = self.details.get("entity_id")
        self.expected: JSONObject = self.details.get("expected") or {}
        self.current_version: int = self.details.get("current_version") or 0
        self.current: JSONObject | None = self.details.get("current")
        self.last_source: str | None = self.details.get("last_source")
        self.last_timestamp: int | None = self.details.get("last_timestamp")
        self.index: int | None = self.details.get("index")

    @property
    def lease(self) -> JSONObject | None:
        properties = (self.current or {}).get("properties") or {}
        lease = properties.get("__lease__")
        return lease if isinstance(lease, dict) and lease.get("owner") is not None else None


class FluxResync(FluxClientError):
    """A 410 from the changes feed: deletions after the cursor may have been forgotten
    (FLUX_TOMBSTONES_KEPT), so the changes since it cannot be told. Read the whole state again
    (`list`), then follow the changes from `version` (the server's version when it answered);
    `oldest` is the oldest cursor it still answers for."""

    def __init__(self, message: str, oldest: int, version: int) -> None:
        super().__init__(410, message)
        self.oldest = oldest
        self.version = version


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


def error_message(response: httpx.Response) -> str:
    """The server's `{"error": ...}` text, else the status reason and the start of the body."""
    body = _json_or_none(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()[:200]
    reason = response.reason_phrase or "HTTP error"
    return f"{reason}: {text}" if text else reason


def error_of(response: httpx.Response) -> FluxClientError:
    """The error for an answer of status 400 or more: `FluxConflict` for a 409 that carries a
    conflict (other 409s, such as a namespace that exists, are plain), `FluxResync` for a 410
    with `"resync": true`, else `FluxClientError`."""
    status = response.status_code
    message = error_message(response)
    if status in (409, 410):
        body = _json_or_none(response)
        if status == 409 and isinstance(body, dict) and "current_version" in body:
            return FluxConflict(message, body)
        if status == 410 and isinstance(body, dict) and body.get("resync") is True:
            oldest, version = body.get("oldest"), body.get("version")
            return FluxResync(
                message,
                oldest if type(oldest) is int else 0,
                version if type(version) is int else 0,
            )
    return FluxClientError(status, message)


def _json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def make_event(
    stream: str,
    source: str,
    entity_id: str,
    properties: Mapping[str, Any],
    *,
    timestamp: int | None = None,
    expected_version: int | None = None,
    expected_properties: Mapping[str, Any] | None = None,
    fencing_token: int | None = None,
    ttl_ms: int | None = None,
    if_absent: bool = False,
) -> JSONObject:
    """One event as `POST /api/events` and the batch take it, with the conditions it carries
    (docs/coordination.md); `publish` sends one, `batch` a list of them.

    - `expected_version`: the entity's `version` must be this (0: it must not exist);
      `if_absent=True` is `expected_version=0` (create only, a claim).
    - `expected_properties`: these property values must hold now (None as a value: absent).
    - `fencing_token`: the token of the entity's lease; refused once a newer lease was issued.
    - `ttl_ms`: the entity is deleted when not updated within it (0: no time to live any more).
    - `timestamp`: epoch ms, now when omitted.

    Raises ValueError when `if_absent` is given with a non-zero `expected_version`."""
    if if_absent:
        if expected_version not in (None, 0):
            raise ValueError(
                f"if_absent expects version 0, not expected_version={expected_version}"
            )
        expected_version = 0
    event: JSONObject = {
        "stream": stream,
        "source": source,
        "timestamp": now_ms() if timestamp is None else timestamp,
        "payload": {"entity_id": entity_id, "properties": dict(properties)},
    }
    if expected_version is not None:
        event["expected_version"] = expected_version
    if expected_properties is not None:
        event["expected_properties"] = dict(expected_properties)
    if fencing_token is not None:
        event["fencing_token"] = fencing_token
    if ttl_ms is not None:
        event["ttl_ms"] = ttl_ms
    return event


class FluxClient:
    """Talks to one Flux server. `token` is sent as `Authorization: Bearer <token>` on every
    call; `admin_token` replaces it on admin writes (PUT /api/admin/config)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        admin_token: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, transport=transport, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request (redirects are not followed); raises FluxClientError for no answer
        or an HTTP status of 400 or more."""
        try:
            response = self._http.request(
                method, path, content=content, params=params, headers=headers
            )
        except httpx.TimeoutException as exc:
            reason = f"timed out ({str(exc) or type(exc).__name__})"
            raise FluxTimeoutError(self.base_url, reason) from exc
        except httpx.TransportError as exc:
            raise FluxConnectionError(self.base_url, str(exc) or type(exc).__name__) from exc
        if response.status_code >= 400:
            raise error_of(response)
        return response

    def _request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: Mapping[str, str | int] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Send one request and return the decoded JSON body; raises FluxClientError."""
        content = None
        if json_body is not None:
            content = json.dumps(json_body, ensure_ascii=False, allow_nan=False).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        response = self._send(method, path, content=content, params=params, headers=headers)
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise FluxClientError(
                response.status_code, f"the server at {self.base_url} did not answer with JSON"
            ) from None

    # -- events ------------------------------------------------------------------------------

    def publish(
        self,
        stream: str,
        source: str,
        entity_id: str,
        properties: Mapping[str, Any],
        timestamp: int | None = None,
        *,
        expected_version: int | None = None,
        expected_properties: Mapping[str, Any] | None = None,
        fencing_token: int | None = None,
        ttl_ms: int | None = None,
        if_absent: bool = False,
    ) -> JSONObject:
        """POST /api/events: merge `properties` into the entity. `timestamp` is epoch ms (now
        when omitted); the conditions and `ttl_ms` are `make_event`'s. Returns `{"eventId",
        "stream", "sequence"}` (`sequence`: the entity's new version). Raises FluxConflict when
        a condition fails (nothing stored)."""
        event = make_event(
            stream,
            source,
            entity_id,
            properties,
            timestamp=timestamp,
            expected_version=expected_version,
            expected_properties=expected_properties,
            fencing_token=fencing_token,
            ttl_ms=ttl_ms,
            if_absent=if_absent,
        )
        result: JSONObject = self._request("POST", "/api/events", json_body=event)
        return result

    def batch(self, events: Sequence[Mapping[str, Any]], atomic: bool = False) -> JSONObject:
        """POST /api/events/batch with full event envelopes (each needs its own `timestamp`;
        `make_event` builds them). Returns `{"successful", "failed", "results"}`.

        By default one bad event does not fail the others: a failed condition shows in its
        result as `"error": "condition failed: ..."`, `"sequence": null` and `"conflict"`.
        `atomic=True` stores every event, in consecutive sequences, or none: an event whose
        condition fails raises FluxConflict (its `index` names it), any other bad event
        FluxClientError."""
        body: JSONObject = {"events": [dict(e) for e in events]}
        if atomic:
            body["atomic"] = True
        result: JSONObject = self._request("POST", "/api/events/batch", json_body=body)
        return result

    def history(
        self, entity: str, since: str | datetime | None = None, limit: int | None = None
    ) -> JSONList:
        """GET /api/events: the entity's stored events, newest first. `since` is ISO 8601 text
        or a datetime (server default: the last 24 hours); `limit` is clamped to 1..500."""
        params: dict[str, str | int] = {"entity": entity}
        if since is not None:
            params["since"] = since.isoformat() if isinstance(since, datetime) else since
        if limit is not None:
            params["limit"] = limit
        result: JSONList = self._request("GET", "/api/events", params=params)
        return result

    # -- state -------------------------------------------------------------------------------

    def get(self, entity_id: str) -> JSONObject:
        """GET /api/state/entities/{id}: `{"id", "properties", "lastUpdated", ...}`; a missing
        entity raises FluxClientError with status 404."""
        result: JSONObject = self._request("GET", entity_path(entity_id))
        return result

    def list(self, prefix: str | None = None, namespace: str | None = None) -> JSONList:
        """GET /api/state/entities, filtered by id prefix and/or namespace (both must match)."""
        params: dict[str, str | int] = {}
        if prefix:
            params["prefix"] = prefix
        if namespace:
            params["namespace"] = namespace
        result: JSONList = self._request("GET", "/api/state/entities", params=params)
        return result

    def delete(self, entity_id: str) -> JSONObject:
        """DELETE /api/state/entities/{id}: logs a deletion if the entity exists. Returns
        `{"entity_id", "eventId", "deleted": true}`, or `{"entity_id", "deleted": false}` when
        there was nothing to delete (nothing logged)."""
        result: JSONObject = self._request("DELETE", entity_path(entity_id))
        return result

    def batch_delete(self, filter: Mapping[str, Any]) -> JSONObject:
        """POST /api/state/entities/delete with `{"namespace": ...}`, `{"prefix": ...}` or
        `{"entity_ids": [...]}`. Returns `{"deleted", "deleted_ids", "not_found", "failed",
        "errors"}` (`not_found`: ids with nothing to delete; `failed`: ids over the rate
        limit)."""
        result: JSONObject = self._request(
            "POST", "/api/state/entities/delete", json_body=dict(filter)
        )
        return result

    def changes(
        self,
        since: int = 0,
        *,
        prefix: str | None = None,
        namespace: str | None = None,
        limit: int | None = None,
    ) -> JSONObject:
        """GET /api/state/changes: one page of what changed after version `since`, oldest first:
        `{"changes": [entity, ...], "deleted": [{"id", "version"}, ...], "next", "more"}`, each
        changed entity as it is now. Ask from `next` for the following page (`more` says
        whether one is waiting). `limit` caps the page (the server caps it at
        FLUX_CHANGES_PAGE_LIMIT). Raises FluxResync when `since` is older than the deletions
        the server remembers."""
        params: dict[str, str | int] = {"since": since}
        if prefix:
            params["prefix"] = prefix
        if namespace:
            params["namespace"] = namespace
        if limit is not None:
            params["limit"] = limit
        result: JSONObject = self._request("GET", "/api/state/changes", params=params)
        return result

    def iter_changes(
        self,
        since: int = 0,
        *,
        prefix: str | None = None,
        namespace: str | None = None,
        limit: int | None = None,
        follow: bool = False,
        interval: float = 1.0,
    ) -> Iterator[JSONObject]:
        """Every page of changes after `since` (see `changes`), each asked from the previous
        page's `next`, until the last one (`more` false). With `follow`, it then goes on
        polling every `interval` seconds, forever (stop iterating to stop): the pages that find
        nothing are yielded too, empty, so the caller gets control back at every poll. Save a
        page's `next` to resume later. Raises FluxResync (see `changes`)."""
        cursor = since
        while True:
            page = self.changes(cursor, prefix=prefix, namespace=namespace, limit=limit)
            yield page
            cursor = page["next"]
            if page["more"]:
                continue
            if not follow:
                return
            time.sleep(interval)

    # -- leases ------------------------------------------------------------------------------

    def lease_acquire(
        self,
        entity_id: str,
        owner: str,
        ttl_ms: int,
        *,
        properties: Mapping[str, Any] | None = None,
        presence: bool = False,
    ) -> JSONObject:
        """POST /api/leases/acquire: take the lease on the entity for `owner`, for `ttl_ms`
        (its holder acquiring again extends it). Returns `{"entity_id", "version", "owner",
        "token", "acquired_at", "expires_at"}`; `token` is the fencing token for writes (it
        only grows). `properties` are set on the entity with the lease; `presence=True`
        deletes the entity when the lease ends (released, or not renewed in time). Raises
        FluxConflict while another owner holds it (`lease` names the holder)."""
        body: JSONObject = {"entity_id": entity_id, "owner": owner, "ttl_ms": ttl_ms}
        if properties is not None:
            body["properties"] = dict(properties)
        if presence:
            body["presence"] = True
        result: JSONObject = self._request("POST", "/api/leases/acquire", json_body=body)
        return result

    def lease_renew(self, entity_id: str, owner: str, token: int, ttl_ms: int) -> JSONObject:
        """POST /api/leases/renew: the lease lasts `ttl_ms` from now. Returns the lease as
        `lease_acquire` does. Raises FluxConflict when it was lost (expired, released or taken
        by another): stop working on its behalf."""
        body = {"entity_id": entity_id, "owner": owner, "token": token, "ttl_ms": ttl_ms}
        result: JSONObject = self._request("POST", "/api/leases/renew", json_body=body)
        return result

    def lease_release(self, entity_id: str, owner: str, token: int) -> JSONObject:
        """POST /api/leases/release: give the lease back. Returns `{"entity_id", "version",
        "released": true}`. Raises FluxConflict when it is not this owner's lease or token."""
        body = {"entity_id": entity_id, "owner": owner, "token": token}
        result: JSONObject = self._request("POST", "/api/leases/release", json_body=body)
        return result

    # -- server ------------------------------------------------------------------------------

    def health(self) -> JSONObject:
        """GET /api/health: `{"status", "version", "entities", ...}`. A server still restoring
        its state, or one whose event log is damaged or unreachable (`degraded`, with an
        `error`), answers 503, raised as FluxClientError."""
        try:
            result: JSONObject = self._request("GET", "/api/health")
        except FluxClientError as exc:
            if exc.status == 503 and exc.message.startswith("event log"):
                raise FluxClientError(503, f"Flux is degraded: {exc.message}") from exc
            if exc.status == 503:
                raise FluxClientError(503, "Flux is starting: its state is not ready yet") from exc
            raise
        return result

    def connectors(self) -> JSONObject:
        """GET /api/connectors: `{"connectors": [{"name", "enabled", "status"}, ...]}`."""
        result: JSONObject = self._request("GET", "/api/connectors")
        return result

    def connector(self, name: str) -> JSONObject:
        """GET /api/connectors/NAME: status, poll interval, last poll and error, counts."""
        result: JSONObject = self._request("GET", f"/api/connectors/{path_segment(name)}")
        return result

    def connector_store_token(self, name: str, token: str) -> JSONObject:
        """POST /api/connectors/NAME/token: store the caller's token (encrypted on the server)
        and (re)start the connector. Returns `{"success": true}`."""
        result: JSONObject = self._request(
            "POST", f"/api/connectors/{path_segment(name)}/token", json_body={"token": token}
        )
        return result

    def connector_delete_token(self, name: str) -> JSONObject:
        """DELETE /api/connectors/NAME/token: the connector stops and its token is deleted."""
        result: JSONObject = self._request("DELETE", f"/api/connectors/{path_segment(name)}/token")
        return result

    def connector_oauth_url(self, name: str) -> str:
        """GET /api/connectors/NAME/oauth/start without following it: the provider's sign-in
        URL (the redirect's `Location`) for a person to open in a browser."""
        response = self._send("GET", f"/api/connectors/{path_segment(name)}/oauth/start")
        location: str | None = response.headers.get("location")
        if not response.is_redirect or not location:
            raise FluxClientError(
                response.status_code, "the server did not answer with a redirect to the provider"
            )
        return location

    def source_add(self, config: Mapping[str, Any]) -> JSONObject:
        """POST /api/connectors/generic: create a generic HTTP source (see
        docs/connectors/generic.md). Returns `{"source_id": "<uuid>"}`."""
        result: JSONObject = self._request(
            "POST", "/api/connectors/generic", json_body=dict(config)
        )
        return result

    def sources(self) -> JSONList:
        """GET /api/connectors/generic: the caller's sources, each with its status."""
        result: JSONObject = self._request("GET", "/api/connectors/generic")
        sources: JSONList = result["sources"]
        return sources

    def source_show(self, source_id: str) -> JSONObject:
        """GET /api/connectors/generic/ID: one source with its status."""
        result: JSONObject = self._request(
            "GET", f"/api/connectors/generic/{path_segment(source_id)}"
        )
        return result

    def source_remove(self, source_id: str) -> None:
        """DELETE /api/connectors/generic/ID: the source stops; its stored token is deleted."""
        self._request("DELETE", f"/api/connectors/generic/{path_segment(source_id)}")

    def admin_config(self, changes: Mapping[str, Any] | None = None) -> JSONObject:
        """GET /api/admin/config, or with `changes` a PUT (sent with the admin token) that
        updates those runtime settings. Returns the whole runtime config."""
        if changes is None:
            result: JSONObject = self._request("GET", "/api/admin/config")
            return result
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else None
        result = self._request("PUT", "/api/admin/config", json_body=dict(changes), headers=headers)
        return result

    # -- namespaces --------------------------------------------------------------------------

    def _admin_headers(self) -> dict[str, str] | None:
        return {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else None

    def namespace_create(self, name: str, private: bool = False) -> JSONObject:
        """POST /api/namespaces (with the admin token when one is set): returns
        `{"namespaceId", "name", "token", ...}`; the token is shown only this once."""
        result: JSONObject = self._request(
            "POST",
            "/api/namespaces",
            json_body={"name": name, "private": private},
            headers=self._admin_headers(),
        )
        return result

    def namespace_show(self, name: str) -> JSONObject:
        """GET /api/namespaces/NAME: id, name, createdAt, entityCount (never the token)."""
        result: JSONObject = self._request("GET", f"/api/namespaces/{path_segment(name)}")
        return result

    def namespace_set_private(self, name: str, private: bool) -> JSONObject:
        """PUT /api/namespaces/NAME with the namespace's token (or the admin token)."""
        result: JSONObject = self._request(
            "PUT",
            f"/api/namespaces/{path_segment(name)}",
            json_body={"private": private},
            headers=self._admin_headers(),
        )
        return result

    def namespace_rotate_token(self, name: str) -> JSONObject:
        """POST /api/namespaces/NAME/token with the namespace's current token (or the admin
        token): returns the new token; the old one stops working at once."""
        result: JSONObject = self._request(
            "POST", f"/api/namespaces/{path_segment(name)}/token", headers=self._admin_headers()
        )
        return result

    def namespace_delete(self, name: str) -> None:
        """DELETE /api/namespaces/NAME (admin token): the namespace and its entities go."""
        self._request(
            "DELETE", f"/api/namespaces/{path_segment(name)}", headers=self._admin_headers()
        )


# -- live changes (WebSocket) ----------------------------------------------------------------------

CHANGE_TYPES = frozenset({"state_update", "entity_deleted"})
# Handshake answers worth retrying after a disconnect (a server restarting behind a proxy).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def websocket_url(base_url: str) -> str:
    """The WebSocket address of a Flux server: http becomes ws, https wss, plus `/api/ws` (a
    ws:// or wss:// address is taken as it is). Raises ValueError for any other scheme."""
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    ws_scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme.lower())
    if not sep or ws_scheme is None or not rest:
        raise ValueError(f"expected an http:// or https:// address, got {base_url!r}")
    return f"{ws_scheme}://{rest}/api/ws"


class LiveWatch:
    """The live changes of a Flux server, as an async iterator of `(message, text)`: each
    server message decoded, and its raw JSON text.

    Subscribes to `entity_id` (`*`, the default, is every entity) or to `prefix`; `since`
    replays the changes after that version first, `snapshot` sends the current state first.
    After a disconnect or a server restart it reconnects by itself (backoff from 0.1 s up to
    `max_delay`) and subscribes again with `since` = the last version it passed on, so every
    change arrives once, in order; as a safety net it drops any change at or below a version
    already passed on. `on_status(text)` hears about disconnects and reconnects.

    The first connection is not retried: an unreachable server raises `FluxConnectionError`,
    a refused handshake `FluxClientError` (with the HTTP status). An `error` message from the
    server (a subscription it refused) raises `FluxClientError`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        entity_id: str | None = None,
        prefix: str | None = None,
        since: int | None = None,
        snapshot: bool = False,
        token: str | None = None,
        on_status: Callable[[str], None] | None = None,
        max_delay: float = 5.0,
        open_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if entity_id is not None and prefix is not None:
            raise ValueError("give entity_id or prefix, not both")
        self.url = websocket_url(base_url)
        self.filter: dict[str, str] = (
            {"prefix": prefix} if prefix is not None else {"entity_id": entity_id or "*"}
        )
        self.snapshot = snapshot
        self.token = token
        self.on_status = on_status
        self.max_delay = max_delay
        self.open_timeout = open_timeout
        # The highest version passed on. `_keys` holds the changes passed on at that version
        # (an event that set several properties is several messages), or is None when that
        # version is known to be complete (a `subscribed` ack, or the caller's `since`).
        self.version: int | None = since
        self._keys: set[tuple[str, str, str]] | None = None
        self.subscribed = False  # a subscription has been acknowledged (snapshot done)
        self.reconnects = 0

    def subscribe_message(self) -> dict[str, Any]:
        """The subscribe message for the next connection: it resumes where the last one ended."""
        message: dict[str, Any] = {"type": "subscribe", **self.filter}
        if self.version is not None:
            # Resume after the last complete version; an event seen only in part is replayed
            # whole and its messages already passed on are dropped.
            message["since"] = self.version - 1 if self._keys else self.version
        if self.snapshot and not self.subscribed:
            message["snapshot"] = True
        return message

    def matches(self, message: dict[str, Any]) -> bool:
        """Whether a change is about what this watch subscribed to."""
        entity_id = message.get("entity_id")
        if type(entity_id) is not str:
            return False
        if "prefix" in self.filter:
            return entity_id.startswith(self.filter["prefix"])
        wanted = self.filter["entity_id"]
        return wanted == "*" or entity_id == wanted

    def accept(self, message: dict[str, Any]) -> bool:
        """Whether to pass a message on (False: a change already passed on); tracks versions."""
        kind = message.get("type")
        version = message.get("version")
        if type(version) is not int:
            return True
        if kind in CHANGE_TYPES:
            key = (str(kind), str(message.get("entity_id")), str(message.get("property")))
            if self.version is not None and version <= self.version:
                if version < self.version or self._keys is None or key in self._keys:
                    return False
                self._keys.add(key)
                return True
            self.version = version
            self._keys = {key}
        elif kind == "subscribed":
            self.subscribed = True
            if self.version is not None and version < self.version:
                # The server's log ends before what was asked for or already seen: a server
                # with a new data dir, or a `since` from elsewhere. Follow it from where it is.
                self._status(
                    f"the server is at version {version}, before version {self.version}; "
                    f"following it from version {version}"
                )
            self.version = version  # everything up to it has been sent
            self._keys = None
        return True

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    def __aiter__(self) -> AsyncIterator[tuple[dict[str, Any], str]]:
        return self.messages()

    async def messages(self) -> AsyncGenerator[tuple[dict[str, Any], str], None]:
        """The messages, forever (stop iterating to stop; close the generator to disconnect)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        failures = 0
        while True:
            try:
                ws = await connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,  # small messages; deflate would only cost the server CPU
                    max_size=None,  # a snapshot of a large entity is one message
                    open_timeout=self.open_timeout,
                    user_agent_header=f"flux/{__version__} (watch)",
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if not self.reconnects or status not in RETRY_STATUSES:
                    raise FluxClientError(
                        status, f"the server refused the WebSocket connection at {self.url}"
                    ) from None
                reason = f"the server answered HTTP {status}"
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                reason = _reason(exc)
                if not self.reconnects:
                    raise FluxConnectionError(self.url, reason) from None
            else:
                if self.reconnects:
                    self._status(f"reconnected to {self.url}")
                try:
                    async with ws:
                        await ws.send(json.dumps(self.subscribe_message(), ensure_ascii=False))
                        # Until `subscribed`, changes are held back: a new connection receives
                        # every change until its subscription is in place (the original's
                        # rule), so the replay may follow newer changes. Sorted by version and
                        # filtered, they come out once and in order.
                        pending: list[tuple[dict[str, Any], str]] | None = []
                        while True:
                            data = await ws.recv()
                            text = data if isinstance(data, str) else data.decode()
                            message = json.loads(text)
                            if type(message) is not dict:
                                continue
                            kind = message.get("type")
                            if kind == "error":
                                raise FluxClientError(
                                    None, f"the server refused: {message.get('error')}"
                                )
                            if pending is not None and kind in CHANGE_TYPES:
                                if self.matches(message):
                                    pending.append((message, text))
                                continue
                            if pending is not None and kind == "subscribed":
                                pending.sort(key=_version_of)
                                for held, held_text in pending:
                                    if self.accept(held):
                                        yield held, held_text
                                pending = None
                                failures = 0
                            if not self.accept(message):
                                continue
                            yield message, text
                except ConnectionClosed as exc:
                    reason = _close_reason(exc)
                except (OSError, TimeoutError) as exc:
                    reason = _reason(exc)
                except ValueError:
                    reason = "the server sent a message that is not JSON"
            failures += 1
            self.reconnects += 1
            delay = min(self.max_delay, 0.1 * 2 ** min(failures - 1, 10))
            delay *= random.uniform(0.8, 1.0)
            after = f", resuming after version {self.version}" if self.version is not None else ""
            self._status(f"{reason}; reconnecting in {delay:.1f} s{after}")
            await asyncio.sleep(delay)


def _version_of(item: tuple[dict[str, Any], str]) -> int:
    version = item[0].get("version")
    return version if type(version) is int else 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc).strip()
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__


def _close_reason(exc: Exception) -> str:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return "connection lost"
    reason = f": {rcvd.reason}" if rcvd.reason else ""
    return f"closed by the server (code {rcvd.code}{reason})"
