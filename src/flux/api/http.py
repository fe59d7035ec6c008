"""HTTP handlers for events, state, history, health and admin config."""

from __future__ import annotations

from typing import Any, cast

import orjson
from starlette.requests import Request
from starlette.responses import Response

from flux import __version__
from flux.api.body import BATCH, SINGLE, read_body, read_json_object, require_json_content_type
from flux.api.identity import credential_of
from flux.auth import HIDE_ALL, RESERVED_NAMESPACE, Credential
from flux.conditions import SIBLING
from flux.engine import Entity
from flux.errors import FluxError, NotFound, RateLimited, ValidationError
from flux.events import (
    Event,
    check_entity_id,
    check_id_part,
    decode_json,
    describe,
    format_time,
    now_us,
    parse_time,
    validate_event,
    validate_many,
)
from flux.grouping import group_level
from flux.server import Server

HISTORY_WINDOW_US = 24 * 3600 * 1_000_000
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 500
GROUPS_DEFAULT_LIMIT = 200
GROUPS_MAX_LIMIT = 1000
GROUPS_MAX_DELIMITERS = 8


def server_of(request: Request) -> Server:
    """The parts of the server the app serves (`flux.server.Server`)."""
    server: Server = request.app.state.server
    return server


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        orjson.dumps(content), status_code=status, media_type="application/json", headers=headers
    )


def entity_json(entity: Entity) -> dict[str, Any]:
    """An entity as the API answers it; Flux's own entities (`flux-core/...`, the directory)
    say so with `"system": true`, which no other entity carries."""
    body = {
        "id": entity.id,
        "properties": entity.properties,
        "lastUpdated": format_time(entity.last_updated),
        "version": entity.version,
    }
    if entity.id.startswith(_SYSTEM_PREFIX):
        body["system"] = True
    return body


_SYSTEM_PREFIX = RESERVED_NAMESPACE + "/"


# -- events ------------------------------------------------------------------------------------


async def publish_event(request: Request) -> Response:
    server = server_of(request)
    require_json_content_type(request)
    body = await read_body(request, SINGLE)
    event = validate_event(decode_json(body), server.settings.max_entity_id_length)
    _version_from_headers(request, event)
    server.permissions.admit(credential_of(request.scope), event)
    (appended,) = await server.service.publish([event])
    if appended.failure is not None:
        raise await server.service.condition_failed(appended.failure)
    return json_response(
        {"eventId": event["eventId"], "stream": event["stream"], "sequence": appended.seq}
    )


def _version_from_headers(request: Request, event: dict[str, Any]) -> None:
    """`If-Match: "<version>"` and `If-None-Match: *` as the event's `expected_version` (the
    version and 0: create only). Raises ValidationError for another form, or when the event
    names a different `expected_version` itself."""
    headers = request.headers
    match = headers.get("if-match")
    none_match = headers.get("if-none-match")
    if match is None and none_match is None:
        return
    if match is not None and none_match is not None:
        raise ValidationError("give `If-Match` or `If-None-Match`, not both")
    if none_match is not None:
        if none_match.strip() != "*":
            raise ValidationError("`If-None-Match` takes only `*` (the entity must not exist)")
        version = 0
    else:
        text = (match or "").strip()
        if text.startswith("W/"):
            text = text[2:]
        text = text.strip('"')
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise ValidationError('`If-Match` takes an entity version, e.g. `If-Match: "12"`')
        version = int(text)
    if "payload" not in event or type(event["payload"].get("entity_id")) is not str:
        raise ValidationError("a conditional write needs `payload.entity_id` (a string)")
    if type(event["payload"].get("properties")) is not dict:
        raise ValidationError("a conditional write needs `payload.properties` (an object)")
    given = event.get("expected_version")
    if given is not None and given != version:
        raise ValidationError(
            f"the header expects version {version} but `expected_version` is {given}"
        )
    event["expected_version"] = version


