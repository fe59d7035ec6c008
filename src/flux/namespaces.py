"""The namespace registry on disk: SQLite at `<data dir>/namespaces.db`.

One row per namespace; the token is stored only as its SHA-256 (`flux.auth.hash_token`), so the
file gives nobody a usable token. Every change is committed (synchronous=FULL) before the
in-memory index (`flux.auth.Access`) changes, so what a client was told survives a crash, and a
rotated token is revoked on disk before the new one is handed out. Changes are rare and run one
at a time, in a thread, under a lock, shielded from cancellation (a client that goes away must
not leave the disk and the memory disagreeing); reads never touch the file.

`history_floors` keeps, per deleted namespace name, the event log's sequence at its deletion:
history and replays never serve an event of that name at or below it (`Access.history_floor`).
A delete records the floor and removes the namespace's row in one transaction, so after a
crash either the namespace is still there (with its privacy, and its token) or it is gone with
its floor in place: never gone with its past readable.

`Registry` is what the rest of Flux needs of a registry; `NamespaceRegistry` is the embedded
one, `flux.shared.namespaces.SharedRegistry` the cluster's (a JetStream key-value bucket).

`NamespaceAdmin` is what the namespace API does with the registry: register, show, change
visibility, rotate a token and delete, each behind its check. Deleting a namespace also deletes
its entities and its connectors: it is handed the functions that do those (the composition
root, `flux.server`, wires them), so this module needs nothing above it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Protocol, TypeVar

from flux.auth import (
    REGISTRATION_UNAVAILABLE,
    Access,
    Credential,
    Namespace,
    hash_token,
    new_namespace_id,
    new_token,
)
from flux.engine import StateEngine
from flux.errors import Conflict, FluxError, NotFound, StorageError
from flux.events import now_us
from flux.sqlitedb import SQLiteDB

logger = logging.getLogger("flux.namespaces")

T = TypeVar("T")

FILE_NAME = "namespaces.db"  # in the data dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS namespaces (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    token_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    private INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS history_floors (
    name TEXT PRIMARY KEY,
    seq INTEGER NOT NULL
);
"""


class Registry(Protocol):
    """Namespaces kept somewhere and indexed in `access`, changed together: the store first.
    `lock` serialises this node's changes (`NamespaceAdmin.delete` holds it across its
    steps)."""

    access: Access
    lock: asyncio.Lock

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def register(
        self, name: str, private: bool, created_at: int
    ) -> tuple[Namespace, str]: ...
    async def rotate(self, name: str) -> tuple[Namespace, str]: ...
    async def set_private(self, name: str, private: bool) -> Namespace: ...
    async def hide(self, name: str) -> None: ...
    async def unhide(self, name: str) -> None: ...
    async def delete(self, name: str, floor: int) -> None: ...


