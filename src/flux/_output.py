"""CLI helpers: JSON arguments in, JSON results out.

Results go to stdout as JSON: indented when stdout is a terminal, compact (one line) when it is
piped, unless `--pretty`/`--compact` says otherwise. Progress lines go to stderr, so piped stdout
stays pure JSON. `flux watch` prints one readable line per change on a terminal (`change_line`)
and the server's messages as JSON lines otherwise. A failed condition (409) is explained on
stderr (`conflict_lines`), its JSON answer on stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import click

from flux.events import json_kind


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(text: str) -> Any:
    """Strict JSON (no NaN or Infinity); raises ValueError with the position of the problem."""
    return json.loads(text, parse_constant=_reject_constant)


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
            self.fail(f"expected {wanted}, got {json_kind(doc)}: {text.strip()[:60]}", param, ctx)
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


# -- `flux watch` lines ------------------------------------------------------------------------


def _text(value: Any) -> str:
    """A value as compact JSON (strings quoted, so `"22.5"` and `22.5` differ)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _name(text: Any) -> str:
    """An id or property name as it is, unless it holds control characters (then JSON-quoted, so
    one change stays one line)."""
    text = str(text)
    return text if text.isprintable() else _text(text)


def clock(timestamp: Any) -> str:
    """`HH:MM:SS.mmm` in local time for the server's ISO 8601 timestamp (as given if unreadable)."""
    if not isinstance(timestamp, str):
        return "--:--:--.---"
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return timestamp
    return moment.astimezone().strftime("%H:%M:%S.%f")[:-3]


def change_line(message: dict[str, Any]) -> str | None:
    """One readable line for a live message (None for the ones not shown this way):

    07:02:27.028  ns/a  temperature = 22.5  (v12)
    07:02:27.031  ns/a  deleted  (v13)
    07:02:20.500  ns/a  snapshot: temperature = 22.5, unit = "C"  (v12)
    """
    kind = message.get("type")
    head = f"{clock(message.get('timestamp'))}  {_name(message.get('entity_id'))}  "
    version = f"  (v{message.get('version')})"
    if kind == "state_update":
        return f"{head}{_name(message.get('property'))} = {_text(message.get('value'))}{version}"
    if kind == "entity_deleted":
        return f"{head}deleted{version}"
    if kind == "snapshot":
        props = message.get("properties")
        if isinstance(props, dict) and props:
            shown = ", ".join(f"{_name(k)} = {_text(v)}" for k, v in props.items())
        else:
            shown = "(no properties)"
        return f"{head}snapshot: {shown}{version}"
    if kind == "metrics_update":
        events = message.get("events") or {}
        return (
            f"{clock(message.get('timestamp'))}  metrics: "
            f"{(message.get('entities') or {}).get('total')} entities, "
            f"{events.get('total')} events, {events.get('rate_per_second')} events/s, "
            f"{(message.get('websocket') or {}).get('connections')} connections, "
            f"{(message.get('publishers') or {}).get('active')} active publishers"
        )
    return None


# -- `flux source list` ------------------------------------------------------------------------


def source_table(sources: list[dict[str, Any]]) -> str:
    """The sources as an aligned table for a terminal: one row each, with the full id (for
    `flux source rm`), name, entity, interval, status, polls, events, last poll (local time)
    and last error."""
    if not sources:
        return "No sources. Add one with `flux source add`."
    header = ["ID", "NAME", "ENTITY", "EVERY", "STATUS", "POLLS", "EVENTS", "LAST POLL"]
    header.append("LAST ERROR")
    rows = [header]
    for source in sources:
        key = source.get("entity_key", "")
        per = f" per {source['items']}" if source.get("items") else ""
        last_poll = source.get("last_poll")
        rows.append(
            [
                _name(source.get("source_id", "")),
                _name(source.get("name", "")),
                _name(f"{source.get('namespace', '')}/{key}{per}"),
                f"{source.get('poll_interval_secs', '')}s",
                _name(source.get("status", "")),
                str(source.get("polls", 0)),
                str(source.get("events", 0)),
                clock(last_poll) if last_poll else "-",
                _name(source.get("last_error") or "-"),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


# -- `flux connectors` and `flux connector token` -----------------------------------------------


def connector_table(connectors: list[dict[str, Any]]) -> str:
    """The connectors as an aligned table for a terminal: name, status, last poll (local
    time), polls, events and the last error (in full, last)."""
    rows = [["NAME", "STATUS", "LAST POLL", "POLLS", "EVENTS", "LAST ERROR"]]
    for item in connectors:
        last_poll = item.get("last_poll")
        rows.append(
            [
                _name(item.get("name", "")),
                _name(item.get("status", "")),
                clock(last_poll) if last_poll else "-",
                str(item.get("polls", 0)),
                str(item.get("events", 0)),
                _name(item.get("last_error") or "-"),
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


# -- a failed condition (409) ------------------------------------------------------------------


def epoch_ms_text(ms: Any) -> str:
    """Epoch milliseconds as ISO 8601 UTC (`2026-01-02T03:04:05.678Z`); other values as JSON."""
    if type(ms) is not int:
        return _text(ms)
    try:
        moment = datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ms)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def conflict_lines(details: Mapping[str, Any]) -> list[str]:
    """What a 409's answer says about the entity, for people: its version now (or that it
    does not exist), who changed it last and when, and who holds its lease until when.

      entity dawn-coral/task-7: version 12, last changed by agent-02 at 2026-01-02T03:04:05.678Z
      lease: held by "worker-3" (token 11) until 2026-01-02T03:05:05.678Z
    """
    entity = _name(details.get("entity_id"))
    index = details.get("index")
    where = f"event {index} of the atomic batch: " if type(index) is int else ""
    current = details.get("current")
    if not isinstance(current, dict):
        return [f"{where}entity {entity} does not exist (version 0)"]
    line = f"{where}entity {entity}: version {details.get('current_version')}"
    source = details.get("last_source")
    if source is not None:
        line += (
            f", last changed by {_name(source)} at {epoch_ms_text(details.get('last_timestamp'))}"
        )
    lines = [line]
    lease = (current.get("properties") or {}).get("__lease__")
    if isinstance(lease, dict) and lease.get("owner") is not None:
        lines.append(
            f"lease: held by {_text(lease.get('owner'))} (token {lease.get('token')}) "
            f"until {epoch_ms_text(lease.get('expires_at'))}"
        )
    return lines


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def read_secret(from_env: str | None, env_var: str, prompt: str) -> str:
    """A secret that must not be a command-line argument (shell history, `ps`): `from_env`
    (the value of the environment variable `env_var`) if set, else stdin when it is piped
    (surrounding whitespace stripped), else a hidden prompt. Raises click.UsageError when it
    is empty."""
    secret = from_env
    if not secret:
        if stdin_is_terminal():
            secret = click.prompt(prompt, hide_input=True, err=True)
        else:
            secret = sys.stdin.read()
    secret = (secret or "").strip()
    if not secret:
        raise click.UsageError(f"empty {prompt.lower()}: set ${env_var}, pipe it in, or type it")
    return secret
