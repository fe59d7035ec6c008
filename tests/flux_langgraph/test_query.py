"""flux.langgraph.query: search filters and namespace listing, as BaseStore documents them.
Pure: no server."""

from __future__ import annotations

from typing import Any

import pytest
from langgraph.store.base import MatchCondition

from flux.langgraph.query import fixed_prefix, matches, select_namespaces

VALUE = {"color": "red", "score": 4.5, "n": 3, "on": True, "tags": ["a", "b"], "meta": {"v": 1}}


@pytest.mark.parametrize(
    ("filter", "expected"),
    [
        (None, True),
        ({}, True),
        ({"color": "red"}, True),
        ({"color": "blue"}, False),
        ({"color": "red", "n": 3}, True),
        ({"color": "red", "n": 4}, False),
        ({"missing": None}, True),
        ({"on": 1}, False),  # JSON: true is not 1
        ({"n": 3.0}, True),
        ({"tags": ["a", "b"]}, True),
        ({"tags": ["b", "a"]}, False),
        ({"meta": {"v": 1}}, True),
        ({"meta": {"v": 2}}, False),
        ({"color": {"$eq": "red"}}, True),
        ({"color": {"$ne": "red"}}, False),
        ({"missing": {"$ne": "red"}}, True),
        ({"score": {"$gt": 4.99}}, False),
        ({"score": {"$gt": 4}}, True),
        ({"score": {"$gte": 4.5}, "color": "red"}, True),
        ({"score": {"$lt": 4.5}}, False),
        ({"score": {"$lte": 4.5}}, True),
        ({"n": {"$gt": 1, "$lt": 5}}, True),
        ({"n": {"$gt": 1, "$lt": 3}}, False),
        ({"color": {"$gt": "blue"}}, True),  # strings compare as strings
        ({"color": {"$gt": 1}}, False),  # a string and a number do not compare
        ({"missing": {"$lt": 10}}, False),
        ({"on": {"$gt": 0}}, False),  # a boolean is not a number
    ],
)
def test_filters(filter: dict[str, Any] | None, expected: bool) -> None:
    assert matches(VALUE, filter) is expected


def test_an_unknown_operator_is_refused() -> None:
    with pytest.raises(ValueError, match=r"unsupported filter operator '\$in'"):
        matches(VALUE, {"color": {"$in": ["red"]}})


NAMESPACES = [
    ("a", "b", "c"),
    ("a", "b", "d", "e"),
    ("a", "b", "d", "i"),
    ("a", "b", "f"),
    ("a", "c", "f"),
    ("x", "v1"),
]


def prefix(*path: str) -> MatchCondition:
    return MatchCondition(match_type="prefix", path=path)


def suffix(*path: str) -> MatchCondition:
    return MatchCondition(match_type="suffix", path=path)


def test_the_max_depth_example_of_base_store() -> None:
    # BaseStore.list_namespaces' docstring, word for word
    got = select_namespaces(NAMESPACES, [prefix("a", "b")], 3, 100, 0)
    assert got == [("a", "b", "c"), ("a", "b", "d"), ("a", "b", "f")]


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        ([], sorted(NAMESPACES)),
        ([suffix("f")], [("a", "b", "f"), ("a", "c", "f")]),
        ([prefix("a", "*", "f")], [("a", "b", "f"), ("a", "c", "f")]),
        ([suffix("*", "v1")], [("x", "v1")]),
        ([prefix("a"), suffix("d", "*")], [("a", "b", "d", "e"), ("a", "b", "d", "i")]),
        ([prefix("a", "b", "c", "d")], []),
    ],
)
def test_conditions(conditions: list[MatchCondition], expected: list[tuple[str, ...]]) -> None:
    assert select_namespaces(NAMESPACES, conditions, None, 100, 0) == expected


def test_limit_and_offset_page_the_sorted_namespaces() -> None:
    every = select_namespaces(NAMESPACES, None, None, 100, 0)
    assert select_namespaces(NAMESPACES, None, None, 2, 1) == every[1:3]
    assert select_namespaces(NAMESPACES, None, 1, 100, 0) == [("a",), ("x",)]


def test_an_unknown_match_type_is_refused() -> None:
    bad = MatchCondition(match_type="middle", path=("a",))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unsupported match type 'middle'"):
        select_namespaces(NAMESPACES, [bad], None, 100, 0)


def test_the_fixed_prefix_stops_at_a_wildcard() -> None:
    assert fixed_prefix(None) == ()
    assert fixed_prefix([suffix("a", "b")]) == ()
    assert fixed_prefix([prefix("a", "*", "c")]) == ("a",)
    assert fixed_prefix([prefix("a"), prefix("a", "b")]) == ("a", "b")
