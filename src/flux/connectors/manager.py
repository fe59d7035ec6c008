"""Connectors inside the server: who runs which connector, and the path its events take.

One `ConnectorRunner` per stored credential of an implemented connector (GitHub), keyed
`<connector>:<owner>`. A runner starts when Flux starts (for every credential on disk), when a
token is stored (replacing the old runner) and stops when the token is deleted or its namespace
is. Generic HTTP sources use the same scheduler and the same `ingest`.

Owners: `default` with auth off; with auth on `namespace:<name>`, the namespace whose token
configured the connector. Keying by the namespace (not by the token) keeps a connector across a
token rotation, and makes the namespace the only place its events may go.

Events from a connector take the ingestion path of `POST /api/events/batch`
(`FluxService.ingest_as`: validation, the namespace check, the rate limit, the log), all or
nothing per poll. Entities whose properties already hold the polled values are left out, so an
unchanged upstream resource adds nothing to the log.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import TYPE_CHECKING, Any

from flux.connectors.base import Connector, EventDict
from flux.connectors.github import GitHub
from flux.connectors.runner import ConnectorRunner, Scheduler
from flux.credentials import CredentialError

if TYPE_CHECKING:
    from flux.service import FluxService

logger = logging.getLogger("flux.connectors")

DEFAULT_OWNER = "default"
NAMESPACE_OWNER = "namespace:"


def owner_key(namespace: str | None) -> str:
    """The credential owner for a namespace (None: auth off)."""
    return DEFAULT_OWNER if namespace is None else NAMESPACE_OWNER + namespace


def owner_namespace(owner: str) -> str | None:
    """The namespace an owner writes under; None for `default` (auth off)."""
    return owner[len(NAMESPACE_OWNER) :] if owner.startswith(NAMESPACE_OWNER) else None


def unchanged(event: EventDict, current: dict[str, Any] | None) -> bool:
    """Whether applying the event would change nothing: every property it sets already has
    that value (same JSON type too: 1 and true differ)."""
    if current is None:
        return False
    payload = event.get("payload")
    properties = payload.get("properties") if isinstance(payload, dict) else None
    if not isinstance(properties, dict) or not properties:
        return False
    missing = object()
    for name, value in properties.items():
        held = current.get(name, missing)
        if held is missing or type(held) is not type(value) or held != value:
            return False
    return True


class ConnectorManager:
    def __init__(self, service: FluxService) -> None:
        self.service = service
        self.scheduler = Scheduler()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Schedule a runner for every stored credential, then start them all."""
        store = self.service.credentials
        if store is not None:
            try:
                owners = await asyncio.to_thread(store.owners, GitHub.name)
            except CredentialError as exc:
                logger.error("cannot read the connector credentials: %s", exc)
                owners = []
            for owner in owners:
                self.schedule(owner, GitHub.name)
            if owners:
                logger.info("github connector scheduled for %d owner(s)", len(owners))
        self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()

    # -- runners -----------------------------------------------------------------------------

    def runner(self, owner: str, name: str) -> ConnectorRunner | None:
        return self.scheduler.runners.get(f"{name}:{owner}")

    def connector(self, name: str, namespace: str | None) -> Connector | None:
        """The implementation of a catalogue connector, or None (gmail, linkedin and calendar
        are listed, as in the original, but not implemented: a token for them is stored and
        nothing polls)."""
        settings = self.service.settings
        if name == GitHub.name:
            return GitHub(
                namespace,
                settings.github_api_url,
                settings.github_poll_interval_seconds,
            )
        return None

    def add_runner(self, key: str, connector: Connector, namespace: str | None, token: Any) -> None:
        """Schedule `connector` under `key` (replacing a runner there), writing under
        `namespace`; `token` is the runner's async token source."""
        settings = self.service.settings
        runner = ConnectorRunner(
            connector,
            functools.partial(self.ingest, namespace),
            token=token,
            timeout_seconds=settings.connector_timeout_seconds,
            backoff_seconds=settings.connector_retry_seconds,
            max_backoff_seconds=settings.connector_retry_seconds * 10,
        )
        self.scheduler.add(key, runner)

    def schedule(self, owner: str, name: str) -> None:
        """(Re)start the runner of (owner, connector) with its stored token."""
        namespace = owner_namespace(owner)
        connector = self.connector(name, namespace)
        if connector is None:
            return
        self.add_runner(
            f"{name}:{owner}", connector, namespace, functools.partial(self._token, owner, name)
        )

    async def unschedule(self, owner: str, name: str) -> None:
        await self.scheduler.remove(f"{name}:{owner}")

    async def forget_namespace(self, namespace: str) -> None:
        """A namespace was deleted: stop its connectors and delete their credentials."""
        owner = owner_key(namespace)
        store = self.service.credentials
        for key in [k for k in self.scheduler.runners if k.endswith(":" + owner)]:
            await self.scheduler.remove(key)
        if store is not None:
            for name in ("github", "gmail", "linkedin", "calendar"):
                try:
                    await asyncio.to_thread(store.delete, owner, name)
                except CredentialError as exc:
                    logger.error("cannot delete %s's %s credentials: %s", namespace, name, exc)

    async def _token(self, owner: str, name: str) -> str | None:
        store = self.service.credentials
        if store is None:
            return None
        return await asyncio.to_thread(store.get, owner, name)

    # -- the way in --------------------------------------------------------------------------

    async def ingest(self, namespace: str | None, events: list[EventDict]) -> int:
        """Publish a poll's events under `namespace`, leaving out those that change nothing;
        returns how many were published. Raises what the ingestion path raises (the runner
        records it)."""
        engine = self.service.engine
        fresh = []
        for event in events:
            payload = event.get("payload")
            entity_id = payload.get("entity_id") if isinstance(payload, dict) else None
            entity = engine.get(entity_id) if isinstance(entity_id, str) else None
            if not unchanged(event, entity.properties if entity is not None else None):
                fresh.append(event)
        if fresh:
            await self.service.ingest_as(namespace, fresh)
        return len(fresh)
