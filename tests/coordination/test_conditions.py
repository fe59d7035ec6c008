"""flux.conditions.evaluate: the decisions the log asks for, on a plain engine."""

from __future__ import annotations

from typing import Any

from flux.conditions import Check, Failure, LeaseOp, Passed, evaluate
from flux.engine import StateEngine
from flux.events import DELETED, LEASE, Event, uuid7

NOW = 1_800_000_000_000


def event(entity_id: str, **props: Any) -> Event:
    return {
        "eventId": uuid7(),
        "stream": "test",
        "source": "unit",
        "timestamp": 1,
        "payload": {"entity_id": entity_id, "properties": props},
    }


def engine_with(*events: Event) -> StateEngine:
    engine = StateEngine()
    engine.apply_all((seq, seq * 1000, e) for seq, e in enumerate(events, start=1))
    return engine


def one(engine: StateEngine, e: Event, check: Check | None, first: int = 100) -> Any:
    return evaluate(engine, [([(e, check)], False)], first, NOW)[0][0]


def test_expected_version_must_equal_the_current_version() -> None:
    engine = engine_with(event("t/1", status="open"))  # version 1
    assert isinstance(one(engine, event("t/1", a=1), Check(expected_version=1)), Passed)
    failed = one(engine, event("t/1", a=1), Check(expected_version=2))
    assert isinstance(failed, Failure)
    assert failed.current_version == 1
    assert failed.current_properties == {"status": "open"}
    assert failed.expected == {"version": 2}
    assert "expected version 2, current version is 1" in failed.reason


def test_expected_version_zero_means_the_entity_must_not_exist() -> None:
    engine = engine_with(event("t/1", status="open"))
    assert isinstance(one(engine, event("t/2", a=1), Check(expected_version=0)), Passed)
    failed = one(engine, event("t/1", a=1), Check(expected_version=0))
    assert isinstance(failed, Failure) and "exists" in failed.reason
    # a deleted entity does not exist any more
    engine.apply_all([(2, 2000, event("t/1", **{DELETED: True}))])
    assert isinstance(one(engine, event("t/1", a=1), Check(expected_version=0)), Passed)


def test_expected_properties_with_null_meaning_absent() -> None:
    engine = engine_with(event("t/1", status="open", owner=None))
    ok = Check(expected_properties={"status": "open", "owner": None, "missing": None})
    assert isinstance(one(engine, event("t/1", a=1), ok), Passed)
    failed = one(engine, event("t/1", a=1), Check(expected_properties={"status": "taken"}))
    assert isinstance(failed, Failure)
    assert "'status'" in failed.reason and "'open'" in failed.reason


def test_entries_of_one_call_see_each_other_in_order() -> None:
    engine = StateEngine()
    create = event("t/1", status="open")
    take = event("t/1", status="taken")
    verdicts = evaluate(
        engine,
        [
            ([(create, Check(expected_version=0))], False),
            ([(take, Check(expected_version=10, expected_properties={"status": "open"}))], False),
            ([(event("t/1", x=1), Check(expected_version=10))], False),  # now at 11
        ],
        10,
        NOW,
    )
    assert isinstance(verdicts[0][0], Passed)
    assert isinstance(verdicts[1][0], Passed)
    assert isinstance(verdicts[2][0], Failure)
    assert verdicts[2][0].current_version == 11


def test_an_atomic_group_passes_whole_or_leaves_no_trace() -> None:
    engine = engine_with(event("t/1", status="open"), event("w/1", busy=False))
    take = event("t/1", status="taken")
    busy = event("w/1", busy=True)
    verdicts = evaluate(
        engine,
        [
            ([(take, Check(expected_version=1)), (busy, Check(expected_version=99))], True),
            # sees the state without the refused group's effects
            ([(event("t/1", y=1), Check(expected_version=1))], False),
        ],
        10,
        NOW,
    )
    first, second = verdicts
    assert all(isinstance(v, Failure) for v in first)
    assert "another event of the atomic batch" in first[0].reason
    assert "expected version 99" in first[1].reason
    assert isinstance(second[0], Passed)


