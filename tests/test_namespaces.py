"""flux.namespaces: the registry on SQLite. Changes reach the disk before memory, survive a
reopen, keep no usable token in the file, and a failing disk is a StorageError that changes
nothing."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from flux.auth import Access, Credential, Namespace, hash_token
from flux.errors import Conflict, NotFound, StorageError, ValidationError
from flux.namespaces import NamespaceRegistry, NamespaceStore

pytestmark = pytest.mark.anyio

T0 = 1_700_000_000_000_000


async def opened(path: Path) -> NamespaceRegistry:
    registry = NamespaceRegistry(path, Access())
    await registry.open()
    return registry


async def test_register_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    registry = await opened(path)
    alpha, alpha_token = await registry.register("alpha", False, T0)
    beta, beta_token = await registry.register("beta", True, T0 + 1)
    assert alpha.id != beta.id
    assert alpha.token_hash == hash_token(alpha_token)
    assert registry.access.owner(Credential.from_token(alpha_token)) == "alpha"
    await registry.close()

    again = await opened(path)
    assert again.access.namespaces == {"alpha": alpha, "beta": beta}
    assert again.access.private == {"beta"}
    assert again.access.owner(Credential.from_token(beta_token)) == "beta"
    await again.close()


async def test_the_file_holds_no_token(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    registry = await opened(path)
    tokens = [(await registry.register(f"name{i}", False, T0))[1] for i in range(5)]
    rotated = (await registry.rotate("name0"))[1]
    await registry.close()
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for token in [*tokens, rotated]:
        assert token.encode() not in data
    assert hash_token(rotated).encode() in data


async def test_taken_reserved_and_bad_names(tmp_path: Path) -> None:
    registry = await opened(tmp_path / "ns.db")
    await registry.register("alpha", False, T0)
    with pytest.raises(Conflict, match="Namespace name already exists"):
        await registry.register("alpha", True, T0)
    with pytest.raises(Conflict, match="reserved"):
        await registry.register("flux-core", False, T0)
    with pytest.raises(ValidationError, match="Invalid character 'A'"):
        await registry.register("Alpha", False, T0)
    assert list(registry.access.namespaces) == ["alpha"]
    await registry.close()


async def test_rotation_revokes_the_old_token_for_good(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    registry = await opened(path)
    first, old = await registry.register("alpha", False, T0)
    second, new = await registry.rotate("alpha")
    assert (second.id, second.created_at) == (first.id, first.created_at)
    assert registry.access.owner(Credential.from_token(old)) is None
    assert registry.access.owner(Credential.from_token(new)) == "alpha"
    await registry.close()
    again = await opened(path)
    assert again.access.owner(Credential.from_token(old)) is None
    assert again.access.owner(Credential.from_token(new)) == "alpha"
    with pytest.raises(NotFound):
        await again.rotate("nobody")
    await again.close()


async def test_visibility_and_delete_persist(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    registry = await opened(path)
    await registry.register("alpha", False, T0)
    await registry.register("beta", False, T0)
    assert (await registry.set_private("alpha", True)).private
    async with registry.lock:
        await registry.delete("beta", 42)
    assert registry.access.floors == {"beta": 42}
    await registry.close()
    again = await opened(path)
    assert list(again.access.namespaces) == ["alpha"]
    assert again.access.private == {"alpha"}
    assert again.access.floors == {"beta": 42}  # the history floor is on disk
    assert again.access.history_floor("beta/x") == 42
    assert not (await again.set_private("alpha", False)).private
    await again.close()
    third = await opened(path)
    assert third.access.private == set()
    await third.close()


async def test_a_failing_disk_is_a_storage_error_and_changes_nothing(tmp_path: Path) -> None:
    registry = await opened(tmp_path / "ns.db")
    _, token = await registry.register("alpha", False, T0)
    await registry.close()  # every later write fails
    with pytest.raises(StorageError, match="Failed to persist namespace"):
        await registry.register("beta", False, T0)
    with pytest.raises(StorageError):
        await registry.rotate("alpha")
    with pytest.raises(StorageError):
        await registry.set_private("alpha", True)
    with pytest.raises(StorageError):
        await registry.delete("alpha", 7)
    assert list(registry.access.namespaces) == ["alpha"]
    assert registry.access.floors == {}
    assert registry.access.owner(Credential.from_token(token)) == "alpha"
    assert registry.access.private == set()


async def test_an_unreadable_registry_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        await opened(path)


async def test_a_name_deleted_again_keeps_its_highest_floor(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    registry = await opened(path)
    await registry.register("beta", False, T0)
    async with registry.lock:
        await registry.delete("beta", 50)
    await registry.register("beta", True, T0)
    assert registry.access.history_floor("beta/x") == 50  # the new namespace keeps the floor
    async with registry.lock:
        await registry.delete("beta", 90)
    await registry.close()
    again = await opened(path)
    assert again.access.floors == {"beta": 90}
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("INSERT INTO namespaces VALUES ('ns_x', 'beta', 'h', 0, 0)")
    await again.close()
    again = await opened(path)
    async with again.lock:
        await again.delete("beta", 10)  # a floor never goes down
    await again.close()
    last = await opened(path)
    assert last.access.floors == {"beta": 90}
    await last.close()


async def test_a_failed_delete_records_no_floor_and_removes_nothing(tmp_path: Path) -> None:
    """The floor and the removal are one transaction: when the removal fails, no floor."""
    path = tmp_path / "ns.db"
    registry = await opened(path)
    _, token = await registry.register("alpha", True, T0)
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TRIGGER keep BEFORE DELETE ON namespaces BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
    with pytest.raises(StorageError, match="no"):
        async with registry.lock:
            await registry.delete("alpha", 5)
    assert registry.access.owner(Credential.from_token(token)) == "alpha"
    assert registry.access.floors == {} and registry.access.private == {"alpha"}
    await registry.close()
    again = await opened(path)
    assert again.access.floors == {} and list(again.access.namespaces) == ["alpha"]
    await again.close()


def test_store_schema(tmp_path: Path) -> None:
    store = NamespaceStore(tmp_path / "ns.db")
    assert store.open() == ([], {})
    store.close()
    store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "ns.db")) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(namespaces)")]
        floors = [row[1] for row in db.execute("PRAGMA table_info(history_floors)")]
    assert columns == ["id", "name", "token_hash", "created_at", "private"]
    assert floors == ["name", "seq"]


def test_an_id_collision_is_a_conflict_and_a_closed_store_a_storage_error(tmp_path: Path) -> None:
    store = NamespaceStore(tmp_path / "ns.db")
    store.open()
    store.insert(Namespace("ns_1", "alpha", "h", T0, False))
    with pytest.raises(Conflict, match="Namespace name already exists"):
        store.insert(Namespace("ns_1", "beta", "h", T0, False))
    store.close()
    with pytest.raises(StorageError, match="^Failed to persist namespace: .* is closed$"):
        store.update(Namespace("ns_1", "alpha", "h2", T0, True))
    assert store.open() == ([Namespace("ns_1", "alpha", "h", T0, False)], {})
    store.close()
