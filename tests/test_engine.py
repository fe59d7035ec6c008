"""StateEngine: plain event lists in, state out. No I/O, no event loop."""

from __future__ import annotations

import functools
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.engine import SNAPSHOT_FORMAT, StateEngine
from flux.events import DELETED, Event

State = dict[str, tuple[dict[str, Any], int, int]]


def event(entity_id: Any, properties: Any, **extra: Any) -> Event:
    payload: dict[str, Any] = {"properties": properties, **extra}
    if entity_id is not None:
        payload["entity_id"] = entity_id
    return {
        "eventId": "e",
        "stream": "test",
        "source": "tests",
        "timestamp": 1,
        "payload": payload,
    }


def delete(entity_id: str) -> Event:
    return event(entity_id, {DELETED: True, "__deleted_at__": 1})


def records(*events: Event, first_seq: int = 1, at: int = 1_000) -> list[tuple[int, int, Event]]:
    return [(first_seq + i, at + i, e) for i, e in enumerate(events)]


# -- examples ----------------------------------------------------------------------------------


def test_first_event_creates_the_entity_with_log_time_and_sequence() -> None:
    engine = StateEngine()
    change = engine.apply(event("a/1", {"x": 1}), 7, 1_500)
    assert change is not None
    assert (change.kind, change.entity_id, change.properties, change.version, change.at) == (
        "update",
        "a/1",
        {"x": 1},
        7,
        1_500,
    )
    assert engine.state() == {"a/1": ({"x": 1}, 1_500, 7)}
    assert engine.last_seq == 7


def test_later_events_merge_properties_shallowly() -> None:
    engine = StateEngine()
    engine.apply_all(
        records(
            event("a/1", {"x": 1, "nested": {"p": 1, "q": 2}}),
            event("a/1", {"y": 2, "nested": {"p": 3}}),
        )
    )
    assert engine.state() == {"a/1": ({"x": 1, "y": 2, "nested": {"p": 3}}, 1_001, 2)}


def test_the_entity_does_not_share_its_properties_dict_with_the_event() -> None:
    engine = StateEngine()
    first = event("a/1", {"x": 1})
    engine.apply(first, 1, 1)
    engine.apply(event("a/1", {"y": 2}), 2, 2)
    assert first["payload"]["properties"] == {"x": 1}


@pytest.mark.parametrize(
    "ev",
    [
        event(None, {"x": 1}),
        event(42, {"x": 1}),
        event("a/1", ["x"]),
        event("a/1", None),
        event("a/1", {}),
    ],
    ids=["no-entity", "entity-not-a-string", "properties-not-an-object", "no-properties", "empty"],
)
def test_events_that_change_nothing_still_advance_the_sequence(ev: Event) -> None:
    engine = StateEngine()
    assert engine.apply(ev, 5, 1) is None
    assert engine.state() == {}
    assert engine.last_seq == 5


def test_a_tombstone_removes_the_entity_and_recreating_it_starts_empty() -> None:
    engine = StateEngine()
    engine.apply(event("a/1", {"x": 1, "y": 2}), 1, 10)
    change = engine.apply(delete("a/1"), 2, 20)
    assert change is not None
    assert (change.kind, change.properties, change.version) == ("delete", None, 2)
    assert engine.get("a/1") is None
    assert list(engine.select(namespace="a")) == []
    assert engine.namespace_counts() == {}
    engine.apply(event("a/1", {"z": 3}), 3, 30)
    assert engine.state() == {"a/1": ({"z": 3}, 30, 3)}


def test_deleting_a_missing_entity_changes_nothing() -> None:
    engine = StateEngine()
    assert engine.apply(delete("a/1"), 1, 1) is None
    assert engine.last_seq == 1


def test_a_false_deleted_flag_is_an_ordinary_property() -> None:
    engine = StateEngine()
    engine.apply(event("a/1", {DELETED: False}), 1, 1)
    assert engine.state() == {"a/1": ({DELETED: False}, 1, 1)}


def test_select_by_namespace_and_prefix() -> None:
    engine = StateEngine()
    ids = ["a", "a/1", "a/2", "ab/1", "b/1", "b/x/1", "c"]
    engine.apply_all(records(*(event(i, {"v": i}) for i in ids)))

    def chosen(**kwargs: Any) -> list[str]:
        return sorted(e.id for e in engine.select(**kwargs))

    assert chosen() == ids
    assert chosen(namespace="a") == ["a/1", "a/2"]
    assert chosen(namespace="zz") == []
    assert chosen(prefix="a") == ["a", "a/1", "a/2", "ab/1"]
    assert chosen(prefix="a/") == ["a/1", "a/2"]
    assert chosen(prefix="b/x") == ["b/x/1"]
    assert chosen(prefix="b", namespace="b") == ["b/1", "b/x/1"]
    assert engine.namespace_counts() == {"a": 2, "ab": 1, "b": 2}


