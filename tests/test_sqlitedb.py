"""flux.sqlitedb: a store's SQLite file opens with its schema, changes atomically, and every
driver error comes out as the store's own error with its message prefix."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

import pytest

from flux.errors import SourceStoreError
from flux.sqlitedb import SQLiteDB

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (name TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""


def make(path: Path, **options: object) -> SQLiteDB:
    return SQLiteDB(
        path,
        SCHEMA,
        name="the test store",
        error=SourceStoreError,
        prefix="test store: ",
        **options,  # type: ignore[arg-type]
    )


@pytest.fixture
def db(tmp_path: Path) -> SQLiteDB:
    store = make(tmp_path / "test.db")
    store.open()
    return store


def test_open_makes_the_directory_and_applies_schema_and_pragmas(tmp_path: Path) -> None:
    migrated: list[sqlite3.Connection] = []
    path = tmp_path / "deeper" / "still" / "test.db"
    store = make(path, pragmas=["synchronous=FULL"], migrate=migrated.append)
    assert not store.is_open
    store.open()
    assert store.is_open and path.is_file() and len(migrated) == 1
    assert store.query("PRAGMA synchronous") == [(2,)]  # FULL
    assert store.execute("INSERT INTO items VALUES ('a', 1)") == 1
    store.close()
    store.open()  # the schema script runs again, harmlessly; the row is still there
    assert store.query("SELECT name, n FROM items") == [("a", 1)]
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as raw:
        assert [row[1] for row in raw.execute("PRAGMA table_info(items)")] == ["name", "n"]


def test_a_file_that_is_not_a_database_does_not_open(tmp_path: Path) -> None:
    path = tmp_path / "test.db"
    path.write_bytes(b"this is not a database" * 100)
    store = make(path)
    with pytest.raises(SourceStoreError, match=r"^cannot open the test store .*test\.db: ") as info:
        store.open()
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert not store.is_open


def test_a_failing_migration_leaves_the_store_closed(tmp_path: Path) -> None:
    def migrate(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE nowhere ADD COLUMN x")

    store = make(tmp_path / "test.db", migrate=migrate)
    with pytest.raises(SourceStoreError, match="cannot open the test store .*no such table"):
        store.open()
    assert not store.is_open


def test_a_driver_error_is_the_stores_error_with_its_prefix(db: SQLiteDB) -> None:
    db.execute("INSERT INTO items VALUES (?, ?)", ("a", 1))
    with pytest.raises(SourceStoreError) as info:
        db.execute("INSERT INTO items VALUES (?, ?)", ("a", 2))
    assert info.value.message == "test store: UNIQUE constraint failed: items.name"
    assert isinstance(info.value.__cause__, sqlite3.IntegrityError)
    with pytest.raises(SourceStoreError, match="^test store: no such table: missing$"):
        db.query("SELECT * FROM missing")
    with pytest.raises(SourceStoreError, match="^test store: "):
        db.execute("INSERT INTO items VALUES (?)", ("too few",))
    assert db.query("SELECT name, n FROM items") == [("a", 1)]


def test_a_transaction_commits_as_one(db: SQLiteDB) -> None:
    with db.transaction():
        db.execute("INSERT INTO items VALUES ('a', 1)")
        db.execute("INSERT INTO items VALUES ('b', 2)")
        assert db.query("SELECT count(*) FROM items") == [(2,)]
    assert db.query("SELECT name FROM items ORDER BY name") == [("a",), ("b",)]
    assert db.execute("UPDATE items SET n = n + 1") == 2


def test_a_failing_statement_rolls_the_transaction_back(db: SQLiteDB) -> None:
    db.execute("INSERT INTO items VALUES ('taken', 0)")
    with pytest.raises(SourceStoreError, match="UNIQUE constraint failed"), db.transaction():
        db.execute("INSERT INTO items VALUES ('new', 1)")
        db.execute("INSERT INTO items VALUES ('taken', 1)")
    assert db.query("SELECT name, n FROM items") == [("taken", 0)]
    with db.transaction():  # the connection is usable again: no transaction left open
        db.execute("INSERT INTO items VALUES ('new', 1)")
    assert db.query("SELECT count(*) FROM items") == [(2,)]


def test_any_error_in_the_block_rolls_back_and_is_reraised_as_it_is(db: SQLiteDB) -> None:
    with pytest.raises(KeyError, match="boom"), db.transaction():
        db.execute("INSERT INTO items VALUES ('a', 1)")
        raise KeyError("boom")
    assert db.query("SELECT count(*) FROM items") == [(0,)]


def test_a_closed_store_raises_its_error(db: SQLiteDB) -> None:
    db.close()
    db.close()  # idempotent
    closed = "^test store: the test store is closed$"
    with pytest.raises(SourceStoreError, match=closed):
        db.query("SELECT 1")
    with pytest.raises(SourceStoreError, match=closed):
        db.execute("INSERT INTO items VALUES ('a', 1)")
    with pytest.raises(SourceStoreError, match=closed), db.transaction():
        pytest.fail("the block does not run")
    db.open()
    assert db.query("SELECT 1") == [(1,)]


def test_statements_from_many_threads_take_turns(db: SQLiteDB) -> None:
    def work(thread: int) -> None:
        for i in range(50):
            if i % 10 == 0:
                with db.transaction():
                    db.execute("INSERT INTO items VALUES (?, ?)", (f"{thread}-{i}", i))
                    db.execute("UPDATE items SET n = n + 1 WHERE name = ?", (f"{thread}-{i}",))
            else:
                db.execute("INSERT INTO items VALUES (?, ?)", (f"{thread}-{i}", i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert db.query("SELECT count(*) FROM items") == [(200,)]
