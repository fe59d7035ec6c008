"""flux.live in-process: the Outbox's bounds, staging and paced feed, and Live.subscribe's
replay -> live hand-over (including a log gap found mid-replay), with a scripted log and
commits injected between replay batches. Each test runs its own event loop (asyncio.run)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

from flux.auth import ANONYMOUS, Access
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


# -- byte bounds, rounds and paced snapshots (issue 11) ----------------------------------------


def test_the_byte_bound_overflows_an_outbox_that_is_already_at_it() -> None:
    box = Outbox(1000, max_bytes=100)
    message = encode({"type": "pong", "pad": "x" * 60})
    box.push(message)
    box.push(message)  # 1 message of ~80 bytes: under the bound, so this one goes in
    assert not box.overflowed and box.size == 2 * len(message[2])
    box.push(message)
    assert box.overflowed and "bytes" in box.reason and box.size == 0


def test_one_change_larger_than_the_bounds_fits_a_drained_outbox_with_its_round() -> None:
    """A change of 50 messages into an outbox bounded at 10 messages and 1 kB: it goes in whole,
    and so do the changes committed in the same round; a later round finds the outbox over its
    bounds (the client took nothing) and overflows it."""
    box = Outbox(10, max_bytes=1000)
    wide = [msg(n) for n in range(50)]
    small = [msg(100)]
    box.push_change(wide, 5000, round=1)
    box.push_change(small, 20, round=1)
    box.push_one(small[0], 20, round=1)
    assert not box.overflowed and len(box.messages) == 52
    box.push_one(small[0], 20, round=2)
    assert box.overflowed and not box.messages


def test_a_drained_outbox_takes_the_next_round_however_large_the_last_one_was() -> None:
    async def main() -> None:
        box = Outbox(10, max_bytes=1000)
        for round in range(1, 4):
            box.push_change([msg(n) for n in range(50)], 5000, round)
            assert len(await box.take()) == 50
        assert not box.overflowed

    run(main)


def test_staging_is_bounded_by_bytes_too() -> None:
    box = Outbox(1000, max_bytes=50)
    box.begin_staging()
    message = encode({"type": "pong", "pad": "x" * 60})
    box.push_one(message, len(message[2]), round=1)
    assert not box.overflowed
    box.push_one(message, len(message[2]), round=2)
    assert box.overflowed and box.staging is None


def test_a_feed_takes_from_its_iterator_only_as_the_client_reads() -> None:
    async def main() -> None:
        box = Outbox(1000, max_bytes=100)
        taken: list[int] = []

        def groups() -> Iterator[list[Message]]:
            for n in range(1000):
                taken.append(n)
                yield [encode({"type": "pong", "n": n, "pad": "x" * 20})]

        feeder = asyncio.create_task(box.feed(groups()))
        await asyncio.sleep(0.01)
        assert len(taken) <= 4  # three fill the bound, one waits for room
        got = 0
        while got < 1000:
            got += len(await box.take())
        assert await feeder is True and len(taken) == 1000

    run(main)


def test_a_subscription_opened_at_connect_stages_what_comes_before_its_completion(
    tmp_path: Path,
) -> None:
    """`open` registers the subscription as the connection is made: changes committed before
    `complete` runs are staged and follow `subscribed`; changes the filter does not match never
    reach the connection (a fresh connection would have received them)."""

    async def main() -> None:
        service = Service(tmp_path)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        history = [service.record(f"a/{n}", n=n) for n in range(3)]
        service.commit(*history)
        service.log.records = list(history)
        box, pending = live.open(ANONYMOUS, Filter(prefix="a/"))
        later = [service.record("a/9", n=9), service.record("b/1", n=1)]
        service.log.records += later
        service.commit(*later)
        assert not box.messages  # staged, not sent
        completing = asyncio.create_task(live.complete(box, pending, since=1))
        got = decoded(await drain(box, lambda m: len(m) >= 4))
        await completing
        assert [(m["type"], m["version"], m.get("entity_id")) for m in got] == [
            ("state_update", 2, "a/1"),
            ("state_update", 3, "a/2"),
            ("subscribed", 3, None),
            ("state_update", 4, "a/9"),
        ]

    run(main)


def test_a_paced_snapshot_sends_no_change_twice_when_the_state_moves_on(tmp_path: Path) -> None:
    """A snapshot goes out as the client reads, so entities change while it is under way. A
    change to an entity not yet sent arrives in its snapshot and is not sent again; a change to
    one already sent follows `subscribed`. Either way the client ends with the current state."""

    async def main() -> None:
        service = Service(tmp_path, limit=2)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        service.commit(*[service.record(f"a/{n}", n=n) for n in range(6)])
        box = live.connect()
        subscribing = asyncio.create_task(live.subscribe(box, Filter(prefix="a/"), snapshot=True))
        first = decoded(await box.take())  # two snapshots, the snapshot waits for room
        sent = {m["entity_id"] for m in first}
        unsent = sorted({f"a/{n}" for n in range(6)} - sent)
        service.commit(service.record(unsent[-1], n=100), service.record(sorted(sent)[0], n=200))
        got = first + decoded(await drain(box, lambda m: len(m) >= 6 + 1 + 1 - len(first)))
        await subscribing
        kinds = [m["type"] for m in got]
        assert kinds == ["snapshot"] * 6 + ["subscribed", "state_update"], got
        state = {m["entity_id"]: m["properties"]["n"] for m in got if m["type"] == "snapshot"}
        assert state[unsent[-1]] == 100  # in its snapshot, and not sent again
        assert got[-1]["entity_id"] == sorted(sent)[0] and got[-1]["value"] == 200
        assert got[6]["version"] == 6

    run(main)


def test_the_watchdog_ends_an_outbox_whose_send_makes_no_progress(tmp_path: Path) -> None:
    async def main() -> None:
        service = Service(tmp_path)
        service.settings = service.settings.replace(live_send_timeout_seconds=0.2)
        live = Live(service, service.permissions)  # type: ignore[arg-type]
        live.start()
        try:
            stuck, moving, idle = live.connect(), live.connect(), live.connect()
            stuck.busy = moving.busy = True
            for _ in range(10):
                moving.sent += 1
                await asyncio.sleep(0.05)
            assert stuck.overflowed and "a send took more than 0.2 s" in stuck.reason
            assert not moving.overflowed and not idle.overflowed
            assert live.connections == 2  # the stalled one left the hub
        finally:
            await live.stop()

    run(main)