def test_snapshot_round_trip() -> None:
    engine = StateEngine()
    engine.apply_all(records(event("a/1", {"x": [1, 2]}), event("b", {"y": None}), delete("b")))
    data = engine.snapshot()
    assert orjson.loads(data)["snapshot_format"] == SNAPSHOT_FORMAT
    restored = StateEngine.restore(data)
    assert restored.state() == engine.state()
    assert restored.last_seq == engine.last_seq == 3
    assert sorted(e.id for e in restored.select(prefix="a")) == ["a/1"]


def test_an_object_format_snapshot_of_an_older_flux_still_restores() -> None:
    data = orjson.dumps(
        {
            "snapshot_format": 2,
            "sequence_number": 7,
            "entities": [{"id": "a/1", "properties": {"x": 1}, "last_updated": 5, "version": 7}],
        }
    )
    restored = StateEngine.restore(data)
    assert restored.state() == {"a/1": ({"x": 1}, 5, 7)}
    assert restored.last_seq == 7
    assert orjson.loads(restored.snapshot())["entities"] == [["a/1", {"x": 1}, 5, 7]]


def _snapshot(entities: object, kind: int = SNAPSHOT_FORMAT, seq: object = 1) -> bytes:
    return orjson.dumps({"snapshot_format": kind, "sequence_number": seq, "entities": entities})


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        _snapshot([], kind=1),
        orjson.dumps({"snapshot_format": SNAPSHOT_FORMAT, "entities": []}),
        _snapshot([], seq="x"),
        _snapshot(3),
        _snapshot([{"id": "a", "properties": {}, "last_updated": 1, "version": 1}]),
        _snapshot([["a", {}, 1]]),
        _snapshot([["a", [], 1, 1]]),
        _snapshot([[1, {}, 1, 1]]),
        _snapshot([["a", {}, "1", 1]]),
        _snapshot([{"id": "a"}], kind=2),
        _snapshot([{"id": "a", "properties": [], "last_updated": 1, "version": 1}], kind=2),
        _snapshot([{"id": 1, "properties": {}, "last_updated": 1, "version": 1}], kind=2),
    ],
)
def test_restore_rejects_a_malformed_snapshot_with_value_error(data: bytes) -> None:
    with pytest.raises(ValueError):
        StateEngine.restore(data)


# -- properties --------------------------------------------------------------------------------

ENTITY_IDS = st.sampled_from(["a", "a/1", "a/2", "ab/1", "b/1", "b/1/x", "c/1"])
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.text(max_size=5),
    st.lists(st.integers(0, 9), max_size=3),
    st.dictionaries(st.sampled_from(["p", "q"]), st.integers(0, 9), max_size=2),
)
PROPERTIES = st.dictionaries(st.sampled_from(["x", "y", "z", DELETED]), VALUES, max_size=3)
EVENTS = st.one_of(
    st.builds(event, ENTITY_IDS, PROPERTIES),
    st.builds(delete, ENTITY_IDS),
    st.builds(event, st.one_of(st.none(), st.integers(0, 3)), PROPERTIES),
    st.builds(event, ENTITY_IDS, st.one_of(st.none(), st.lists(st.integers(), max_size=2))),
)


@st.composite
def logs(draw: st.DrawFn) -> list[tuple[int, int, Event]]:
    """(seq, at, event) records as the log hands them over: increasing sequences (with gaps),
    times that never go back."""
    events = draw(st.lists(EVENTS, max_size=40))
    seq, at, out = 0, 1_700_000_000_000_000, []
    for ev in events:
        seq += draw(st.integers(1, 3))
        at += draw(st.integers(0, 2_000))
        out.append((seq, at, ev))
    return out


def fold_step(state: State, record: tuple[int, int, Event]) -> State:
    """The specification, as a fold: a new state from the old one and one record."""
    seq, at, ev = record
    payload = ev["payload"]
    entity_id, props = payload.get("entity_id"), payload.get("properties")
    if not isinstance(entity_id, str) or not isinstance(props, dict):
        return state
    if props.get(DELETED) is True:
        return {k: v for k, v in state.items() if k != entity_id}
    if not props:
        return state
    before = state[entity_id][0] if entity_id in state else {}
    return {**state, entity_id: ({**before, **props}, at, seq)}


