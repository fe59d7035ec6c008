"""What `search` and `list_namespaces` select, as LangGraph's BaseStore documents it. Pure.

A search `filter` maps a top-level field of the value to what it must be: a value (equal, as
JSON: nested objects and lists compare field by field, `1` is not `true`), a nested object of
such conditions, or an object of operators (`$eq`, `$ne`, `$gt`, `$gte`, `$lt`, `$lte`). The
order operators compare numbers with numbers and strings with strings; any other pair (a
missing field included) does not match, where LangGraph's InMemoryStore would raise. A field
that is absent is null for `$eq`/`$ne` and plain values."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from langgraph.store.base import MatchCondition, NamespacePath

_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: a > b,
    "$gte": lambda a, b: a >= b,
    "$lt": lambda a, b: a < b,
    "$lte": lambda a, b: a <= b,
}
OPERATORS = ("$eq", "$ne", *_ORDER)


def matches(value: Mapping[str, Any], filter: Mapping[str, Any] | None) -> bool:
    """Whether an item's value passes a search filter (None or `{}`: every value does).
    Raises ValueError for an operator BaseStore does not document."""
    return not filter or all(_holds(value.get(name), want) for name, want in filter.items())


def _holds(actual: Any, want: Any) -> bool:
    if isinstance(want, Mapping):
        if any(type(name) is str and name.startswith("$") for name in want):
            return all(_operator(actual, name, operand) for name, operand in want.items())
        return isinstance(actual, Mapping) and all(
            _holds(actual.get(name), inner) for name, inner in want.items()
        )
    return _equal(actual, want)


def _operator(actual: Any, name: str, operand: Any) -> bool:
    if name == "$eq":
        return _equal(actual, operand)
    if name == "$ne":
        return not _equal(actual, operand)
    compare = _ORDER.get(name)
    if compare is None:
        raise ValueError(
            f"unsupported filter operator {name!r}: the store knows {', '.join(OPERATORS)}"
        )
    if _is_number(actual) and _is_number(operand):
        return compare(actual, operand)
    if type(actual) is str and type(operand) is str:
        return compare(actual, operand)
    return False


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: booleans are not numbers; objects and lists compare by content."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping | list | tuple) or isinstance(b, Mapping | list | tuple):
        return False
    return bool(a == b)


def fixed_prefix(conditions: Iterable[MatchCondition] | None) -> tuple[str, ...]:
    """The labels every namespace listed must start with: those of the prefix conditions up to
    their first wildcard (the store lists only the entities under them)."""
    longest: tuple[str, ...] = ()
    for condition in conditions or ():
        if condition.match_type != "prefix":
            continue
        labels: list[str] = []
        for label in condition.path:
            if label == "*":
                break
            labels.append(label)
        if len(labels) > len(longest):
            longest = tuple(labels)
    return longest


def select_namespaces(
    namespaces: Iterable[tuple[str, ...]],
    conditions: Iterable[MatchCondition] | None,
    max_depth: int | None,
    limit: int,
    offset: int,
) -> list[tuple[str, ...]]:
    """`list_namespaces`' answer from every namespace that holds an item: those that meet every
    condition, cut to `max_depth` labels, without repeats, sorted, then `offset`/`limit`.
    Raises ValueError for a match type other than prefix or suffix."""
    conditions = tuple(conditions or ())
    kept = {
        namespace[:max_depth] if max_depth is not None else namespace
        for namespace in namespaces
        if all(_meets(condition, namespace) for condition in conditions)
    }
    return sorted(kept)[offset : offset + limit]


def _meets(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path: NamespacePath = condition.path
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"unsupported match type {condition.match_type!r}: prefix or suffix")
    return all(want == "*" or label == want for label, want in pairs)
