"""A generic source's configuration: the API's input checks (pure) and the stored form.

`parse_config` turns the body of `POST /api/connectors/generic` into a `SourceConfig`, raising
ValidationError naming the first bad field (the original answered 500 to everything);
`parse_token` checks the upstream secret against `auth_type`. The configuration never holds
the secret: it goes to the encrypted credential store (`flux.connectors.sources`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flux.auth import RESERVED_NAMESPACE, check_namespace_name
from flux.connectors import jsonpath
from flux.connectors.ssrf import DEFAULT_POLICY, Policy, Refused, check_url
from flux.errors import ValidationError
from flux.events import describe

MAX_POLL_INTERVAL = 31_536_000  # a year
MIN_INTERVAL_SETTING = "FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS"
MAX_URL_LENGTH = 4096
MAX_NAME_LENGTH = 200
MAX_MAPPING = 1000
# RFC 9110 token characters: what a header name may hold.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Headers a source may not set as its API key header: they frame the request.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "te", "upgrade", "trailer"}
)


@dataclass(frozen=True)
class Auth:
    """How the secret is sent: not at all, `Authorization: Bearer <token>`, or `<header>:
    <token>`."""

    kind: str  # "none" | "bearer" | "header"
    header: str | None = None

    def as_json(self) -> str | dict[str, str]:
        """The API's form: "none", "bearer" or {"api_key_header": "H"}."""
        if self.kind == "header":
            assert self.header is not None
            return {"api_key_header": self.header}
        return self.kind

    def headers(self, token: str | None) -> dict[str, str]:
        if token is None or self.kind == "none":
            return {}
        if self.kind == "bearer":
            return {"Authorization": f"Bearer {token}"}
        assert self.header is not None
        return {self.header: token}


@dataclass(frozen=True)
class SourceConfig:
    """A source as configured (never holding its secret)."""

    name: str
    url: str
    poll_interval_secs: int
    entity_key: str
    namespace: str
    auth: Auth = Auth("none")
    items: str | None = None
    mapping: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """The stored and reported form."""
        return {
            "name": self.name,
            "url": self.url,
            "poll_interval_secs": self.poll_interval_secs,
            "entity_key": self.entity_key,
            "namespace": self.namespace,
            "auth_type": self.auth.as_json(),
            "items": self.items,
            "mapping": dict(self.mapping),
        }

    @property
    def key_path(self) -> jsonpath.Path | None:
        return jsonpath.parse(self.entity_key) if self.entity_key.startswith("$") else None


# -- input checks (pure) ----------------------------------------------------------------------


def _string(doc: Mapping[str, Any], name: str, required: bool = True) -> str | None:
    value = doc.get(name)
    if value is None:
        if required:
            raise ValidationError(f"missing field `{name}`")
        return None
    if type(value) is not str:
        raise ValidationError(f"`{name}`: invalid type: {describe(value)}, expected a string")
    return value


def _path(name: str, text: str) -> jsonpath.Path:
    try:
        return jsonpath.parse(text)
    except jsonpath.PathError as exc:
        raise ValidationError(f"`{name}`: {exc}") from None


def parse_auth(value: Any) -> Auth:
    """`auth_type`: "none" (or absent), "bearer", or {"api_key_header": "<header name>"}."""
    if value is None:
        return Auth("none")
    if isinstance(value, str):
        lowered = value.strip().lower()
        if lowered in ("none", "bearer"):
            return Auth(lowered)
        raise ValidationError(
            f'`auth_type` must be "none", "bearer" or {{"api_key_header": "<header>"}}, '
            f"not {describe(value)}"
        )
    if isinstance(value, dict) and set(value) == {"api_key_header"}:
        header = value["api_key_header"]
        if type(header) is not str or _HEADER_NAME.fullmatch(header) is None:
            raise ValidationError("`auth_type.api_key_header` must be an HTTP header name")
        if header.lower() in _RESERVED_HEADERS:
            raise ValidationError(f"`auth_type.api_key_header` may not be {header}")
        return Auth("header", header)
    raise ValidationError('`auth_type` must be "none", "bearer" or {"api_key_header": "<header>"}')


