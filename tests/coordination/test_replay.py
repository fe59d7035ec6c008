"""Replay agrees with live application for the coordination event kinds (conditional writes,
leases, TTL, expiries, deletions kept for changes-since): a property test over random runs,
decided by `flux.conditions.evaluate` as the log decides them, then stored and applied."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flux.conditions import Check, Failure, LeaseOp, evaluate
from flux.engine import StateEngine
from flux.events import DELETED, EXPIRED, LEASE, TTL, Event, uuid7

IDS = st.sampled_from(["a/1", "a/2", "b/1", "b/2"])
KEPT = 1  # deletions remembered: small, so forgetting them (the floor) is exercised too
OWNERS = st.sampled_from(["w1", "w2"])


def event(entity_id: str, props: dict[str, Any]) -> Event:
    return {
        "eventId": uuid7(),
        "stream": "s",
        "source": "t",
        "timestamp": 1,
        "payload": {"entity_id": entity_id, "properties": props},
    }


@st.composite
def operation(draw: st.DrawFn, engine: StateEngine) -> tuple[Event, Check | None]:
    entity_id = draw(IDS)
    entity = engine.get(entity_id)
    lease = entity.properties.get(LEASE) if entity is not None else None
    token = lease.get("token") if isinstance(lease, dict) else draw(st.integers(1, 50))
    kind = draw(
        st.sampled_from(
            [
                "plain",
                "ttl",
                "delete",
                "version",
                "props",
                "acquire",
                "renew",
                "release",
                "expire",
                "fenced",
            ]
        )
    )
    value = draw(st.integers(0, 3))
    if kind == "plain":
        return event(entity_id, {"x": value}), None
    if kind == "ttl":
        return event(entity_id, {"x": value, TTL: draw(st.sampled_from([None, 10, 500]))}), None
    if kind == "delete":
        return event(entity_id, {DELETED: True, EXPIRED: "ttl"}), Check(must_exist=True)
    if kind == "version":
        version = entity.version if entity is not None and draw(st.booleans()) else value
        return event(entity_id, {"x": value}), Check(expected_version=version)
    if kind == "props":
        return event(entity_id, {"x": value}), Check(
            expected_properties={"x": draw(st.one_of(st.none(), st.integers(0, 3)))}
        )
    if kind == "fenced":
        return event(entity_id, {"y": value}), Check(fencing_token=token)
    owner = draw(OWNERS)
    op = {
        "acquire": LeaseOp("acquire", owner, None, draw(st.sampled_from([5, 1000]))),
        "renew": LeaseOp("renew", owner, token, 1000),
        "release": LeaseOp("release", owner, token, None),
        "expire": LeaseOp("expire", None, token, None),
    }[kind]
    return event(entity_id, {LEASE: None}), Check(lease=op)


@st.composite
def runs(draw: st.DrawFn) -> tuple[list[tuple[int, int, Event]], StateEngine]:
    """A live run: groups of operations decided against the live engine (atomic or not),
    the passing ones stored with consecutive sequences and applied. Returns the stored
    records and the live engine."""
    live = StateEngine(tombstones_kept=KEPT)
    records: list[tuple[int, int, Event]] = []
    seq, at, now = 0, 1_000_000, 1_000
    for _ in range(draw(st.integers(0, 40))):
        group = [draw(operation(live)) for _ in range(draw(st.integers(1, 3)))]
        atomic = draw(st.booleans())
        now += draw(st.integers(0, 400))
        (verdicts,) = evaluate(live, [(group, atomic)], seq + 1, now)
        stored = []
        for (ev, _), verdict in zip(group, verdicts, strict=True):
            if isinstance(verdict, Failure):
                continue
            seq += 1
            stored.append((seq, at, verdict.event or ev))
        if atomic:
            assert len(stored) in (0, len(group))
        at += 1000
        live.apply_all(stored)
        records += stored
    return records, live


def changes_spec(records: list[tuple[int, int, Event]], since: int) -> tuple[list[str], list[str]]:
    """Changes after `since` by definition: entities that exist now whose version is above it
    (by version), and ids whose newest record above it deleted them (by that record)."""
    full = StateEngine(tombstones_kept=10**6)
    full.apply_all(records)
    changed = sorted(
        (e for e in full.entities.values() if e.version > since), key=lambda e: e.version
    )
    gone = sorted(
        ((i, s) for i, s in full.deleted.items() if s > since and i not in full.entities),
        key=lambda item: item[1],
    )
    return [e.id for e in changed], [i for i, _ in gone]


@settings(max_examples=300, deadline=None)
@given(runs(), st.data())
def test_replay_and_a_snapshot_plus_tail_equal_live_application(
    run: tuple[list[tuple[int, int, Event]], StateEngine], data: st.DataObject
) -> None:
    records, live = run
    replayed = StateEngine(tombstones_kept=KEPT)
    replayed.apply_all(records)
    assert replayed.state() == live.state()
    assert replayed.deleted == live.deleted
    assert replayed.deleted_floor == live.deleted_floor

    split = data.draw(st.integers(0, len(records)), label="split")
    head = StateEngine(tombstones_kept=KEPT)
    head.apply_all(records[:split])
    resumed = StateEngine.restore(head.snapshot(), tombstones_kept=KEPT)
    resumed.apply_all(records[split:])
    assert resumed.state() == live.state()
    assert resumed.deleted == live.deleted
    assert resumed.deleted_floor == live.deleted_floor

    last = records[-1][0] if records else 0
    for since in range(0, last + 1):
        for engine in (live, resumed):
            if since < engine.deleted_floor:
                continue
            page = engine.changes_since(since, 1000)
            expected_changed, expected_gone = changes_spec(records, since)
            assert [e.id for e in page.entities] == expected_changed
            assert [i for i, _ in page.deleted] == expected_gone
            assert page.next == max(last, since) and not page.more


@settings(max_examples=200, deadline=None)
@given(runs(), st.data())
def test_changes_since_in_pages_visits_every_change(
    run: tuple[list[tuple[int, int, Event]], StateEngine], data: st.DataObject
) -> None:
    records, live = run
    since = live.deleted_floor
    limit = data.draw(st.integers(1, 3), label="limit")
    changed: dict[str, int] = {}
    gone: set[str] = set()
    for _ in range(100):
        page = live.changes_since(since, limit)
        assert len(page.entities) + len(page.deleted) <= limit
        for e in page.entities:
            changed[e.id] = e.version
        gone.update(i for i, _ in page.deleted)
        assert page.next >= since
        since = page.next
        if not page.more:
            break
    expected_changed, expected_gone = changes_spec(records, live.deleted_floor)
    assert set(changed) == set(expected_changed)
    assert gone == set(expected_gone)
