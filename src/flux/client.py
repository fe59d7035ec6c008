"""FluxClient: a small synchronous HTTP client for the Flux API (one method per endpoint).

    with FluxClient("http://localhost:3000") as flux:
        flux.publish("sensors", "agent-01", "dawn-coral/sensor-01", {"temperature": 22.5})
        flux.get("dawn-coral/sensor-01")["properties"]   # {'temperature': 22.5}

Every failure raises `FluxClientError`: `status` is the HTTP status and `message` the server's
`{"error": ...}` text; `FluxConnectionError` (status None) means no answer came back. Pass an
`httpx` transport (e.g. `httpx.ASGITransport(app)` or `httpx.MockTransport`) to test without
sockets.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

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


def entity_path(entity_id: str) -> str:
    """The URL path of an entity: the id is one path segment, so `/` is sent as `%2F` and every
    other reserved character is percent-encoded too (and `.`/`..`, which URL normalization
    would otherwise resolve away)."""
    segment = quote(entity_id, safe="")
    if segment in (".", ".."):
        segment = segment.replace(".", "%2E")
    return "/api/state/entities/" + segment


def error_message(response: httpx.Response) -> str:
    """The server's `{"error": ...}` text, else the status reason and the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()[:200]
    reason = response.reason_phrase or "HTTP error"
    return f"{reason}: {text}" if text else reason


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
            raise FluxClientError(response.status_code, error_message(response))
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
    ) -> JSONObject:
        """POST /api/events: merge `properties` into the entity. `timestamp` is epoch ms (now
        when omitted). Returns `{"eventId", "stream", ...}`."""
        event = {
            "stream": stream,
            "source": source,
            "timestamp": now_ms() if timestamp is None else timestamp,
            "payload": {"entity_id": entity_id, "properties": dict(properties)},
        }
        result: JSONObject = self._request("POST", "/api/events", json_body=event)
        return result

    def batch(self, events: Sequence[Mapping[str, Any]]) -> JSONObject:
        """POST /api/events/batch with full event envelopes (each needs its own `timestamp`).
        Returns `{"successful", "failed", "results"}`; one bad event does not fail the others."""
        result: JSONObject = self._request(
            "POST", "/api/events/batch", json_body={"events": [dict(e) for e in events]}
        )
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
        """DELETE /api/state/entities/{id}: logs a deletion. Returns `{"entity_id", "eventId"}`."""
        result: JSONObject = self._request("DELETE", entity_path(entity_id))
        return result

    def batch_delete(self, filter: Mapping[str, Any]) -> JSONObject:
        """POST /api/state/entities/delete with `{"namespace": ...}`, `{"prefix": ...}` or
        `{"entity_ids": [...]}`. Returns `{"deleted", "failed", "errors"}`."""
        result: JSONObject = self._request(
            "POST", "/api/state/entities/delete", json_body=dict(filter)
        )
        return result

    # -- server ------------------------------------------------------------------------------

    def health(self) -> JSONObject:
        """GET /api/health: `{"status", "version", "entities", ...}`. A server still restoring
        its state answers 503, raised as FluxClientError."""
        try:
            result: JSONObject = self._request("GET", "/api/health")
        except FluxClientError as exc:
            if exc.status == 503:
                raise FluxClientError(503, "Flux is starting: its state is not ready yet") from exc
            raise
        return result

    def connectors(self) -> JSONObject:
        """GET /api/connectors: `{"connectors": [{"name", "enabled", "status"}, ...]}`."""
        result: JSONObject = self._request("GET", "/api/connectors")
        return result

    def admin_config(self, changes: Mapping[str, Any] | None = None) -> JSONObject:
        """GET /api/admin/config, or with `changes` a PUT (sent with the admin token) that
        updates those runtime settings. Returns the whole runtime config."""
        if changes is None:
            result: JSONObject = self._request("GET", "/api/admin/config")
            return result
        headers = {"Authorization": f"Bearer {self.admin_token}"} if self.admin_token else None
        result = self._request("PUT", "/api/admin/config", json_body=dict(changes), headers=headers)
        return result
