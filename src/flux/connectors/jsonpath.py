"""A small JSON path subset for generic sources (pure).

    $                 the whole document
    $.name            a member of an object (name: any characters but . [ ] quotes and spaces)
    $['any name']     a member, quoted ('...' or "..."; backslash escapes the quote or itself)
    $[0]  $[-1]       an item of a list, counted from the end when negative

Segments chain: `$.data.items[0]['display name']`. No wildcards, filters or slices: a list fans
out through a source's `items` path instead. `parse` checks the text once (when the source is
created); `evaluate` walks a document and raises PathError with what was missing, and where.
"""

from __future__ import annotations

import re
from typing import Any

from flux.events import json_kind

Segment = str | int
Path = tuple[Segment, ...]

_NAME = re.compile(r"[^.\[\]'\"\s]+")
_INDEX = re.compile(r"-?[0-9]+")


class PathError(ValueError):
    """A path that does not parse, or that a document does not have."""


def parse(text: str) -> Path:
    """The segments of a path like `$.a['b'][0]`. Raises PathError naming the position."""
    if not text.startswith("$"):
        raise PathError(f"JSON path {text!r} must start with $")
    segments: list[Segment] = []
    i = 1
    while i < len(text):
        char = text[i]
        if char == ".":
            match = _NAME.match(text, i + 1)
            if match is None:
                raise PathError(f"JSON path {text!r}: expected a name after '.' at {i}")
            segments.append(match.group())
            i = match.end()
        elif char == "[":
            i = _bracket(text, i + 1, segments)
        else:
            raise PathError(f"JSON path {text!r}: unexpected {char!r} at {i}")
    return tuple(segments)


def _bracket(text: str, i: int, segments: list[Segment]) -> int:
    """Parse `[...]` from just after the `[`; returns the index after the `]`."""
    if i < len(text) and text[i] in "'\"":
        quote, i, name = text[i], i + 1, []
        while i < len(text) and text[i] != quote:
            if text[i] == "\\" and i + 1 < len(text):
                i += 1
            name.append(text[i])
            i += 1
        if i >= len(text):
            raise PathError(f"JSON path {text!r}: unterminated quoted name")
        segments.append("".join(name))
        i += 1
    else:
        match = _INDEX.match(text, i)
        if match is None:
            raise PathError(f"JSON path {text!r}: expected an index or a quoted name at {i}")
        segments.append(int(match.group()))
        i = match.end()
    if i >= len(text) or text[i] != "]":
        raise PathError(f"JSON path {text!r}: expected ']' at {i}")
    return i + 1


def format_path(path: Path) -> str:
    """The canonical text of a path (`$.a[0]`, or `$['a b']` for names that need quotes)."""
    parts = ["$"]
    for segment in path:
        if isinstance(segment, int):
            parts.append(f"[{segment}]")
        elif _NAME.fullmatch(segment):
            parts.append(f".{segment}")
        else:
            escaped = segment.replace("\\", "\\\\").replace("'", "\\'")
            parts.append(f"['{escaped}']")
    return "".join(parts)


def evaluate(path: Path, document: Any) -> Any:
    """The value at `path` in `document`. Raises PathError saying which step failed."""
    value = document
    for depth, segment in enumerate(path):
        where = format_path(path[:depth])
        if isinstance(segment, int):
            if not isinstance(value, list):
                raise PathError(f"{where} is {json_kind(value, 'a list')}, not a list")
            if not -len(value) <= segment < len(value):
                raise PathError(f"{where} has {len(value)} items, no [{segment}]")
            value = value[segment]
        else:
            if not isinstance(value, dict):
                raise PathError(f"{where} is {json_kind(value, 'a list')}, not an object")
            if segment not in value:
                raise PathError(f"{format_path(path[: depth + 1])} is missing")
            value = value[segment]
    return value


def kind(value: Any) -> str:
    """How error messages name a JSON value's type."""
    return json_kind(value, "a list")