class NamespaceStore:
    """The registry's file (`flux.sqlitedb.SQLiteDB`, synchronous=FULL). Blocking:
    `NamespaceRegistry` calls it from a thread, one call at a time. Raises StorageError."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.db = SQLiteDB(
            path,
            SCHEMA,
            name="the namespace registry",
            error=StorageError,
            prefix="Failed to persist namespace: ",
            pragmas=["synchronous=FULL"],
        )

    def open(self) -> tuple[list[Namespace], dict[str, int]]:
        """Every namespace, and the history floor of every deleted name."""
        self.db.open()
        try:
            rows = self.db.query(
                "SELECT id, name, token_hash, created_at, private FROM namespaces ORDER BY name"
            )
            floors = self.db.query("SELECT name, seq FROM history_floors")
        except StorageError:
            self.db.close()
            raise
        namespaces = [Namespace(i, n, h, int(c), bool(p)) for i, n, h, c, p in rows]
        return namespaces, {str(name): int(seq) for name, seq in floors}

    def insert(self, namespace: Namespace) -> None:
        """Raises Conflict if the id is taken (a collision: 36^8, but still)."""
        try:
            self.db.execute(
                "INSERT INTO namespaces (id, name, token_hash, created_at, private) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    namespace.id,
                    namespace.name,
                    namespace.token_hash,
                    namespace.created_at,
                    int(namespace.private),
                ),
            )
        except StorageError as exc:
            if isinstance(exc.__cause__, sqlite3.IntegrityError):
                raise Conflict("Namespace name already exists") from exc.__cause__
            raise

    def update(self, namespace: Namespace) -> None:
        self.db.execute(
            "UPDATE namespaces SET token_hash = ?, private = ? WHERE name = ?",
            (namespace.token_hash, int(namespace.private), namespace.name),
        )

    def delete(self, name: str, floor: int) -> None:
        """Remove the namespace and record its history floor, in one transaction (a floor never
        goes down)."""
        with self.db.transaction():
            self.db.execute(
                "INSERT INTO history_floors (name, seq) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq)",
                (name, floor),
            )
            self.db.execute("DELETE FROM namespaces WHERE name = ?", (name,))

    def close(self) -> None:
        self.db.close()


class NamespaceRegistry:
    """Namespaces on disk and in `access`, changed together: disk first."""

    def __init__(self, path: Path, access: Access) -> None:
        self.store = NamespaceStore(path)
        self.access = access
        self.lock = asyncio.Lock()  # one change at a time (held across a delete's tombstones)

    async def open(self) -> None:
        """Load every namespace into `access`. Raises StorageError."""
        namespaces, floors = await self._run(self.store.open, "open the namespace registry")
        for namespace in namespaces:
            self.access.put(namespace)
        self.access.floors.update(floors)
        logger.info(
            "namespace registry: %d namespaces, %d deleted names with a history floor",
            len(namespaces),
            len(floors),
        )

    async def close(self) -> None:
        await asyncio.to_thread(self.store.close)

    async def _run(self, call: Callable[[], T], what: str) -> T:
        try:
            return await asyncio.to_thread(call)
        except StorageError as exc:
            logger.error("namespace registry: failed to %s: %s", what, exc.message)
            raise

    async def register(self, name: str, private: bool, created_at: int) -> tuple[Namespace, str]:
        """A new namespace and its token (returned here only). Raises ValidationError,
        Conflict or StorageError."""
        return await asyncio.shield(self._register(name, private, created_at))

    async def _register(self, name: str, private: bool, created_at: int) -> tuple[Namespace, str]:
        async with self.lock:
            self.access.check_new(name)
            token = new_token()
            namespace = Namespace(new_namespace_id(), name, hash_token(token), created_at, private)
            await self._run(lambda: self.store.insert(namespace), f"register {name}")
            self.access.put(namespace)
            return namespace, token

    async def rotate(self, name: str) -> tuple[Namespace, str]:
        """A new token for `name`; the old one stops working as this returns."""
        return await asyncio.shield(self._rotate(name))

    async def _rotate(self, name: str) -> tuple[Namespace, str]:
        async with self.lock:
            token = new_token()
            namespace = replace(self.access.require(name), token_hash=hash_token(token))
            await self._run(lambda: self.store.update(namespace), "rotate a token")
            self.access.put(namespace)
            return namespace, token

    async def set_private(self, name: str, private: bool) -> Namespace:
        return await asyncio.shield(self._set_private(name, private))

    async def _set_private(self, name: str, private: bool) -> Namespace:
        async with self.lock:
            namespace = self.access.with_private(name, private)
            await self._run(lambda: self.store.update(namespace), "change a namespace")
            self.access.put(namespace)
            return namespace

    async def hide(self, name: str) -> None:
        """Nothing to do: `Access.begin_delete` hid the namespace, and only this node reads
        the file (a cluster's registry tells the other nodes here)."""

    async def unhide(self, name: str) -> None:
        """Nothing to do (see `hide`)."""

    async def delete(self, name: str, floor: int) -> None:
        """Remove `name` from disk and memory, its events up to `floor` hidden from then on
        (the caller holds `lock`; see `NamespaceAdmin.delete` for the order). Raises
        StorageError."""
        await self._run(lambda: self.store.delete(name, floor), "delete a namespace")
        self.access.finish_delete(name, floor)


class NamespaceAdmin:
    """The namespace API's operations, each behind its check (all NotFound with auth off).

    `delete_entities` deletes entities by id (tombstones; returns how many existed), `sync`
    waits for every write handed to the log and returns its sequence (`EventLog.sync`), and
    `forget` stops a deleted namespace's connectors and deletes their credentials."""

    def __init__(
        self,
        registry: Registry,
        engine: StateEngine,
        *,
        auth_enabled: bool,
        delete_entities: Callable[[list[str]], Awaitable[int]],
        sync: Callable[[], Awaitable[int]],
        forget: Callable[[str], Awaitable[None]],
    ) -> None:
        self.registry = registry
        self.access = registry.access
        self.engine = engine
        self.auth_enabled = auth_enabled
        self._delete_entities = delete_entities
        self._sync = sync
        self._forget = forget

    def _available(self) -> None:
        if not self.auth_enabled:
            raise NotFound(REGISTRATION_UNAVAILABLE)

    def _check_admin(self, credential: Credential, message: str) -> None:
        self.access.check_admin(credential, self.auth_enabled, message)

    async def register(
        self, credential: Credential, name: str, private: bool = False
    ) -> tuple[Namespace, str]:
        """Register `name`; returns it and its token (the only time the token is shown).
        Self-service, unless an admin token is configured: then only the admin may. Raises
        NotFound (auth off), AuthError, ValidationError, Conflict or StorageError."""
        self._available()
        if self.access.admin_hash is not None:
            self._check_admin(credential, "Admin token required")
        namespace, token = await self.registry.register(name, private, now_us())
        logger.info("namespace %s registered (%s)", name, namespace.id)
        return namespace, token

    def show(self, credential: Credential, name: str) -> tuple[Namespace, int]:
        """A namespace and its current entity count. A private one needs its token or the
        admin's. Raises NotFound, AuthError or Forbidden."""
        self._available()
        namespace = self.access.require(name)
        self.access.check_read_namespace(credential, name)
        return namespace, self.entity_count(name)

    def entity_count(self, name: str) -> int:
        return sum(1 for _ in self.engine.select(namespace=name))

    async def rotate_token(self, credential: Credential, name: str) -> tuple[Namespace, str]:
        """A new token for the namespace (the admin's or the current token's request); the old
        token is revoked when this returns. Raises NotFound, AuthError, Forbidden or
        StorageError."""
        self._available()
        self.access.authorize_manage(credential, name)
        namespace, token = await self.registry.rotate(name)
        logger.info("namespace %s: token rotated", name)
        return namespace, token

    async def set_private(self, credential: Credential, name: str, private: bool) -> Namespace:
        """Make a namespace private or public (the admin's or the namespace's own request)."""
        self._available()
        self.access.authorize_manage(credential, name)
        namespace = await self.registry.set_private(name, private)
        logger.info("namespace %s is now %s", name, "private" if private else "public")
        return namespace

    async def delete(self, credential: Credential, name: str) -> int:
        """Admin only. Revokes the namespace's token at once, deletes its entities (tombstones),
        then removes it with its history floor; returns how many entities were deleted. From
        the moment it begins, nothing of the namespace's past is served: not its history, not a
        replay, not to anyone, nor to a later namespace of the same name (see docs/auth.md).
        If a step fails the namespace is put back (retry the delete). Raises NotFound,
        AuthError, Forbidden, LogError or StorageError."""
        self._available()
        self._check_admin(credential, "Admin token required")
        # Shielded: a client going away must not stop it half-way.
        return await asyncio.shield(self._delete(name))

    async def _delete(self, name: str) -> int:
        """In this order, so that no step (nor a crash between two) reveals the past:
        1. in memory: no more writes (the token is revoked), history and replays of the name
           hidden from everyone, a private namespace kept private; in a cluster, the same on
           every other node once it applies the registry's `deleting` mark (`hide`; a write
           another node admitted just before that can still land after the tombstones);
        2. wait for the writes admitted before that (already handed to the log: admission and
           the hand-over share one step of the event loop) to be applied, so the entities they
           made are in the state and get tombstones, and none of them lands above the floor;
        3. tombstones for every entity;
        4. the floor (the log's sequence after the tombstones) and the removal, in one
           transaction of the registry; after a crash before it, the namespace is still there
           and still private, and a retry finishes the job."""
        registry = self.registry
        async with registry.lock:
            namespace, previous_floor = self.access.begin_delete(name)
            try:
                await registry.hide(name)
                await self._sync()
                ids = [entity.id for entity in self.engine.select(namespace=name)]
                deleted = 0
                for chunk in _chunks(ids, 10_000):
                    deleted += await self._delete_entities(chunk)
                floor = await self._sync()
                await registry.delete(name, floor)
            except BaseException:
                self.access.undo_delete(namespace, previous_floor)
                try:
                    await registry.unhide(name)
                except FluxError as exc:
                    logger.error("namespace %s: the delete's mark stays: %s", name, exc.message)
                raise
        await self._forget(name)
        logger.info(
            "namespace %s deleted with its %d entities; its history up to sequence %d is hidden",
            name,
            deleted,
            floor,
        )
        return deleted


def _chunks(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
