"""HTTP handlers for events, state, history, health and admin config."""

from __future__ import annotations

import hmac
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from flux import __version__
from flux.api.body import read_body, read_json_object
from flux.engine import Entity
from flux.errors import AuthError, Forbidden, NotFound, ValidationError
from flux.events import (
    check_entity_id,
    decode_json,
    describe,
    format_time,
    now_us,
    parse_time,
    validate_event,
)
from flux.service import FluxService

HISTORY_WINDOW_US = 24 * 3600 * 1_000_000
HISTORY_DEFAULT_LIMIT = 100
HISTORY_MAX_LIMIT = 500


def service_of(request: Request) -> FluxService:
    service: FluxService = request.app.state.service
    return service


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type="application/json")


def entity_json(entity: Entity) -> dict[str, Any]:
    return {
        "id": entity.id,
        "properties": entity.properties,
        "lastUpdated": format_time(entity.last_updated),
        "version": entity.version,
    }


# -- events ------------------------------------------------------------------------------------


async def publish_event(request: Request) -> Response:
    service = service_of(request)
    body = await read_body(request, service.runtime.body_size_limit_single_bytes)
    event = validate_event(decode_json(body))
    (appended,) = await service.publish([event])
    return json_response(
        {"eventId": event["eventId"], "stream": event["stream"], "sequence": appended.seq}
    )


async def publish_batch(request: Request) -> Response:
    service = service_of(request)
    body = await read_body(request, service.runtime.body_size_limit_batch_bytes)
    doc = decode_json(body)
    if type(doc) is dict:
        if "events" not in doc:
            raise ValidationError("missing field `events`")
        items = doc["events"]
        if type(items) is not list:
            raise ValidationError(f"invalid type: {describe(items)}, expected a sequence")
    elif type(doc) is list:
        items = doc
    else:
        raise ValidationError(
            f'invalid type: {describe(doc)}, expected {{"events": [...]}} or an array of events'
        )
    if not items:
        raise ValidationError("Batch request must contain at least one event")
    results: list[dict[str, Any]] = [{} for _ in items]
    valid = []
    for index, item in enumerate(items):
        try:
            valid.append((index, validate_event(item)))
        except ValidationError as exc:
            stream = item.get("stream") if type(item) is dict else None
            results[index] = {
                "index": index,
                "eventId": None,
                "stream": stream if type(stream) is str else None,
                "error": f"validation failed: {exc.message}",
            }
    appended = await service.publish([event for _, event in valid]) if valid else []
    for (index, event), done in zip(valid, appended, strict=True):
        results[index] = {
            "index": index,
            "eventId": event["eventId"],
            "stream": event["stream"],
            "error": None,
            "sequence": done.seq,
        }
    return json_response(
        {"successful": len(valid), "failed": len(items) - len(valid), "results": results}
    )


async def history(request: Request) -> Response:
    service = service_of(request)
    params = request.query_params
    entity = params.get("entity")
    if not entity:
        raise ValidationError("entity parameter is required")
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
    rows = await service.log.history(entity, since, limit)
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
    service = service_of(request)
    params = request.query_params
    selected = service.engine.select(params.get("prefix", ""), params.get("namespace"))
    return json_response([entity_json(entity) for entity in selected])


async def get_entity(request: Request) -> Response:
    service = service_of(request)
    entity = service.engine.get(request.path_params["entity_id"])
    if entity is None:
        raise NotFound("Entity not found")
    return json_response(entity_json(entity))


async def delete_entity(request: Request) -> Response:
    service = service_of(request)
    entity_id = check_entity_id(request.path_params["entity_id"])
    ((event, _),) = await service.delete([entity_id])
    return json_response({"entity_id": entity_id, "eventId": event["eventId"]})


async def batch_delete(request: Request) -> Response:
    service = service_of(request)
    doc = await read_json_object(request, service.runtime.body_size_limit_single_bytes)
    # The first filter present wins; a null one counts as absent (as serde's Option does).
    if doc.get("namespace") is not None:
        namespace = doc["namespace"]
        if type(namespace) is not str or not namespace:
            raise ValidationError("`namespace` must be a non-empty string")
        ids = [e.id for e in service.engine.select(namespace=namespace)]
    elif doc.get("prefix") is not None:
        prefix = doc["prefix"]
        if type(prefix) is not str or not prefix:
            raise ValidationError("`prefix` must be a non-empty string")
        ids = [e.id for e in service.engine.select(prefix=prefix)]
    elif doc.get("entity_ids") is not None:
        ids = doc["entity_ids"]
        if type(ids) is not list or not all(type(i) is str for i in ids):
            raise ValidationError("`entity_ids` must be an array of strings")
        ids = [check_entity_id(i) for i in dict.fromkeys(ids)]
    else:
        raise ValidationError("a filter is required: one of `namespace`, `prefix` or `entity_ids`")
    limit = service.runtime.max_batch_delete
    if len(ids) > limit:
        raise ValidationError(f"Batch too large: {len(ids)} entities requested, max is {limit}")
    if ids:
        await service.delete(ids)
    return json_response({"deleted": len(ids), "failed": 0, "errors": []})


# -- health and admin --------------------------------------------------------------------------


async def health(request: Request) -> Response:
    service = service_of(request)
    return json_response(
        {
            "status": "ok" if service.ready else "starting",
            "version": __version__,
            "entities": len(service.engine),
            "lastSequence": service.engine.last_seq,
        },
        status=200 if service.ready else 503,
    )


def require_admin(request: Request, service: FluxService) -> None:
    """Admin gate: the admin token when one is set; without one, open only when auth is off."""
    token = service.settings.admin_token
    if token is None:
        if service.settings.auth_enabled:
            raise Forbidden(
                "admin operations are disabled: this server has auth on and no FLUX_ADMIN_TOKEN"
            )
        return
    given = request.headers.get("authorization", "")
    if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
        raise AuthError("Unauthorized")


async def get_admin_config(request: Request) -> Response:
    return json_response(service_of(request).runtime.as_dict())


async def put_admin_config(request: Request) -> Response:
    service = service_of(request)
    doc = await read_json_object(request, service.runtime.body_size_limit_single_bytes)
    require_admin(request, service)
    try:
        await service.update_runtime(doc)
    except ValueError as exc:
        raise ValidationError(str(exc)) from None
    return json_response(service.runtime.as_dict())


CONNECTORS = ("github", "gmail", "linkedin", "calendar")


async def list_connectors(request: Request) -> Response:
    return json_response(
        {
            "connectors": [
                {"name": name, "enabled": True, "status": "not_configured"} for name in CONNECTORS
            ]
        }
    )