def parse_token(doc: Mapping[str, Any], auth: Auth) -> str | None:
    """The upstream secret (`token`), checked against `auth`; an empty one counts as none."""
    token = _string(doc, "token", required=False) or None
    if token is not None and any(c in token for c in "\r\n\x00"):
        raise ValidationError("`token` must not contain line breaks or NUL")
    if auth.kind != "none" and token is None:
        raise ValidationError(f"`auth_type` {auth.kind!r} needs a `token`")
    if auth.kind == "none" and token is not None:
        raise ValidationError(
            '`token` given but `auth_type` is "none": say how to send it ("bearer" or '
            '{"api_key_header": "<header>"})'
        )
    return token


def parse_config(
    doc: Mapping[str, Any], policy: Policy = DEFAULT_POLICY, min_interval: int = 1
) -> SourceConfig:
    """A source's configuration from the API's body (the secret is `parse_token`'s). Raises
    ValidationError naming the first bad field. The URL is checked by the SSRF guard's static
    rules (`policy`) here; the addresses its host resolves to are checked by the caller and at
    every poll. `poll_interval_secs` must be at least `min_interval` (with auth on,
    FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS)."""
    name = _string(doc, "name")
    assert name is not None
    if not name.strip() or len(name) > MAX_NAME_LENGTH:
        raise ValidationError(f"`name` must be 1 to {MAX_NAME_LENGTH} characters")
    url = _string(doc, "url")
    assert url is not None
    if len(url) > MAX_URL_LENGTH:
        raise ValidationError(f"`url` is longer than {MAX_URL_LENGTH} characters")
    try:
        check_url(url, policy)
    except Refused as exc:
        raise ValidationError(f"`url`: {exc.message}") from None
    interval = doc.get("poll_interval_secs")
    if interval is None:
        raise ValidationError("missing field `poll_interval_secs`")
    if type(interval) is not int:
        raise ValidationError(
            f"`poll_interval_secs`: invalid type: {describe(interval)}, expected an integer"
        )
    if not 1 <= interval <= MAX_POLL_INTERVAL:
        raise ValidationError(f"`poll_interval_secs` must be between 1 and {MAX_POLL_INTERVAL}")
    if interval < min_interval:
        raise ValidationError(
            f"`poll_interval_secs` must be at least {min_interval} ({MIN_INTERVAL_SETTING})"
        )
    namespace = _string(doc, "namespace")
    assert namespace is not None
    check_namespace_name(namespace)
    if namespace == RESERVED_NAMESPACE:
        raise ValidationError(f"Namespace '{RESERVED_NAMESPACE}' is reserved for Flux")
    entity_key = _string(doc, "entity_key")
    assert entity_key is not None
    if not entity_key.strip():
        raise ValidationError("`entity_key` must not be empty")
    if "\x00" in entity_key:
        raise ValidationError("`entity_key` must not contain the NUL character (U+0000)")
    if entity_key.startswith("$"):
        _path("entity_key", entity_key)
    items = _string(doc, "items", required=False)
    if items is not None:
        _path("items", items)
        if not entity_key.startswith("$"):
            raise ValidationError(
                "with `items`, `entity_key` must be a JSON path evaluated on each item "
                "(like `$.id`)"
            )
    mapping = doc.get("mapping")
    if mapping is None:
        mapping = {}
    if type(mapping) is not dict:
        raise ValidationError(
            f"`mapping`: invalid type: {describe(mapping)}, expected an object of "
            '{"property": "$.path"}'
        )
    if len(mapping) > MAX_MAPPING:
        raise ValidationError(f"`mapping` has more than {MAX_MAPPING} properties")
    for prop, path in mapping.items():
        if not prop:
            raise ValidationError("`mapping`: a property name must not be empty")
        if type(path) is not str:
            raise ValidationError(
                f"`mapping.{prop}`: invalid type: {describe(path)}, expected a JSON path"
            )
        _path(f"mapping.{prop}", path)
    return SourceConfig(
        name=name,
        url=url,
        poll_interval_secs=interval,
        entity_key=entity_key,
        namespace=namespace,
        auth=parse_auth(doc.get("auth_type")),
        items=items,
        mapping=dict(mapping),
    )


def config_from_json(stored: Mapping[str, Any]) -> SourceConfig:
    """A stored configuration (`SourceConfig.as_json`) back; it was checked when stored."""
    return SourceConfig(
        name=stored["name"],
        url=stored["url"],
        poll_interval_secs=int(stored["poll_interval_secs"]),
        entity_key=stored["entity_key"],
        namespace=stored["namespace"],
        auth=parse_auth(stored.get("auth_type")),
        items=stored.get("items"),
        mapping=dict(stored.get("mapping") or {}),
    )
