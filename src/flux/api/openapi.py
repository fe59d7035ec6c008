"""The OpenAPI 3.0 document (served at /openapi.json) and the Swagger UI page at /docs.

The document is the data file `openapi.json` beside this module, written by hand, except for
the facts the code owns: wherever the file says `{{name}}`, `FACTS[name]` is put in when this
module is imported (the stream pattern, namespace name lengths, connector names, the admin
config fields, the version, limits). A string that is only `"{{name}}"` becomes the fact itself
(a number, a list, an object); a `{{name}}` inside longer text becomes the fact's text.

To change the document, edit `openapi.json` (JSON, 2-space indent, keys in the order they
should be served; keep it that way so diffs stay small). To state something the code decides,
add it to `FACTS`, taken from where the code defines it, and write `{{name}}` in the file;
never copy the value in. The tests check the document against the routes (both ways), check it
is valid OpenAPI, check real responses against its schemas, and check every fact against the
code (`tests/api/test_openapi.py`).
"""

from __future__ import annotations

import re
import string
from collections.abc import Iterable
from importlib import resources
from typing import Any

import orjson
import swagger_ui_bundle
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from flux import __version__
from flux.api.coordination import LEASE_BODY_LIMIT
from flux.api.http import (
    GROUPS_DEFAULT_LIMIT,
    GROUPS_MAX_DELIMITERS,
    GROUPS_MAX_LIMIT,
    HISTORY_DEFAULT_LIMIT,
    HISTORY_MAX_LIMIT,
    HISTORY_WINDOW_US,
)
from flux.auth import NAME_CHARS, NAME_MAX, NAME_MIN
from flux.config import SETTINGS
from flux.connectors.base import KNOWN
from flux.connectors.oauth import STATE_TTL_SECONDS
from flux.connectors.source_config import MAX_NAME_LENGTH, MAX_POLL_INTERVAL
from flux.events import MAX_PAYLOAD_DEPTH, MAX_TTL_MS, STREAM_RE

DOCS_STATIC: str = swagger_ui_bundle.swagger_ui_path

DATA_FILE = "openapi.json"

_RUNTIME_TYPES: dict[type, dict[str, Any]] = {
    bool: {"type": "boolean"},
    int: {"type": "integer", "minimum": 1},
}


def char_class(chars: Iterable[str]) -> str:
    """A regex character class of exactly `chars`: whole `a-z`, `A-Z` and `0-9` runs as
    ranges, the rest one by one (sorted; `-` last, where it needs no escape)."""
    left = set(chars)
    parts = []
    for run, text in (
        (string.ascii_lowercase, "a-z"),
        (string.ascii_uppercase, "A-Z"),
        (string.digits, "0-9"),
    ):
        if left >= set(run):
            parts.append(text)
            left -= set(run)
    parts += [re.escape(c) if c in "\\]^" else c for c in sorted(left - {"-"})]
    return "[" + "".join(parts) + ("-" if "-" in left else "") + "]"


def _or_list(names: Iterable[str]) -> str:
    *first, last = names
    return f"{', '.join(first)} or {last}" if first else last


_NAME_CHARS = char_class(NAME_CHARS)


def _default(name: str) -> Any:
    """A setting's default (the document describes a server with its defaults)."""
    return next(s.default for s in SETTINGS if s.name == name)


FACTS: dict[str, Any] = {
    "version": __version__,
    "stream_pattern": f"^{STREAM_RE.pattern}$",
    "namespace_name_min": NAME_MIN,
    "namespace_name_max": NAME_MAX,
    "namespace_name_chars": _NAME_CHARS,
    "namespace_name_pattern": f"^{_NAME_CHARS}{{{NAME_MIN},{NAME_MAX}}}$",
    "connector_names": _or_list(KNOWN),
    "admin_config_properties": {
        s.name: {**_RUNTIME_TYPES[type(s.default)], "description": s.help}
        for s in SETTINGS
        if s.runtime
    },
    "max_entity_id_length": _default("max_entity_id_length"),
    "max_payload_depth": MAX_PAYLOAD_DEPTH,
    "groups_default_limit": GROUPS_DEFAULT_LIMIT,
    "groups_max_delimiters": GROUPS_MAX_DELIMITERS,
    "groups_max_limit": GROUPS_MAX_LIMIT,
    "history_default_limit": HISTORY_DEFAULT_LIMIT,
    "history_max_limit": HISTORY_MAX_LIMIT,
    "history_window_hours": HISTORY_WINDOW_US // 3_600_000_000,
    "oauth_state_ttl_seconds": int(STATE_TTL_SECONDS),
    "source_name_max_length": MAX_NAME_LENGTH,
    "source_max_poll_interval_secs": MAX_POLL_INTERVAL,
    "max_ttl_ms": MAX_TTL_MS,
    "lease_max_ttl_ms": _default("lease_max_ttl_ms"),
    "lease_body_limit": LEASE_BODY_LIMIT,
    "tombstones_kept": _default("tombstones_kept"),
    "changes_page_limit": _default("changes_page_limit"),
}

PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def fill(value: Any, facts: dict[str, Any]) -> Any:
    """`value` (decoded JSON) with every `{{name}}` replaced by `facts[name]`. Raises KeyError
    for a name not in `facts`."""
    if isinstance(value, dict):
        return {key: fill(item, facts) for key, item in value.items()}
    if isinstance(value, list):
        return [fill(item, facts) for item in value]
    if isinstance(value, str) and "{{" in value:
        whole = PLACEHOLDER.fullmatch(value)
        if whole is not None:
            return facts[whole[1]]
        return PLACEHOLDER.sub(lambda match: str(facts[match[1]]), value)
    return value


def template() -> Any:
    """The data file, decoded, its placeholders still in."""
    return orjson.loads(resources.files("flux.api").joinpath(DATA_FILE).read_bytes())


DOCUMENT: dict[str, Any] = fill(template(), FACTS)

_DOCUMENT_BYTES = orjson.dumps(DOCUMENT)

_DOCS_HTML = """<!doctype html>
<html><head><meta charset="utf-8"><title>Flux API</title>
<link rel="stylesheet" href="/docs/static/swagger-ui.css"></head>
<body><div id="swagger-ui"></div>
<script src="/docs/static/swagger-ui-bundle.js"></script>
<script>SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui"});</script>
</body></html>
"""


async def openapi_document(request: Request) -> Response:
    return Response(_DOCUMENT_BYTES, media_type="application/json")


async def docs_page(request: Request) -> Response:
    return HTMLResponse(_DOCS_HTML)
