"""flux.live in-process: the Outbox's bounds, staging and paced feed, and Live.subscribe's
replay -> live hand-over (including a log gap found mid-replay), with a scripted log and
commits injected between replay batches. Each test runs its own event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

from flux.auth import Access
from flux.config import RuntimeConfig, Settings
from flux.engine import StateEngine
from flux.live import Filter, Live, Message, Outbox, change_messages, encode
from flux.log import Record
from flux.permissions import Permissions


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 10))


def msg(n: int) -> Message:
    return encode({"type": "pong", "n": n}, n)


def numbers(messages: list[Message]) -> list[int]:
    return [orjson.loads(text)["n"] for _, _, text in messages]


# -- Outbox ------------------------------------------------------------------------------------


def test_outbox_overflows_past_its_limit_once_and_then_ignores_pushes() -> None:
    async def main() -> None:
        calls = []
        box = Outbox(3)
        box.on_overflow = lambda: calls.append(1)
        for n in range(3):
            box.push(msg(n))
        assert not box.overflowed and len(box.messages) == 3
        box.push(msg(3))
        assert box.overflowed and box.ended and not box.messages and calls == [1]
        box.push(msg(4))
        assert not box.messages and calls == [1]
        assert await box.take() == []

    run(main)


def test_take_waits_then_takes_everything() -> None:
    async def main() -> None:
        box = Outbox(10)
        taker = asyncio.create_task(box.take())
        await asyncio.sleep(0)
        assert not taker.done()
        box.push(msg(1))
        box.push(msg(2))
        assert numbers(await taker) == [1, 2]
        assert not box.messages

    run(main)


def test_close_ends_take_and_feed() -> None:
    async def main() -> None:
        box = Outbox(1)
        taker = asyncio.create_task(box.take())
        box.push(msg(0))
        assert numbers(await taker) == [0]
        feeder = asyncio.create_task(box.feed([[msg(1)], [msg(2)], [msg(3)]]))
        await asyncio.sleep(0)
        box.close()
        assert await feeder is False
        assert await box.take() == []
        box.push(msg(4))
        assert not box.messages

    run(main)


def test_staging_holds_live_messages_until_released_after_the_first() -> None:
    async def main() -> None:
        box = Outbox(3)
        box.begin_staging()
        box.push(msg(10))
        box.push(msg(11))
        assert not box.messages
        await box.feed([[msg(1)], [msg(2)]])
        assert numbers(list(box.messages)) == [1, 2]
        box.end_staging(msg(3))
        assert numbers(await box.take()) == [1, 2, 3, 10, 11]
        box.push(msg(12))  # back to queueing directly
        assert numbers(list(box.messages)) == [12]

    run(main)


def test_staging_is_bounded_too() -> None:
    box = Outbox(2)
    box.begin_staging()
    for n in range(3):
        box.push(msg(n))
    assert box.overflowed and box.staging is None


def test_feed_waits_for_room_and_keeps_groups_whole() -> None:
    async def main() -> None:
        box = Outbox(3)
        groups = [[msg(n)] for n in range(8)] + [[msg(100 + k) for k in range(5)]]
        feeder = asyncio.create_task(box.feed(groups))
        got: list[int] = []
        while not feeder.done() or box.messages:
            batch = await box.take()
            assert len(batch) <= 3 or batch[-5:] == groups[-1], batch
            got += numbers(batch)
        assert await feeder is True
        assert got == [*range(8), *range(100, 105)]

    run(main)


# -- Live.subscribe with a scripted log --------------------------------------------------------


class ScriptedLog:
    """Serves `read` from a list of records, in batches, calling `between()` after each."""

    def __init__(self, records: list[Record], batch_size: int = 2) -> None:
        self.records = records
        self.batch_size = batch_size
        self.between: Callable[[], None] = lambda: None

    async def read(self, after_seq: int, batch_size: int = 10_000) -> AsyncIterator[list[Record]]:
        rows = [r for r in self.records if r.seq > after_seq]
        for start in range(0, len(rows), self.batch_size):
            yield rows[start : start + self.batch_size]
            self.between()


class Service:
    """What Live uses of FluxService: settings, engine, log and listeners, beside real
    `Permissions` of a server with auth off (everyone reads everything). The log is scripted so
    that commits can be placed between replay batches deterministically; the real-server tests
    in tests/api/test_ws.py and tests/test_live_restart.py cover the same paths end to end."""

    def __init__(self, tmp_path: Path, limit: int = 100) -> None:
        self.settings = Settings(data_dir=str(tmp_path), ws_queue_limit=limit)
        self.engine = StateEngine()
        self.listeners: list[Any] = []
        self.log = ScriptedLog([])
        self.seq = 0
        access = Access()
        self.floors = access.floors  # deleted namespaces' history floors
        runtime = RuntimeConfig.from_settings(self.settings)
        self.permissions = Permissions(self.settings, access, runtime, self.engine)

    def record(self, entity_id: str, **properties: Any) -> Record:
        self.seq += 1
        event = {"source": "t", "payload": {"entity_id": entity_id, "properties": properties}}
        return Record(self.seq, 1_700_000_000_000_000 + self.seq, event)

    def commit(self, *records: Record) -> None:
        changes = self.engine.apply_all(records)
        for listener in self.listeners:
            listener(changes, list(records))


def decoded(messages: list[Message]) -> list[dict[str, Any]]:
    return [orjson.loads(text) for _, _, text in messages]


async def drain(box: Outbox, until: Callable[[list[dict[str, Any]]], bool]) -> list[Message]:
    got: list[Message] = []
    while not until(decoded(got)):
        got += await box.take()
    return got


def test_live_changes_during_a_replay_follow_it_with_no_gap_and_no_duplicate(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        service = Service(tmp_path)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        history = [service.record(f"a/{n % 2}", n=n) for n in range(6)]
        service.commit(*history)
        service.log.records = list(history)
        extra: list[int] = []

        def commit_more() -> None:  # changes committed while the replay is under way
            while len(extra) < 3:
                record = service.record("a/1", n=100 + len(extra))
                extra.append(record.seq)
                service.log.records.append(record)
                service.commit(record)

        service.log.between = commit_more
        box = live.connect()
        box.push(msg(-1))  # never subscribed: gets everything until it subscribes
        await box.take()
        subscribing = asyncio.create_task(live.subscribe(box, Filter(prefix="a/"), since=2))
        got = decoded(await drain(box, lambda m: len(m) >= 4 + 1 + 3))
        await subscribing
        assert [m["type"] for m in got] == ["state_update"] * 4 + ["subscribed"] + [
            "state_update"
        ] * 3
        assert [m["version"] for m in got] == [3, 4, 5, 6, 6, *extra]
        assert got[4]["version"] == 6  # everything up to 6 replayed, everything after live

    run(main)


def test_a_gap_found_mid_replay_becomes_a_resync_without_stale_changes(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        service = Service(tmp_path)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        history = [service.record("a/x", n=n) for n in range(8)]
        service.commit(*history)
        # Retention removed 4 and 5 between the replay's batches.
        service.log.records = [r for r in history if r.seq not in (4, 5)]
        box = live.connect()
        live.hub.subscribe(box, entity_id="b/other")  # another subscription on the connection

        def commit_during_replay() -> None:
            if service.seq == 8:
                service.commit(service.record("a/x", n=100), service.record("b/other", n=1))

        service.log.between = commit_during_replay
        subscribing = asyncio.create_task(live.subscribe(box, Filter(prefix="a/"), since=1))
        got = decoded(await drain(box, lambda m: len(m) >= 6))
        await subscribing
        assert [(m["type"], m.get("version")) for m in got] == [
            ("state_update", 2),
            ("state_update", 3),
            ("resync", 10),
            ("snapshot", 9),  # the current state: it already holds change 9 ...
            ("subscribed", 10),
            ("state_update", 10),  # ... so 9 is not sent again; the other subscription's is
        ]
        assert got[3]["properties"] == {"n": 100}
        assert got[5]["entity_id"] == "b/other"

    run(main)


def test_a_replay_never_shows_a_deleted_namespace_s_past(tmp_path: Path) -> None:
    """Changes at or below a namespace's history floor are not replayed; a replay that would
    cross one (a matching change) resyncs instead, so the client drops what is gone. Changes of
    other namespaces, and of the same name above its floor, replay as usual."""

    async def main() -> None:
        service = Service(tmp_path)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        history = [service.record(f"{ns}/x", n=n) for n, ns in enumerate("abab")]
        service.commit(*history)
        last = service.record("a/x", n=-1)  # 5: the last change before `a` was deleted
        service.commit(last)
        service.floors["a"] = 5
        later = [service.record("a/y", n=9), service.record("b/x", n=10)]
        service.commit(*later)
        service.log.records = [*history, last, *later]

        async def replay(flt: Filter, since: int) -> list[dict[str, Any]]:
            box = live.connect()
            subscribing = asyncio.create_task(live.subscribe(box, flt, since=since))
            got = decoded(await drain(box, lambda m: bool(m) and m[-1]["type"] == "subscribed"))
            await subscribing
            live.disconnect(box)
            return got

        # another namespace: its changes as usual
        got = await replay(Filter(prefix="b/"), 0)
        assert [(m["type"], m.get("version")) for m in got] == [
            ("state_update", 2),
            ("state_update", 4),
            ("state_update", 7),
            ("subscribed", 7),
        ]
        # across the floor: a resync, with the current state only (no past of `a`)
        for flt in (Filter(prefix="a/"), Filter(entity_id="a/x"), Filter(entity_id="*")):
            got = await replay(flt, 0)
            assert got[0]["type"] == "resync", got
            assert "deleted namespace" in got[0]["reason"]
            assert [m["type"] for m in got[1:-1]] == ["snapshot"] * (len(got) - 2)
            assert {m["properties"]["n"] for m in got[1:-1]} <= {-1, 9, 10}, got
            assert got[-1]["type"] == "subscribed"
        # from above the floor: only the name's new changes
        got = await replay(Filter(prefix="a/"), 5)
        assert [(m["type"], m.get("version")) for m in got] == [
            ("state_update", 6),
            ("subscribed", 7),
        ]

    run(main)


def test_replay_of_more_than_the_queue_limit_is_paced_not_dropped(tmp_path: Path) -> None:
    async def main() -> None:
        service = Service(tmp_path, limit=5)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        history = [service.record("a", n=n, m=-n) for n in range(40)]
        service.commit(*history)
        service.log.records = history
        service.log.batch_size = 7
        box = live.connect()
        subscribing = asyncio.create_task(live.subscribe(box, Filter(entity_id="a"), since=0))
        got = decoded(await drain(box, lambda m: any(x["type"] == "subscribed" for x in m)))
        await subscribing
        assert not box.overflowed
        assert len(got) == 81 and got[-1] == {"type": "subscribed", "entity_id": "a", "version": 40}

    run(main)


def test_resume_versions_mark_where_a_client_has_everything(tmp_path: Path) -> None:
    service = Service(tmp_path)
    (change,) = service.engine.apply_all([service.record("a", x=1, y=2, z=3)])
    assert [version for version, _, _ in change_messages(change)] == [None, None, 1]
