"""HTTP handlers for coordination (docs/coordination.md): leases with fencing tokens and the
changes-since feed. Conditional writes are `POST /api/events` and the batch (flux.api.http)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flux.api.body import read_json_object
from flux.api.http import entity_json, json_response, server_of
from flux.api.identity import credential_of
from flux.conditions import LeaseOp
from flux.errors import ValidationError
from flux.events import DELETED, check_entity_id, check_id_part, validate_event

LEASE_BODY_LIMIT = 16 * 1024


async def acquire(request: Request) -> Response:
    """`POST /api/leases/acquire`: take a lease (or extend it, for its holder)."""
    return await _lease(request, "acquire")


async def renew(request: Request) -> Response:
    """`POST /api/leases/renew`: extend a lease its holder still holds."""
    return await _lease(request, "renew")


async def release(request: Request) -> Response:
    """`POST /api/leases/release`: give a lease back."""
    return await _lease(request, "release")


async def _lease(request: Request, op: str) -> Response:
    """Take, extend or give back a lease on an entity. 200 with the lease (its `token` is the
    fencing token); 409 with the holder and the entity's state when it is not the caller's to
    take or keep. `acquire` may set `properties` with the lease, and `presence: true` makes it
    a presence for HTTP clients: the entity is deleted when the lease ends (released, or not
    renewed in time), as a WebSocket presence is when its connection ends."""
    server = server_of(request)
    doc = await read_json_object(request, LEASE_BODY_LIMIT)
    entity_id = doc.get("entity_id")
    if type(entity_id) is not str or not entity_id:
        raise ValidationError("`entity_id` must be a non-empty string")
    check_entity_id(entity_id, server.settings.max_entity_id_length)
    owner = doc.get("owner")
    if type(owner) is not str or not owner or len(owner) > 256:
        raise ValidationError("`owner` must be a non-empty string of at most 256 characters")
    token = doc.get("token")
    if op != "acquire" and (type(token) is not int or token < 1):
        raise ValidationError("`token` must be the lease's token (a positive integer)")
    ttl = doc.get("ttl_ms")
    max_ttl = server.settings.lease_max_ttl_ms
    if op != "release" and (type(ttl) is not int or not 1 <= ttl <= max_ttl):
        raise ValidationError(
            f"`ttl_ms` must be an integer from 1 to {max_ttl} (FLUX_LEASE_MAX_TTL_MS)"
        )
    presence = doc.get("presence", False)
    properties = doc.get("properties")
    if op != "acquire" and (presence or properties is not None):
        raise ValidationError("`presence` and `properties` are given with `acquire` only")
    if type(presence) is not bool:
        raise ValidationError("`presence` must be true or false")
    if properties is not None:
        if type(properties) is not dict:
            raise ValidationError("`properties` must be an object")
        if DELETED in properties:
            raise ValidationError(f"property {DELETED} is set by Flux")
        # The checks an event's properties get (depth, Flux's own properties).
        validate_event(
            {
                "stream": "flux.leases",
                "source": owner,
                "timestamp": 1,
                "payload": {"entity_id": entity_id, "properties": properties},
            },
            server.settings.max_entity_id_length,
        )
    permissions = server.permissions
    namespace = permissions.authorize_write(credential_of(request.scope), entity_id)
    if namespace is not None:
        permissions.rate_limit(namespace)
    held, done = await server.service.lease(
        LeaseOp(op, owner, token if op != "acquire" else None, ttl, presence),
        entity_id,
        properties,
    )
    answer: dict[str, Any] = {"entity_id": entity_id, "version": done.seq}
    if op == "release":
        answer["released"] = True
    else:
        answer.update(held)
    return json_response(answer)


async def changes(request: Request) -> Response:
    """`GET /api/state/changes?since=V`: the entities changed after version V (as they are
    now) and the ids deleted after it, oldest first, one page at a time; `next` is the `since`
    of the next request. A cursor older than the deletions still remembered is a 410 with
    `"resync": true`."""
    server = server_of(request)
    params = request.query_params
    since = _integer(params.get("since", "0"), "since")
    page_limit = server.settings.changes_page_limit
    limit = _integer(params.get("limit", str(page_limit)), "limit")
    if limit < 1:
        raise ValidationError("`limit` must be at least 1")
    limit = min(limit, page_limit)
    max_length = server.settings.max_entity_id_length
    prefix = check_id_part(params.get("prefix", ""), "prefix", max_length)
    namespace = params.get("namespace")
    if namespace is not None:
        check_id_part(namespace, "namespace", max_length)
    engine = server.engine
    # From 0 a client holds nothing, so the deletions forgotten before the floor are nothing
    # it needs: it gets every entity there is.
    if 0 < since < engine.deleted_floor:
        return json_response(
            {
                "error": (
                    f"changes before version {engine.deleted_floor} are no longer known "
                    "(FLUX_TOMBSTONES_KEPT): read the whole state again, then ask from its "
                    "version"
                ),
                "resync": True,
                "oldest": engine.deleted_floor,
                "version": engine.last_seq,
            },
            status=410,
        )
    hidden = server.permissions.hidden(credential_of(request.scope))

    def keep(entity_id: str) -> bool:
        head, sep, _ = entity_id.partition("/")
        if namespace is not None and (not sep or head != namespace or entity_id == namespace):
            return False
        if prefix and not entity_id.startswith(prefix):
            return False
        return not (hidden and sep and head in hidden)

    filtered = prefix or namespace is not None or hidden
    page = engine.changes_since(since, limit, keep if filtered else None)
    return json_response(
        {
            "changes": [entity_json(e) for e in page.entities],
            "deleted": [{"id": i, "version": v} for i, v in page.deleted],
            "next": page.next,
            "more": page.more,
        }
    )


def _integer(text: str, name: str) -> int:
    if not (text.isascii() and text.isdigit()) or len(text) > 18:
        raise ValidationError(f"`{name}` must be a non-negative integer")
    return int(text)
