"""The client's errors: one tree rooted at `FluxClientError`, each error with the fields of the
server's answer (`status`, `message`, and what a 409, 410 or 503 adds), built from an answer
or from an `httpx` transport error in one place.

- `FluxClientError`: any request that did not succeed (`status`: the HTTP status, None when no
  answer came back);
- `FluxConnectionError`: no answer (`maybe_sent`: whether the request may have reached the
  server), and `FluxTimeoutError`, also a `TimeoutError`;
- `FluxNotFound` (404): what was asked for does not exist;
- `FluxConflict` (409): a condition failed, with the entity as it is now;
- `FluxResync` (410): a changes cursor older than the deletions the server remembers;
- `FluxUnavailable` (503): the server cannot take the write now, with the event log's
  `outcome` (docs/cluster.md#what-each-fault-does).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx

JSONObject = dict[str, Any]


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
    """No HTTP response: the server is down, the address is wrong, or the connection broke.
    `maybe_sent` is False when the connection was never made (nothing reached the server), True
    when the request may have reached it (a write may then be stored)."""

    def __init__(self, url: str, reason: str, maybe_sent: bool = True) -> None:
        super().__init__(None, f"cannot reach Flux at {url}: {reason}")
        self.url = url
        self.reason = reason
        self.maybe_sent = maybe_sent


class FluxTimeoutError(FluxConnectionError, TimeoutError):
    """The server did not answer in time (a write may still have been stored)."""


class FluxNotFound(FluxClientError):
    """A 404: the entity (or namespace, connector, source) does not exist."""

    def __init__(self, message: str) -> None:
        super().__init__(404, message)


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


class FluxUnavailable(FluxClientError):
    """A 503: the server is starting, or its event log cannot take the write now. `outcome`
    says what became of a write, when the log knows: `"not_stored"` (send it again freely),
    `"unknown"` (it may be stored: send it again with the same eventIds, which the client's
    retries do), `"stored"`; None for a server that is starting or a read."""

    def __init__(self, message: str, outcome: str | None) -> None:
        super().__init__(503, message)
        self.outcome = outcome


def error_message(response: httpx.Response) -> str:
    """The server's `{"error": ...}` text, else the status reason and the start of the body."""
    body = json_or_none(response)
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    text = response.text.strip()[:200]
    reason = response.reason_phrase or "HTTP error"
    return f"{reason}: {text}" if text else reason


def error_of(response: httpx.Response) -> FluxClientError:
    """The error for an answer of status 400 or more: `FluxConflict` for a 409 that carries a
    conflict (other 409s, such as a namespace that exists, are plain), `FluxResync` for a 410
    with `"resync": true`, `FluxNotFound` for a 404, `FluxUnavailable` for a 503, else
    `FluxClientError`."""
    status = response.status_code
    message = error_message(response)
    body = json_or_none(response) if status in (409, 410, 503) else None
    if not isinstance(body, dict):
        body = {}
    if status == 404:
        return FluxNotFound(message)
    if status == 409 and "current_version" in body:
        return FluxConflict(message, body)
    if status == 410 and body.get("resync") is True:
        oldest, version = body.get("oldest"), body.get("version")
        return FluxResync(
            message, oldest if type(oldest) is int else 0, version if type(version) is int else 0
        )
    if status == 503:
        outcome = body.get("outcome")
        return FluxUnavailable(message, outcome if isinstance(outcome, str) else None)
    return FluxClientError(status, message)


def no_answer(exc: httpx.TransportError, url: str) -> FluxConnectionError:
    """The error for a request that got no answer: `FluxTimeoutError` for a timeout, else
    `FluxConnectionError`; `maybe_sent` is False only when no connection was made."""
    maybe_sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
    if isinstance(exc, httpx.TimeoutException):
        reason = f"timed out ({str(exc) or type(exc).__name__})"
        return FluxTimeoutError(url, reason, maybe_sent)
    return FluxConnectionError(url, str(exc) or type(exc).__name__, maybe_sent)


def json_or_none(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None
