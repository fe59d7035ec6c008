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
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TypeVar

from flux.auth import Access, Namespace, hash_token, new_namespace_id, new_token
from flux.errors import Conflict, StorageError

logger = logging.getLogger("flux.namespaces")

T = TypeVar("T")

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


class NamespaceStore:
    """Synchronous SQLite access; `NamespaceRegistry` calls it from a thread, one call at a
    time. Raises sqlite3.Error (translated by the registry)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def open(self) -> tuple[list[Namespace], dict[str, int]]:
        """Every namespace, and the history floor of every deleted name."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            rows = db.execute(
                "SELECT id, name, token_hash, created_at, private FROM namespaces ORDER BY name"
            ).fetchall()
            floors = db.execute("SELECT name, seq FROM history_floors").fetchall()
        except sqlite3.Error:
            db.close()
            raise
        self._db = db
        namespaces = [Namespace(i, n, h, int(c), bool(p)) for i, n, h, c, p in rows]
        return namespaces, {str(name): int(seq) for name, seq in floors}

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError("the namespace registry is closed")
        return self._db

    def insert(self, namespace: Namespace) -> None:
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

    def update(self, namespace: Namespace) -> None:
        self.db.execute(
            "UPDATE namespaces SET token_hash = ?, private = ? WHERE name = ?",
            (namespace.token_hash, int(namespace.private), namespace.name),
        )

    def delete(self, name: str, floor: int) -> None:
        """Remove the namespace and record its history floor, in one transaction (a floor never
        goes down)."""
        db = self.db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "INSERT INTO history_floors (name, seq) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq)",
                (name, floor),
            )
            db.execute("DELETE FROM namespaces WHERE name = ?", (name,))
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


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
        except sqlite3.Error as exc:
            logger.error("namespace registry: failed to %s: %s", what, exc)
            raise StorageError(f"Failed to persist namespace: {exc}") from exc

    async def register(self, name: str, private: bool, created_at: int) -> tuple[Namespace, str]:
        """A new namespace and its token (returned here only). Raises ValidationError,
        Conflict or StorageError."""
        return await asyncio.shield(self._register(name, private, created_at))

    async def _register(self, name: str, private: bool, created_at: int) -> tuple[Namespace, str]:
        async with self.lock:
            self.access.check_new(name)
            token = new_token()
            namespace = Namespace(new_namespace_id(), name, hash_token(token), created_at, private)
            try:
                await asyncio.to_thread(self.store.insert, namespace)
            except sqlite3.IntegrityError as exc:  # a namespace id collision: 36^8, but still
                raise Conflict("Namespace name already exists") from exc
            except sqlite3.Error as exc:
                logger.error("namespace registry: failed to register %s: %s", name, exc)
                raise StorageError(f"Failed to persist namespace: {exc}") from exc
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

    async def delete(self, name: str, floor: int) -> None:
        """Remove `name` from disk and memory, its events up to `floor` hidden from then on
        (the caller holds `lock`; see `FluxService.delete_namespace` for the order). Raises
        StorageError."""
        await self._run(lambda: self.store.delete(name, floor), "delete a namespace")
        self.access.finish_delete(name, floor)