async def publish_batch(request: Request) -> Response:
    server = server_of(request)
    require_json_content_type(request)
    body = await read_body(request, BATCH)
    doc = decode_json(body)
    atomic = False
    if type(doc) is dict:
        if "events" not in doc:
            raise ValidationError("missing field `events`")
        items = doc["events"]
        if type(items) is not list:
            raise ValidationError(f"invalid type: {describe(items)}, expected a sequence")
        atomic = doc.get("atomic", False)
        if type(atomic) is not bool:
            raise ValidationError("`atomic` must be true or false")
    elif type(doc) is list:
        items = doc
    else:
        raise ValidationError(
            f'invalid type: {describe(doc)}, expected {{"events": [...]}} or an array of events'
        )
    if not items:
        raise ValidationError("Batch request must contain at least one event")
    if atomic:
        return await _publish_atomic(server, request, items)
    results: list[dict[str, Any] | None] = [None] * len(items)  # each index is set below
    events = validate_many(items, server.settings.max_entity_id_length)
    if server.permissions.admits_all(events):  # the common case: no step per event
        valid, wait = list(enumerate(cast(list[Event], events))), 0
    else:
        valid, wait = _admit_each(server, credential_of(request.scope), items, events, results)
    appended = await server.service.publish([event for _, event in valid]) if valid else []
    stored = 0
    for (index, event), done in zip(valid, appended, strict=True):
        result: dict[str, Any] = {
            "index": index,
            "eventId": event["eventId"],
            "stream": event["stream"],
            "error": None,
            "sequence": done.seq,
        }
        if done.failure is not None:
            result["error"] = f"condition failed: {done.failure.reason}"
            result["sequence"] = None
            result["conflict"] = await server.service.conflict_details(done.failure)
        else:
            stored += 1
        results[index] = result
    return json_response(
        {"successful": stored, "failed": len(items) - stored, "results": results},
        headers={"Retry-After": str(wait)} if wait else None,
    )


def _admit_each(
    server: Server,
    credential: Credential,
    items: list[Any],
    events: list[Event | ValidationError],
    results: list[dict[str, Any] | None],
) -> tuple[list[tuple[int, Event]], int]:
    """A batch's events one by one: each invalid or refused one gets its result (in
    `results`); returns the admitted ones with their index, and the Retry-After seconds of
    the rate limit (0 when it refused none)."""
    admit = server.permissions.admit
    valid = []
    wait = 0
    for index, event in enumerate(events):
        if isinstance(event, ValidationError):
            item = items[index]
            stream = item.get("stream") if type(item) is dict else None
            results[index] = {
                "index": index,
                "eventId": None,
                "stream": stream if type(stream) is str else None,
                "error": f"validation failed: {event.message}",
            }
            continue
        try:
            admit(credential, event)
        except RateLimited as exc:
            wait = max(wait, exc.retry_after)
            error = exc.message
        except FluxError as exc:
            error = f"authorization failed: {exc.kind}: {exc.message}"
        else:
            valid.append((index, event))
            continue
        results[index] = {
            "index": index,
            "eventId": event["eventId"],
            "stream": event["stream"],
            "error": error,
        }
    return valid, wait


async def _publish_atomic(server: Server, request: Request, items: list[Any]) -> Response:
    """`{"events": [...], "atomic": true}`: every event valid and admitted, every condition
    holding where the log orders them, then all stored in consecutive sequences; else nothing
    is stored and the answer is the first problem's error (400, 401, 403, 429 or 409) with its
    `index`."""
    validated = validate_many(items, server.settings.max_entity_id_length)
    if server.permissions.admits_all(validated):  # the common case: no step per event
        events = cast(list[Event], validated)
    else:
        credential = credential_of(request.scope)
        events = []
        for index, event in enumerate(validated):
            try:
                if isinstance(event, ValidationError):
                    raise event
                server.permissions.admit(credential, event)
            except FluxError as exc:
                exc.message = f"event {index}: {exc.message}; nothing was stored (atomic batch)"
                raise
            events.append(event)
    appended = await server.service.publish(events, atomic=True)
    for index, done in enumerate(appended):
        failure = done.failure
        if failure is not None and not failure.reason.startswith(SIBLING):
            raise await server.service.condition_failed(failure, index)
    results = [
        {
            "index": index,
            "eventId": event["eventId"],
            "stream": event["stream"],
            "error": None,
            "sequence": done.seq,
        }
        for index, (event, done) in enumerate(zip(events, appended, strict=True))
    ]
    return json_response({"successful": len(events), "failed": 0, "results": results})


async def history(request: Request) -> Response:
    server = server_of(request)
    permissions = server.permissions
    params = request.query_params
    entity = params.get("entity")
    if not entity:
        raise ValidationError("entity parameter is required")
    check_id_part(entity, "entity_id", server.settings.max_entity_id_length)
    permissions.check_read(credential_of(request.scope), entity)
    since_text = params.get("since")
    since = _parse_since(since_text) if since_text else now_us() - HISTORY_WINDOW_US
    limit_text = params.get("limit")
    limit = HISTORY_DEFAULT_LIMIT
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            raise ValidationError("invalid `limit`: expected an integer") from None
    limit = max(1, min(HISTORY_MAX_LIMIT, limit))
    # A deleted namespace's past is served to nobody: only events above its floor. A delete
    # that began during the query hides everything it found (its floor is above all of it).
    floor = permissions.history_floor(entity)
    rows = await server.log.history(entity, since, limit, floor) if floor < HIDE_ALL else []
    if permissions.history_floor(entity) != floor:
        rows = []
    return Response(b"[" + b",".join(rows) + b"]", media_type="application/json")


