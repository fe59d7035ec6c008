"""Generic sources inside the server: where they are kept and who runs them.

`SourceStore` keeps each source's configuration in `<data_dir>/sources.db` (SQLite: id, owner,
namespace, config JSON, created_at); its secret (the upstream `token`) is in the encrypted
credential store under owner `generic` and connector `<source_id>`, as in the original, so no
secret is on disk in the clear. In a cluster the configurations are in a JetStream bucket
instead (`flux.connectors.sharedsources`, behind the same `SourceStorage` interface), and
`Sources.source_changed` follows what other nodes add and delete. `Sources` creates, lists and
deletes them for an owner and runs each one on the connector scheduler under the key
`source:<id>`; at start it reloads them all.

Owners are the connector manager's (`flux.connectors.base.owner_key`): `default` with auth off,
`namespace:<name>` with auth on.
An owner sees only its own sources; a source writes only under its namespace. With auth on an
owner holds at most `quota` sources, each polled no faster than `min_interval`, and a source's
failures read `could not fetch the URL` (`flux.connectors.generic`); what it may connect to is
`policy` (`flux.connectors.ssrf`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson

from flux.config import Settings
from flux.connectors.base import Connector, ConnectorError, owner_namespace
from flux.connectors.generic import GenericSource
from flux.connectors.runner import (
    ConnectorRunner,
    Describe,
    Scheduler,
    TokenSource,
    describe_failure,
)
from flux.connectors.source_config import SourceConfig, config_from_json
from flux.connectors.ssrf import GuardedTransport, Policy
from flux.credentials import Credentials
from flux.errors import CredentialError, FluxError, NotFound, QuotaExceeded, SourceStoreError
from flux.sqlitedb import SQLiteDB

logger = logging.getLogger("flux.connectors")

SECRET_OWNER = "generic"  # the credential store's user_id for source secrets (the original's)
KEY_PREFIX = "source:"
FILE_NAME = "sources.db"  # in the data dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS generic_sources (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    namespace TEXT NOT NULL,
    config TEXT NOT NULL,
    has_token INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS idx_generic_sources_owner ON generic_sources(owner);
"""


# The admin's view with auth on: every source, whoever owns it (a source made while auth was
# off belongs to `default`, which no namespace's token holds; only the admin can remove it).
EVERY_OWNER = "*"


@dataclass(frozen=True)
class StoredSource:
    id: str
    owner: str
    config: SourceConfig
    has_token: bool
    created_at: str


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


class SourceStorage(Protocol):
    """Where source configurations are kept. Synchronous and may block (callers on the event
    loop use `asyncio.to_thread`). Raises SourceStoreError."""

    def add(self, source: StoredSource) -> None: ...
    def delete(self, source_id: str) -> bool: ...
    def all(self, owner: str | None = None) -> list[StoredSource]: ...
    def refresh(self) -> None:
        """Apply what other nodes changed up to now (in a cluster), before a read."""

    def close(self) -> None: ...


