"""FluxService on a real SQLite log and real snapshot files: start-up (newest valid snapshot +
replay, fallback from corrupt or truncated snapshots), periodic and final snapshots, retention,
and a full disk reaching the client as 503."""

from __future__ import annotations

import asyncio
import gzip
import logging
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import orjson
import pytest

from flux.api.app import create_app
from flux.auth import ANONYMOUS, Credential
from flux.config import Settings
from flux.engine import StateEngine
from flux.errors import LogUnavailable, StorageError, ValidationError
from flux.events import Event, validate_event
from flux.log.sqlite import SQLiteLog
from flux.server import Server
from flux.service import FluxService

pytestmark = pytest.mark.anyio

State = dict[str, tuple[dict[str, Any], int, int]]


def new_event(entity_id: str, **properties: Any) -> Event:
    return validate_event(
        {
            "stream": "test",
            "source": "tests",
            "timestamp": 1_700_000_000_000,
            "payload": {"entity_id": entity_id, "properties": properties},
        }
    )


@pytest.fixture
def settings(data_dir: Path) -> Settings:
    return Settings(data_dir=str(data_dir), snapshot_interval_seconds=3600)


@asynccontextmanager
async def running(settings: Settings, **kwargs: Any) -> AsyncIterator[FluxService]:
    """A started service; stopped (final snapshot included) on the way out, unless the body
    set `ready = False`, which stops it as a crash would: no final snapshot."""
    service = FluxService(settings, **kwargs)
    with anyio.fail_after(30):
        await service.start()
    try:
        yield service
    finally:
        with anyio.fail_after(30):
            await service.stop()


@asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[Server]:
    """A started server (every part: namespaces, permissions, connectors); stopped on the way
    out."""
    server = Server(settings)
    with anyio.fail_after(30):
        await server.start()
    try:
        yield server
    finally:
        with anyio.fail_after(30):
            await server.stop()


def crash(service: FluxService) -> None:
    """Make the coming stop() skip the final snapshot, as a killed process would."""
    service.ready = False


async def publish_each(service: FluxService, events: list[Event]) -> None:
    for event in events:
        await service.publish([event])


def snapshot_files(settings: Settings) -> list[Path]:
    return sorted((Path(settings.data_dir) / "snapshots").glob("snapshot-*.json.gz"))


def names_of(settings: Settings) -> list[str]:
    return [p.name for p in snapshot_files(settings)]


def replayed(caplog: pytest.LogCaptureFixture) -> int:
    """How many events the last start-up replayed, from its log line."""
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("state ready")]
    assert lines, "no 'state ready' line"
    return int(lines[-1].split("(")[1].split()[0])


def mixed_events() -> list[Event]:
    events = [new_event(f"ns/e{i % 5}", n=i, **{f"p{i % 3}": i}) for i in range(20)]
    events.insert(7, new_event("ns/e1", __deleted__=True))
    events.insert(15, new_event("ns/e2", __deleted__=True))
    return events


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="flux")


# -- start-up and replay -----------------------------------------------------------------------


