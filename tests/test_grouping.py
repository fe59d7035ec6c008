"""flux.grouping: one level of the id tree, grouped and paged, from plain lists."""

from __future__ import annotations

from flux.grouping import Level, group_level

IDS = ["a/x", "a/y:1", "a/y:2", "b/z", "top", "c/q/r"]


def level(
    prefix: str = "", delimiters: str = "/", limit: int = 100, after: str = "", q: str = ""
) -> Level[str]:
    items = [(i, i) for i in IDS if i.startswith(prefix)]
    return group_level(items, prefix, delimiters, limit, after, q)


def test_the_root_groups_by_namespace_and_keeps_ids_without_a_delimiter() -> None:
    assert level() == Level(
        groups=[("a/", 3), ("b/", 1), ("c/", 1)], entities=["top"], total=6, next=None
    )


def test_a_lower_level_and_several_delimiters() -> None:
    assert level("a/") == Level(groups=[], entities=["a/x", "a/y:1", "a/y:2"], total=3, next=None)
    assert level("a/", "/:") == Level(groups=[("a/y:", 2)], entities=["a/x"], total=3, next=None)
    # The first delimiter after the prefix ends the group, whichever it is.
    assert level("c/", ":/").groups == [("c/q/", 1)]


def test_pages_mix_groups_and_entities_in_key_order() -> None:
    first = level(limit=2)
    assert (first.groups, first.entities, first.next) == ([("a/", 3), ("b/", 1)], [], "b/")
    second = level(limit=2, after=first.next or "")
    assert (second.groups, second.entities, second.next) == ([("c/", 1)], ["top"], None)
    assert second.total == 6  # the whole level, whatever the page


def test_contains_filters_case_insensitively_before_grouping() -> None:
    found = level(q="Y:")
    assert (found.groups, found.entities, found.total) == ([("a/", 2)], [], 2)
    assert level(q="nothing") == Level(groups=[], entities=[], total=0, next=None)


def test_an_empty_level() -> None:
    assert group_level([], "none/", "/", 10) == Level([], [], 0, None)