class SourceStore:
    """Source configurations in one SQLite file. Thread-safe; each call is short (callers on
    the event loop use `asyncio.to_thread`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db = SQLiteDB(
            self.path,
            _SCHEMA,
            name="the source store",
            error=SourceStoreError,
            prefix="source store: ",
        )
        self._db.open()

    def add(self, source: StoredSource) -> None:
        self._db.execute(
            "INSERT INTO generic_sources (id, owner, namespace, config, has_token, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (
                source.id,
                source.owner,
                source.config.namespace,
                orjson.dumps(source.config.as_json()).decode(),
                int(source.has_token),
                source.created_at,
            ),
        )

    def delete(self, source_id: str) -> bool:
        return self._db.execute("DELETE FROM generic_sources WHERE id = ?", (source_id,)) > 0

    def all(self, owner: str | None = None) -> list[StoredSource]:
        """Every source (of `owner` when given), oldest first. A row that no longer reads is
        logged and left out."""
        sql = "SELECT id, owner, config, has_token, created_at FROM generic_sources"
        params: tuple[Any, ...] = ()
        if owner is not None:
            sql += " WHERE owner = ?"
            params = (owner,)
        rows = self._db.query(sql + " ORDER BY created_at, id", params)
        sources = []
        for source_id, row_owner, config, has_token, created_at in rows:
            try:
                parsed = config_from_json(orjson.loads(config))
            except (ValueError, KeyError, TypeError, FluxError) as exc:
                logger.error("source %s: unreadable configuration (%s); skipped", source_id, exc)
                continue
            sources.append(StoredSource(source_id, row_owner, parsed, bool(has_token), created_at))
        return sources

    def refresh(self) -> None:
        """Nothing to do: only this node writes the file."""

    def close(self) -> None:
        self._db.close()


# The credential store, or None (no FLUX_ENCRYPTION_KEY, or the server has not started).
CredentialSource = Callable[[], Credentials | None]


class AddRunner(Protocol):
    """Schedules a connector under a key, writing under a namespace
    (`ConnectorManager.add_runner`)."""

    def __call__(
        self,
        key: str,
        connector: Connector,
        namespace: str | None,
        token: TokenSource,
        transport: httpx.AsyncBaseTransport | None = None,
        describe: Describe = describe_failure,
    ) -> None: ...


class Sources:
    """The generic sources of one server: the store and their runners, on the connector
    manager's `scheduler` (`add_runner` puts one there)."""

    def __init__(
        self,
        settings: Settings,
        scheduler: Scheduler,
        add_runner: AddRunner,
        credentials: CredentialSource,
        shared: SourceStorage | None = None,
    ) -> None:
        """`shared` is the cluster's store (None: `<data_dir>/sources.db`, opened on first
        use)."""
        self._settings = settings
        self.scheduler = scheduler
        self._add_runner = add_runner
        self._credentials = credentials
        self._shared = shared
        self.store: SourceStore | None = None
        self._sources: dict[str, StoredSource] = {}
        self._creating = asyncio.Lock()  # counting an owner's sources and adding one: atomic

    def _store(self) -> SourceStorage:
        if self._shared is not None:
            return self._shared
        if self.store is None:
            self.store = SourceStore(Path(self._settings.data_dir) / FILE_NAME)
        return self.store

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Load every stored source and schedule it (before the scheduler starts)."""
        try:
            sources = await asyncio.to_thread(self._store().all)
        except SourceStoreError as exc:
            logger.error("cannot load the generic sources: %s", exc)
            return
        held: dict[str, int] = {}
        scheduled = 0
        for source in sources:
            self._sources[source.id] = source
            held[source.owner] = held.get(source.owner, 0) + 1
            if self.quota is not None and held[source.owner] > self.quota:
                # Made before the limit was lowered (or before there was one): kept, listed
                # and deletable, but not polled.
                logger.warning(
                    "generic source %s not started: %s holds more than %d sources "
                    "(FLUX_SOURCES_MAX_PER_NAMESPACE)",
                    source.id,
                    source.owner,
                    self.quota,
                )
                continue
            self._schedule(source)
            scheduled += 1
        if scheduled:
            logger.info("%d generic source(s) scheduled", scheduled)

    async def source_changed(self, source_id: str, source: StoredSource | None) -> None:
        """Another node added (`source`) or deleted (None) a source: list it and poll it, or
        stop it. This node's own changes come back here too, and change nothing."""
        if source is not None and source_id not in self._sources:
            self._sources[source_id] = source
            self._schedule(source)
        elif source is None and self._sources.pop(source_id, None) is not None:
            await self.scheduler.remove(KEY_PREFIX + source_id)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
        self._sources.clear()

    # -- runners -----------------------------------------------------------------------------

    @property
    def policy(self) -> Policy:
        """What sources may connect to (`flux.connectors.ssrf.Policy.from_settings`)."""
        return Policy.from_settings(self._settings)

    @property
    def min_interval(self) -> int:
        """The shortest poll interval: FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS with auth on;
        with auth off 1 s, as in the original (a local instance polling a local service)."""
        settings = self._settings
        return settings.sources_min_poll_interval_seconds if settings.auth_enabled else 1

    @property
    def quota(self) -> int | None:
        """Sources one namespace may have: FLUX_SOURCES_MAX_PER_NAMESPACE with auth on (0: no
        limit); no limit with auth off."""
        limit = self._settings.sources_max_per_namespace
        return limit if self._settings.auth_enabled and limit > 0 else None

    def _schedule(self, source: StoredSource) -> None:
        settings = self._settings
        policy = self.policy
        connector = GenericSource(
            source.id,
            source.config,
            settings.source_max_response_bytes,
            policy,
            detailed_errors=not settings.auth_enabled,
            min_interval_seconds=self.min_interval,
        )
        # With auth on a source writes as its owner's namespace (the one it was made under),
        # never merely as the namespace its config names: a source made while auth was off
        # (owner `default`) has none, so its writes are refused until the admin removes it.
        namespace = owner_namespace(source.owner) if settings.auth_enabled else None
        self._add_runner(
            KEY_PREFIX + source.id,
            connector,
            namespace,
            functools.partial(self._token, source),
            transport=GuardedTransport(policy),
            describe=connector.describe_failure,
        )

    async def _token(self, source: StoredSource) -> str | None:
        if not source.has_token:
            return None
        store = self._credentials()
        if store is None:
            raise ConnectorError(
                "the source's token cannot be read: FLUX_ENCRYPTION_KEY is not set"
            )
        try:
            token = await asyncio.to_thread(store.get, SECRET_OWNER, source.id)
        except CredentialError as exc:
            raise ConnectorError(f"the source's token cannot be read: {exc.message}") from None
        if token is None:
            raise ConnectorError("the source's token is missing from the credential store")
        return token

    def runner(self, source_id: str) -> ConnectorRunner | None:
        return self.scheduler.runners.get(KEY_PREFIX + source_id)

    # -- what the API does -------------------------------------------------------------------

    async def create(self, owner: str, config: SourceConfig, token: str | None) -> StoredSource:
        """Store a source (its token in the credential store; the caller has checked that
        there is one when a token is given) and start polling it. Returns it. Raises
        QuotaExceeded when the owner holds `quota` sources already."""
        async with self._creating:
            held = len(self.list(owner))
            if self.quota is not None and held >= self.quota:
                name = owner_namespace(owner) or owner
                raise QuotaExceeded(
                    f"namespace '{name}' has {held} sources, the most it may have "
                    "(FLUX_SOURCES_MAX_PER_NAMESPACE)",
                    self.quota,
                )
            return await self._create(owner, config, token)

    async def _create(self, owner: str, config: SourceConfig, token: str | None) -> StoredSource:
        source = StoredSource(str(uuid.uuid4()), owner, config, token is not None, _now())
        credentials = self._credentials()
        if token is not None:
            assert credentials is not None
            try:
                await asyncio.to_thread(credentials.put, SECRET_OWNER, source.id, token)
            except CredentialError as exc:
                raise CredentialError("Failed to store credentials") from exc
        try:
            await asyncio.to_thread(self._store().add, source)
        except BaseException:
            if token is not None and credentials is not None:
                await asyncio.to_thread(credentials.delete, SECRET_OWNER, source.id)
            raise
        if source.id not in self._sources:  # in a cluster, the store's echo has scheduled it
            self._sources[source.id] = source
            self._schedule(source)
        logger.info(
            "generic source %s (%s) created for %s, every %ds",
            source.id,
            config.name,
            owner,
            config.poll_interval_secs,
        )
        return source

    def list(self, owner: str | None) -> list[StoredSource]:
        """The owner's sources (None owns nothing; `EVERY_OWNER` sees all), oldest first."""
        if owner is None:
            return []
        return [s for s in self._sources.values() if owner in (s.owner, EVERY_OWNER)]

    async def catch_up(self) -> None:
        """In a cluster, apply every source other nodes have added or deleted up to now (a
        listing, or a lookup that misses, then shows them at once). If the store cannot
        answer, the caller goes on with what this node knows."""
        if self._shared is None:
            return  # the data dir's store: only this node writes it
        try:
            await asyncio.to_thread(self._store().refresh)
        except SourceStoreError as exc:
            logger.warning("sources shown without catching up: %s", exc)

    async def find(self, owner: str | None, source_id: str) -> StoredSource:
        """`get`, catching up first when the source is not known here (see `catch_up`)."""
        try:
            return self.get(owner, source_id)
        except NotFound:
            await self.catch_up()
            return self.get(owner, source_id)

    def get(self, owner: str | None, source_id: str) -> StoredSource:
        """The owner's source; another owner's is as unknown as a missing one (NotFound).
        `EVERY_OWNER` (the admin) gets any."""
        source = self._sources.get(source_id)
        if source is None or owner is None or owner not in (source.owner, EVERY_OWNER):
            raise NotFound(f"Source '{source_id}' not found")
        return source

    async def delete(self, owner: str | None, source_id: str) -> None:
        """Stop the source and delete its configuration and its secret. Raises NotFound."""
        source = await self.find(owner, source_id)
        await self._remove(source)
        logger.info("generic source %s deleted", source_id)

    async def _remove(self, source: StoredSource) -> None:
        self._sources.pop(source.id, None)
        await self.scheduler.remove(KEY_PREFIX + source.id)
        await asyncio.to_thread(self._store().delete, source.id)
        credentials = self._credentials()
        if source.has_token and credentials is not None:
            try:
                await asyncio.to_thread(credentials.delete, SECRET_OWNER, source.id)
            except CredentialError as exc:
                logger.error("source %s: cannot delete its token: %s", source.id, exc)

    async def forget_owner(self, owner: str) -> None:
        """The owner's namespace was deleted: its sources go too."""
        for source in self.list(owner):
            try:
                await self._remove(source)
            except SourceStoreError as exc:
                logger.error("cannot delete source %s: %s", source.id, exc)

    def status(self, source: StoredSource) -> dict[str, Any]:
        """The API's view of a source: its configuration (never the token) and its status."""
        runner = self.runner(source.id)
        body: dict[str, Any] = {
            "source_id": source.id,
            "type": "generic",
            **source.config.as_json(),
            "has_token": source.has_token,
            "created_at": source.created_at,
            "status": "stopped",
            "last_poll": None,
            "last_error": None,
            "polls": 0,
            "failures": 0,
            "events": 0,
        }
        if runner is not None:
            status = runner.status
            body.update(
                status="error" if status.last_error is not None else "running",
                last_poll=status.last_poll,
                last_error=status.last_error,
                polls=status.polls,
                failures=status.failures,
                events=status.events,
            )
        return body
