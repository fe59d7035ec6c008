"""Connectors inside the server: who runs which connector, and the path its events take.

One `ConnectorRunner` per stored credential of an implemented connector (GitHub), keyed
`<connector>:<owner>`. A runner starts when Flux starts (for every credential on disk), when a
token is stored (replacing the old runner) and stops when the token is deleted or its namespace
is. Generic HTTP sources use the same scheduler and the same `ingest`.

Owners (`flux.connectors.base.owner_key`): `default` with auth off; with auth on
`namespace:<name>`, the namespace whose token configured the connector. Keying by the namespace
(not by the token) keeps a connector across a token rotation, and makes the namespace the only
place its events may go.

Events from a connector take the ingestion path of `POST /api/events/batch` (the `publish`
function the composition root hands over: validation, the namespace check, the rate limit, the
log), all or nothing per poll. Each event keeps only the properties whose values differ from
the entity's state (Flux's model: send what changed), and an event that would change nothing is
left out, so an unchanged upstream resource adds nothing to the log and subscribers see only
changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx

from flux.config import Settings
from flux.connectors.base import (
    KNOWN,
    Connector,
    ConnectorError,
    ConnectorInfo,
    EventDict,
    owner_key,
    owner_namespace,
)
from flux.connectors.github import GitHub
from flux.connectors.oauth import TokenError, needs_refresh, oauth_client, refresh_tokens, token_url
from flux.connectors.runner import (
    ConnectorRunner,
    Describe,
    Scheduler,
    TokenSource,
    describe_failure,
)
from flux.connectors.sources import SECRET_OWNER, CredentialSource, Sources, SourceStorage
from flux.engine import Entity
from flux.errors import CredentialError

logger = logging.getLogger("flux.connectors")

# Publishes event objects on behalf of a namespace (None: auth off), all or nothing: the checks
# of `POST /api/events/batch`, then the log. Raises what that path raises.
PublishAs = Callable[[str | None, list[EventDict]], Awaitable[object]]

_MISSING = object()


def only_changes(event: EventDict, current: dict[str, Any] | None) -> EventDict | None:
    """The event with only the properties that differ from `current` (the entity's state;
    None when it does not exist), or None when it would change nothing. Values compare with
    their JSON type (1 and true differ). Flux's model: send what changed, the rest is kept."""
    if current is None:
        return event
    payload = event.get("payload")
    properties = payload.get("properties") if isinstance(payload, dict) else None
    if not isinstance(payload, dict) or not isinstance(properties, dict) or not properties:
        return event  # not a property update: validation has the last word
    changed = {
        name: value
        for name, value in properties.items()
        if not _same_json(current.get(name, _MISSING), value)
    }
    if not changed:
        return None
    if len(changed) == len(properties):
        return event
    return {**event, "payload": {**payload, "properties": changed}}


def _same_json(held: Any, value: Any) -> bool:
    if held is _MISSING or type(held) is not type(value):
        return False
    if isinstance(value, dict):
        return held.keys() == value.keys() and all(_same_json(held[k], value[k]) for k in value)
    if isinstance(value, list):
        return len(held) == len(value) and all(
            _same_json(a, b) for a, b in zip(held, value, strict=True)
        )
    if isinstance(value, float):
        return repr(held) == repr(value)  # -0.0 is not 0.0 in the JSON a reader gets
    return bool(held == value)


