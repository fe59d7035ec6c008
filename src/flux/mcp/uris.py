"""The MCP resource addresses of Flux state, and what a subscription to one follows. Pure.

    flux://entities/{+entity_id}     one entity (its id may hold `/`: `dawn-coral/sensor-01`)
    flux://namespaces/{namespace}    the entities of a namespace (the id part before `/`)

`target_of` turns an address into the `Target` a subscription follows: the entity's exact id,
or the namespace's id prefix (`dawn-coral/`), the filters the WebSocket API takes.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote, unquote

ENTITY_PREFIX = "flux://entities/"
NAMESPACE_PREFIX = "flux://namespaces/"
ENTITY_TEMPLATE = ENTITY_PREFIX + "{+entity_id}"
NAMESPACE_TEMPLATE = NAMESPACE_PREFIX + "{namespace}"


@dataclass(frozen=True)
class Target:
    """What one subscribed address follows: an entity id, or an id prefix (a namespace)."""

    uri: str
    entity_id: str | None = None
    prefix: str | None = None

    def matches(self, entity_id: str) -> bool:
        if self.prefix is not None:
            return entity_id.startswith(self.prefix)
        return entity_id == self.entity_id


def entity_uri(entity_id: str) -> str:
    """The address of an entity: its id with `/` kept and other reserved characters escaped,
    as the template's reserved expansion (`{+entity_id}`) writes it."""
    return ENTITY_PREFIX + quote(entity_id, safe="/:@!$&'()*+,;=")


def namespace_uri(namespace: str) -> str:
    return NAMESPACE_PREFIX + quote(namespace, safe="")


def target_of(uri: str) -> Target:
    """The target of a Flux resource address. Raises ValueError for any other address, or one
    that names no entity or namespace."""
    if uri.startswith(ENTITY_PREFIX):
        entity_id = unquote(uri[len(ENTITY_PREFIX) :])
        if entity_id:
            return Target(uri, entity_id=entity_id)
    elif uri.startswith(NAMESPACE_PREFIX):
        namespace = unquote(uri[len(NAMESPACE_PREFIX) :])
        if namespace and "/" not in namespace:
            return Target(uri, prefix=namespace + "/")
    raise ValueError(
        f"not a Flux resource: {uri!r} (expected {ENTITY_TEMPLATE} or {NAMESPACE_TEMPLATE})"
    )