async def test_state_survives_a_clean_restart_from_the_final_snapshot(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(settings) as service:
        await publish_each(service, mixed_events())
        before = service.engine.state()
        seq = service.engine.last_seq
    assert [p.name for p in snapshot_files(settings)] == [f"snapshot-{seq:020d}.json.gz"]
    assert any("written" in r.getMessage() for r in caplog.records)
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert service.engine.last_seq == seq
        assert replayed(caplog) == 0
        assert any(r.getMessage().startswith("loaded snapshot") for r in caplog.records)


async def test_state_survives_a_crash_by_replaying_the_log(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = mixed_events()
    async with running(settings) as service:
        await publish_each(service, events)
        before = service.engine.state()
        crash(service)
    assert snapshot_files(settings) == []
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert replayed(caplog) == len(events)
        assert "ns/e1" in before and "ns/e2" in before  # deleted, then re-created from empty
        assert before["ns/e2"][0] == {"n": 17, "p2": 17}


async def test_snapshot_plus_tail_replay(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = mixed_events()
    async with running(settings) as service:
        await publish_each(service, events[:12])
        assert await service.snapshot() == 12
        await publish_each(service, events[12:])
        before = service.engine.state()
        crash(service)
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert replayed(caplog) == len(events) - 12
        # the state derived now equals a fold of the whole log from nothing
        full = StateEngine()
        async for batch in service.log.read(0):
            full.apply_all(batch)
        assert full.state() == before


def corrupt(path: Path) -> None:
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 8] = bytes(b ^ 0xFF for b in data[middle : middle + 8])
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def not_json(path: Path) -> None:
    path.write_bytes(gzip.compress(b'{"snapshot_format": 2, "sequence_nu'))


@pytest.mark.parametrize("damage", [corrupt, truncate, not_json])
async def test_a_damaged_newest_snapshot_falls_back_to_an_older_one(
    settings: Settings, caplog: pytest.LogCaptureFixture, damage: Any
) -> None:
    events = mixed_events()
    async with running(settings) as service:
        await publish_each(service, events[:8])
        await service.snapshot()
        await publish_each(service, events[8:16])
        await service.snapshot()
        await publish_each(service, events[16:])
        before = service.engine.state()
        crash(service)
    older, newest = snapshot_files(settings)
    damage(newest)
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert replayed(caplog) == len(events) - 8
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"snapshot {newest.name}") and "unusable" in m for m in messages)
    assert any(m.startswith(f"loaded snapshot {older.name}") for m in messages)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "trying an older one" in warnings[0].getMessage()


