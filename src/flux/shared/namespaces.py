"""The namespace registry of a cluster: the bucket `<stream>_namespaces`.

One key per name, `ns.<name>` (names are `[a-z0-9-_]`, valid key characters as they are),
holding a JSON object: the namespace (`id`, `token_hash`, `created_at`, `private`) while it
exists, and `floor`, the history floor of its last deletion, once it has been deleted. One key
for both makes a delete one write (the namespace gone and its floor in place, never one
without the other) and lets a later registration of the name keep the floor. Tokens are stored
only as their SHA-256, as on disk.

Who wins. Registration writes with JetStream's expected-revision check: `create` for a name
never seen, `update(last=<its revision>)` for a deleted one; of two nodes registering one name
at once JetStream accepts exactly one, and the other gets Conflict. A rotation, a visibility
change and a delete read the key and write it back against its revision, retrying when another
node changed it in between, so none undoes another's change.

Deleting. `hide` marks the key `deleting` before the delete's tombstones: the other nodes then
keep the namespace listed with its token revoked and its past hidden (`apply_record`), as the
deleting node does in memory; the delete's last write replaces it by its floor. A delete left
half-done by a node that died is finished through any node.

When another node's change shows here: the watcher applies it within the time NATS takes to
deliver it (milliseconds on one network). A request with a token this node does not know
first catches up with the bucket (`catch_up`; `flux.api.freshness`), so a namespace registered
on another node works here at once; a rotated-away or deleted token keeps working here only
until the watcher delivers the change.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import nats.errors
import nats.js.errors
import orjson

from flux.auth import HIDE_ALL, Access, Namespace, hash_token, new_namespace_id, new_token
from flux.cluster import Cluster
from flux.errors import Conflict, NotFound, StorageError
from flux.mirror import BucketMirror

logger = logging.getLogger("flux.namespaces")

KIND = "namespaces"
PREFIX = "ns."
ATTEMPTS = 20  # read-and-write-back rounds before giving up (each lost round is another
# node's change to the same namespace landing in between)

TAKEN = "Namespace name already exists"
# The token hash a namespace being deleted through another node shows here: no token's hash
# (a SHA-256 in hex) has this form, so none matches it.
REVOKED = "revoked:"

Record = dict[str, Any]


def key_of(name: str) -> str:
    """The bucket key of a namespace name."""
    return PREFIX + name


def value_of(record: Record) -> bytes:
    """A record as the bucket holds it."""
    return orjson.dumps(record)


def record_of(namespace: Namespace | None, floor: int) -> Record:
    """The record of a namespace (None: a deleted name) and its name's history floor (0: none):
    what `NamespaceStore.open` gives of one name becomes one key."""
    record: Record = {}
    if namespace is not None:
        record.update(
            id=namespace.id,
            token_hash=namespace.token_hash,
            created_at=namespace.created_at,
            private=namespace.private,
        )
    if floor:
        record["floor"] = floor
    return record


def namespace_of(name: str, record: Record) -> Namespace | None:
    if "token_hash" not in record:
        return None
    return Namespace(
        str(record["id"]),
        name,
        str(record["token_hash"]),
        int(record["created_at"]),
        bool(record.get("private", False)),
    )


class SharedRegistry:
    """Namespaces in the cluster's bucket and in `access`: the bucket first."""

    def __init__(self, cluster: Cluster, access: Access) -> None:
        self.cluster = cluster
        self.access = access
        self.lock = asyncio.Lock()
        self._mirror: BucketMirror | None = None
        self._deleting: set[str] = set()  # names this node is deleting (`hide` to `delete`)

    @property
    def mirror(self) -> BucketMirror:
        if self._mirror is None:
            raise StorageError("the namespace registry is not open")
        return self._mirror

    async def open(self) -> None:
        """Load every namespace and floor into `access`, then follow the bucket. Raises
        LogUnavailable or LogError (`Cluster.bucket`)."""
        kv = await self.cluster.bucket(KIND)
        self._mirror = BucketMirror(kv, self.cluster.bucket_name(KIND), self._apply)
        await self._mirror.start()
        logger.info(
            "namespace registry (shared): %d namespaces, %d deleted names with a history floor",
            len(self.access),
            len(self.access.floors),
        )

    async def close(self) -> None:
        if self._mirror is not None:
            await self._mirror.stop()
            self._mirror = None

    async def catch_up(self) -> None:
        """Apply every change the bucket holds now (see the module's docstring)."""
        await self.mirror.catch_up()

    async def _apply(self, key: str, value: bytes | None) -> None:
        if not key.startswith(PREFIX):
            return
        name = key[len(PREFIX) :]
        if name in self._deleting:
            return  # being deleted through this node: its delete writes the outcome
        apply_record(self.access, name, orjson.loads(value) if value else {})

    # -- changes -------------------------------------------------------------------------------

    async def _write(self, name: str, record: Record, last: int | None) -> None:
        """Write `name`'s record: a new key when `last` is None, else against revision `last`;
        then apply it here. Raises KeyWrongLastSequenceError when another write came first,
        StorageError when NATS does not take it."""
        mirror = self.mirror
        key = key_of(name)
        value = value_of(record)
        try:
            if last is None:
                revision = await mirror.kv.create(key, value)
            else:
                revision = await mirror.kv.update(key, value, last=last)
        except nats.js.errors.KeyWrongLastSequenceError:
            raise
        except (TimeoutError, nats.errors.Error) as exc:
            raise StorageError(f"Failed to persist namespace: {exc}") from exc
        await mirror.offer(key, value, revision)

    async def _read(self, name: str) -> tuple[Record, int] | None:
        """`name`'s record and revision in the bucket (not this node's copy), or None."""
        try:
            entry = await self.mirror.kv.get(key_of(name))
        except (nats.js.errors.KeyNotFoundError, nats.js.errors.KeyDeletedError):
            return None
        except (TimeoutError, nats.errors.Error) as exc:
            raise StorageError(f"Failed to read namespace: {exc}") from exc
        return orjson.loads(entry.value or b"{}"), entry.revision or 0

    async def register(self, name: str, private: bool, created_at: int) -> tuple[Namespace, str]:
        """A new namespace and its token (returned here only). Raises ValidationError,
        Conflict (the name is taken, here or on any node) or StorageError."""
        return await asyncio.shield(self._register(name, private, created_at))

    async def _register(self, name: str, private: bool, created_at: int) -> tuple[Namespace, str]:
        async with self.lock:
            self.access.check_new(name)
            token = new_token()
            namespace = Namespace(new_namespace_id(), name, hash_token(token), created_at, private)
            try:
                await self._write(name, record_of(namespace, 0), None)
            except nats.js.errors.KeyWrongLastSequenceError:
                # The key exists: a deleted name (its floor kept) may be taken again, once.
                held = await self._read(name)
                if held is None or namespace_of(name, held[0]) is not None:
                    raise Conflict(TAKEN) from None
                record, revision = held
                floor = int(record.get("floor", 0))
                try:
                    await self._write(name, record_of(namespace, floor), revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    raise Conflict(TAKEN) from None
            return namespace, token

    async def _change(self, name: str, change: Callable[[Record], Record]) -> None:
        """Read `name`'s record, `change` it and write it back against the revision read, again
        while another node's write comes first. Raises NotFound (no such namespace) or
        StorageError."""
        for _ in range(ATTEMPTS):
            held = await self._read(name)
            if held is None or namespace_of(name, held[0]) is None:
                raise NotFound("Namespace not found")
            record, revision = held
            try:
                await self._write(name, change(record), revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue
            return
        raise StorageError(f"Failed to persist namespace: {name} kept changing, try again")

    async def rotate(self, name: str) -> tuple[Namespace, str]:
        """A new token for `name`; the old one stops working here as this returns, on the
        other nodes when their watchers deliver the change."""
        return await asyncio.shield(self._rotate(name))

    async def _rotate(self, name: str) -> tuple[Namespace, str]:
        async with self.lock:
            token = new_token()
            token_hash = hash_token(token)
            await self._change(name, lambda record: {**record, "token_hash": token_hash})
            return self.access.require(name), token

    async def set_private(self, name: str, private: bool) -> Namespace:
        return await asyncio.shield(self._set_private(name, private))

    async def _set_private(self, name: str, private: bool) -> Namespace:
        async with self.lock:
            await self._change(name, lambda record: {**record, "private": private})
            return self.access.require(name)

    async def hide(self, name: str) -> None:
        """The first step of a delete through this node (the caller holds `lock` and has begun
        it in `access`): mark the namespace `deleting` in the bucket, so every other node stops
        taking its token and hides its past while the entities get their tombstones. Raises
        NotFound or StorageError."""
        self._deleting.add(name)
        await self._change(name, lambda record: {**record, "deleting": True})

    async def unhide(self, name: str) -> None:
        """Undo `hide` after a delete failed (this node's `access` is put back by the caller).
        Raises StorageError; the mark then stays, and a retry of the delete finishes it."""
        self._deleting.discard(name)  # so the write applies here too
        await self._change(name, lambda record: _without(record, "deleting"))

    async def delete(self, name: str, floor: int) -> None:
        """Remove `name` and record its floor in one write (the caller holds `lock`, has begun
        the delete in `access` and called `hide`; see `NamespaceAdmin.delete`). A floor never
        goes down. Raises StorageError."""
        try:
            for _ in range(ATTEMPTS):
                held = await self._read(name)
                record, revision = held if held is not None else ({}, None)
                floor = max(floor, int(record.get("floor", 0)))
                try:
                    await self._write(name, record_of(None, floor), revision)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue
                self.access.finish_delete(name, floor)
                return
        finally:
            self._deleting.discard(name)
        raise StorageError(f"Failed to persist namespace: {name} kept changing, try again")


def apply_record(access: Access, name: str, record: Record) -> None:
    """Make `access` show `name` as its bucket record says. A namespace another node is
    deleting stays listed (so the admin can finish a delete that node left half-done, from any
    node) with its token revoked and its past hidden, as on the deleting node."""
    namespace = namespace_of(name, record)
    floor = int(record.get("floor", 0))
    if namespace is None:
        access.remove(name)
    elif record.get("deleting"):
        access.put(replace(namespace, token_hash=REVOKED + name))
        floor = HIDE_ALL
    else:
        access.put(namespace)
    if floor:
        access.floors[name] = floor
    else:
        access.floors.pop(name, None)


def _without(record: Record, field: str) -> Record:
    return {k: v for k, v in record.items() if k != field}