class ConnectorManager:
    """The connectors of one server. `publish` is the ingestion path (`PublishAs`), `entity`
    looks an entity up in the state (to send only what changed), `credentials` returns the
    credential store (None without FLUX_ENCRYPTION_KEY, or before the server started)."""

    def __init__(
        self,
        settings: Settings,
        *,
        publish: PublishAs,
        entity: Callable[[str], Entity | None],
        credentials: CredentialSource,
        sources: SourceStorage | None = None,
    ) -> None:
        self.settings = settings
        self._publish = publish
        self._entity = entity
        self._credentials = credentials
        self.scheduler = Scheduler()
        # Generic HTTP sources (flux.connectors.sources), on the same scheduler.
        # `sources` is the cluster's source store (None: the data dir's).
        self.sources = Sources(settings, self.scheduler, self.add_runner, credentials, sources)

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, *, poll: bool = True) -> None:
        """Schedule a runner for every stored credential, then start them all (`poll`; False:
        only scheduled, for the holder of the cluster's `connectors` job to start with
        `scheduler.start`)."""
        store = self._credentials()
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
        await self.sources.start()
        if poll:
            self.scheduler.start()

    async def stop(self) -> None:
        await self.scheduler.stop()
        self.sources.close()

    # -- runners -----------------------------------------------------------------------------

    def runner(self, owner: str, name: str) -> ConnectorRunner | None:
        return self.scheduler.runners.get(f"{name}:{owner}")

    def polled(self, owner: str | None, name: str) -> bool:
        """Whether this server polls the connector for `owner`: implemented (gmail, linkedin
        and calendar are not), a credential stored (a runner scheduled), and this node
        running its connectors (in a cluster, the holder of the `connectors` job)."""
        return owner is not None and self.runner(owner, name) is not None and self.scheduler.running

    def poll_interval(self, info: ConnectorInfo) -> float | int:
        """The interval the status API reports: the setting for GitHub, else the catalogue's."""
        if info.name == GitHub.name:
            seconds = self.settings.github_poll_interval_seconds
            return int(seconds) if float(seconds).is_integer() else seconds
        return info.poll_interval_seconds

    def connector(self, name: str, namespace: str | None) -> Connector | None:
        """The implementation of a catalogue connector, or None (gmail, linkedin and calendar
        are listed, as in the original, but not implemented: a token for them is stored and
        nothing polls)."""
        settings = self.settings
        if name == GitHub.name:
            return GitHub(
                namespace,
                settings.github_api_url,
                settings.github_poll_interval_seconds,
            )
        return None

    def add_runner(
        self,
        key: str,
        connector: Connector,
        namespace: str | None,
        token: TokenSource,
        transport: httpx.AsyncBaseTransport | None = None,
        describe: Describe = describe_failure,
    ) -> None:
        """Schedule `connector` under `key` (replacing a runner there), writing under
        `namespace`; `token` is the runner's async token source, `transport` the HTTP
        transport of its client (httpx's default when None), `describe` what its status
        says of a failure."""
        settings = self.settings
        runner = ConnectorRunner(
            connector,
            functools.partial(self.ingest, namespace),
            token=token,
            transport=transport,
            timeout_seconds=settings.connector_timeout_seconds,
            backoff_seconds=settings.connector_retry_seconds,
            max_backoff_seconds=settings.connector_retry_seconds * 10,
            describe=describe,
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

    async def credential_changed(self, owner: str, name: str, present: bool) -> None:
        """In a cluster, a credential was stored (present) or deleted through some node: run
        or stop its connector here too. Idempotent: a running connector reads its token at
        every poll, so a replaced token needs no restart."""
        if owner == SECRET_OWNER:
            return  # a generic source's token: the source's own runner reads it
        if present and self.runner(owner, name) is None:
            self.schedule(owner, name)
        elif not present:
            await self.unschedule(owner, name)

    async def forget_namespace(self, namespace: str) -> None:
        """A namespace was deleted: stop its connectors and delete their credentials."""
        owner = owner_key(namespace)
        store = self._credentials()
        for key in [k for k in self.scheduler.runners if k.endswith(":" + owner)]:
            await self.scheduler.remove(key)
        await self.sources.forget_owner(owner)
        if store is not None:
            for name in KNOWN:
                try:
                    await asyncio.to_thread(store.delete, owner, name)
                except CredentialError as exc:
                    logger.error("cannot delete %s's %s credentials: %s", namespace, name, exc)

    async def _token(self, owner: str, name: str) -> str | None:
        """The access token a poll uses. An OAuth token that expires within 90 s is refreshed
        first and the new tokens stored (reference §10.2 step 2); a failed refresh fails the
        poll with a ConnectorError the status shows."""
        store = self._credentials()
        if store is None:
            return None
        try:
            credential = await asyncio.to_thread(store.record, owner, name)
        except CredentialError as exc:
            raise ConnectorError(f"cannot read the stored token: {exc.message}") from exc
        if credential is None:
            return None
        if credential.refresh_token is None or not needs_refresh(credential, datetime.now(UTC)):
            return credential.access_token
        settings = self.settings
        try:
            async with httpx.AsyncClient(timeout=settings.connector_timeout_seconds) as http:
                tokens = await refresh_tokens(
                    http,
                    token_url(settings, name),
                    credential.refresh_token,
                    oauth_client(settings, name),
                )
        except TokenError as exc:
            raise ConnectorError(f"OAuth token refresh failed: {exc}") from None
        refresh = tokens.refresh_token or credential.refresh_token  # kept when not rotated
        try:
            await asyncio.to_thread(
                store.put, owner, name, tokens.access_token, refresh, tokens.expires_at
            )
        except CredentialError as exc:
            raise ConnectorError(f"cannot store the refreshed token: {exc.message}") from exc
        logger.info("%s token refreshed for %s", name, owner)
        return tokens.access_token

    # -- the way in --------------------------------------------------------------------------

    async def ingest(self, namespace: str | None, events: list[EventDict]) -> int:
        """Publish a poll's events under `namespace`, reduced to what changes (see
        `only_changes`);
        returns how many were published. Raises what the ingestion path raises (the runner
        records it)."""
        lookup = self._entity
        fresh = []
        for event in events:
            payload = event.get("payload")
            entity_id = payload.get("entity_id") if isinstance(payload, dict) else None
            entity = lookup(entity_id) if isinstance(entity_id, str) else None
            reduced = only_changes(event, entity.properties if entity is not None else None)
            if reduced is not None:
                fresh.append(reduced)
        if fresh:
            await self._publish(namespace, fresh)
        return len(fresh)
