"""HTTP handlers for namespaces: register, show, change visibility, rotate the token, delete.

All of them answer 404 `Namespace registration not available (auth disabled)` with auth off.
The token is in the body of exactly two answers: registration and rotation.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flux.api.body import read_json_object
from flux.api.http import credential_of, json_response, service_of
from flux.auth import Credential, Namespace
from flux.errors import ValidationError
from flux.events import describe, format_time


def namespace_json(namespace: Namespace, entity_count: int) -> dict[str, Any]:
    return {
        "namespaceId": namespace.id,
        "name": namespace.name,
        "createdAt": format_time(namespace.created_at),
        "entityCount": entity_count,
        "private": namespace.private,
    }


def token_json(namespace: Namespace, token: str) -> dict[str, Any]:
    return {
        "namespaceId": namespace.id,
        "name": namespace.name,
        "token": token,
        "private": namespace.private,
    }


def _private(doc: dict[str, Any], required: bool) -> bool:
    value = doc.get("private")
    if value is None:
        if required:
            raise ValidationError("missing field `private`")
        return False
    if type(value) is not bool:
        raise ValidationError(f"invalid type: {describe(value)}, expected a boolean")
    return value


def _header_credential(request: Request) -> Credential:
    """The request's credential, read even with auth off (these endpoints answer 404 then)."""
    return Credential.from_header(request.headers.get("authorization"))


async def register(request: Request) -> Response:
    """POST /api/namespaces `{"name": ..., "private": false}`."""
    service = service_of(request)
    doc = await read_json_object(request, service.runtime.body_size_limit_single_bytes)
    name = doc.get("name")
    if name is None:
        raise ValidationError("missing field `name`")
    if type(name) is not str:
        raise ValidationError(f"invalid type: {describe(name)}, expected a string")
    private = _private(doc, required=False)
    namespace, token = await service.register_namespace(_header_credential(request), name, private)
    return json_response(token_json(namespace, token))


async def show(request: Request) -> Response:
    """GET /api/namespaces/{name}: never the token."""
    service = service_of(request)
    namespace, count = service.namespace(credential_of(request), request.path_params["name"])
    return json_response(namespace_json(namespace, count))


async def update(request: Request) -> Response:
    """PUT /api/namespaces/{name} `{"private": true}`: the admin or the namespace's token."""
    service = service_of(request)
    doc = await read_json_object(request, service.runtime.body_size_limit_single_bytes)
    private = _private(doc, required=True)
    name = request.path_params["name"]
    namespace = await service.set_private(_header_credential(request), name, private)
    return json_response(namespace_json(namespace, service.entity_count(name)))


async def rotate(request: Request) -> Response:
    """POST /api/namespaces/{name}/token: a new token; the old one is revoked at once."""
    service = service_of(request)
    name = request.path_params["name"]
    namespace, token = await service.rotate_token(_header_credential(request), name)
    return json_response(token_json(namespace, token))


async def delete(request: Request) -> Response:
    """DELETE /api/namespaces/{name}: admin only; the namespace's entities go with it."""
    service = service_of(request)
    await service.delete_namespace(_header_credential(request), request.path_params["name"])
    return Response(status_code=204)