def fold(log: list[tuple[int, int, Event]]) -> State:
    return functools.reduce(fold_step, log, {})


@settings(max_examples=200, deadline=None)
@given(logs())
def test_applying_events_one_by_one_equals_folding_them(log: list[tuple[int, int, Event]]) -> None:
    engine = StateEngine()
    for seq, at, ev in log:
        engine.apply(ev, seq, at)
    expected = fold(log)
    assert engine.state() == expected
    assert engine.last_seq == (log[-1][0] if log else 0)
    # The indexes agree with a scan of the folded state.
    for prefix in ("", "a", "a/", "b/1", "zz"):
        assert sorted(e.id for e in engine.select(prefix=prefix)) == sorted(
            i for i in expected if i.startswith(prefix)
        )
    for namespace in ("a", "ab", "b", "c"):
        assert sorted(e.id for e in engine.select(namespace=namespace)) == sorted(
            i for i in expected if i.startswith(namespace + "/")
        )
    counts: dict[str, int] = {}
    for i in expected:
        head, sep, _ = i.partition("/")
        if sep:
            counts[head] = counts.get(head, 0) + 1
    assert engine.namespace_counts() == counts


@settings(max_examples=200, deadline=None)
@given(logs(), st.data())
def test_snapshot_plus_tail_replay_equals_full_replay(
    log: list[tuple[int, int, Event]], data: st.DataObject
) -> None:
    split = data.draw(st.integers(0, len(log)), label="split")
    full = StateEngine()
    full.apply_all(log)

    head = StateEngine()
    head.apply_all(log[:split])
    resumed = StateEngine.restore(head.snapshot())
    assert resumed.state() == head.state()
    resumed.apply_all(log[split:])

    assert resumed.state() == full.state()
    assert resumed.last_seq == full.last_seq
    assert resumed.snapshot() == full.snapshot()
    assert resumed.namespace_counts() == full.namespace_counts()
    assert sorted(e.id for e in resumed.select(prefix="a")) == sorted(
        e.id for e in full.select(prefix="a")
    )


@settings(max_examples=200, deadline=None)
@given(logs(), st.data())
def test_a_snapshot_taken_while_events_apply_is_exact_after_replay(
    log: list[tuple[int, int, Event]], data: st.DataObject
) -> None:
    """The service encodes a snapshot a piece at a time and applies events between pieces
    (StateEngine.snapshot_parts): restoring it and replaying the log after its sequence must
    give the state of a full replay."""
    split = data.draw(st.integers(0, len(log)), label="split")
    full = StateEngine()
    full.apply_all(log)

    live = StateEngine()
    live.apply_all(log[:split])
    chunk = data.draw(st.integers(1, 3), label="chunk")
    parts, rest = [], log[split:]
    for part in live.snapshot_parts(chunk):
        parts.append(part)
        take = data.draw(st.integers(0, len(rest)), label="applied between pieces")
        live.apply_all(rest[:take])
        rest = rest[take:]
    live.apply_all(rest)
    snapshot = b"".join(parts)

    resumed = StateEngine.restore(snapshot)
    assert resumed.last_seq == (log[split - 1][0] if split else 0)
    resumed.apply_all([r for r in log if r[0] > resumed.last_seq])
    assert resumed.state() == full.state() == live.state()
    assert resumed.namespace_counts() == full.namespace_counts()


@settings(max_examples=200, deadline=None)
@given(logs())
def test_apply_all_equals_applying_one_by_one(log: list[tuple[int, int, Event]]) -> None:
    """apply_all inlines the common update; it must make the same state and the same changes
    (in order) as calling apply per event, on every kind of event."""
    one_by_one = StateEngine()
    changes = [c for seq, at, ev in log if (c := one_by_one.apply(ev, seq, at)) is not None]
    bulk = StateEngine()
    assert bulk.apply_all(log) == changes
    assert bulk.state() == one_by_one.state()
    assert bulk.last_seq == one_by_one.last_seq
    assert bulk.namespace_counts() == one_by_one.namespace_counts()


def test_apply_all_of_nothing_keeps_the_sequence() -> None:
    engine = StateEngine()
    engine.apply_all([(5, 1, event("a/1", {"x": 1}))])
    assert engine.apply_all([]) == []
    assert engine.last_seq == 5
