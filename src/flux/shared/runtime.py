"""The runtime config of a cluster: the bucket `<stream>_config`.

One key per changed setting, `setting.<name>` (setting names are valid key characters), holding
its JSON value. A change through any node (`PUT/PATCH /api/admin/config`) is validated, written
key by key, and applied here; every other node's watcher applies it to its `RuntimeConfig`, so
the limits the config holds are enforced everywhere. One key per setting means two admins
changing different settings at once never lose each other's change (the last write of one
setting wins, as on one node). Settings nobody changed keep this node's start-up value.
"""

from __future__ import annotations

import logging

import nats.errors
import orjson

from flux.cluster import Cluster
from flux.config import RuntimeConfig
from flux.errors import LogUnavailable
from flux.mirror import BucketMirror

logger = logging.getLogger("flux.runtime")

KIND = "config"
PREFIX = "setting."


def setting_entry(name: str, value: object) -> tuple[str, bytes]:
    """The key and value of one setting's change (a checked JSON value) in the bucket."""
    return PREFIX + name, orjson.dumps(value)


class SharedRuntime:
    def __init__(self, cluster: Cluster, config: RuntimeConfig) -> None:
        self.cluster = cluster
        self.config = config
        self._mirror: BucketMirror | None = None

    @property
    def mirror(self) -> BucketMirror:
        if self._mirror is None:
            raise LogUnavailable("cluster state unavailable: the runtime config is not open")
        return self._mirror

    async def open(self) -> None:
        """Apply every stored change, then follow the bucket. Raises LogUnavailable or
        LogError (`Cluster.bucket`)."""
        kv = await self.cluster.bucket(KIND)
        self._mirror = BucketMirror(kv, self.cluster.bucket_name(KIND), self._apply)
        await self._mirror.start()

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()
            self._mirror = None

    async def _apply(self, key: str, value: bytes | None) -> None:
        if not key.startswith(PREFIX) or value is None:
            return
        name = key[len(PREFIX) :]
        try:
            self.config.update({name: orjson.loads(value)})
        except ValueError as exc:
            # A setting this version does not know or accept (a newer node wrote it).
            logger.error("ignoring the shared runtime setting %s: %s", name, exc)

    async def update(self, changes: dict[str, object]) -> None:
        """Validate, store (one key per setting), then apply runtime config changes. Raises
        ValueError, or LogUnavailable when NATS does not take them (the settings written
        before that hold on every node)."""
        checked = self.config.validated(changes)
        mirror = self.mirror
        for name, value in checked.items():
            key, data = setting_entry(name, value)
            try:
                revision = await mirror.kv.put(key, data)
            except (TimeoutError, nats.errors.Error) as exc:
                raise LogUnavailable(f"cluster state unavailable: config {name}: {exc}") from exc
            await mirror.offer(key, data, revision)
        if checked:
            logger.info("runtime config changed (shared): %s", checked)

    async def refresh(self) -> None:
        """Apply every change the bucket holds now (another node's, just acknowledged)."""
        await self.mirror.catch_up()