def _parse_since(text: str) -> int:
    """`since` as microseconds. An offset's `+` sent unencoded arrives as a space
    (`...T10:00:00 02:00`); that reading is tried too, since no valid time has a space there."""
    try:
        return parse_time(text)
    except ValueError:
        pass
    head, sep, offset = text.rpartition(" ")
    if sep and "T" in head:
        try:
            return parse_time(f"{head}+{offset}")
        except ValueError:
            pass
    raise ValidationError("invalid `since` timestamp (expected ISO 8601)")


# -- state -------------------------------------------------------------------------------------


async def list_entities(request: Request) -> Response:
    server = server_of(request)
    params = request.query_params
    max_length = server.settings.max_entity_id_length
    prefix = check_id_part(params.get("prefix", ""), "prefix", max_length)
    namespace = params.get("namespace")
    if namespace is not None:
        check_id_part(namespace, "namespace", max_length)
    selected = server.engine.select(prefix, namespace)
    hidden = server.permissions.hidden(credential_of(request.scope))
    if hidden:
        selected = (e for e in selected if e.id.partition("/")[0] not in hidden)
    # `has`: only the entities carrying that property (not null). The console lists the
    # leases and presences this way (`__lease__`, `__presence__`) without reading the world.
    has = params.get("has")
    if has is not None:
        check_id_part(has, "has", max_length)
        selected = (e for e in selected if e.properties.get(has) is not None)
    return json_response([entity_json(entity) for entity in selected])


async def list_groups(request: Request) -> Response:
    """One level of the id tree under `prefix`, in pages (`flux.grouping`): the groups below it
    with their entity counts and the entities that end at that level. The console's entity
    browser reads this, so 100,000 entities reach the browser a page at a time. Private
    namespaces the caller may not read are left out, as in the listing."""
    server = server_of(request)
    params = request.query_params
    max_length = server.settings.max_entity_id_length
    prefix = check_id_part(params.get("prefix", ""), "prefix", max_length)
    after = check_id_part(params.get("after", ""), "after", max_length)
    contains = check_id_part(params.get("q", ""), "q", max_length)
    delimiters = params.get("delimiter", "/")
    if not delimiters or len(delimiters) > GROUPS_MAX_DELIMITERS:
        raise ValidationError(
            f"invalid `delimiter`: expected 1 to {GROUPS_MAX_DELIMITERS} characters"
        )
    limit = GROUPS_DEFAULT_LIMIT
    limit_text = params.get("limit")
    if limit_text is not None:
        try:
            limit = int(limit_text)
        except ValueError:
            raise ValidationError("invalid `limit`: expected an integer") from None
        if not 1 <= limit <= GROUPS_MAX_LIMIT:
            raise ValidationError(f"invalid `limit`: expected 1 to {GROUPS_MAX_LIMIT}")
    selected = server.engine.select(prefix)
    hidden = server.permissions.hidden(credential_of(request.scope))
    if hidden:
        selected = (e for e in selected if e.id.partition("/")[0] not in hidden)
    level = group_level(((e.id, e) for e in selected), prefix, delimiters, limit, after, contains)
    return json_response(
        {
            "prefix": prefix,
            "total": level.total,
            "groups": [{"prefix": key, "count": count} for key, count in level.groups],
            "entities": [entity_json(entity) for entity in level.entities],
            "next": level.next,
        }
    )


async def get_entity(request: Request) -> Response:
    server = server_of(request)
    entity_id = check_id_part(
        request.path_params["entity_id"], "entity_id", server.settings.max_entity_id_length
    )
    server.permissions.check_read(credential_of(request.scope), entity_id)
    entity = server.engine.get(entity_id)
    if entity is None:
        raise NotFound("Entity not found")
    return json_response(entity_json(entity))


async def delete_entity(request: Request) -> Response:
    """Delete one entity: `{"entity_id", "eventId", "deleted": true}` with the tombstone's
    event id, or `{"entity_id", "deleted": false}` (nothing logged) when it does not exist. The
    id takes one event of the namespace's rate limit either way (429 past it)."""
    server = server_of(request)
    entity_id = check_entity_id(
        request.path_params["entity_id"], server.settings.max_entity_id_length
    )
    server.permissions.authorize_write(credential_of(request.scope), entity_id)
    admitted = server.permissions.admit_deletes([entity_id])
    if admitted.refused:
        raise RateLimited(admitted.retry_after)
    done = (await server.service.delete([entity_id])).deleted.get(entity_id)
    if done is None:
        return json_response({"entity_id": entity_id, "deleted": False})
    return json_response({"entity_id": entity_id, "eventId": done[0]["eventId"], "deleted": True})


