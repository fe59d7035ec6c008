"""HTTP handlers for namespaces: register, show, change visibility, rotate the token, delete.

All of them answer 404 `Namespace registration not available (auth disabled)` with auth off.
The token is in the body of exactly two answers: registration and rotation.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flux.api.body import read_json_object
from flux.api.http import json_response, server_of
from flux.api.identity import credential_of
from flux.auth import Namespace
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


async def register(request: Request) -> Response:
    """POST /api/namespaces `{"name": ..., "private": false}`."""
    server = server_of(request)
    doc = await read_json_object(request)
    name = doc.get("name")
    if name is None:
        raise ValidationError("missing field `name`")
    if type(name) is not str:
        raise ValidationError(f"invalid type: {describe(name)}, expected a string")
    private = _private(doc, required=False)
    credential = credential_of(request.scope)
    namespace, token = await server.namespaces.register(credential, name, private)
    return json_response(token_json(namespace, token))


async def show(request: Request) -> Response:
    """GET /api/namespaces/{name}: never the token."""
    namespaces = server_of(request).namespaces
    credential = credential_of(request.scope)
    namespace, count = namespaces.show(credential, request.path_params["name"])
    return json_response(namespace_json(namespace, count))


async def update(request: Request) -> Response:
    """PUT /api/namespaces/{name} `{"private": true}`: the admin or the namespace's token."""
    server = server_of(request)
    doc = await read_json_object(request)
    private = _private(doc, required=True)
    name = request.path_params["name"]
    namespaces = server.namespaces
    namespace = await namespaces.set_private(credential_of(request.scope), name, private)
    return json_response(namespace_json(namespace, namespaces.entity_count(name)))


async def rotate(request: Request) -> Response:
    """POST /api/namespaces/{name}/token: a new token; the old one is revoked at once."""
    namespaces = server_of(request).namespaces
    name = request.path_params["name"]
    namespace, token = await namespaces.rotate_token(credential_of(request.scope), name)
    return json_response(token_json(namespace, token))


async def delete(request: Request) -> Response:
    """DELETE /api/namespaces/{name}: admin only; the namespace's entities go with it."""
    namespaces = server_of(request).namespaces
    await namespaces.delete(credential_of(request.scope), request.path_params["name"])
    return Response(status_code=204)