async def test_no_usable_snapshot_means_a_full_replay_and_says_so(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    events = mixed_events()
    async with running(settings) as service:
        await publish_each(service, events[:10])
        await service.snapshot()
        await publish_each(service, events[10:])
        before = service.engine.state()
    first, second = snapshot_files(settings)
    corrupt(first)
    truncate(second)
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert replayed(caplog) == len(events)
    assert any("rebuilding state from the whole log" in r.getMessage() for r in caplog.records)


async def test_an_unfinished_snapshot_file_is_removed_at_start(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(settings) as service:
        await publish_each(service, mixed_events())
    (snapshot,) = snapshot_files(settings)
    tmp = snapshot.with_name("snapshot-00000000000000000099.json.gz.tmp")
    tmp.write_bytes(b"half written")
    async with running(settings):
        pass
    assert not tmp.exists()
    assert any("removing unfinished snapshot" in r.getMessage() for r in caplog.records)


async def test_a_lost_log_does_not_reuse_the_snapshots_sequences(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The snapshot is at 21 and the log file is gone: new events must still get 22, 23, ...
    (were they numbered from 1, the next start-up would skip them as covered by the snapshot)."""
    events = mixed_events()
    async with running(settings) as service:
        await publish_each(service, events)
        before = service.engine.state()
    for path in Path(settings.data_dir).glob("events.db*"):
        path.unlink()
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert any("log ends at sequence 0" in r.getMessage() for r in caplog.records)
        (done,) = await service.publish([new_event("ns/new", x=1)])
        assert done.seq == len(events) + 1
        assert service.engine.get("ns/new") is not None
        after = service.engine.state()
        crash(service)
    async with running(settings) as service:
        assert service.engine.state() == after


# -- deletion ----------------------------------------------------------------------------------


async def test_deletion_is_an_event_that_survives_restart(settings: Settings) -> None:
    async with running(settings) as service:
        await service.publish([new_event("ns/gone", a=1, b=2), new_event("ns/kept", a=1)])
        deletion = await service.delete(["ns/gone", "ns/never"])
        assert deletion.not_found == ["ns/never"]
        ((tombstone, appended),) = deletion.deleted.values()
        assert not appended.duplicate
        assert service.engine.get("ns/gone") is None
        crash(service)
    async with running(settings) as service:
        assert service.engine.get("ns/gone") is None
        assert service.engine.get("ns/kept") is not None
        history = [orjson.loads(raw) for raw in await service.log.history("ns/gone", 0, 10)]
        assert history[0]["eventId"] == tombstone["eventId"]
        await service.publish([new_event("ns/gone", c=3)])
        entity = service.engine.get("ns/gone")
        assert entity is not None and entity.properties == {"c": 3}


async def test_a_delete_of_what_does_not_exist_logs_nothing(settings: Settings) -> None:
    async with running(settings) as service:
        await service.publish([new_event("ns/here", a=1)])
        deletion = await service.delete(["ns/never", "ns/here", "ns/never"])
        assert list(deletion.deleted) == ["ns/here"]
        assert deletion.not_found == ["ns/never"]
        assert (await service.delete(["ns/here"])).not_found == ["ns/here"]
        assert service.engine.last_seq == 2  # one event, one tombstone


async def test_concurrent_deletes_of_one_entity_log_one_tombstone(settings: Settings) -> None:
    """The existence check sees the tombstones of other deletes that are sequenced but not yet
    applied; a delete that finds one answers once that tombstone is applied."""
    async with running(settings) as service:
        await service.publish([new_event("ns/one", a=1), new_event("ns/two", a=1)])
        results = []

        async def delete(ids: list[str]) -> None:
            deletion = await service.delete(ids)
            assert service.engine.get("ns/one") is None  # applied by the time it answers
            results.append(deletion)

        async with anyio.create_task_group() as tasks:
            for n in range(10):
                tasks.start_soon(delete, ["ns/one", "ns/two"] if n % 2 else ["ns/one"])
        assert sum(len(r.deleted) for r in results) == 2
        assert sum(len(r.not_found) for r in results) == 13
        assert service.engine.last_seq == 4
        assert not service._deleting and not service._tombstones


async def test_a_delete_waiting_on_a_failed_tombstone_checks_again(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(settings) as service:
        await service.publish([new_event("ns/x", a=1)])
        real_submit = service.log.submit
        calls = 0

        async def fail_soon() -> Any:
            await anyio.sleep(0.05)
            raise LogUnavailable("event log unavailable: disk full")

        def first_fails(entries: Any, **options: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                return asyncio.ensure_future(fail_soon())
            return real_submit(entries, **options)

        monkeypatch.setattr(service.log, "submit", first_fails)
        outcomes: dict[str, Any] = {}

        async def first() -> None:
            try:
                await service.delete(["ns/x"])
            except LogUnavailable as exc:
                outcomes["first"] = exc

        async def second() -> None:
            await anyio.sleep(0.01)  # while the first one's tombstone is in flight
            outcomes["second"] = await service.delete(["ns/x"])

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            tasks.start_soon(second)
        assert isinstance(outcomes["first"], LogUnavailable)
        assert list(outcomes["second"].deleted) == ["ns/x"]
        assert service.engine.get("ns/x") is None
        assert not service._deleting and not service._tombstones


async def test_connectors_ingest_refuses_ids_over_the_limit(settings: Settings) -> None:
    """`publish_as` (the connectors' way in) applies the id length limit like the API."""
    small = settings.replace(max_entity_id_length=8)
    async with running_server(small) as server:
        raw = {"stream": "s", "source": "c", "timestamp": 1}
        ok = {**raw, "payload": {"entity_id": "ns/12345", "properties": {"a": 1}}}
        long = {**raw, "payload": {"entity_id": "ns/123456", "properties": {"a": 1}}}
        with pytest.raises(ValidationError, match="at most 8"):
            await server.publish_as(None, [ok, long])
        assert server.engine.last_seq == 0  # all or nothing
        await server.publish_as(None, [ok])
        assert server.engine.get("ns/12345") is not None


# -- snapshots while running -------------------------------------------------------------------


async def wait_for(condition: Any, timeout: float = 10) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.02)


async def test_snapshots_every_n_events_keeping_the_newest(data_dir: Path) -> None:
    settings = Settings(
        data_dir=str(data_dir),
        snapshot_every_events=5,
        snapshot_keep=2,
        snapshot_interval_seconds=3600,
    )

    def names(*seqs: int) -> list[str]:
        return [f"snapshot-{seq:020d}.json.gz" for seq in seqs]

    async with running(settings) as service:
        for i in range(1, 24):
            await service.publish([new_event("ns/a", n=i)])
            if i % 5 == 0:  # the 5th event since the last snapshot starts one
                expected = names(i - 5, i)[int(i == 5) :]
                await wait_for(lambda want=expected: names_of(settings) == want)
        assert names_of(settings) == names(15, 20)
        latest = StateEngine.restore(gzip.decompress(snapshot_files(settings)[1].read_bytes()))
        assert latest.last_seq == 20
        assert latest.get("ns/a") is not None
    assert names_of(settings) == names(20, 23), "and one at shutdown"


async def test_snapshots_on_a_timer_while_events_arrive(data_dir: Path) -> None:
    settings = Settings(data_dir=str(data_dir), snapshot_interval_seconds=1)
    async with running(settings) as service:
        await service.publish([new_event("ns/a", n=1)])
        await wait_for(lambda: len(snapshot_files(settings)) == 1, timeout=5)
        crash(service)  # no final snapshot: the one there came from the timer
    assert [p.name for p in snapshot_files(settings)] == [f"snapshot-{1:020d}.json.gz"]


async def test_stop_without_new_events_writes_no_snapshot(settings: Settings) -> None:
    async with running(settings) as service:
        await service.publish([new_event("ns/a", n=1)])
    first = snapshot_files(settings)
    mtime = first[0].stat().st_mtime_ns
    async with running(settings):
        pass
    assert snapshot_files(settings) == first
    assert first[0].stat().st_mtime_ns == mtime


# -- retention ---------------------------------------------------------------------------------


async def seqs_in_log(service: FluxService) -> list[int]:
    return [r.seq async for batch in service.log.read(0) for r in batch]


async def test_retention_by_count_drops_only_covered_events(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        data_dir=str(data_dir),
        snapshot_keep=1,
        retention_max_events=3,
        snapshot_interval_seconds=3600,
    )
    async with running(settings) as service:
        await publish_each(service, [new_event("ns/a", n=i) for i in range(10)])
        await service.snapshot()
        assert await seqs_in_log(service) == [8, 9, 10]
        assert any("retention removed 7 events" in r.getMessage() for r in caplog.records)
        await publish_each(service, [new_event("ns/a", n=i) for i in range(10, 15)])
        assert await seqs_in_log(service) == [8, 9, 10, 11, 12, 13, 14, 15]
        before = service.engine.state()
        crash(service)
    async with running(settings) as service:
        assert service.engine.state() == before


async def test_retention_by_age_keeps_what_no_snapshot_covers(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Events after the oldest kept snapshot stay however old they are, so falling back to
    that snapshot still gives the whole state."""
    settings = Settings(
        data_dir=str(data_dir),
        snapshot_keep=2,
        retention_max_age_seconds=1,
        snapshot_interval_seconds=3600,
    )
    async with running(settings) as service:
        await publish_each(service, [new_event(f"ns/{i}", n=i) for i in range(5)])
        await service.snapshot()  # at 5
        await publish_each(service, [new_event(f"ns/{i}", m=i) for i in range(5, 10)])
        await anyio.sleep(1.1)  # everything is now older than the retention age
        await service.snapshot()  # at 10; the oldest kept snapshot is at 5
        assert await seqs_in_log(service) == [6, 7, 8, 9, 10]
        before = service.engine.state()
        crash(service)
    older, newest = snapshot_files(settings)
    truncate(newest)
    caplog.clear()
    async with running(settings) as service:
        assert service.engine.state() == before
        assert replayed(caplog) == 5
    assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_sequences_continue_after_retention_emptied_the_log(data_dir: Path) -> None:
    settings = Settings(
        data_dir=str(data_dir),
        snapshot_keep=1,
        retention_max_age_seconds=1,
        snapshot_interval_seconds=3600,
    )
    async with running(settings) as service:
        await publish_each(service, [new_event("ns/a", n=i) for i in range(4)])
        await anyio.sleep(1.1)
        await service.snapshot()
        assert await seqs_in_log(service) == []
    async with running(settings) as service:
        (done,) = await service.publish([new_event("ns/b", n=1)])
        assert done.seq == 5
        before = service.engine.state()
        crash(service)
    async with running(settings) as service:
        assert service.engine.state() == before
        assert set(before) == {"ns/a", "ns/b"}


# -- a full disk -------------------------------------------------------------------------------


async def test_a_full_disk_is_a_503_json_answer_not_a_hang(settings: Settings) -> None:
    log = SQLiteLog(str(Path(settings.data_dir) / "events.db"), max_page_count=40)
    server = Server(settings, log=log)
    service = server.service
    app = create_app(settings, server)
    await server.start()
    statuses: list[int] = []
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            with anyio.fail_after(30):
                for i in range(200):
                    event = new_event(f"ns/big{i}", blob="x" * 3000)
                    del event["eventId"]
                    response = await client.post(
                        "/api/events",
                        content=orjson.dumps(event),
                        headers={"content-type": "application/json"},
                    )
                    statuses.append(response.status_code)
                    if response.status_code != 200:
                        break
            assert response.status_code == 503
            assert response.headers["content-type"] == "application/json"
            error = response.json()["error"]
            assert "full" in error
            assert (await client.get(f"/api/state/entities/ns/big{i}")).status_code == 404
            assert (await client.get("/api/state/entities/ns/big0")).status_code == 200
            with pytest.raises(LogUnavailable):
                await service.publish([new_event("ns/more", blob="y" * 3000)])
    finally:
        await server.stop()
    assert statuses.count(200) == i


async def test_service_stop_closes_the_log_even_when_the_final_snapshot_fails(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    service = FluxService(settings)
    await service.start()
    await service.publish([new_event("ns/a", n=1)])
    snapshots = Path(settings.data_dir) / "snapshots"
    shutil.rmtree(snapshots, ignore_errors=True)
    snapshots.write_text("a file where the directory should be")
    await service.stop()
    assert any("final snapshot failed" in r.getMessage() for r in caplog.records)
    with pytest.raises(LogUnavailable):
        await service.publish([new_event("ns/a", n=2)])
    snapshots.unlink()
    async with running(settings) as again:
        assert again.engine.get("ns/a") is not None


async def test_a_failed_namespace_delete_puts_everything_back(data_dir: Path) -> None:
    """A delete that fails at its last step (the registry's disk) leaves the namespace as it
    was: registered, private, its token working, no history floor. The retry finishes it."""
    settings = Settings(
        data_dir=str(data_dir),
        snapshot_interval_seconds=3600,
        auth_enabled=True,
        admin_token="adm",
        directory_interval_seconds=0,
    )
    admin = Credential.from_token("adm")
    async with running_server(settings) as server:
        namespaces, permissions = server.namespaces, server.permissions
        _, token = await namespaces.register(admin, "sec", private=True)
        await server.service.publish([new_event("sec/a", v=1)])
        server.registry.store.close()  # every write to the registry fails from here
        with pytest.raises(StorageError):
            await namespaces.delete(admin, "sec")
        owner = Credential.from_token(token)
        assert server.access.authorize_write(owner, "sec/a") == "sec"
        assert not permissions.can_read(ANONYMOUS, "sec/a") and permissions.can_read(owner, "sec/a")
        assert permissions.history_floor("sec/a") == 0
        assert len(await server.log.history("sec/a", 0, 10)) == 2  # the event, its tombstone
        await server.registry.open()  # the disk is back
        assert await namespaces.delete(admin, "sec") == 0  # its entity went last time
        floor = permissions.history_floor("sec/a")
        assert floor == server.engine.last_seq
        assert await server.log.history("sec/a", 0, 10, floor) == []
        assert server.access.get("sec") is None
