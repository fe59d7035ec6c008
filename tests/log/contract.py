"""The EventLog contract, written once (flux/log/__init__.py states it). Each backend's test
module subclasses `LogContract` and supplies only the fixtures:

- `make_log`: a factory; every call returns a new, unstarted log over the same storage (so a
  second call after `close()` is a restart).
- `unusable_log`: an unstarted log whose storage cannot be opened.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import anyio
import orjson
import pytest

from flux.conditions import Check, LeaseOp, Verdict, evaluate
from flux.engine import StateEngine
from flux.errors import LogError, LogUnavailable
from flux.events import Event, entity_of, uuid7
from flux.log import Appended, Entry, EventLog, Record

MakeLog = Callable[[], EventLog]

TIMEOUT = 20  # seconds; an append that hangs fails the test instead of the whole run


def make_event(entity_id: str | None = "ns/a", **properties: Any) -> Event:
    payload: dict[str, Any] = {"properties": properties or {"v": 1}}
    if entity_id is not None:
        payload["entity_id"] = entity_id
    return {
        "eventId": uuid7(),
        "stream": "test",
        "source": "contract",
        "timestamp": 1_700_000_000_000,
        "payload": payload,
    }


def entry(event: Event, check: Check | None = None) -> Entry:
    return Entry(event, event["eventId"], entity_of(event), orjson.dumps(event), check)


def entries(*events: Event) -> list[Entry]:
    return [entry(e) for e in events]


class Opened:
    """A started log plus every record its `on_records` callback received, call by call, and
    a state engine those records are applied to (what the checker decides conditions on)."""

    def __init__(self, log: EventLog) -> None:
        self.log = log
        self.calls: list[list[Record]] = []
        self.engine = StateEngine()
        self.decided_at: list[int] = []  # the checker's clock, call by call

    def on_records(self, records: list[Record]) -> None:
        self.calls.append(list(records))
        self.engine.apply_all(records)

    def checker(
        self,
        groups: list[tuple[list[tuple[Event, Check | None]], bool]],
        first_seq: int,
        unapplied: list[Record],
        now_ms: int,
    ) -> list[list[Verdict]]:
        self.decided_at.append(now_ms)
        return evaluate(self.engine, groups, first_seq, now_ms, unapplied)

    async def append_checked(
        self, pairs: Sequence[tuple[Event, Check | None]], atomic: bool = False
    ) -> list[Appended]:
        with anyio.fail_after(TIMEOUT):
            return await self.log.append(
                [entry(e, c) for e, c in pairs], checked=True, atomic=atomic
            )

    @property
    def seen(self) -> list[Record]:
        return [r for call in self.calls for r in call]

    async def append(self, *events: Event) -> list[Appended]:
        with anyio.fail_after(TIMEOUT):
            return await self.log.append(entries(*events))

    async def all(self, after_seq: int = 0, batch_size: int = 10_000) -> list[Record]:
        out: list[Record] = []
        async for batch in self.log.read(after_seq, batch_size):
            assert batch, "read yields no empty batch"
            out.extend(batch)
        return out

    async def history(
        self, entity_id: str, since_us: int = 0, limit: int = 1_000, after_seq: int = 0
    ) -> list[dict[str, Any]]:
        raws = await self.log.history(entity_id, since_us, limit, after_seq)
        return [orjson.loads(raw) for raw in raws]


def ids(events: Sequence[Event] | Sequence[Record]) -> list[str]:
    return [e.event["eventId"] if isinstance(e, Record) else e["eventId"] for e in events]


@pytest.mark.anyio
class LogContract:
    @pytest.fixture
    async def opened(self, make_log: MakeLog) -> AsyncIterator[Opened]:
        async with self.open(make_log) as log:
            yield log

    def open(self, make_log: MakeLog, after_seq: int = 0) -> _Open:
        return _Open(make_log, after_seq)

    # -- append and read -------------------------------------------------------------------

    async def test_a_new_log_is_empty(self, opened: Opened) -> None:
        assert await opened.log.last_seq() == 0
        assert await opened.log.first_seq() == 1
        assert await opened.all() == []
        assert await opened.log.append([]) == []

    async def test_appends_get_consecutive_sequences_and_read_back_in_order(
        self, opened: Opened
    ) -> None:
        first = [make_event("ns/a", x=1), make_event("ns/b", x=2), make_event(None, x=3)]
        second = [make_event("ns/a", x=4), make_event("ns/c", x=5)]
        done1 = await opened.append(*first)
        done2 = await opened.append(*second)
        assert [d.seq for d in done1 + done2] == [1, 2, 3, 4, 5]
        assert not any(d.duplicate for d in done1 + done2)
        assert len({d.at for d in done1}) == 1, "one group, one log time"
        assert done1[0].at <= done2[0].at

        stored = await opened.all()
        assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
        assert [r.event for r in stored] == first + second
        assert [r.at for r in stored] == [d.at for d in done1 + done2]
        assert await opened.all(after_seq=3) == stored[3:]
        assert await opened.all(after_seq=5) == []
        assert await opened.log.last_seq() == 5
        assert await opened.log.first_seq() == 1

    async def test_on_records_sees_every_record_once_in_order_before_append_returns(
        self, opened: Opened
    ) -> None:
        event = make_event()
        (done,) = await opened.append(event)
        assert opened.seen == [Record(done.seq, done.at, event)]
        await opened.append(make_event(), make_event())
        assert [r.seq for r in opened.seen] == [1, 2, 3]
        assert opened.seen == await opened.all()

    async def test_submit_is_append_as_a_future(self, opened: Opened) -> None:
        """`submit` (the hot publish's way in) stores as `append` does: consecutive sequences,
        the records applied before the future is done, a repeated id answered as a duplicate."""
        first, second = make_event(), make_event()
        futures = [opened.log.submit(entries(first)), opened.log.submit(entries(second))]
        (one,), (two,) = await asyncio.gather(*futures)
        assert (one.seq, two.seq) == (1, 2)
        assert opened.seen == [Record(1, one.at, first), Record(2, two.at, second)]
        (again,) = await opened.log.submit(entries(first))
        assert again.duplicate and again.seq == 1
        assert await opened.log.submit([]) == []

    async def test_read_comes_in_batches(self, opened: Opened) -> None:
        await opened.append(*(make_event(x=i) for i in range(25)))
        sizes = []
        async for batch in opened.log.read(0, batch_size=10):
            sizes.append(len(batch))
        assert sizes == [10, 10, 5]
        assert [r.seq for r in await opened.all(batch_size=10)] == list(range(1, 26))
        assert [r.seq for r in await opened.all(after_seq=20, batch_size=5)] == list(range(21, 26))

    # -- duplicates ------------------------------------------------------------------------

    async def test_a_repeated_event_id_is_not_appended_again(self, opened: Opened) -> None:
        event = make_event(x=1)
        (original,) = await opened.append(event)
        (again,) = await opened.append({**event, "payload": {"entity_id": "ns/a"}})
        assert again == Appended(original.seq, original.at, True)
        assert len(opened.seen) == 1, "a duplicate does not reach on_records"
        assert ids(await opened.all()) == [event["eventId"]]
        assert (await opened.all())[0].event == event, "the stored event is the first one"
        (after,) = await opened.append(make_event())
        assert after.seq == original.seq + 1, "a rejected duplicate takes no sequence"

    async def test_duplicates_within_one_append_and_mixed_with_new_events(
        self, opened: Opened
    ) -> None:
        old = make_event(x=1)
        await opened.append(old)
        new1, new2 = make_event(x=2), make_event(x=3)
        done = await opened.append(new1, old, new1, new2, old)
        assert [(d.seq, d.duplicate) for d in done] == [
            (2, False),
            (1, True),
            (2, True),
            (3, False),
            (1, True),
        ]
        assert done[2].at == done[0].at
        assert ids(await opened.all()) == ids([old, new1, new2])
        assert ids(opened.seen) == ids([old, new1, new2])

    async def test_duplicates_from_concurrent_appends(self, opened: Opened) -> None:
        event = make_event()
        with anyio.fail_after(TIMEOUT):
            results = await asyncio.gather(*(opened.log.append(entries(event)) for _ in range(20)))
        flat = [r[0] for r in results]
        assert {d.seq for d in flat} == {1}
        assert sum(not d.duplicate for d in flat) == 1
        assert len(await opened.all()) == 1

    # -- restart ---------------------------------------------------------------------------

    async def test_reopen_after_restart(self, make_log: MakeLog) -> None:
        events = [make_event(f"ns/{i % 3}", x=i) for i in range(7)]
        async with self.open(make_log) as first:
            await first.append(*events[:4])
            await first.append(*events[4:])
            stored = await first.all()
        async with self.open(make_log) as second:
            assert await second.all() == stored
            assert await second.log.last_seq() == 7
            assert second.seen == [], "stored records are read, not pushed, after a restart"
            (dup,) = await second.append(events[2])
            assert dup == Appended(stored[2].seq, stored[2].at, True)
            (new,) = await second.append(make_event())
            assert new.seq == 8
            assert new.at >= stored[-1].at, "log time never goes back"
            assert (await second.history("ns/1"))[0]["eventId"] == events[4]["eventId"]

    async def test_sequences_start_above_after_seq(self, make_log: MakeLog) -> None:
        async with self.open(make_log) as log:
            await log.append(make_event())
        async with self.open(make_log, after_seq=100) as log:
            assert await log.log.last_seq() == 100
            (done,) = await log.append(make_event())
            assert done.seq == 101
            assert [r.seq for r in await log.all()] == [1, 101]
        async with self.open(make_log, after_seq=50) as log:  # a lower floor changes nothing
            (done,) = await log.append(make_event())
            assert done.seq == 102

    async def test_a_floor_survives_a_restart_without_appends(self, make_log: MakeLog) -> None:
        async with self.open(make_log, after_seq=40):
            pass
        async with self.open(make_log) as log:
            assert await log.log.last_seq() == 40
            assert await log.log.first_seq() == 41
            (done,) = await log.append(make_event())
            assert done.seq == 41

    # -- history ---------------------------------------------------------------------------

    async def test_history_is_newest_first_with_limit(self, opened: Opened) -> None:
        mine = [make_event("ns/me", x=i) for i in range(5)]
        await opened.append(mine[0], make_event("ns/other"), mine[1])
        await opened.append(make_event(None), *mine[2:])
        got = await opened.log.history("ns/me", 0, 100)
        assert [orjson.loads(raw) for raw in got] == mine[::-1]
        assert [e["eventId"] for e in await opened.history("ns/me", limit=2)] == ids(mine[:2:-1])
        assert await opened.history("ns/nobody") == []
        assert ids(await opened.history("ns/other")) == ids(
            [r.event for r in opened.seen if r.event["payload"].get("entity_id") == "ns/other"]
        )

    async def test_history_since_uses_the_log_time(self, opened: Opened) -> None:
        times = []
        for i in range(4):
            (done,) = await opened.append(make_event("ns/me", x=i))
            times.append(done.at)
            await anyio.sleep(0.002)
        assert times == sorted(times) and len(set(times)) == 4
        assert [e["payload"]["properties"]["x"] for e in await opened.history("ns/me")] == [
            3,
            2,
            1,
            0,
        ]
        since = await opened.history("ns/me", since_us=times[2])
        assert [e["payload"]["properties"]["x"] for e in since] == [3, 2]
        assert await opened.history("ns/me", since_us=times[-1] + 1) == []
        limited = await opened.history("ns/me", since_us=times[1], limit=1)
        assert [e["payload"]["properties"]["x"] for e in limited] == [3]

    async def test_history_above_a_floor(self, opened: Opened) -> None:
        """`after_seq` (a deleted namespace's history floor) hides the events at or below it,
        with `since` and `limit` still applied to the rest."""
        done = await opened.append(*(make_event("ns/me", x=i) for i in range(6)))
        await opened.append(make_event("ns/other"))
        floor = done[3].seq

        def xs(events: list[dict[str, Any]]) -> list[int]:
            return [e["payload"]["properties"]["x"] for e in events]

        assert xs(await opened.history("ns/me", after_seq=floor)) == [5, 4]
        assert xs(await opened.history("ns/me", after_seq=floor, limit=1)) == [5]
        assert xs(await opened.history("ns/me", after_seq=0)) == [5, 4, 3, 2, 1, 0]
        since = await opened.history("ns/me", since_us=done[0].at, after_seq=done[4].seq)
        assert xs(since) == [5]
        assert await opened.history("ns/me", after_seq=done[-1].seq) == []
        assert await opened.history("ns/me", after_seq=2**63 - 1) == []  # hides everything
        (later,) = await opened.append(make_event("ns/me", x=9))
        assert xs(await opened.history("ns/me", after_seq=done[-1].seq)) == [9]
        assert later.seq > done[-1].seq

    async def test_sync_waits_for_appends_begun_before_it(self, opened: Opened) -> None:
        assert await opened.log.sync() == 0
        pending = [
            asyncio.ensure_future(opened.log.append(entries(make_event(f"ns/{i}"))))
            for i in range(50)
        ]
        await asyncio.sleep(0)  # every append has been handed to the log
        with anyio.fail_after(TIMEOUT):
            high = await opened.log.sync()
        assert high == 50
        assert [r.seq for r in opened.seen] == list(range(1, 51))  # on_records saw them all
        await asyncio.gather(*pending)
        assert await opened.log.sync() == 50

    # -- retention -------------------------------------------------------------------------

    async def test_prune_keeps_the_newest_events(self, opened: Opened) -> None:
        await opened.append(*(make_event("ns/me", x=i) for i in range(10)))
        assert await opened.log.prune(10, None, 3) == 7
        assert [r.seq for r in await opened.all()] == [8, 9, 10]
        assert await opened.log.first_seq() == 8
        assert await opened.log.last_seq() == 10
        assert len(await opened.history("ns/me")) == 3
        assert await opened.log.prune(10, None, 3) == 0

    async def test_prune_never_goes_above_upto_seq(self, opened: Opened) -> None:
        await opened.append(*(make_event(x=i) for i in range(10)))
        assert await opened.log.prune(4, None, 1) == 4
        assert await opened.log.first_seq() == 5
        assert await opened.log.prune(6, int(time.time() * 1e6) + 10**9, None) == 2
        assert await opened.log.first_seq() == 7
        assert await opened.log.prune(10, None, None) == 0, "no limit set: nothing goes"

    async def test_prune_by_age(self, opened: Opened) -> None:
        await opened.append(*(make_event(x=i) for i in range(3)))
        await anyio.sleep(0.01)
        (newer, *_) = await opened.append(*(make_event(x=i) for i in range(2)))
        assert await opened.log.prune(100, newer.at, None) == 3
        assert [r.seq for r in await opened.all()] == [4, 5]
        assert await opened.log.prune(100, newer.at, None) == 0

    async def test_prune_by_age_or_count_whichever_drops_more(self, opened: Opened) -> None:
        await opened.append(*(make_event(x=i) for i in range(3)))
        await anyio.sleep(0.01)
        (newer, *_) = await opened.append(*(make_event(x=i) for i in range(4)))
        assert await opened.log.prune(100, newer.at, 2) == 5
        assert [r.seq for r in await opened.all()] == [6, 7]

    async def test_sequences_never_go_back_after_pruning_everything(
        self, make_log: MakeLog
    ) -> None:
        async with self.open(make_log) as log:
            done = await log.append(*(make_event(x=i) for i in range(5)))
            assert await log.log.prune(5, done[-1].at + 1, None) == 5
            assert await log.all() == []
            assert await log.log.last_seq() == 5
            assert await log.log.first_seq() == 6
            (new,) = await log.append(make_event())
            assert new.seq == 6
            assert await log.log.prune(6, new.at + 1, None) == 1
        async with self.open(make_log) as log:
            assert await log.log.last_seq() == 6
            assert await log.log.first_seq() == 7
            (new2,) = await log.append(make_event())
            assert new2.seq == 7
            assert new2.at >= new.at

    # -- concurrency -----------------------------------------------------------------------

    async def test_concurrent_appends_share_commits(self, opened: Opened) -> None:
        tasks = 200

        async def one(i: int) -> tuple[list[Event], list[Appended]]:
            events = [make_event(f"ns/{i % 7}", task=i, n=n) for n in range(1 + i % 3)]
            await anyio.sleep(0)
            return events, await opened.log.append(entries(*events))

        with anyio.fail_after(TIMEOUT):
            results = await asyncio.gather(*(one(i) for i in range(tasks)))
        total = sum(len(events) for events, _ in results)
        seqs = sorted(d.seq for _, done in results for d in done)
        assert seqs == list(range(1, total + 1))
        for events, done in results:
            assert [d.seq for d in done] == list(range(done[0].seq, done[0].seq + len(events)))
            assert len({d.at for d in done}) == 1
        stored = {r.seq: r.event for r in await opened.all()}
        for events, done in results:
            assert [stored[d.seq] for d in done] == events
        assert [r.seq for r in opened.seen] == seqs, "on_records in sequence order"
        assert len(opened.calls) < tasks, "concurrent appends share group commits"
        times = [r.at for r in opened.seen]
        assert times == sorted(times)

    # -- errors ----------------------------------------------------------------------------

    # -- conditions (flux.conditions), decided where the log orders events -------------------

    async def test_concurrent_writes_against_one_version_pass_once(self, opened: Opened) -> None:
        (created,) = await opened.append(make_event("ns/c", n=0))
        racing = [
            opened.append_checked([(make_event("ns/c", n=i), Check(expected_version=created.seq))])
            for i in range(1, 21)
        ]
        results = [r for (r,) in await asyncio.gather(*racing)]
        passed = [r for r in results if r.failure is None]
        assert len(passed) == 1
        refused = [r for r in results if r.failure is not None]
        assert all(r.seq == 0 for r in refused)
        assert {r.failure.current_version for r in refused if r.failure} == {passed[0].seq}
        stored = await opened.all()
        assert [r.seq for r in stored] == [1, 2], "a refused write takes no sequence"

    async def test_conditions_count_writes_in_flight_in_the_same_group(
        self, opened: Opened
    ) -> None:
        (created,) = await opened.append(make_event("ns/c", n=0))
        plain = opened.append(make_event("ns/c", n=1))
        checked = opened.append_checked(
            [(make_event("ns/c", n=2), Check(expected_version=created.seq))]
        )
        (plain_done,), (checked_done,) = await asyncio.gather(plain, checked)
        # One order or the other, never a lost update: if the conditional write passed, it
        # was stored right after the version it expected.
        if checked_done.failure is None:
            assert checked_done.seq == created.seq + 1
            assert plain_done.seq == created.seq + 2
        else:
            assert checked_done.failure.current_version == plain_done.seq

    async def test_an_atomic_append_is_stored_whole_in_consecutive_sequences_or_not_at_all(
        self, opened: Opened
    ) -> None:
        (a,) = await opened.append(make_event("ns/a", s="open"))
        (b,) = await opened.append(make_event("ns/b", busy=False))
        refused = await opened.append_checked(
            [
                (make_event("ns/a", s="taken"), Check(expected_version=a.seq)),
                (make_event("ns/b", busy=True), Check(expected_version=a.seq)),  # wrong
            ],
            atomic=True,
        )
        assert all(r.failure is not None for r in refused)
        assert len(await opened.all()) == 2
        done = await opened.append_checked(
            [
                (make_event("ns/a", s="taken"), Check(expected_version=a.seq)),
                (make_event("ns/x", note=1), None),
                (make_event("ns/b", busy=True), Check(expected_version=b.seq)),
            ],
            atomic=True,
        )
        assert [r.seq for r in done] == [3, 4, 5]
        assert opened.engine.entities["ns/a"].properties == {"s": "taken"}

    async def test_a_retried_conditional_write_is_a_duplicate_not_a_conflict(
        self, opened: Opened
    ) -> None:
        event = make_event("ns/d", n=1)
        (first,) = await opened.append_checked([(event, Check(expected_version=0))])
        (again,) = await opened.append_checked([(event, Check(expected_version=0))])
        assert first.failure is None and again.failure is None
        assert again.duplicate and again.seq == first.seq

    async def test_stored_ids_in_a_checked_group_are_duplicates_whatever_their_conditions(
        self, opened: Opened
    ) -> None:
        """The SQLite log decides a checked group as if none of its ids were stored, and again
        with them looked up when one is: the answers must be those of deciding with them known,
        whether the repeat's condition holds now or not, and whether the repeat is checked or
        plain, in the same group or not."""
        claim = make_event("ns/r", claim="w1")
        (stored,) = await opened.append_checked([(claim, Check(expected_version=0))])
        plain = make_event("ns/p", n=1)
        (plain_stored,) = await opened.append(plain)
        checked_group = opened.append_checked(
            [
                (claim, Check(expected_properties={"other": None})),  # still holds
                (claim, Check(expected_version=0)),  # no longer holds
                (make_event("ns/r", claim="w2"), Check(expected_version=stored.seq)),
            ]
        )
        again, plain_again = await asyncio.gather(checked_group, opened.append(plain))
        assert [(r.seq, r.duplicate, r.failure) for r in again[:2]] == [
            (stored.seq, True, None),
            (stored.seq, True, None),
        ]
        assert again[2].failure is None and not again[2].duplicate
        assert plain_again[0].duplicate and plain_again[0].seq == plain_stored.seq
        assert [r.seq for r in await opened.all()] == [1, 2, 3]
        assert opened.engine.entities["ns/r"].properties == {"claim": "w2"}

    async def test_conditions_are_decided_at_the_time_the_entries_are_stored_with(
        self, opened: Opened
    ) -> None:
        (done,) = await opened.append_checked(
            [(make_event("ns/t", n=1), Check(expected_version=0))]
        )
        assert opened.decided_at == [done.at // 1000]

    async def test_a_lease_token_is_the_acquiring_events_sequence(self, opened: Opened) -> None:
        await opened.append(make_event("ns/other", n=1))
        lease_event = make_event("ns/t", **{"__lease__": None})
        (done,) = await opened.append_checked(
            [(lease_event, Check(lease=LeaseOp("acquire", "w1", None, 60_000)))]
        )
        assert done.failure is None
        stored = (await opened.all())[-1]
        assert stored.seq == done.seq
        assert stored.event["payload"]["properties"]["__lease__"]["token"] == done.seq
        (second,) = await opened.append_checked(
            [
                (
                    make_event("ns/t", **{"__lease__": None}),
                    Check(lease=LeaseOp("acquire", "w2", None, 60_000)),
                )
            ]
        )
        assert second.failure is not None and "held by 'w1'" in second.failure.reason

    async def test_a_closed_log_refuses_work_with_log_unavailable(self, make_log: MakeLog) -> None:
        async with self.open(make_log) as log:
            await log.append(make_event())
        with pytest.raises(LogUnavailable):
            await log.append(make_event())
        with pytest.raises(LogUnavailable):
            await log.log.submit(entries(make_event()))
        with pytest.raises(LogUnavailable):
            await log.log.history("ns/a", 0, 10)
        with pytest.raises(LogUnavailable):
            await log.log.prune(1, None, 0)
        with pytest.raises(LogUnavailable):
            await log.all()
        await log.log.close()  # closing twice is harmless

    async def test_appends_waiting_at_close_finish(self, make_log: MakeLog) -> None:
        async with self.open(make_log) as log:
            pending = [asyncio.ensure_future(log.append(make_event(x=i))) for i in range(20)]
            await anyio.sleep(0)
        with anyio.fail_after(TIMEOUT):
            outcomes = await asyncio.gather(*pending, return_exceptions=True)
        stored = 0
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                assert isinstance(outcome, LogUnavailable)
            else:
                stored += 1
        async with self.open(make_log) as log:
            assert len(await log.all()) == stored

    async def test_a_failing_append_does_not_stop_the_log(self, opened: Opened) -> None:
        with anyio.fail_after(TIMEOUT), pytest.raises(LogError):
            await opened.log.append([object()])  # type: ignore[list-item]
        (done,) = await opened.append(make_event())
        assert done.seq == 1
        assert len(await opened.all()) == 1

    async def test_storage_that_cannot_be_opened_raises_log_error(
        self, unusable_log: EventLog
    ) -> None:
        with anyio.fail_after(TIMEOUT), pytest.raises(LogError):
            await unusable_log.start(lambda records: None)
        with pytest.raises(LogError):
            await unusable_log.append(entries(make_event()))
        await unusable_log.close()


class _Open:
    """`async with` a started log (an `Opened`); closes it on the way out."""

    def __init__(self, make_log: MakeLog, after_seq: int) -> None:
        self.opened = Opened(make_log())
        self.after_seq = after_seq

    async def __aenter__(self) -> Opened:
        with anyio.fail_after(TIMEOUT):
            await self.opened.log.start(
                self.opened.on_records, after_seq=self.after_seq, checker=self.opened.checker
            )
        return self.opened

    async def __aexit__(self, *exc: object) -> None:
        with anyio.fail_after(TIMEOUT):
            await self.opened.log.close()
