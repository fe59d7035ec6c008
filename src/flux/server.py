"""The composition root: every part of one Flux server, built and wired here, once.

The parts are built bottom-up and each is handed only what it uses: the state engine, a
function (the service's `publish`, the ingestion path for connectors, the log's `sync`) or a
small object (the namespace index). No part imports one above it (the layers are declared in
pyproject.toml, `[tool.importlinter]`, and checked by `scripts/test`); the HTTP app
(`flux.api.app.create_app`) takes a `Server` and serves its parts.

    service      FluxService: publish -> log -> engine -> listeners; snapshots, retention
    permissions  who may write, read and administer what, and the rate limits
    registry     the namespace registry (disk or the cluster's bucket, and the in-memory index,
                 `access`)
    namespaces   the namespace API's operations, beside the registry
    runtime      the runtime-mutable settings, and where changes are kept (`runtime_store`)
    credentials  connector credentials (encrypted; None without FLUX_ENCRYPTION_KEY)
    connectors   connectors and generic sources, publishing through `publish_as`
    directory    the `flux-core/directory` entity
    live         WebSocket and SSE fan-out of committed changes
    expiries     TTL and lease expiries, logged as events
    presence     WebSocket presence, removed by a logged event when the connection ends
    cluster      with a JetStream log: the NATS buckets the nodes share (None: embedded);
                 the registry, the runtime config, the credentials and the generic sources are
                 then kept there (`flux.shared`) instead of in the data dir
    jobs         the single-runner jobs (snapshots, expiries, connectors, directory,
                 presence janitor): one node at a time in a cluster, always here embedded

`start` runs in that order's dependencies: the runtime file, the credential store and the
registry, then the service (snapshot, replay), then the directory, the connectors and live
delivery, and last the jobs (taking one starts its part's work); `stop` runs in reverse.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

from flux.auth import Access
from flux.cluster import Cluster, ObjectSnapshots
from flux.config import RuntimeConfig, Settings
from flux.connectors.base import EventDict
from flux.connectors.manager import ConnectorManager
from flux.connectors.sharedsources import SharedSourceStore
from flux.credentials import Credentials, CredentialStore
from flux.directory import Directory
from flux.expiry import Expiries
from flux.jobs import Jobs
from flux.live import Live
from flux.log import Appended, EventLog, open_log
from flux.log.jetstream import JetStreamLog
from flux.namespaces import FILE_NAME as NAMESPACES_FILE
from flux.namespaces import NamespaceAdmin, NamespaceRegistry, Registry
from flux.permissions import Permissions
from flux.presence import Presence
from flux.runtime import RuntimeFile, RuntimeStore
from flux.service import FluxService
from flux.shared.credentials import SharedCredentialStore
from flux.shared.namespaces import SharedRegistry
from flux.shared.runtime import SharedRuntime
from flux.snapshots import Snapshots


class Server:
    def __init__(
        self,
        settings: Settings,
        *,
        log: EventLog | None = None,
        snapshots: Snapshots | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        """Build every part; nothing starts (no file is opened) until `start`. `log` and
        `snapshots` replace the ones `settings` name (snapshots: the data dir's files, in a
        cluster the shared object store); `clock` (monotonic seconds) drives the rate limiter
        (tests pass a fake one)."""
        self.settings = settings
        data_dir = Path(settings.data_dir)
        log = log if log is not None else open_log(settings.event_log_url())
        # Cluster mode (a JetStream log): what the nodes share besides the log.
        self.cluster = (
            Cluster(
                log.servers,
                stream=log.stream,
                replicas=log.replicas,
                node=settings.node_id,
                data_dir=data_dir,
                timeout=log.timeout,
            )
            if isinstance(log, JetStreamLog)
            else None
        )
        if snapshots is None and self.cluster is not None:
            snapshots = ObjectSnapshots(self.cluster, keep=settings.snapshot_keep)
        self.service = FluxService(settings, log=log, snapshots=snapshots)
        self.engine = self.service.engine
        self.log = self.service.log
        self.jobs = Jobs(self.cluster, settings.cluster_job_ttl_seconds)
        self.service.snapshot_writer = self.jobs.job("snapshots")
        self.runtime = RuntimeConfig.from_settings(settings)
        self.access = Access(admin_token=settings.admin_token)
        self.runtime_store: RuntimeStore
        self.registry: Registry
        # In a cluster: what the nodes share, opened by `start` (`flux.shared`).
        self.shared_runtime: SharedRuntime | None = None
        self.shared_sources: SharedSourceStore | None = None
        self.shared_credentials: SharedCredentialStore | None = None
        self.runtime_file: RuntimeFile | None = None
        # A request with a token this node does not know first calls this (the API's
        # `Freshness`): the registry catches up with the other nodes. None when embedded.
        self.catch_up: Callable[[], Awaitable[None]] | None = None
        if self.cluster is None:
            self.runtime_store = self.runtime_file = RuntimeFile(data_dir, self.runtime)
            self.registry = NamespaceRegistry(data_dir / NAMESPACES_FILE, self.access)
        else:
            self.runtime_store = self.shared_runtime = SharedRuntime(self.cluster, self.runtime)
            shared_registry = SharedRegistry(self.cluster, self.access)
            self.registry = shared_registry
            self.catch_up = shared_registry.catch_up
            self.shared_sources = SharedSourceStore(self.cluster)
        self.permissions = Permissions(settings, self.access, self.runtime, self.engine, clock)
        # Opened by `start` when FLUX_ENCRYPTION_KEY is set; closed by `stop`.
        self.credentials: Credentials | None = None
        self.connectors = ConnectorManager(
            settings,
            publish=self.publish_as,
            entity=self.engine.get,
            credentials=self.credential_store,
            sources=self.shared_sources,
        )
        self.jobs.job("connectors").on_change(self._connectors_held)
        self.namespaces = NamespaceAdmin(
            self.registry,
            self.engine,
            auth_enabled=settings.auth_enabled,
            delete_entities=self.delete_entities,
            sync=self.log.sync,
            forget=self.connectors.forget_namespace,
        )
        self.directory = Directory(
            settings.directory_interval_seconds,
            engine=self.engine,
            publish=self.service.publish,
            access=self.access if settings.auth_enabled else None,
            job=self.jobs.job("directory"),
        )
        self.live = Live(self.service, self.permissions)
        self.expiries = Expiries(self.service, self.jobs.job("expiries"))
        self.presence = Presence(self.service, self.permissions, self.jobs)

    # -- the functions the parts are handed ----------------------------------------------------

    def credential_store(self) -> Credentials | None:
        """The connector credential store (None without FLUX_ENCRYPTION_KEY, or when stopped)."""
        return self.credentials

    async def publish_as(self, namespace: str | None, items: Sequence[EventDict]) -> list[Appended]:
        """Publish event objects on behalf of a namespace (None: auth off), as connectors do:
        the checks of `POST /api/events/batch` (`Permissions.admit_as`), then the log; all or
        nothing. Raises ValidationError, Forbidden, NamespaceNotFound or RateLimited."""
        return await self.service.publish(self.permissions.admit_as(namespace, items))

    async def delete_entities(self, entity_ids: list[str]) -> int:
        """Delete the entities that exist (tombstones); returns how many did."""
        return len((await self.service.delete(entity_ids)).deleted)

    async def _connectors_held(self, held: bool) -> None:
        """The `connectors` job: only its holder polls connectors and sources."""
        if held:
            self.connectors.scheduler.start()
        else:
            await self.connectors.scheduler.stop()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the runtime file (in a cluster: join it and load what the nodes share, see
        `_start_shared`), open the credential store and the namespace registry, start
        the service (restore, replay; raises LogCorrupt for a damaged log), then the directory,
        the connectors and live delivery, then the jobs (embedded: all run here)."""
        settings = self.settings
        if self.cluster is not None:
            await self._start_shared(self.cluster)
        else:
            if self.runtime_file is not None:
                self.runtime_file.load()
            if settings.encryption_key is not None and self.credentials is None:
                self.credentials = CredentialStore.open(settings.data_dir, settings.encryption_key)
        if settings.auth_enabled:
            await self.registry.open()
        await self.service.start(floor=max(self.access.floors.values(), default=0))
        self.directory.start()
        await self.connectors.start(poll=False)
        self.live.start()
        await self.presence.start()
        await self.jobs.start()

    async def _start_shared(self, cluster: Cluster) -> None:
        """Join the cluster and load what the nodes share: the runtime config, the connector
        credentials and the generic sources (the registry opens with the embedded one's
        steps), each followed from here on by a watcher."""
        settings = self.settings
        await cluster.start()
        assert self.shared_runtime is not None and self.shared_sources is not None
        await self.shared_runtime.open()
        if settings.encryption_key is not None and self.credentials is None:
            credentials = SharedCredentialStore(cluster, settings.encryption_key)
            credentials.on_change = self.connectors.credential_changed
            await credentials.open()
            self.credentials = self.shared_credentials = credentials
        self.shared_sources.on_change = self.connectors.sources.source_changed
        await self.shared_sources.open()

    async def _stop_shared(self) -> None:
        if self.shared_sources is not None:
            await self.shared_sources.stop()
        if self.shared_credentials is not None:
            await self.shared_credentials.stop()
            self.shared_credentials = None
        if self.shared_runtime is not None:
            await self.shared_runtime.close()

    async def stop(self) -> None:
        """End live delivery, stop the connectors and the directory, stop the service (final
        snapshot, log closed), free the jobs, then close the registry and the credential
        store."""
        await self.expiries.stop()
        await self.presence.stop()
        await self.live.stop()
        await self.connectors.stop()
        await self.directory.stop()
        try:
            await self.service.stop()
        finally:
            await self.jobs.stop()
            await self.registry.close()
            await self._stop_shared()
            if self.credentials is not None:
                self.credentials.close()
                self.credentials = None
            if self.cluster is not None:
                await self.cluster.close()
