"""The `Connector` Protocol, the catalogue of connectors the core knows, and the owners of
connector credentials (pure).

A connector only fetches: given an `httpx.AsyncClient` (whose transport tests replace) and the
stored token, it returns event dicts in the shape `POST /api/events` accepts. Publishing,
scheduling, retries and status belong to `flux.connectors.runner`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from flux.catalogue import CONNECTORS

EventDict = dict[str, Any]


@runtime_checkable
class Connector(Protocol):
    """An external source polled every `poll_interval_seconds`."""

    @property
    def name(self) -> str: ...

    @property
    def poll_interval_seconds(self) -> float: ...

    async def fetch(self, client: httpx.AsyncClient, token: str | None) -> list[EventDict]:
        """The events for one poll. Raises `ConnectorError` (or any exception, which the
        runner records) when the source fails."""
        ...


class ConnectorError(Exception):
    """A source answered with an error; `message` is what the status shows as `last_error`.
    `retry_after` (seconds) is the source's own word on when to ask again (a rate limit's
    reset time, a `Retry-After` header): the runner waits at least that long, and does not
    retry sooner. `detail`, when set, is a fuller account for the server log than `message`,
    which the status shows (a generic source with auth on keeps its reasons from tenants)."""

    def __init__(
        self, message: str, retry_after: float | None = None, detail: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.detail = detail


@dataclass(frozen=True)
class ConnectorInfo:
    """What the status API says about a connector the core knows, configured or not."""

    name: str
    poll_interval_seconds: int


# The original's fixed list, in its order, with its poll intervals (`flux.catalogue`).
KNOWN: Mapping[str, ConnectorInfo] = {
    c.name: ConnectorInfo(c.name, c.poll_interval_seconds) for c in CONNECTORS
}


# Owners of connector credentials and sources: `default` with auth off; with auth on
# `namespace:<name>`, the namespace whose token configured the connector (the only place its
# events may go).
DEFAULT_OWNER = "default"
NAMESPACE_OWNER = "namespace:"


def owner_key(namespace: str | None) -> str:
    """The credential owner for a namespace (None: auth off)."""
    return DEFAULT_OWNER if namespace is None else NAMESPACE_OWNER + namespace


def owner_namespace(owner: str) -> str | None:
    """The namespace an owner writes under; None for `default` (auth off)."""
    return owner[len(NAMESPACE_OWNER) :] if owner.startswith(NAMESPACE_OWNER) else None
