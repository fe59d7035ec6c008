"""Generic sources of a cluster: the bucket `<stream>_sources`.

One key per source, `source.<id>` (ids are UUIDs, valid key characters), holding what the
embedded store's row holds: owner, configuration, whether it has a token, when it was made
(the token itself is in the shared credential store, sealed). The store has the embedded
store's synchronous interface (`flux.connectors.sources.SourceStorage`): `all` reads this
node's copy, `add` and `delete` write to the bucket from the worker thread and apply the change
here once stored. `on_change(id, source or None)` is told of every change the watcher applies
(`Sources.source_changed` starts or stops the source here).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import nats.errors
import orjson

from flux.cluster import Cluster
from flux.connectors.source_config import config_from_json
from flux.connectors.sources import StoredSource
from flux.errors import FluxError, LogUnavailable, SourceStoreError
from flux.mirror import BucketMirror

logger = logging.getLogger("flux.connectors")

KIND = "sources"
PREFIX = "source."

OnChange = Callable[[str, StoredSource | None], Awaitable[None]]


def source_entry(source: StoredSource) -> tuple[str, bytes]:
    """The key and value of a source in the bucket: what the embedded store's row holds."""
    row = {
        "owner": source.owner,
        "namespace": source.config.namespace,
        "config": source.config.as_json(),
        "has_token": source.has_token,
        "created_at": source.created_at,
    }
    return PREFIX + source.id, orjson.dumps(row)


class SharedSourceStore:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._sources: dict[str, StoredSource] = {}
        self._mirror: BucketMirror | None = None
        self.on_change: OnChange | None = None

    @property
    def mirror(self) -> BucketMirror:
        if self._mirror is None:
            raise SourceStoreError("source store: not open")
        return self._mirror

    async def open(self) -> None:
        """Load every source, then follow the bucket. Raises LogUnavailable or LogError."""
        kv = await self.cluster.bucket(KIND)
        self._mirror = BucketMirror(kv, self.cluster.bucket_name(KIND), self._apply)
        await self._mirror.start()

    async def stop(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()
            self._mirror = None
        self._sources.clear()

    def close(self) -> None:
        """Nothing: the bucket is the cluster's; `stop` ends the watcher."""

    async def _apply(self, key: str, value: bytes | None) -> None:
        if not key.startswith(PREFIX):
            return
        source_id = key[len(PREFIX) :]
        source = None
        if value is not None:
            try:
                row = orjson.loads(value)
                config = config_from_json(row["config"])
                source = StoredSource(
                    source_id, row["owner"], config, bool(row["has_token"]), row["created_at"]
                )
            except (ValueError, KeyError, TypeError, FluxError) as exc:
                logger.error("source %s: unreadable configuration (%s); skipped", source_id, exc)
        if source is None:
            self._sources.pop(source_id, None)
        else:
            self._sources[source_id] = source
        if self.on_change is not None:
            await self.on_change(source_id, source)

    async def _write(self, key: str, value: bytes | None) -> None:
        """Put `value` (None: delete the key) and apply it here; a delete waits for the
        watcher to deliver its marker (the client does not return its revision)."""
        mirror = self.mirror
        try:
            if value is None:
                await mirror.kv.delete(key)
                await mirror.catch_up()
            else:
                await mirror.offer(key, value, await mirror.kv.put(key, value))
        except (TimeoutError, nats.errors.Error, LogUnavailable) as exc:
            raise SourceStoreError(f"source store: {exc}") from exc

    def add(self, source: StoredSource) -> None:
        self.mirror.blocking(self._write(*source_entry(source)))

    def delete(self, source_id: str) -> bool:
        if source_id not in self._sources:
            return False
        self.mirror.blocking(self._write(PREFIX + source_id, None))
        return True

    def refresh(self) -> None:
        """Catch up with the bucket: every source added or deleted through any node up to now
        is applied here (and `on_change` told) when this returns."""
        self.mirror.blocking(self._catch_up())

    async def _catch_up(self) -> None:
        try:
            await self.mirror.catch_up()
        except LogUnavailable as exc:
            raise SourceStoreError(f"source store: {exc}") from exc

    def all(self, owner: str | None = None) -> list[StoredSource]:
        """Every source (of `owner` when given), oldest first."""
        sources = [s for s in list(self._sources.values()) if owner in (None, s.owner)]
        return sorted(sources, key=lambda s: (s.created_at, s.id))
