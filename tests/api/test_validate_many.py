"""`validate_many`, the batch's validator: its inline path for the common event shape must give
exactly what `validate_event` gives (the same canonical event, the same error and message) for
every input, including the near misses of that shape, and `uuid7_many` must make ids as
`uuid7` does."""

from __future__ import annotations

import copy
import time
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.errors import ValidationError
from flux.events import (
    EXPIRED,
    LEASE,
    MAX_PAYLOAD_DEPTH,
    uuid7_many,
    validate_event,
    validate_many,
)

from .cases import CASES, ORDER
from .helpers import UUID7, nested_payload, new_event

MAX_ID = 16  # a small entity id limit, so that ids beyond it are easy to draw


def outcome(result: Any, item: Any) -> Any:
    """An event without its generated id and server time (compared apart), or an error's type
    and message."""
    if isinstance(result, ValidationError):
        return ("error", type(result), result.message)
    stamped = "timestamp" not in item  # the time of validation: a millisecond may pass
    return {**result, "eventId": None, "timestamp": None if stamped else result["timestamp"]}


def one_by_one(items: list[Any]) -> list[Any]:
    results: list[Any] = []
    for item in items:
        try:
            results.append(validate_event(item, MAX_ID))
        except ValidationError as exc:
            results.append(exc)
    return results


def assert_same(items: list[Any]) -> None:
    """validate_many answers each item as validate_event does: a given `eventId` kept, a
    generated one a fresh UUIDv7, the rest of the event equal and in the same key order."""
    # Each gets its own copy: `ttl_ms` becomes a property in the payload it is given.
    many = validate_many(copy.deepcopy(items), MAX_ID)
    single = one_by_one(copy.deepcopy(items))
    assert len(many) == len(items)
    for item, got, want in zip(items, many, single, strict=True):
        assert outcome(got, item) == outcome(want, item), item
        if isinstance(got, dict):
            assert list(got) == list(want), item
            given_id = item.get("eventId")
            if given_id:
                assert got["eventId"] == given_id
            else:
                assert UUID7.match(got["eventId"]), got["eventId"]
    # The ids made for events without one are all different (a given id may repeat).
    generated = [
        got["eventId"]
        for item, got in zip(items, many, strict=True)
        if isinstance(got, dict) and not item.get("eventId")
    ]
    assert len(set(generated)) == len(generated)


# Values for each field of an event: the right type and its near misses.
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**64), 2**64) | st.floats() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=4,
)
STREAMS = st.sampled_from(["bench.readings", "s", "new.stream", "Bad", "", "a..b", "a.", "x y"])
TEXTS = st.sampled_from(["src", "", "a\x00b", "x" * MAX_ID, "x" * (MAX_ID + 1), "ns/e1"])
TIMESTAMPS = st.sampled_from([1, 0, -1, 2**63 - 1, 2**63, -(2**63) - 1, 1.5, True, None, "1"])
SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3)
PROP_KEYS = st.sampled_from(["a", "b", "", LEASE, EXPIRED, "__deleted__", "__ttl_ms__"])
PROPERTIES = st.dictionaries(PROP_KEYS, SCALARS | ANY_JSON, max_size=4)


@st.composite
def payloads(draw: st.DrawFn) -> Any:
    payload: dict[str, Any] = {}
    if draw(st.integers(0, 9)):
        payload["entity_id"] = draw(TEXTS | ANY_JSON)
    if draw(st.integers(0, 9)):
        payload["properties"] = draw(PROPERTIES | ANY_JSON)
    if not draw(st.integers(0, 5)):
        payload[draw(st.sampled_from(["extra", "entity_id", "properties"]))] = draw(ANY_JSON)
    if not draw(st.integers(0, 20)):
        return draw(ANY_JSON)
    if not draw(st.integers(0, 30)):
        return nested_payload(MAX_PAYLOAD_DEPTH + 1)
    return payload


@st.composite
def near_events(draw: st.DrawFn) -> Any:
    """Mostly the common shape, each part sometimes missing, mistyped, invalid or joined by
    another field (eventId, key, schema, the coordination fields)."""
    if not draw(st.integers(0, 30)):
        return draw(ANY_JSON)
    fields: list[tuple[str, Any]] = [
        ("stream", draw(STREAMS | ANY_JSON) if not draw(st.integers(0, 8)) else "bench.readings"),
        ("source", draw(TEXTS | ANY_JSON) if not draw(st.integers(0, 8)) else "src"),
        ("timestamp", draw(TIMESTAMPS) if not draw(st.integers(0, 8)) else 1_767_225_600_000),
        ("payload", draw(payloads())),
    ]
    fields = [f for f in fields if draw(st.integers(0, 15))]  # now and then one is missing
    extra = draw(
        st.lists(
            st.sampled_from(
                ["eventId", "key", "schema", "expected_version", "ttl_ms", "other", "timestamp"]
            ),
            max_size=2,
        )
    )
    for name in extra:
        fields.append((name, draw(TEXTS | ANY_JSON | st.sampled_from(["", "id-1", 3, None]))))
    order = draw(st.permutations(range(len(fields))))
    return {fields[i][0]: fields[i][1] for i in order}


@settings(max_examples=1000, deadline=None)
@given(st.lists(near_events(), max_size=6))
def test_the_inline_path_answers_as_validate_event(items: list[Any]) -> None:
    assert_same(items)


@pytest.mark.parametrize("case", CASES + ORDER, ids=[c[0] for c in CASES + ORDER])
def test_every_bad_input_gets_the_same_message(case: tuple[str, Any, str]) -> None:
    _, raw, message = case
    (result,) = validate_many([raw])
    assert isinstance(result, ValidationError)
    assert result.message == message


def test_common_events_take_the_inline_path_and_canonical_form() -> None:
    """The common shape (as `new_event` and the benchmark send it), with and without an
    eventId, mixed with bad events: each answered in place."""
    validate_event(new_event())  # the stream is known to be valid from here on
    items = [
        new_event(),
        new_event(eventId="given-1"),
        {"stream": "s"},
        new_event(),
        new_event(eventId=""),
    ]
    assert_same(items)
    results = validate_many(items)
    assert isinstance(results[2], ValidationError)
    assert results[1]["eventId"] == "given-1"  # type: ignore[index]


def test_uuid7_many_makes_uuid7s_of_this_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = uuid7_many(5000)
    after = time.time_ns() // 1_000_000
    assert len(set(ids)) == 5000
    for text in ids:
        assert UUID7.match(text), text
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert before <= int(text.replace("-", "")[:12], 16) <= after
    assert len(uuid7_many(1)) == 1
