"""flux.langgraph.mapping: items' ids round-trip, whatever their labels hold; entities read back
as items only when the store wrote them. Pure: no server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flux.langgraph.mapping import Layout, decode, encode, stored, ttl_ms

# Any text JSON can carry (no lone surrogates), empty included.
text = st.text(st.characters(blacklist_categories=["Cs"]))
labels = st.lists(text.filter(bool), max_size=5).map(tuple)


@given(labels, text)
def test_every_namespace_and_key_round_trips(namespace: tuple[str, ...], key: str) -> None:
    layout = Layout.of("langgraph/", None)
    entity_id = layout.entity_id(namespace, key)
    assert entity_id.startswith("langgraph/")
    assert layout.parse(entity_id) == (namespace, key)
    assert entity_id.startswith(layout.namespace_prefix(namespace))


@given(labels, text, labels, text)
def test_different_items_have_different_ids(
    ns1: tuple[str, ...], key1: str, ns2: tuple[str, ...], key2: str
) -> None:
    layout = Layout.of("langgraph/", None)
    assert (layout.entity_id(ns1, key1) == layout.entity_id(ns2, key2)) == (
        (ns1, key1) == (ns2, key2)
    )


def test_the_ids_are_readable_and_escape_the_separator() -> None:
    layout = Layout.of("langgraph/", None)
    assert layout.entity_id(("users", "123"), "prefs") == "langgraph/users/123/prefs"
    assert (
        layout.entity_id(("a/b", "x y", "é.%"), "k/1") == "langgraph/a%2Fb/x%20y/%C3%A9.%25/k%2F1"
    )
    # a namespace prefix ends at a label's end: ("a",) does not take in ("ab",)
    assert layout.namespace_prefix(("a",)) == "langgraph/a/"
    assert layout.namespace_prefix(()) == "langgraph/"


def test_a_flux_namespace_comes_first() -> None:
    layout = Layout.of("memories/", "team-a")
    assert layout.entity_id(("users",), "k") == "team-a/memories/users/k"
    assert layout.parse("team-a/memories/users/k") == (("users",), "k")
    assert layout.parse("team-b/memories/users/k") is None
    assert Layout.of("", None).entity_id(("users",), "k") == "users/k"


@pytest.mark.parametrize(("prefix", "namespace"), [("langgraph", None), ("x/", ""), ("x/", "a/b")])
def test_a_bad_prefix_or_namespace_is_refused(prefix: str, namespace: str | None) -> None:
    with pytest.raises(ValueError, match="prefix|namespace"):
        Layout.of(prefix, namespace)


@pytest.mark.parametrize("segment", ["%41", "a b", "%FF", "%2f", "a%"])
def test_a_segment_the_store_does_not_write_is_not_decoded(segment: str) -> None:
    assert decode(segment) is None
    assert Layout.of("langgraph/", None).parse(f"langgraph/ns/{segment}") is None


def test_encode_and_decode_are_inverse_on_their_own() -> None:
    assert decode(encode("a/b%c d")) == "a/b%c d"


ITEM = {
    "namespace": ["users"],
    "key": "k",
    "value": {"x": 1},
    "created_at": "2026-12-06T03:00:00+00:00",
    "updated_at": "2026-12-06T03:05:00+00:00",
}


def test_an_entity_reads_back_as_its_item() -> None:
    layout = Layout.of("langgraph/", None)
    entity = {"id": "langgraph/users/k", "properties": {**ITEM, "__ttl_ms__": 600}, "version": 7}
    item = stored(layout, entity)
    assert item is not None
    assert (item.namespace, item.key, item.value, item.version) == (("users",), "k", {"x": 1}, 7)
    assert item.ttl_ms == 600
    assert item.updated_at.isoformat() == "2026-12-06T03:05:00+00:00"
    no_ttl = stored(layout, {**entity, "properties": {**ITEM, "__ttl_ms__": None}})
    assert no_ttl is not None and no_ttl.ttl_ms is None


@pytest.mark.parametrize(
    "properties",
    [
        {"temperature": 22.5},
        {**ITEM, "value": "text"},
        {**ITEM, "key": None},
        {**ITEM, "created_at": "yesterday"},
        {k: v for k, v in ITEM.items() if k != "updated_at"},
    ],
)
def test_an_entity_the_store_did_not_write_is_no_item(properties: dict[str, object]) -> None:
    layout = Layout.of("langgraph/", None)
    assert (
        stored(layout, {"id": "langgraph/users/k", "properties": properties, "version": 1}) is None
    )


def test_an_id_outside_the_root_is_no_item() -> None:
    layout = Layout.of("langgraph/", None)
    assert stored(layout, {"id": "other/users/k", "properties": ITEM, "version": 1}) is None


def test_ttl_minutes_become_milliseconds_never_zero() -> None:
    assert ttl_ms(1) == 60_000
    assert ttl_ms(0.01) == 600
    assert ttl_ms(1e-9) == 1
