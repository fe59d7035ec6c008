"""The JSON path subset of generic sources (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from flux.connectors.jsonpath import PathError, evaluate, format_path, parse

DOC: dict[str, Any] = {
    "data": {"items": [{"id": 1, "display name": "a"}, {"id": 2}], "count": 2},
    "it's": True,
    "weird.key": "w",
}


@pytest.mark.parametrize(
    ("text", "segments"),
    [
        ("$", ()),
        ("$.data", ("data",)),
        ("$.data.items[0].id", ("data", "items", 0, "id")),
        ("$['data']['items'][-1]", ("data", "items", -1)),
        ('$["weird.key"]', ("weird.key",)),
        ("$['it\\'s']", ("it's",)),
        ("$.a-b_c$", ("a-b_c$",)),
    ],
)
def test_parse(text: str, segments: tuple[Any, ...]) -> None:
    assert parse(text) == segments
    assert parse(format_path(segments)) == segments  # the canonical text parses back


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("data", "must start with $"),
        ("", "must start with $"),
        ("$data", "unexpected 'd' at 1"),
        ("$.", "expected a name after '.' at 1"),
        ("$[", "expected an index or a quoted name at 2"),
        ("$[1", "expected ']' at 3"),
        ("$['a'", "expected ']'"),
        ("$['a", "unterminated quoted name"),
        ("$[x]", "expected an index or a quoted name"),
        ("$[*]", "expected an index or a quoted name"),
        ("$.a b", "unexpected ' '"),
    ],
)
def test_parse_errors_name_the_problem(text: str, problem: str) -> None:
    with pytest.raises(PathError, match=problem.replace("[", r"\[").replace("$", r"\$")):
        parse(text)


def test_evaluate() -> None:
    assert evaluate(parse("$"), DOC) is DOC
    assert evaluate(parse("$.data.count"), DOC) == 2
    assert evaluate(parse("$.data.items[0]['display name']"), DOC) == "a"
    assert evaluate(parse("$.data.items[-1].id"), DOC) == 2
    assert evaluate(parse("$['weird.key']"), DOC) == "w"
    assert evaluate(parse("$[1]"), ["a", "b"]) == "b"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$.nope", "$.nope is missing"),
        ("$.data.items[2]", "$.data.items has 2 items, no [2]"),
        ("$.data.items[-3]", "$.data.items has 2 items, no [-3]"),
        ("$.data.items.id", "$.data.items is a list, not an object"),
        ("$.data.count[0]", "$.data.count is a number, not a list"),
        ("$.data.items[1].id.x", "$.data.items[1].id is a number, not an object"),
        ("$['it\\'s'].x", "$['it\\'s'] is a boolean, not an object"),
    ],
)
def test_evaluate_errors_say_which_step_failed(text: str, message: str) -> None:
    with pytest.raises(PathError) as info:
        evaluate(parse(text), DOC)
    assert str(info.value) == message


def test_format_path_quotes_what_needs_it() -> None:
    assert format_path(("a", 0, "b c", "it's")) == "$.a[0]['b c']['it\\'s']"
