"""The SQLite log: the shared contract, plus what only SQLite has (a full disk, its files)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import cast

import anyio
import orjson
import pytest

from flux.conditions import Check
from flux.errors import LogCorrupt, LogError, LogUnavailable
from flux.events import Event, entity_of
from flux.log import Appended, Entry, EventLog, open_log
from flux.log.sqlite import SQLiteLog, translate
from flux.log.writer import lookup

from .contract import TIMEOUT, LogContract, MakeLog, Opened, entries, entry, ids, make_event


class TestSQLiteLog(LogContract):
    @pytest.fixture
    def make_log(self, tmp_path: Path) -> MakeLog:
        return lambda: SQLiteLog(str(tmp_path / "log" / "events.db"))

    @pytest.fixture
    def unusable_log(self, tmp_path: Path) -> EventLog:
        path = tmp_path / "events.db"
        path.write_bytes(b"this is not an SQLite database, " * 200)
        return SQLiteLog(str(path))


class TestSQLiteLogNarrowBuckets(TestSQLiteLog):
    """The contract again with history buckets of 2 sequences, so that history and pruning
    cross many bucket boundaries (the default bucket holds 16,384)."""

    @pytest.fixture
    def make_log(self, tmp_path: Path) -> MakeLog:
        return lambda: SQLiteLog(
            str(tmp_path / "log" / "events.db"), bucket_bits=1, history_batch=3
        )


OLD_LAYOUT = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    entity_id TEXT,
    stored_at INTEGER NOT NULL,
    data BLOB NOT NULL
);
CREATE UNIQUE INDEX events_event_id ON events(event_id);
CREATE INDEX events_entity ON events(entity_id, seq) WHERE entity_id IS NOT NULL;
CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


def write_old_layout(path: Path, events: list[Event]) -> None:
    """A log as the previous Flux wrote it: one row per event, an (entity_id, seq) index."""
    conn = sqlite3.connect(path)
    with conn:
        conn.executescript(OLD_LAYOUT)
        conn.executemany(
            "INSERT INTO events(seq, event_id, entity_id, stored_at, data) VALUES (?, ?, ?, ?, ?)",
            [
                (seq, e["eventId"], entity_of(e), 1_000 + seq, orjson.dumps(e).decode())
                for seq, e in enumerate(events, start=1)
            ],
        )
    conn.close()


@pytest.mark.anyio
@pytest.mark.parametrize("bucket_bits", [1, 14])
async def test_a_log_in_the_old_layout_is_migrated_on_open(
    tmp_path: Path, bucket_bits: int
) -> None:
    path = tmp_path / "events.db"
    old = [make_event("ns/a" if i % 3 else "ns/b", x=i) for i in range(10)] + [make_event(None)]
    write_old_layout(path, old)
    log = Opened(SQLiteLog(str(path), bucket_bits=bucket_bits))
    await log.log.start(log.on_records)
    assert [r.event for r in await log.all()] == old
    assert ids(await log.history("ns/b")) == ids([e for e in old if entity_of(e) == "ns/b"][::-1])
    (again,) = await log.append(old[4])  # eventId dedup still finds the old rows
    assert again.duplicate and again.seq == 5
    new = make_event("ns/b", x=99)
    (done,) = await log.append(new)
    assert done.seq == 12
    assert ids(await log.history("ns/b", limit=2)) == ids([new, old[9]])
    await log.log.close()
    with sqlite3.connect(path) as conn:
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    assert "events_entity" not in names and "entity_history" in names

    reopened = Opened(SQLiteLog(str(path)))  # opens again without migrating twice
    await reopened.log.start(reopened.on_records)
    assert len(await reopened.history("ns/b")) == 5
    await reopened.log.close()


_TRIGGER = (
    "CREATE TRIGGER events_history AFTER INSERT ON events WHEN NEW.entity_id IS NOT NULL "
    "BEGIN INSERT INTO entity_history(bucket, entity_id, seq) VALUES (NEW.seq >> 14, "
    "NEW.entity_id, NEW.seq); END"
)


def _write_as_older_flux(path: Path, seq: int, event: Event) -> None:
    """Store `event` at `seq` as a Flux before history batches did: its trigger writes the
    history row in the same statement."""
    with sqlite3.connect(path) as conn:
        conn.execute(_TRIGGER)
        conn.execute(
            "INSERT INTO events(seq, event_id, entity_id, stored_at, data) VALUES (?, ?, ?, 1, ?)",
            (seq, event["eventId"], entity_of(event), orjson.dumps(event)),
        )
    conn.close()


def _history_rows(path: Path) -> tuple[int, int | None, set[str]]:
    """(entity_history's row count, meta's history_upto, the names in the schema)."""
    with sqlite3.connect(path) as conn:
        count = conn.execute("SELECT COUNT(*) FROM entity_history").fetchone()[0]
        mark = conn.execute("SELECT value FROM meta WHERE key = 'history_upto'").fetchone()
        names = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    conn.close()
    return count, mark[0] if mark else None, names


@pytest.mark.anyio
async def test_history_rows_are_written_in_batches_behind_the_events(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path), history_batch=5))
    await log.log.start(log.on_records)
    for i in range(8):  # one commit each: indexed once 5 more are in (after the 6th commit)
        await log.append(make_event("ns/a", v=i))
        if i == 5:  # the writer indexes right after it hands the commit over
            with anyio.fail_after(TIMEOUT):
                while _history_rows(path)[:2] != (6, 6):
                    await anyio.sleep(0.01)
        assert _history_rows(path)[:2] == ((0, 0) if i < 5 else (6, 6))
        assert len(await log.history("ns/a")) == i + 1  # the tail is read from the events
    assert [e["payload"]["properties"]["v"] for e in await log.history("ns/a", limit=4)] == [
        7,
        6,
        5,
        4,
    ]
    await log.log.close()
    count, mark, _ = _history_rows(path)
    assert (count, mark) == (6, 6)  # closing does not index; opening does

    reopened = Opened(SQLiteLog(str(path)))
    await reopened.log.start(reopened.on_records)
    assert _history_rows(path)[:2] == (8, 8)
    assert len(await reopened.history("ns/a")) == 8
    await reopened.log.close()


@pytest.mark.anyio
async def test_a_log_indexed_by_the_old_trigger_keeps_its_history(tmp_path: Path) -> None:
    """A log the previous Flux wrote (history rows by trigger, no mark), also one an older Flux
    wrote to again after this one (the trigger re-created, rows above the mark indexed)."""
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path), history_batch=1_000))
    await log.log.start(log.on_records)
    await log.append(*(make_event("ns/a", v=i) for i in range(3)))
    await log.log.close()
    with sqlite3.connect(path) as conn:  # as the older Flux: every row indexed, no mark
        conn.execute("DELETE FROM meta WHERE key = 'history_upto'")
        conn.execute(
            "INSERT INTO entity_history(bucket, entity_id, seq) "
            "SELECT seq >> 14, entity_id, seq FROM events"
        )
    conn.close()
    _write_as_older_flux(path, 4, make_event("ns/a", v=3))

    reopened = Opened(SQLiteLog(str(path), history_batch=1_000))
    await reopened.log.start(reopened.on_records)
    count, mark, names = _history_rows(path)
    assert (count, mark) == (4, 4) and "events_history" not in names
    await reopened.append(make_event("ns/a", v=4))
    assert [e["payload"]["properties"]["v"] for e in await reopened.history("ns/a")] == [
        4,
        3,
        2,
        1,
        0,
    ]
    await reopened.log.close()

    _write_as_older_flux(path, 6, make_event("ns/a", v=5))  # an older Flux again, after this one
    last = Opened(SQLiteLog(str(path)))
    await last.log.start(last.on_records)
    count, mark, names = _history_rows(path)
    assert (count, mark) == (6, 6) and "events_history" not in names
    assert len(await last.history("ns/a")) == 6
    await last.log.close()


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


@pytest.mark.anyio
async def test_a_reader_that_stops_early_leaves_no_fetch_behind(tmp_path: Path) -> None:
    """read() fetches the next batch while the caller works on the current one; a caller that
    stops after one batch must not leave that fetch running or failing unseen."""
    log = Opened(SQLiteLog(str(tmp_path / "events.db")))
    await log.log.start(log.on_records)
    await log.append(*(make_event(x=i) for i in range(10)))
    reader = log.log.read(0, batch_size=3)
    first = await reader.__anext__()
    assert [r.seq for r in first] == [1, 2, 3]
    await reader.aclose()  # type: ignore[attr-defined]
    assert [r.seq for r in await log.all(batch_size=3)] == list(range(1, 11))
    await log.log.close()


@pytest.mark.anyio
async def test_a_stored_event_that_does_not_decode_fails_the_read(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records)
    await log.append(make_event(), make_event())
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE events SET data = '1, 2' WHERE seq = 1")
    conn.close()
    with pytest.raises(LogError):
        await log.all()
    await log.log.close()


# -- damage ------------------------------------------------------------------------------------


def test_sqlite_corruption_errors_translate_to_log_corrupt() -> None:
    assert isinstance(
        translate(sqlite3.DatabaseError("database disk image is malformed")), LogCorrupt
    )
    assert isinstance(translate(sqlite3.DatabaseError("file is not a database")), LogCorrupt)
    assert type(translate(sqlite3.OperationalError("disk I/O error"))) is LogUnavailable
    assert type(translate(sqlite3.OperationalError("database or disk is full"))) is LogUnavailable


def _delete(path: Path, sql: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(sql, args)
    conn.close()


@pytest.mark.anyio
async def test_rows_missing_inside_a_read_raise_log_corrupt(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path), history_batch=1))  # history rows right after the commit
    await log.log.start(log.on_records)
    await log.append(*(make_event(f"ns/{i % 3}", v=i) for i in range(20)))
    # The writer indexes history after it has answered the append; sync waits for that.
    await log.log.sync()
    _delete(path, "DELETE FROM events WHERE seq BETWEEN 8 AND 9")
    assert log.log.damage is None
    for batch_size in (100, 7, 3):  # the hole inside a batch, and between two batches
        with pytest.raises(LogCorrupt, match=r"sequences 8\.\.9 are missing"):
            await log.all(batch_size=batch_size)
        with pytest.raises(LogCorrupt, match=r"sequences 8\.\.9 are missing"):
            await log.all(after_seq=5, batch_size=batch_size)
    assert [r.seq for r in await log.all(after_seq=9)] == list(range(10, 21))
    damage = log.log.damage
    assert damage is not None and "events.db" in damage and "flux check" in damage
    with pytest.raises(LogCorrupt, match="missing from the log"):  # ns/1's history has seq 8
        await log.log.history("ns/1", 0, 100)
    await log.log.close()


@pytest.mark.anyio
async def test_a_pruned_prefix_and_a_recorded_hole_are_not_damage(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records)
    await log.append(*(make_event(v=i) for i in range(10)))
    await log.log.close()
    # The state was ahead of the log (sequence 50): new events continue above it.
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records, after_seq=50)
    await log.append(*(make_event(v=i) for i in range(5)))
    seqs = [r.seq for r in await log.all(batch_size=4)]
    assert seqs == [*range(1, 11), *range(51, 56)]
    assert [r.seq for r in await log.all(after_seq=20)] == list(range(51, 56))
    assert await log.log.prune(5, None, 0) == 5
    assert [r.seq for r in await log.all()] == [*range(6, 11), *range(51, 56)]
    assert len(await log.log.history("ns/a", 0, 100)) == 10
    assert log.log.damage is None
    await log.log.close()
    # Reopened: the hole is still known, the log not damaged.
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records)
    assert [r.seq for r in await log.all()] == [*range(6, 11), *range(51, 56)]
    assert log.log.damage is None
    await log.log.close()


@pytest.mark.anyio
async def test_verify_finds_a_damaged_page(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records)
    await log.append(*(make_event(f"ns/{i}", pad="x" * 200) for i in range(400)))
    await log.log.verify()
    assert log.log.damage is None
    await log.log.close()
    conn = sqlite3.connect(path)
    page = conn.execute(
        "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' LIMIT 1 OFFSET 5"
    ).fetchone()[0]
    size = conn.execute("PRAGMA page_size").fetchone()[0]
    conn.close()
    with open(path, "r+b") as f:
        f.seek((page - 1) * size + 100)
        f.write(b"\x55" * (size - 200))
    log = Opened(SQLiteLog(str(path)))
    await log.log.start(log.on_records)
    with pytest.raises(LogCorrupt, match="event log is damaged"):
        await log.log.verify()
    assert log.log.damage is not None
    await log.log.close()


@pytest.mark.anyio
async def test_the_wal_stays_bounded_under_writes_without_a_pause(tmp_path: Path) -> None:
    """Appends kept in flight, so the writer never waits: a PASSIVE checkpoint then never finds
    the WAL fully copied with no commit after it, and without a RESTART the WAL grew by every
    page written (as it did: 977 MB in 40 s of single publishes)."""
    path = tmp_path / "events.db"
    wal = Path(str(path) + "-wal")
    limit = 1 << 20
    log = Opened(SQLiteLog(str(path), checkpoint_bytes=64 << 10, wal_limit=limit))
    await log.log.start(log.on_records)
    padding = "x" * 2000
    in_flight: collections.deque[asyncio.Future[list[Appended]]] = collections.deque()
    largest = 0
    for n in range(2000):  # 2,000 appends of 25 events, 16 in flight: about 100 MB of events
        in_flight.append(
            log.log.submit([entry(make_event(f"ns/{i}", pad=padding)) for i in range(25)])
        )
        if len(in_flight) == 16:
            with anyio.fail_after(TIMEOUT):
                await in_flight.popleft()
        if n % 10 == 0:
            largest = max(largest, wal.stat().st_size)
    while in_flight:
        with anyio.fail_after(TIMEOUT):
            await in_flight.popleft()
    assert largest < 32 * limit, f"the WAL reached {largest} bytes"
    assert len(await log.all()) == 2000 * 25
    await log.log.close()


# -- the writer process ----------------------------------------------------------------------


def writer_pids(parent: int) -> list[int]:
    """The log writer processes started by process `parent`."""
    found = []
    for task in Path(f"/proc/{parent}/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):
                if b"writer.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    found.append(int(pid))
    return found


@pytest.mark.anyio
async def test_a_killed_writer_is_replaced_and_its_unanswered_appends_get_their_outcome(
    tmp_path: Path,
) -> None:
    """The writer process is killed with plain and checked appends in flight, some repeating
    stored events. A new writer takes over; `on_records` sees every stored record exactly
    once, including those the old writer stored without answering; and every append gets its
    exact outcome: those answered as stored are stored at the sequence they were told (a
    duplicate at the earlier one), and those that failed were not stored. (The kill lands
    where it may; the next test makes each case happen.)"""
    earlier = Opened(SQLiteLog(str(tmp_path / "events.db")))
    await earlier.log.start(earlier.on_records)
    old_events = [make_event(f"ns/{i}") for i in range(10)]
    await earlier.append(*old_events)
    await earlier.log.close()
    log = Opened(SQLiteLog(str(tmp_path / "events.db")))  # records from before its start
    await log.log.start(log.on_records, checker=log.checker)
    await log.append(*(make_event(f"ns/{i}") for i in range(10)))
    (old,) = writer_pids(os.getpid())
    padding = "x" * 1000  # a few milliseconds of writing per message
    for round_ in range(6):
        top = log.seen[-1].seq
        sent: list[tuple[list[Entry], asyncio.Future[list[Appended]]]] = []
        for i in range(200):
            if i % 25 == 0:
                await asyncio.sleep(0)  # a message per 25 appends, several in flight
            if i % 50 == 7:  # checked: the first of a pass passes, the others find a new version
                current = log.engine.get("ns/c")
                version = current.version if current is not None else 0
                batch = [entry(make_event("ns/c", n=i), Check(expected_version=version))]
                sent.append((batch, log.log.submit(batch, checked=True)))
                continue
            events = (make_event(f"ns/{i}", r=round_, k=k, pad=padding) for k in range(1 + i % 3))
            batch = entries(*events)
            if i % 10 == 3:  # repeats a stored event
                batch.append(entry(old_events[i % 10]))
            sent.append((batch, log.log.submit(batch)))
        await asyncio.sleep(0.004 * round_)  # answered, stored, sent or not yet sent
        os.kill(old, signal.SIGKILL)
        outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        with anyio.fail_after(TIMEOUT):
            while True:
                try:
                    (after,) = await log.append(make_event("ns/after"))
                    break
                except LogUnavailable as exc:
                    assert "restarting" in exc.message or "writer process ended" in exc.message
                    await asyncio.sleep(0.02)
        stored = await log.all()
        assert [r.seq for r in stored] == list(range(1, len(stored) + 1))
        assert stored[10:] == log.seen, "on_records saw each new record once"
        at_seq = {r.event["eventId"]: r.seq for r in stored}
        told: set[str] = set()
        for (batch, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, LogUnavailable), outcome
                assert "were not stored" in outcome.message, outcome.message
                fresh = [e.event_id for e in batch if e.event not in old_events]
                assert not any(key in at_seq for key in fresh), outcome.message
                continue
            for e, done in zip(batch, outcome, strict=True):
                if done.failure is not None:
                    assert e.event_id not in at_seq
                else:
                    assert at_seq[e.event_id] == done.seq
                    if not done.duplicate:
                        told.add(e.event_id)
        assert told == {r.event["eventId"] for r in stored if top < r.seq < after.seq}
        (new,) = writer_pids(os.getpid())
        assert new != old and log.log.unavailable is None
        old = new
    await log.log.close()
    assert writer_pids(os.getpid()) == []


async def stored_ids(path: Path, event_ids: list[str]) -> set[str]:
    """Which of `event_ids` the file holds, read on a connection of the test's own."""

    def query() -> set[str]:
        conn = sqlite3.connect(path)
        try:
            return set(lookup(conn, event_ids))
        finally:
            conn.close()

    return await asyncio.to_thread(query)


