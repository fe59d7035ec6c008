"""CLI helpers: JSON arguments in, JSON results out.

Results go to stdout as JSON: indented when stdout is a terminal, compact (one line) when it is
piped, unless `--pretty`/`--compact` says otherwise. Progress lines go to stderr, so piped stdout
stays pure JSON.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """Strict JSON (no NaN or Infinity); raises ValueError with the position of the problem."""
    return json.loads(text, parse_constant=_reject_constant)


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


class JsonArgument(click.ParamType[Any]):
    """A command-line argument holding JSON (`-` reads it from stdin). `shapes` limits the
    accepted top-level types (dict, list)."""

    name = "json"

    def __init__(self, *shapes: type[dict[str, Any]] | type[list[Any]]) -> None:
        self.shapes = shapes

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        text = sys.stdin.read() if value == "-" else value
        try:
            doc = parse_json(text)
        except ValueError as exc:
            self.fail(f"not valid JSON: {exc}", param, ctx)
        if self.shapes and not isinstance(doc, self.shapes):
            wanted = " or ".join("an object" if s is dict else "an array" for s in self.shapes)
            self.fail(f"expected {wanted}, got {_kind(doc)}: {text.strip()[:60]}", param, ctx)
        return doc


def stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def render_json(value: Any, pretty: bool) -> str:
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def echo_json(value: Any, pretty: bool | None = None) -> None:
    """Print a result to stdout; `pretty=None` means indented only on a terminal."""
    click.echo(render_json(value, stdout_is_terminal() if pretty is None else pretty))


def progress(message: str) -> None:
    """A status line for humans, on stderr."""
    click.echo(message, err=True)