async def batch_delete(request: Request) -> Response:
    """Delete the entities a filter selects: `deleted` (a count) and `deleted_ids`, the ids
    that did not exist (`not_found`: nothing logged for them), and those refused by the rate
    limit (`failed`, `errors`, with a Retry-After header). Every id takes one event of the
    namespace's rate limit, whether it existed or not."""
    server = server_of(request)
    permissions = server.permissions
    doc = await read_json_object(request)
    credential = credential_of(request.scope)
    max_length = server.settings.max_entity_id_length
    limit = server.runtime.current.max_batch_delete
    # The first filter present wins; a null one counts as absent (as serde's Option does).
    # With auth on, a namespace or prefix filter only reaches the caller's own namespace, and
    # every listed id is authorized before anything is deleted (one failure refuses them all).
    if doc.get("namespace") is not None:
        namespace = doc["namespace"]
        if type(namespace) is not str or not namespace:
            raise ValidationError("`namespace` must be a non-empty string")
        ids = permissions.writable(
            credential, check_id_part(namespace, "namespace", max_length), ""
        )
    elif doc.get("prefix") is not None:
        prefix = doc["prefix"]
        if type(prefix) is not str or not prefix:
            raise ValidationError("`prefix` must be a non-empty string")
        ids = permissions.writable(credential, None, check_id_part(prefix, "prefix", max_length))
    elif doc.get("entity_ids") is not None:
        ids = doc["entity_ids"]
        if type(ids) is not list or not all(type(i) is str for i in ids):
            raise ValidationError("`entity_ids` must be an array of strings")
        ids = [check_entity_id(i, max_length) for i in dict.fromkeys(ids)]
        _check_batch_size(ids, limit)
        for entity_id in ids:
            permissions.authorize_write(credential, entity_id)
    else:
        raise ValidationError("a filter is required: one of `namespace`, `prefix` or `entity_ids`")
    _check_batch_size(ids, limit)
    admitted = permissions.admit_deletes(ids)
    deletion = await server.service.delete(admitted.admitted) if admitted.admitted else None
    deleted = deletion.deleted if deletion is not None else {}
    missing = set(deletion.not_found) if deletion is not None else set()
    return json_response(
        {
            "deleted": len(deleted),
            "deleted_ids": [i for i in admitted.admitted if i in deleted],
            "not_found": [i for i in admitted.admitted if i in missing],
            "failed": len(admitted.refused),
            "errors": [f"{i}: {RateLimited.MESSAGE}" for i in admitted.refused],
        },
        headers={"Retry-After": str(admitted.retry_after)} if admitted.refused else None,
    )


def _check_batch_size(ids: list[str], limit: int) -> None:
    if len(ids) > limit:
        raise ValidationError(f"Batch too large: {len(ids)} entities requested, max is {limit}")


# -- health and admin --------------------------------------------------------------------------


async def health(request: Request) -> Response:
    """`ok` (200), `starting` (503) or `degraded` (503) with the reason in `error`: the event
    log is known to be damaged (the state is served, but history and replays that need the
    damaged part are refused), or its store is unreachable for now (the last state is served,
    writes are refused until the log is back), or, in a cluster, the node's connection for
    the shared buckets is down. In a cluster it also names the node and the jobs it holds."""
    server = server_of(request)
    service = server.service
    body: dict[str, Any] = {
        "status": "ok" if service.ready else "starting",
        "version": __version__,
        # Flux's own entities (the directory) are not the user's: counted apart.
        "entities": len(service.engine) - (system := service.engine.count_in(RESERVED_NAMESPACE)),
        "systemEntities": system,
        "lastSequence": service.engine.last_seq,
    }
    trouble = service.log_damage or service.log_unavailable
    cluster = server.cluster
    if cluster is not None:
        # Which node answered, and the single-runner jobs it runs now (flux.jobs).
        body["node"] = cluster.node
        body["jobs"] = sorted(name for name, job in server.jobs.jobs.items() if job.held)
        if trouble is None and service.ready and not cluster.connected:
            trouble = "cluster state unavailable: not connected to NATS (reconnecting)"
    if service.ready and trouble is not None:
        body["status"] = "degraded"
        body["error"] = trouble
    return json_response(body, status=200 if body["status"] == "ok" else 503)


async def get_admin_config(request: Request) -> Response:
    server = server_of(request)
    await server.runtime_store.refresh()  # in a cluster: another node's change just made
    return json_response(server.runtime.as_dict())


async def put_admin_config(request: Request) -> Response:
    server = server_of(request)
    doc = await read_json_object(request)
    server.permissions.check_admin(credential_of(request.scope))
    try:
        await server.runtime_store.update(doc)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return json_response(server.runtime.as_dict())
