"""What the nodes of one cluster share besides the event log: JetStream key-value buckets and
an object store, reached through one NATS connection per node, and this node's id.

A node is in cluster mode when its event log is JetStream (`Settings.cluster_servers`). The
shared parts (the namespace registry, the runtime config, connector credentials and sources,
snapshots, the single-runner jobs) then live here instead of in the data dir, so a change made
through one node holds on every node at once.

Names. Every bucket is named after the event stream, `<stream>_<kind>` (`FLUX_namespaces`,
`FLUX_snapshots`), so several clusters, or several test runs, can share one NATS server, each
with its own stream and its own buckets. A bucket is created at first use with the stream's
replica count; an existing one is reused when its replicas, history and TTL are the ones asked
for, and is a start-up error otherwise (as the stream itself is).

The node id (`FLUX_NODE_ID`, else a random id kept in `<data dir>/node-id`) is stable across
restarts of one data dir, so what a node left behind under its id (WebSocket presences) is
recognised as its own when it comes back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from flux.errors import LogError, LogUnavailable
from flux.files import write_atomic
from flux.snapshots import compress, decompress, sequence_in, snapshot_name

logger = logging.getLogger("flux.cluster")

NODE_ID_FILE = "node-id"

_NOT_BUCKET = re.compile(r"[^A-Za-z0-9_-]")


def node_id(configured: str, data_dir: str | Path) -> str:
    """`configured` when set, else the id kept in `<data dir>/node-id` (made on first use).
    Blocking (a small file). Raises OSError when the data dir cannot hold it."""
    if configured:
        return configured
    path = Path(data_dir) / NODE_ID_FILE
    with contextlib.suppress(FileNotFoundError):
        kept = path.read_text().strip()
        if kept:
            return kept
    made = "node-" + secrets.token_hex(4)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, made.encode())
    return made


class Cluster:
    def __init__(
        self,
        servers: list[str],
        *,
        stream: str,
        replicas: int,
        node: str,
        data_dir: str | Path,
        timeout: float = 10.0,
    ) -> None:
        """The shared side of the cluster whose event stream is `stream` on `servers`; buckets
        get `replicas` copies. `node` is FLUX_NODE_ID (empty: the data dir's `node-id`, read
        by `start`). Nothing connects until `start`."""
        self.servers = servers
        self.stream = stream
        self.replicas = replicas
        self.node = node
        self.data_dir = Path(data_dir)
        self.timeout = timeout
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise LogUnavailable("cluster state unavailable: not connected to NATS")
        return self._js

    async def start(self) -> None:
        """Learn the node id, connect (NATS reconnects by itself afterwards). Raises
        LogUnavailable, or OSError when the node id cannot be kept."""
        self.node = await asyncio.to_thread(node_id, self.node, self.data_dir)
        nc = NATS()
        try:
            await asyncio.wait_for(
                nc.connect(
                    servers=self.servers,
                    name=f"flux {self.node}",
                    connect_timeout=max(1, min(int(self.timeout), 5)),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._error,
                ),
                self.timeout,
            )
        except Exception as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            where = ", ".join(self.servers)
            raise LogUnavailable(
                f"cluster state unavailable: cannot connect to NATS at {where}"
            ) from exc
        self._nc = nc
        self._js = nc.jetstream(timeout=self.timeout)
        logger.info("node %s joined the cluster of stream %s", self.node, self.stream)

    async def _error(self, exc: Exception) -> None:
        logger.warning("NATS (cluster state): %s", exc)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.drain()
            with contextlib.suppress(Exception):
                await nc.close()

    def bucket_name(self, kind: str) -> str:
        return _NOT_BUCKET.sub("_", f"{self.stream}_{kind}")

    async def bucket(self, kind: str, *, history: int = 1, ttl: float | None = None) -> KeyValue:
        """The key-value bucket `<stream>_<kind>`, created when missing. Raises LogError when
        it exists with other settings, LogUnavailable when NATS does not answer."""
        name = self.bucket_name(kind)
        js = self.js
        try:
            try:
                kv = await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                config = api.KeyValueConfig(
                    bucket=name, history=history, ttl=ttl, replicas=self.replicas
                )
                return await js.create_key_value(config)
            status = await kv.status()
        except (TimeoutError, nats.errors.Error) as exc:
            raise LogUnavailable(f"cluster state unavailable: bucket {name}: {exc}") from exc
        wrong = []
        replicas = status.stream_info.config.num_replicas or 1
        if replicas != self.replicas:
            wrong.append(f"replicas {replicas} (wanted {self.replicas})")
        if status.history != history:
            wrong.append(f"history {status.history} (wanted {history})")
        if abs((status.ttl or 0.0) - (ttl or 0.0)) > 0.001:
            wrong.append(f"ttl {status.ttl}s (wanted {ttl}s)")
        if wrong:
            raise LogError(
                f"key-value bucket {name} exists with other settings: {', '.join(wrong)}"
            )
        return kv

    async def objects(self, kind: str) -> ObjectStore:
        """The object store `<stream>_<kind>`, created when missing. Raises LogUnavailable."""
        name = self.bucket_name(kind)
        js = self.js
        try:
            try:
                return await js.object_store(name)
            except nats.js.errors.BucketNotFoundError:
                config = api.ObjectStoreConfig(bucket=name, replicas=self.replicas)
                return await js.create_object_store(name, config=config)
        except (TimeoutError, nats.errors.Error) as exc:
            raise LogUnavailable(f"cluster state unavailable: object store {name}: {exc}") from exc


class ObjectSnapshots:
    """`flux.snapshots.Snapshots` in the cluster's object store `<stream>_snapshots`: the same
    names and gzip form as the snapshot files, shared by every node (one writes them at a time:
    the holder of the `snapshots` job). An object is listed only once all its chunks are
    stored, and the store checks its digest on reading, so a torn write is never loaded."""

    def __init__(self, cluster: Cluster, keep: int) -> None:
        self.cluster = cluster
        self.keep = keep
        self._store: ObjectStore | None = None

    async def _objects(self) -> ObjectStore:
        if self._store is None:
            self._store = await self.cluster.objects("snapshots")
        return self._store

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        try:
            yield
        except (TimeoutError, nats.errors.Error) as exc:
            raise LogUnavailable(f"snapshot store unavailable: {what}: {exc!r}") from exc

    async def prepare(self) -> None:
        """Nothing to clean: an unfinished object is never listed."""

    async def listing(self) -> list[tuple[str, int]]:
        store = await self._objects()
        with self._translated("listing"):
            try:
                infos = await store.list(ignore_deletes=True)
            except nats.js.errors.NotFoundError:
                return []
        found = []
        for info in infos:
            seq = sequence_in(info.name)
            if seq is not None and not info.deleted:
                found.append((info.name, seq))
        return sorted(found, key=lambda item: item[1], reverse=True)

    async def load(self, name: str) -> bytes:
        store = await self._objects()
        with self._translated(f"reading {name}"):
            try:
                result = await store.get(name)
            except nats.js.errors.DigestMismatchError as exc:
                raise ValueError(f"corrupt snapshot {name}: digest mismatch") from exc
        return await asyncio.to_thread(decompress, result.data or b"", name)

    async def save(self, data: bytes, seq: int) -> str:
        store = await self._objects()
        name = snapshot_name(seq)
        blob = await asyncio.to_thread(compress, data)
        with self._translated(f"writing {name}"):
            await store.put(name, blob)
        for old, _ in (await self.listing())[self.keep :]:
            with (
                self._translated(f"deleting {old}"),
                contextlib.suppress(nats.js.errors.NotFoundError),
            ):
                await store.delete(old)
        return name
