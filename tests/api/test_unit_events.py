"""The pure functions of flux.events, with no server: ids, times, decoding and validation."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flux.errors import ValidationError
from flux.events import (
    DELETED,
    DELETION_STREAM,
    MAX_ENTITY_ID_LENGTH,
    MAX_PAYLOAD_DEPTH,
    _too_deep,
    check_entity_id,
    check_id_part,
    decode_json,
    describe,
    entity_of,
    format_time,
    namespace_of,
    parse_time,
    tombstone,
    uuid7,
    validate_event,
)

from .cases import CASES, ORDER
from .helpers import UUID7, nested_payload, new_event

# -- uuid7 -------------------------------------------------------------------------------------


def test_uuid7_format_version_and_variant() -> None:
    for _ in range(1000):
        text = uuid7()
        assert UUID7.match(text), text
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_uuid7_carries_the_unix_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    text = uuid7()
    after = time.time_ns() // 1_000_000
    ms = int(text.replace("-", "")[:12], 16)
    assert before <= ms <= after


def test_uuid7_is_unique_and_time_ordered() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    first = uuid7()
    time.sleep(0.003)
    assert uuid7() > first


# -- format_time -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("us", "text"),
    [
        (0, "1970-01-01T00:00:00+00:00"),
        (1_000_000, "1970-01-01T00:00:01+00:00"),
        (1_500_000, "1970-01-01T00:00:01.500+00:00"),
        (1_120_000, "1970-01-01T00:00:01.120+00:00"),
        (1_001_000, "1970-01-01T00:00:01.001+00:00"),
        (1_000_001, "1970-01-01T00:00:01.000001+00:00"),
        (1_123_456, "1970-01-01T00:00:01.123456+00:00"),
        (1_100_100, "1970-01-01T00:00:01.100100+00:00"),
        (1_770_828_873_260_296, "2026-02-11T16:54:33.260296+00:00"),
        (1_770_828_873_260_000, "2026-02-11T16:54:33.260+00:00"),
        (1_770_828_873_000_000, "2026-02-11T16:54:33+00:00"),
    ],
)
def test_format_time_uses_0_3_or_6_fraction_digits(us: int, text: str) -> None:
    assert format_time(us) == text
    assert format_time(us, zulu=True) == text.replace("+00:00", "Z")


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=0, max_value=253_402_300_799_999_999))
def test_format_time_round_trips_through_parse_time(us: int) -> None:
    text = format_time(us)
    assert parse_time(text) == us
    assert parse_time(format_time(us, zulu=True)) == us
    fraction = text[19:-6]
    assert fraction == "" or (len(fraction) in (4, 7) and fraction[0] == ".")
    # the fewest digits: a shorter group would lose a non-zero digit
    if len(fraction) == 7:
        assert us % 1000 != 0
    if len(fraction) == 4:
        assert us % 1_000_000 != 0 and us % 1000 == 0
    expected = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)
    assert datetime.fromisoformat(text) == expected


# -- parse_time --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("1970-01-01T00:00:00Z", 0),
        ("1970-01-01T00:00:00+00:00", 0),
        ("1970-01-01T00:00:00", 0),  # no offset: UTC
        ("1970-01-01", 0),
        ("  1970-01-01T00:00:01Z  ", 1_000_000),
        ("1970-01-01T02:00:00+02:00", 0),
        ("1969-12-31T19:00:00-05:00", 0),
        ("1969-12-31T23:59:59Z", -1_000_000),
        ("2026-02-11T16:54:33.260296+00:00", 1_770_828_873_260_296),
        ("2026-02-11T16:54:33.260Z", 1_770_828_873_260_000),
        # the original's nine-digit fractions are accepted (truncated to microseconds)
        ("2026-02-11T16:54:33.260296395+00:00", 1_770_828_873_260_296),
        ("0001-01-01T00:00:00+01:00", -62_135_600_400_000_000),
        ("9999-12-31T23:59:59-01:00", 253_402_304_399_000_000),
    ],
)
def test_parse_time(text: str, us: int) -> None:
    assert parse_time(text) == us


@pytest.mark.parametrize(
    "text",
    [
        "",
        "yesterday",
        "2026-13-01",
        "2026-02-11T25:00:00Z",
        "1700000000",
        "2026-02-11T16:54:33 00:00",
    ],
)
def test_parse_time_rejects_non_iso_text(text: str) -> None:
    with pytest.raises(ValueError):
        parse_time(text)


# -- decode_json and describe ------------------------------------------------------------------


@pytest.mark.parametrize("body", [b"", b"   ", b"\n\t\r "])
def test_decode_json_empty_body_is_serdes_eof_message(body: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_json(body)
    assert caught.value.message == "EOF while parsing a value at line 1 column 0"


@pytest.mark.parametrize(
    "body",
    [b"{", b"nope", b'{"a":}', b"\xff", b'"\\ud800"', b"\xef\xbb\xbf{}", b"NaN", b"1e400", b"[1,]"],
)
def test_decode_json_invalid_bodies(body: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        decode_json(body)
    assert caught.value.message.startswith("invalid JSON: ")


def test_decode_json_valid() -> None:
    assert decode_json(b' {"a": [1, 2.5, null, true, "\\u00e9\\ud83d\\ude00"]} ') == {
        "a": [1, 2.5, None, True, "é😀"]
    }


@pytest.mark.parametrize(
    ("value", "words"),
    [
        (None, "null"),
        (True, "boolean `true`"),
        (False, "boolean `false`"),
        (5, "integer `5`"),
        (-5, "integer `-5`"),
        (1.5, "floating point `1.5`"),
        ("x", 'string "x"'),
        ('a"b', 'string "a\\"b"'),
        ([], "sequence"),
        ({}, "map"),
    ],
)
def test_describe_uses_serdes_words(value: Any, words: str) -> None:
    assert describe(value) == words


# -- validate_event ----------------------------------------------------------------------------


def test_canonical_form_and_generated_id() -> None:
    raw = new_event(properties={"a": 1}, extra="dropped", key="k", schema="s.v1")
    event = validate_event(raw)
    assert list(event) == ["eventId", "stream", "source", "timestamp", "key", "schema", "payload"]
    assert UUID7.match(event["eventId"])
    assert event["payload"] == raw["payload"]
    assert "extra" not in event


@pytest.mark.parametrize("given_id", [None, ""])
def test_event_id_null_or_empty_is_generated(given_id: str | None) -> None:
    event = validate_event(new_event(eventId=given_id))
    assert UUID7.match(event["eventId"])


@pytest.mark.parametrize("given_id", ["my-id", "not a uuid at all", "\u202eRTL😀", "x" * 5000])
def test_given_event_id_is_kept_verbatim(given_id: str) -> None:
    assert validate_event(new_event(eventId=given_id))["eventId"] == given_id


def test_null_key_and_schema_are_omitted() -> None:
    event = validate_event(new_event(key=None, schema=None))
    assert list(event) == ["eventId", "stream", "source", "timestamp", "payload"]


@pytest.mark.parametrize(
    ("raw", "message"), [(c[1], c[2]) for c in CASES + ORDER], ids=[c[0] for c in CASES + ORDER]
)
def test_validation_rules_and_messages(raw: Any, message: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_event(raw)
    assert caught.value.message == message


@pytest.mark.parametrize(
    "stream", ["sensors", "a", "0", "a.b", "a1.b2.c3", "flux.events.deletions"]
)
def test_good_streams(stream: str) -> None:
    assert validate_event(new_event(stream=stream))["stream"] == stream


def test_timestamp_bounds() -> None:
    assert validate_event(new_event(timestamp=1))["timestamp"] == 1
    assert validate_event(new_event(timestamp=2**63 - 1))["timestamp"] == 2**63 - 1


def test_payload_need_not_follow_the_state_convention() -> None:
    for payload in ({}, {"entity_id": 5}, {"properties": {}}, {"other": "x"}):
        assert validate_event(new_event(payload=payload))["payload"] == payload


def test_properties_present_must_be_an_object() -> None:
    with pytest.raises(ValidationError) as caught:
        validate_event(new_event(payload={"entity_id": "ns/a", "properties": []}))
    assert caught.value.message == "`payload.properties` must be a JSON object, got sequence"


def test_payload_depth_limit() -> None:
    validate_event(new_event(payload=nested_payload(MAX_PAYLOAD_DEPTH)))
    with pytest.raises(ValidationError) as caught:
        validate_event(new_event(payload=nested_payload(MAX_PAYLOAD_DEPTH + 1)))
    assert caught.value.message == (
        f"recursion limit exceeded: payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
    )
    # wide is fine, only depth counts
    validate_event(new_event(payload={"p": [[{"a": [1]}] * 1000] * 10}))


def test_validation_does_not_change_the_input() -> None:
    raw = new_event(extra=1)
    copy = dict(raw)
    validate_event(raw)
    assert raw == copy


# -- entity_of, tombstone, namespace_of --------------------------------------------------------


def test_entity_of() -> None:
    assert entity_of(validate_event(new_event("ns/a"))) == "ns/a"
    assert entity_of(validate_event(new_event(payload={"entity_id": 5}))) is None
    assert entity_of(validate_event(new_event(payload={}))) is None


def test_tombstone_shape() -> None:
    before = time.time_ns() // 1_000_000
    event = tombstone("ns/a")
    assert validate_event(event) == event
    assert UUID7.match(event["eventId"])
    assert event["stream"] == DELETION_STREAM == "flux.events.deletions"
    assert event["source"] == "api"
    assert event["key"] == "ns/a"
    assert before <= event["timestamp"] <= time.time_ns() // 1_000_000
    assert event["payload"] == {
        "entity_id": "ns/a",
        "properties": {DELETED: True, "__deleted_at__": event["timestamp"]},
    }


@pytest.mark.parametrize(
    ("entity_id", "namespace"),
    [("ns/a", "ns"), ("ns/a/b", "ns"), ("plain", None), ("/a", ""), ("ns/", "ns"), ("", None)],
)
def test_namespace_of(entity_id: str, namespace: str | None) -> None:
    assert namespace_of(entity_id) == namespace


def recursive_too_deep(container: Any, budget: int) -> bool:
    """The depth rule as first written (one call per container), the specification of the
    level-by-level `_too_deep`."""
    if budget < 1:
        return True
    for child in container.values() if type(container) is dict else container:
        if type(child) in (dict, list) and recursive_too_deep(child, budget - 1):
            return True
    return False


NESTED = st.recursive(
    st.one_of(st.none(), st.integers(), st.text(max_size=2)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(payload=st.dictionaries(st.text(max_size=2), NESTED, max_size=4), budget=st.integers(0, 6))
def test_too_deep_agrees_with_the_recursive_rule(payload: dict[str, Any], budget: int) -> None:
    assert _too_deep(payload, budget) == recursive_too_deep(payload, budget)


@pytest.mark.parametrize("depth", [MAX_PAYLOAD_DEPTH - 1, MAX_PAYLOAD_DEPTH, MAX_PAYLOAD_DEPTH + 1])
def test_too_deep_at_the_limit(depth: int) -> None:
    payload = nested_payload(depth)
    expected = recursive_too_deep(payload, MAX_PAYLOAD_DEPTH)
    assert _too_deep(payload, MAX_PAYLOAD_DEPTH) == expected == (depth > MAX_PAYLOAD_DEPTH)


def test_entity_ids_have_a_maximum_length() -> None:
    """At most MAX_ENTITY_ID_LENGTH characters (code points, not bytes) by default, or the limit
    given; a longer id is refused with the limit in the message. Non-string ids are not ids."""
    assert MAX_ENTITY_ID_LENGTH == 1024
    at_limit = "ns/" + "😀" * 1021  # 1,024 characters, 4,087 bytes
    assert entity_of(validate_event(new_event(at_limit))) == at_limit
    over = at_limit + "x"
    message = "entity_id is too long: 1025 characters (an entity_id has at most 1024)"
    with pytest.raises(ValidationError, match=r"^entity_id is too long: 1025 characters"):
        validate_event(new_event(over))
    with pytest.raises(ValidationError) as raised:
        check_entity_id(over)
    assert raised.value.message == message
    assert check_entity_id(at_limit) == at_limit
    assert entity_of(validate_event(new_event("ns/" + "x" * 5000), 5003)) == "ns/" + "x" * 5000
    with pytest.raises(ValidationError, match="at most 10"):
        validate_event(new_event("ns/abcdefgh"), 10)
    with pytest.raises(ValidationError, match="^prefix is too long: 12 characters"):
        check_id_part("p" * 12, "prefix", 11)
    assert check_id_part("p" * 11, "prefix", 11) == "p" * 11
    unnamed = new_event("x")
    unnamed["payload"]["entity_id"] = ["x" * 5000]  # not a string: logged, no state
    assert validate_event(unnamed, 10)["payload"]["entity_id"] == ["x" * 5000]


def test_an_absent_timestamp_is_the_time_of_validation() -> None:
    raw = new_event()
    del raw["timestamp"]
    before = time.time_ns() // 1_000_000
    stamped = validate_event(raw)["timestamp"]
    assert before <= stamped <= time.time_ns() // 1_000_000
