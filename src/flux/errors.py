"""The Flux error tree: every class Flux raises on purpose. No HTTP in here:
`flux.api.errors.STATUS` names each class's status code (a test checks that none is missing)."""

from __future__ import annotations


class FluxError(Exception):
    """Root of every error Flux raises on purpose. `message` is what the client reads; `kind`
    names the failure in a batch item (`authorization failed: <kind>: <message>`)."""

    kind = "Error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ValidationError(FluxError):
    """The request is malformed: bad JSON, a missing field, a rule broken (400)."""


class InvalidEntityId(ValidationError):
    """With auth on, an entity id that names no namespace (no `/`, or nothing before it) (400)."""

    kind = "Invalid entity ID"


class UnsupportedMediaType(FluxError):
    """A JSON endpoint got a body that does not say it is JSON (415)."""


class AuthError(FluxError):
    """No credential, or one that is not valid (401)."""

    kind = "Invalid token"


class NamespaceNotFound(AuthError):
    """A write to a namespace nobody registered (401, as in the original)."""

    kind = "Namespace not found"


class Forbidden(FluxError):
    """A valid credential that may not do this (403)."""

    kind = "Forbidden"


class NotFound(FluxError):
    """The thing asked for does not exist (404)."""


class Conflict(FluxError):
    """The request clashes with what exists (409)."""


class ConditionFailed(Conflict):
    """A conditional write (or a lease operation) found the entity not as it expected; nothing
    was stored (409). `details` is what the answer adds to `error`: the entity, what was
    expected, its current version and state, and who changed it last."""

    def __init__(self, message: str, details: dict[str, object]) -> None:
        super().__init__(message)
        self.details = details


class MigrationRefused(Conflict):
    """`flux migrate`: the cluster holds something the data dir does not, or the data dir
    cannot be moved without losing state; the step that says so (`step`) moved nothing."""

    def __init__(self, step: str, message: str) -> None:
        super().__init__(f"{step}: {message}")
        self.step = step


class MisdirectedRequest(FluxError):
    """The `Host` header names a host this server does not answer for (421): a guard against
    DNS rebinding (`FLUX_ALLOWED_HOSTS`)."""


class OriginNotAllowed(Forbidden):
    """A browser's WebSocket handshake, or MCP request, from a page of an origin not allowed
    (403)."""


class RequestTimeout(FluxError):
    """The request's headers or body did not arrive in time (408)."""


class TooManyConnections(FluxError):
    """The client address holds as many connections as it may (429)."""


class QuotaExceeded(FluxError):
    """The caller holds as many of a thing as it may, e.g. a namespace's generic sources
    (429); it may make another once it deletes one. `limit` is the quota."""

    def __init__(self, message: str, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class PayloadTooLarge(FluxError):
    """The body is over its limit (413). `size` is the declared length (None when the body
    streamed past the limit without one); `setting` the runtime setting that holds the limit
    (None for a fixed one). The message starts with the original's `payload too large`, then
    says the sizes and how to raise the limit: the first thing a newcomer asks."""

    def __init__(self, size: int | None, limit: int, setting: str | None = None) -> None:
        how = (
            f"raise it with FLUX_{setting.upper()}, or `{setting}` in PUT /api/admin/config"
            if setting is not None
            else "a fixed limit"
        )
        body = "the body is" if size is None else f"a body of {size} bytes is"
        super().__init__(f"payload too large: {body} over the limit of {limit} bytes ({how})")
        self.size = size
        self.limit = limit
        self.setting = setting


class RateLimited(FluxError):
    """Too many events for the namespace; retry after `retry_after` seconds (429)."""

    MESSAGE = "rate limit exceeded"

    def __init__(self, retry_after: int) -> None:
        super().__init__(self.MESSAGE)
        self.retry_after = retry_after


class UpstreamError(FluxError):
    """An outside service Flux called on the client's behalf failed, e.g. an OAuth provider's
    token endpoint (502)."""


class McpUnavailable(FluxError):
    """The MCP endpoint (`/mcp`) is not running: it did not start, or the server is stopping
    (503)."""


class StorageError(FluxError):
    """The namespace registry could not be written (503); nothing changed."""


class LogError(FluxError):
    """The event log failed. `outcome` says what became of the write that failed, when the log
    knows it (the answer carries it): NOT_STORED (nothing of it reached the store: send it
    again freely), UNKNOWN (part or all of it may be stored, e.g. the store's acknowledgement
    never came: send it again with the same eventIds, a stored one is then answered as a
    duplicate) or STORED (all of it is stored, but this node's state did not get it back in
    time). None for a failure that was not a write."""

    NOT_STORED = "not_stored"
    UNKNOWN = "unknown"
    STORED = "stored"

    def __init__(self, message: str, outcome: str | None = None) -> None:
        super().__init__(message)
        self.outcome = outcome


class LogUnavailable(LogError):
    """The log cannot take writes now: disk full, I/O error, log closed (503)."""


class LogCorrupt(LogError):
    """The log's storage is damaged (a malformed page, rows missing from a sequence range, a
    stored event that does not decode): what it would return is incomplete, so it is refused
    (500). `flux check` reports the damage."""


class CredentialError(FluxError):
    """The credential store failed: unreadable database, or a secret that does not decrypt
    (wrong key or tampered row) (500)."""


class CredentialStoreUnavailable(FluxError):
    """No FLUX_ENCRYPTION_KEY, so no credential store (500, as in the original)."""


class OAuthNotConfigured(FluxError):
    """The connector's OAuth client id or secret is not set (500, as in the original)."""


class SourceStoreError(FluxError):
    """`sources.db` cannot be read or written (500)."""
