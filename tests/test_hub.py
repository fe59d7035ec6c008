"""The subscription hub (flux.hub): pure, so plain inputs and no event loop."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from flux.hub import Hub

IDS = ["a", "a/1", "a/10", "a/2", "ab", "b/1", "b/x/y", "*", "", "ns/sensor-1"]


def hub_with(*conns: str) -> Hub[str]:
    hub: Hub[str] = Hub()
    for conn in conns:
        hub.add(conn)
    return hub


def test_a_connection_that_never_subscribed_receives_everything() -> None:
    hub = hub_with("c")
    assert all(hub.match(entity_id) == {"c"} for entity_id in IDS)
    assert hub.wants("c", "anything")
    assert hub.count("c") == 0


def test_exact_subscription_matches_only_that_id() -> None:
    hub = hub_with("c", "other")
    hub.subscribe("other", entity_id="zzz")
    hub.subscribe("c", entity_id="a/1")
    assert hub.match("a/1") == {"c"}
    assert hub.match("a/10") == set()
    assert hub.match("a") == set()
    assert not hub.wants("c", "a/10")


def test_prefix_subscription_matches_ids_starting_with_it_including_itself() -> None:
    hub = hub_with("c")
    hub.subscribe("c", prefix="a/")
    assert {i for i in IDS if hub.match(i)} == {"a/1", "a/10", "a/2"}
    hub.subscribe("c", prefix="b/x/y")
    assert hub.match("b/x/y") == {"c"}
    assert hub.match("b/x/yz") == {"c"}
    assert hub.match("b/x/") == set()


def test_wildcard_and_empty_prefix_match_everything() -> None:
    hub = hub_with("star", "empty", "exact")
    hub.subscribe("star", entity_id="*")
    hub.subscribe("empty", prefix="")
    hub.subscribe("exact", entity_id="a")
    assert all({"star", "empty"} <= hub.match(i) for i in IDS)
    assert hub.match("b/1") == {"star", "empty"}
    assert hub.subscriptions("star") == hub.subscriptions("empty") == {("all", "")}


def test_several_subscriptions_on_one_connection() -> None:
    hub = hub_with("c")
    hub.subscribe("c", entity_id="b/1")
    hub.subscribe("c", prefix="a/1")
    hub.subscribe("c", prefix="a/")  # overlapping: matched once (a set)
    assert hub.count("c") == 3
    assert {i for i in IDS if hub.match(i)} == {"b/1", "a/1", "a/10", "a/2"}
    assert hub.subscriptions("c") == {("exact", "b/1"), ("prefix", "a/1"), ("prefix", "a/")}


def test_subscribing_twice_to_the_same_thing_is_one_subscription() -> None:
    hub = hub_with("c")
    hub.subscribe("c", entity_id="a")
    hub.subscribe("c", entity_id="a")
    assert hub.count("c") == 1
    hub.unsubscribe("c", entity_id="a")
    assert hub.match("a") == set()


def test_unsubscribe_drops_only_that_subscription() -> None:
    hub = hub_with("c")
    hub.subscribe("c", entity_id="a")
    hub.subscribe("c", prefix="b/")
    hub.subscribe("c", entity_id="*")
    hub.unsubscribe("c", entity_id="*")
    assert hub.match("zzz") == set()
    assert hub.match("a") == hub.match("b/1") == {"c"}
    hub.unsubscribe("c", prefix="b/")
    assert hub.match("b/1") == set()
    assert hub.match("a") == {"c"}
    hub.unsubscribe("c", entity_id="not-held")  # no effect, no error
    assert hub.match("a") == {"c"}


def test_unsubscribing_from_everything_means_nothing_arrives() -> None:
    hub = hub_with("c")
    hub.subscribe("c", entity_id="a")
    hub.subscribe("c", prefix="")
    hub.unsubscribe("c", entity_id="a")
    hub.unsubscribe("c", prefix="")
    assert hub.count("c") == 0
    assert all(hub.match(i) == set() for i in IDS)
    assert not hub.wants("c", "a")


def test_an_unsubscribe_before_any_subscribe_also_ends_the_receive_everything_default() -> None:
    hub = hub_with("c")
    hub.unsubscribe("c", entity_id="a")
    assert all(hub.match(i) == set() for i in IDS)


def test_empty_subscribe_or_unsubscribe_changes_nothing() -> None:
    hub = hub_with("c")
    hub.subscribe("c")
    hub.unsubscribe("c")
    assert hub.match("a") == {"c"}


def test_remove_forgets_the_connection_and_empties_the_indexes() -> None:
    hub = hub_with("c", "d")
    hub.subscribe("c", entity_id="a")
    hub.subscribe("c", prefix="b/")
    hub.subscribe("c", entity_id="*")
    hub.remove("c")
    hub.remove("d")
    hub.remove("never-added")
    assert len(hub) == 0 and hub.connections() == []
    assert all(hub.match(i) == set() for i in IDS)
    assert not (hub._exact or hub._prefix or hub._wildcard or hub._fresh or hub._subs)
    assert hub.subscriptions("c") == set() and hub.count("c") == 0
    hub.unsubscribe("c", entity_id="a")  # a removed connection: ignored


def test_connections_and_len() -> None:
    hub = hub_with("c", "d")
    assert len(hub) == 2
    assert sorted(hub.connections()) == ["c", "d"]


class CountingId(str):
    """An entity id that counts how often matching slices it or compares a prefix with it."""

    ops = 0

    def __getitem__(self, key):  # type: ignore[no-untyped-def, override]
        self.ops += 1
        return str(self)[key]

    def startswith(self, prefix, *args):  # type: ignore[no-untyped-def, override]
        self.ops += 1
        return str(self).startswith(prefix, *args)


def match_cost(prefixes: int, id_length: int, lengths: int = 1) -> int:
    """Operations on the id to match it, with `prefixes` non-matching prefixes held (spread over
    `lengths` distinct lengths) and one matching prefix (`ns/`)."""
    hub = hub_with("many", "one")
    for n in range(prefixes):
        hub.subscribe("many", prefix=f"zz{n:05d}/" + "q" * (n % lengths))
    hub.subscribe("one", prefix="ns/")
    entity_id = CountingId("ns/" + "x" * (id_length - 3))
    assert hub.match(entity_id) == {"one"}
    return entity_id.ops


def test_matching_cost_does_not_grow_with_the_number_of_prefixes() -> None:
    """One slice and one lookup per distinct prefix length: the same few operations for 10 or
    10,000 prefixes, for a short id or a 60,000-character one (the old walk cost up to id
    length x prefixes)."""
    assert match_cost(10, 50) == match_cost(10_000, 50) == 2
    assert match_cost(10, 5_000) == match_cost(10_000, 5_000) == 2
    assert match_cost(10_000, 60_000) == 2
    assert match_cost(10_000, 60_000, lengths=10) == 11  # grows with the distinct lengths only


def test_prefixes_longer_than_the_id_are_not_tried() -> None:
    hub = hub_with("c")
    hub.subscribe("c", prefix="a/very/long/prefix")
    hub.subscribe("c", prefix="b")
    short = CountingId("a/1")
    assert hub.match(short) == set()
    assert short.ops == 1  # only the length-1 bucket
    assert hub.match("a/very/long/prefix/x") == {"c"}
    assert hub.match("b") == {"c"}


def test_the_length_index_is_emptied_as_prefixes_go() -> None:
    hub = hub_with("c", "d")
    hub.subscribe("c", prefix="ab")
    hub.subscribe("d", prefix="ab")
    hub.subscribe("d", prefix="xyz")
    hub.unsubscribe("c", prefix="ab")
    assert hub.match("abc") == {"d"}
    hub.remove("d")
    assert not hub._prefix
    assert hub.match("abc") == set()


# -- the index agrees with a brute-force filter --------------------------------------------

CONNS = ["c0", "c1", "c2", "c3"]
KEYS = st.sampled_from(["", "*", "a", "a/", "a/1", "a/10", "b", "b/x", "b/x/y", "zz"])
OPS = st.lists(
    st.tuples(
        st.sampled_from(["subscribe", "unsubscribe", "remove", "add"]),
        st.sampled_from(CONNS),
        st.sampled_from(["entity_id", "prefix"]),
        KEYS,
    ),
    max_size=40,
)


def brute_force(model: dict[str, set[tuple[str, str]] | None], entity_id: str) -> set[str]:
    """The rule stated plainly: None = never subscribed (everything)."""
    found = set()
    for conn, subs in model.items():
        if subs is None:
            found.add(conn)
            continue
        for kind, key in subs:
            if (kind == "entity_id" and (key == "*" or key == entity_id)) or (
                kind == "prefix" and entity_id.startswith(key)
            ):
                found.add(conn)
    return found


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_match_agrees_with_a_brute_force_filter(
    ops: list[tuple[str, str, str, str]],
) -> None:
    hub: Hub[str] = Hub()
    model: dict[str, set[tuple[str, str]] | None] = {}
    for conn in CONNS[:2]:
        hub.add(conn)
        model[conn] = None
    for op, conn, kind, key in ops:
        if op == "add":
            if conn not in model:
                hub.add(conn)
                model[conn] = None
        elif op == "remove":
            hub.remove(conn)
            model.pop(conn, None)
        elif conn in model:
            normalized = ("entity_id", "*") if (kind, key) == ("prefix", "") else (kind, key)
            subs = model[conn] or set()
            if op == "subscribe":
                hub.subscribe(conn, **{kind: key})
                subs.add(normalized)
            else:
                hub.unsubscribe(conn, **{kind: key})
                subs.discard(normalized)
            model[conn] = subs
    for entity_id in ["a", "a/1", "a/10", "a/2", "b/x/y", "b/x/yz", "zz", "c", "*"]:
        expected = brute_force(model, entity_id)
        assert hub.match(entity_id) == expected, (entity_id, model)
        assert {c for c in model if hub.wants(c, entity_id)} == expected
    assert sorted(hub.connections()) == sorted(model)