def test_a_lease_gets_its_own_sequence_as_token_and_excludes_others() -> None:
    engine = StateEngine()
    acquire = Check(lease=LeaseOp("acquire", "w1", None, 5000))
    passed = one(engine, event("t/1", **{LEASE: None}), acquire, first=42)
    assert isinstance(passed, Passed) and passed.event is not None
    lease = passed.event["payload"]["properties"][LEASE]
    assert lease == {"owner": "w1", "token": 42, "acquired_at": NOW, "expires_at": NOW + 5000}
    engine.apply_all([(42, 1, passed.event)])
    other = one(
        engine, event("t/1", **{LEASE: None}), Check(lease=LeaseOp("acquire", "w2", None, 5000))
    )
    assert isinstance(other, Failure) and "held by 'w1'" in other.reason
    # the holder's writes pass with its token; a stale or foreign token does not
    assert isinstance(one(engine, event("t/1", done=1), Check(fencing_token=42)), Passed)
    stale = one(engine, event("t/1", done=1), Check(fencing_token=41))
    assert isinstance(stale, Failure) and "stale" in stale.reason


def test_an_expired_lease_is_free_and_its_token_refused() -> None:
    engine = StateEngine()
    old = {"owner": "w1", "token": 7, "acquired_at": NOW - 9000, "expires_at": NOW - 1}
    engine.apply_all([(7, 1, event("t/1", **{LEASE: old}))])
    refused = one(engine, event("t/1", done=1), Check(fencing_token=7))
    assert isinstance(refused, Failure) and "expired" in refused.reason
    taken = one(
        engine,
        event("t/1", **{LEASE: None}),
        Check(lease=LeaseOp("acquire", "w2", None, 100)),
        first=8,
    )
    assert isinstance(taken, Passed) and taken.event is not None
    assert taken.event["payload"]["properties"][LEASE]["token"] == 8
    # renewing a lease that expired is refused: it was lost
    renew = one(engine, event("t/1", **{LEASE: None}), Check(lease=LeaseOp("renew", "w1", 7, 100)))
    assert isinstance(renew, Failure) and "lost" in renew.reason
    # the expiry applies once, to the lease that fell due
    expire = Check(lease=LeaseOp("expire", None, 7, None))
    assert isinstance(one(engine, event("t/1", **{LEASE: None}), expire), Passed)
    wrong = one(
        engine, event("t/1", **{LEASE: None}), Check(lease=LeaseOp("expire", None, 6, None))
    )
    assert isinstance(wrong, Failure)


def test_renew_and_release_need_the_holder_and_its_token() -> None:
    engine = StateEngine()
    lease = {"owner": "w1", "token": 3, "acquired_at": NOW, "expires_at": NOW + 1000}
    engine.apply_all([(3, 1, event("t/1", **{LEASE: lease}))])
    renewed = one(
        engine, event("t/1", **{LEASE: None}), Check(lease=LeaseOp("renew", "w1", 3, 9000))
    )
    assert isinstance(renewed, Passed) and renewed.event is not None
    assert renewed.event["payload"]["properties"][LEASE]["expires_at"] == NOW + 9000
    assert renewed.event["payload"]["properties"][LEASE]["token"] == 3
    foreign = one(
        engine, event("t/1", **{LEASE: None}), Check(lease=LeaseOp("release", "w2", 3, None))
    )
    assert isinstance(foreign, Failure)
    released = one(
        engine, event("t/1", **{LEASE: None}), Check(lease=LeaseOp("release", "w1", 3, None))
    )
    assert isinstance(released, Passed) and released.event is not None
    assert released.event["payload"]["properties"][LEASE] is None


def test_must_exist() -> None:
    engine = engine_with(event("t/1", a=1))
    assert isinstance(one(engine, event("t/1", **{DELETED: True}), Check(must_exist=True)), Passed)
    assert isinstance(one(engine, event("t/2", **{DELETED: True}), Check(must_exist=True)), Failure)


def test_a_presence_lease_deletes_its_entity_when_it_ends() -> None:
    engine = StateEngine()
    acquire = Check(lease=LeaseOp("acquire", "a7", None, 100, presence=True))
    passed = one(engine, event("agents/7", online=True, **{LEASE: None}), acquire, first=5)
    assert isinstance(passed, Passed) and passed.event is not None
    assert passed.event["payload"]["properties"][LEASE]["presence"] is True
    engine.apply_all([(5, 1, passed.event)])
    for op in (LeaseOp("expire", None, 5, None), LeaseOp("release", "a7", 5, None)):
        ended = evaluate(
            engine,
            [([(event("agents/7", **{LEASE: None}), Check(lease=op))], False)],
            6,
            NOW + 1000,
        )[0][0]
        assert isinstance(ended, Passed) and ended.event is not None
        assert ended.event["payload"]["properties"][DELETED] is True
        assert ended.event["payload"]["properties"]["__expired__"] == "presence"
