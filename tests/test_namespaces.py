"""flux.namespaces: the registry on SQLite. Changes reach the disk before memory, survive a
reopen, keep no usable token in the file, and a failing disk is a StorageError that changes
nothing."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from flux.auth import Access, Credential, hash_token
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
        await registry.delete("beta")
    await registry.close()
    again = await opened(path)
    assert list(again.access.namespaces) == ["alpha"]
    assert again.access.private == {"alpha"}
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
        await registry.delete("alpha")
    assert list(registry.access.namespaces) == ["alpha"]
    assert registry.access.owner(Credential.from_token(token)) == "alpha"
    assert registry.access.private == set()


async def test_an_unreadable_registry_is_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "ns.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError):
        await opened(path)


def test_store_schema(tmp_path: Path) -> None:
    store = NamespaceStore(tmp_path / "ns.db")
    assert store.open() == []
    store.close()
    store.close()
    with contextlib.closing(sqlite3.connect(tmp_path / "ns.db")) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(namespaces)")]
    assert columns == ["id", "name", "token_hash", "created_at", "private"]
