"""`encode_events`: several events encoded in one call and cut apart must give exactly what
encoding each one gives, whatever the payloads hold (nested objects that start with `eventId`
included), and an event that cannot be encoded is a ValidationError."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.errors import ValidationError
from flux.events import tombstone, validate_event
from flux.service import encode_events

KEYS = st.sampled_from(["eventId", "a", "", 'x"y', ',{"eventId":"'])
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.just(',{"eventId":"'),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(KEYS | st.text(), inner, max_size=3)
    ),
    max_leaves=10,
)


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "stream": "s",
        "source": draw(st.text(min_size=1, max_size=5)),
        "timestamp": draw(st.integers(1, 2**40)),
        "payload": {
            "entity_id": draw(st.text(max_size=8).filter(lambda s: "\x00" not in s)),
            "properties": draw(st.dictionaries(KEYS, VALUES, max_size=4)),
        },
    }
    if draw(st.booleans()):
        raw["eventId"] = draw(st.text(max_size=8).filter(lambda s: "\x00" not in s))
    if draw(st.booleans()):
        raw["key"] = draw(st.text(max_size=4))
    event = validate_event(raw)
    if draw(st.booleans()):  # not in canonical order: must still encode exactly
        event = dict(reversed(list(event.items())))
    return event


@settings(max_examples=300, deadline=None)
@given(st.lists(events(), max_size=8))
def test_encoded_together_equals_encoded_one_by_one(batch: list[dict[str, Any]]) -> None:
    assert encode_events(batch) == [orjson.dumps(event) for event in batch]


def test_a_batch_of_canonical_events_is_cut_at_the_boundaries() -> None:
    nested = {"eventId": "inner", "b": [{"eventId": "deeper"}]}
    batch = [validate_event(_raw(n, {"n": n, "list": [1, nested]})) for n in range(5)]
    batch.append(tombstone("ns/e1"))
    assert encode_events(batch) == [orjson.dumps(event) for event in batch]
    assert encode_events(batch[:1]) == [orjson.dumps(batch[0])]
    # One boundary without `eventId` first, and the text once inside a payload instead: the
    # count matches, the places do not.
    odd = dict(reversed(list(validate_event(_raw(8, {"plain": 1})).items())))
    tricky = [validate_event(_raw(9, {"list": [1, {"eventId": "x"}]})), odd]
    assert encode_events(tricky) == [orjson.dumps(event) for event in tricky]
    assert encode_events([]) == []


def test_an_event_that_cannot_be_encoded_is_a_validation_error() -> None:
    batch = [validate_event(_raw(1, {"ok": 1})), validate_event(_raw(2, {"big": 2**70}))]
    with pytest.raises(ValidationError, match="event cannot be stored"):
        encode_events(batch)


def _raw(n: int, properties: dict[str, Any]) -> dict[str, Any]:
    return {
        "stream": "s",
        "source": "t",
        "timestamp": n + 1,
        "payload": {"entity_id": f"ns/e{n}", "properties": properties},
    }