async def kill_after_commit(log: SQLiteLog, path: Path, submit: Callable[[], list[str]]) -> None:
    """Make the writer die after committing what `submit` sends but before the log reads its
    answers: the log stops reading the writer's output, `submit` sends (it returns the ids to
    wait for), and once the file holds them the writer is killed and its unread answers are
    drained from the pipe (as if it had died before writing them). Reading then resumes, and
    the log sees the writer's output end."""
    (pid,) = writer_pids(os.getpid())
    transport = log._transport
    assert transport is not None
    answers = cast(asyncio.ReadTransport, transport.get_pipe_transport(1))
    answers.pause_reading()
    wanted = submit()
    with anyio.fail_after(TIMEOUT):
        while await stored_ids(path, wanted) != set(wanted):
            await asyncio.sleep(0.005)
    os.kill(pid, signal.SIGKILL)
    fd = answers.get_extra_info("pipe").fileno()
    with anyio.fail_after(TIMEOUT):
        while True:  # every answer it wrote, until the end of its output
            try:
                if os.read(fd, 1 << 16) == b"":
                    break
            except BlockingIOError:
                await asyncio.sleep(0.005)
    answers.resume_reading()


@pytest.mark.anyio
async def test_appends_a_dead_writer_stored_or_not_are_answered_exactly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The writer dies with appends unanswered, and the log answers them from the file: those
    it stored (a checked group, with an entry refused; plain messages with events that repeat
    a stored one, one of the same message and one of the message before) get the answer the
    writer would have given; those it had not stored, sent or not, fail with "not stored"."""
    path = tmp_path / "events.db"
    writing = SQLiteLog(str(path))
    log = Opened(writing)
    await log.log.start(log.on_records, checker=log.checker)
    old = make_event("ns/old")
    ((old_done,), (c0,)) = [await log.append(old), await log.append(make_event("ns/c", n=0))]
    caplog.set_level("WARNING", logger="flux.log")

    # 1. A checked group, stored: one entry passes, one is refused, a plain append goes along.
    c1, stale, p0 = make_event("ns/c", n=1), make_event("ns/c", n=9), make_event("ns/p")
    futures: list[asyncio.Future[list[Appended]]] = []

    def checked() -> list[str]:
        futures.append(
            log.log.submit(
                [
                    entry(c1, Check(expected_version=c0.seq)),
                    entry(stale, Check(expected_version=c0.seq - 1)),
                ],
                checked=True,
            )
        )
        futures.append(log.log.submit(entries(p0)))
        return [c1["eventId"], p0["eventId"]]

    await kill_after_commit(writing, path, checked)
    with anyio.fail_after(TIMEOUT):
        (passed, refused), (plain,) = await asyncio.gather(*futures)
    assert (passed.seq, passed.duplicate, passed.failure) == (c0.seq + 1, False, None)
    assert refused.seq == 0 and refused.failure is not None
    assert refused.failure.current_version == passed.seq  # it comes after the one that passed
    assert (plain.seq, plain.duplicate) == (c0.seq + 2, False)

    # 2. Two plain messages, stored: repeats of a stored event, within one, and across both.
    a, b, c = make_event("ns/a"), make_event("ns/b"), make_event("ns/c", n=2)
    futures = []

    def plain_messages() -> list[str]:
        futures.append(log.log.submit(entries(a, old, a, b)))
        # Submitted after the log's pass has sent the first: a message of its own.
        later = lambda: futures.append(log.log.submit(entries(b, c)))  # noqa: E731
        asyncio.get_running_loop().call_soon(later)
        return [a["eventId"], b["eventId"], c["eventId"]]

    first = log.seen[-1].seq + 1
    await kill_after_commit(writing, path, plain_messages)
    with anyio.fail_after(TIMEOUT):
        one, two = await asyncio.gather(*futures)
    at = one[0].at
    assert one == [
        Appended(first, at, False),
        Appended(old_done.seq, old_done.at, True),
        Appended(first, at, True),
        Appended(first + 1, at, False),
    ]
    assert two == [Appended(first + 1, at, True), Appended(first + 2, two[1].at, False)]

    # 3. Not stored: sent to a writer that never reads it, and one held back behind it.
    (pid,) = writer_pids(os.getpid())
    os.kill(pid, signal.SIGSTOP)
    d = make_event("ns/d")
    sent_one = log.log.submit(entries(d))
    await asyncio.sleep(0.05)  # written to the pipe
    held = log.log.submit([entry(make_event("ns/c", n=3), Check(expected_version=1))], checked=True)
    os.kill(pid, signal.SIGKILL)
    outcomes = await asyncio.gather(sent_one, held, return_exceptions=True)
    for outcome in outcomes:
        assert isinstance(outcome, LogUnavailable) and "were not stored" in outcome.message
    with anyio.fail_after(TIMEOUT):
        while log.log.unavailable is not None:
            await asyncio.sleep(0.01)
    assert await stored_ids(path, [d["eventId"]]) == set()

    stored = await log.all()
    assert stored == log.seen, "on_records saw each stored record once"
    said = [r.getMessage() for r in caplog.records if "left unanswered" in r.getMessage()]
    assert said[0].endswith("2 stored, 0 not stored, 0 unknown"), said
    assert said[-1].endswith("0 stored, 1 not stored, 0 unknown"), said
    assert len(said) == 3, said
    await log.log.close()


@pytest.mark.anyio
async def test_a_second_writer_on_one_log_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "events.db")
    first = Opened(SQLiteLog(path))
    await first.log.start(first.on_records)
    await first.append(make_event())
    second = SQLiteLog(path, lock_wait_s=0.3)
    with anyio.fail_after(TIMEOUT), pytest.raises(LogUnavailable, match="another process writes"):
        await second.start(lambda records: None)
    await second.close()
    (done,) = await first.append(make_event())
    assert done.seq == 2
    await first.log.close()


def test_the_writer_stops_when_its_input_ends_and_stores_nothing_more(tmp_path: Path) -> None:
    """What happens to a writer whose server was killed: its input ends without STOP. It
    exits at once, and what it had read but not committed is not stored."""
    from flux.log import writer as w

    path = tmp_path / "events.db"
    proc = subprocess.Popen(
        [sys.executable, "-P", w.__file__, str(path), "{}"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None
    kind, length = w.HEAD.unpack(proc.stdout.read(w.HEAD.size))
    assert kind == w.READY
    proc.stdout.read(length)
    event = orjson.dumps(make_event())
    rows = orjson.dumps([["e1", "ns/a", 1, len(event)]])
    head = w.APPEND_HEAD.pack(0, 0, 0, 1, len(rows), 0)
    proc.stdin.write(w.message(w.APPEND, head + rows + event))
    proc.stdin.flush()
    kind, length = w.HEAD.unpack(proc.stdout.read(w.HEAD.size))
    assert kind == w.DONE
    assert w.DONE_BODY.unpack(proc.stdout.read(length))[0] == 1
    # Half a message, then the end of the input.
    proc.stdin.write(w.message(w.APPEND, head + rows + event)[:-3])
    proc.stdin.close()
    assert proc.wait(10) == 0
    proc.stdout.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT event_id FROM events").fetchall() == [("e1",)]


@pytest.mark.anyio
async def test_the_writer_outlives_ctrl_c_and_sigterm_sent_to_the_process_group(
    tmp_path: Path,
) -> None:
    """Ctrl-C (and often a service manager's SIGTERM) reaches every process of the group; the
    server then shuts down cleanly and still needs its writer until it says STOP."""
    log = Opened(SQLiteLog(str(tmp_path / "events.db")))
    await log.log.start(log.on_records)
    (writer,) = writer_pids(os.getpid())
    os.kill(writer, signal.SIGINT)
    os.kill(writer, signal.SIGTERM)
    await asyncio.sleep(0.2)
    (done,) = await log.append(make_event())
    assert done.seq == 1 and writer_pids(os.getpid()) == [writer]
    await log.log.close()


def test_the_writer_holds_none_of_the_server_s_sockets(tmp_path: Path) -> None:
    """uvloop starts a process without closing the server's inheritable descriptors (uvicorn's
    listening socket is one): a writer holding them would keep them open after the server
    closed them."""
    import socket

    import uvloop

    async def main() -> tuple[set[str], set[str]]:
        with socket.create_server(("127.0.0.1", 0)) as listener:
            listener.set_inheritable(True)  # as uvicorn makes its listening socket
            log = SQLiteLog(str(tmp_path / "events.db"))
            await log.start(lambda records: None)
            (writer,) = writer_pids(os.getpid())
            held = {os.readlink(fd) for fd in Path(f"/proc/{writer}/fd").iterdir()}
            await log.close()
            return held - {f"socket:[{os.fstat(listener.fileno()).st_ino}]"}, held

    left, held = uvloop.run(main())
    assert left == held, "the writer holds the server's listening socket"
