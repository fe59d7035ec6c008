"""The SQLite log: the shared contract, plus what only SQLite has (a full disk, its files)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import anyio
import pytest

from flux.errors import LogUnavailable
from flux.log import EventLog, open_log
from flux.log.sqlite import SQLiteLog

from .contract import TIMEOUT, LogContract, MakeLog, Opened, make_event


class TestSQLiteLog(LogContract):
    @pytest.fixture
    def make_log(self, tmp_path: Path) -> MakeLog:
        return lambda: SQLiteLog(str(tmp_path / "log" / "events.db"))

    @pytest.fixture
    def unusable_log(self, tmp_path: Path) -> EventLog:
        path = tmp_path / "events.db"
        path.write_bytes(b"this is not an SQLite database, " * 200)
        return SQLiteLog(str(path))


def test_open_log_picks_the_backend_by_url(tmp_path: Path) -> None:
    log = open_log(f"sqlite:///{tmp_path}/events.db")
    assert isinstance(log, SQLiteLog)
    assert log.path == f"{tmp_path}/events.db"
    with pytest.raises(ValueError, match="no scheme"):
        open_log(str(tmp_path))
    with pytest.raises(ValueError, match="unknown event log scheme"):
        open_log("postgres://localhost/flux")


@pytest.mark.anyio
async def test_the_log_is_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records)
    await log.append(make_event())
    await log.log.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.anyio
async def test_a_full_disk_fails_the_append_with_log_unavailable(tmp_path: Path) -> None:
    """SQLite's max_page_count makes the database full, as a full disk would."""
    path = str(tmp_path / "events.db")
    full = Opened(SQLiteLog(path, max_page_count=40))
    await full.log.start(full.on_records)
    stored = []
    with anyio.fail_after(TIMEOUT), pytest.raises(LogUnavailable, match="full"):  # noqa: PT012
        for i in range(200):
            stored.extend(await full.append(make_event(blob="x" * 3000, i=i)))
    assert 0 < len(stored) < 200
    assert [r.seq for r in full.seen] == [d.seq for d in stored], "nothing of it was applied"
    assert await full.log.last_seq() == len(stored)
    with anyio.fail_after(TIMEOUT), pytest.raises(LogUnavailable, match="full"):
        await full.append(make_event(blob="x" * 3000))
    (small,) = await full.append(make_event())  # the writer is still alive
    assert small.seq == len(stored) + 1
    await full.log.close()

    roomy = Opened(SQLiteLog(path))  # space freed: the same log goes on without a gap
    await roomy.log.start(roomy.on_records)
    (done,) = await roomy.append(make_event(blob="x" * 3000))
    assert done.seq == len(stored) + 2
    assert [r.seq for r in await roomy.all()] == list(range(1, len(stored) + 3))
    await roomy.log.close()


@pytest.mark.anyio
async def test_a_directory_in_place_of_the_file_raises_log_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    path.mkdir()
    log = SQLiteLog(str(path))
    with anyio.fail_after(TIMEOUT), pytest.raises(LogUnavailable, match="unable to open"):
        await log.start(lambda records: None)
    await log.close()
