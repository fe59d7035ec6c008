"""HTTP handlers for connectors on the core (reference §4.10): list, show, store and delete a
token.

Credentials are keyed by an owner: `default` with auth off; with auth on, the namespace whose
token the caller holds (the original keyed by the raw bearer, any bearer: then a connector had
no namespace to write under, and the bearer sat on the disk). Tokens are kept by
`flux.credentials`, encrypted; without FLUX_ENCRYPTION_KEY there is no store and storing
answers 500. Storing a token (re)starts the connector; deleting it stops it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flux.api.body import read_json_object, require_json_content_type
from flux.api.http import json_response, server_of
from flux.api.identity import credential_of
from flux.auth import UNKNOWN_TOKEN
from flux.connectors.base import DEFAULT_OWNER, KNOWN, ConnectorInfo, owner_key
from flux.credentials import Credentials
from flux.errors import (
    AuthError,
    CredentialError,
    CredentialStoreUnavailable,
    Forbidden,
    NotFound,
    ValidationError,
)
from flux.events import describe
from flux.server import Server

logger = logging.getLogger("flux.connectors")

NO_STORE = "Credential storage not available (FLUX_ENCRYPTION_KEY not set)"
ADMIN_OWNS_NOTHING = (
    "Connectors belong to a namespace: store the token with the namespace's token, "
    "not the admin token"
)


def connector_info(request: Request) -> ConnectorInfo:
    name = request.path_params["name"]
    info = KNOWN.get(name)
    if info is None:
        raise NotFound(f"Connector '{name}' not found")
    return info


def owner_of(request: Request, server: Server, write: bool = False) -> str | None:
    """The credential owner: `default` with auth off; with auth on the caller's namespace
    (`namespace:<name>`). Without a bearer: AuthError (401 `Invalid token: <reason>`, as in the
    original). A bearer of no namespace may read (it owns nothing, so every connector is
    `not_configured`: None) but not write: the admin's is 403, any other 401."""
    if not server.settings.auth_enabled:
        return DEFAULT_OWNER
    credential = credential_of(request.scope)
    try:
        credential.require()
    except AuthError as exc:
        raise AuthError(f"Invalid token: {exc.message}") from None
    namespace = server.access.owner(credential)
    if namespace is not None:
        return owner_key(namespace)
    if not write:
        return None
    if server.access.is_admin(credential):
        raise Forbidden(ADMIN_OWNS_NOTHING)
    raise AuthError(UNKNOWN_TOKEN)


def writer_of(request: Request, server: Server) -> str:
    owner = owner_of(request, server, write=True)
    assert owner is not None  # write=True raises instead
    return owner


def _store(server: Server) -> Credentials:
    if server.credentials is None:
        raise CredentialStoreUnavailable(NO_STORE)
    return server.credentials


async def _status(server: Server, owner: str | None, name: str) -> str:
    store = server.credentials
    if store is None or owner is None:
        return "not_configured"
    try:
        configured = await asyncio.to_thread(store.has, owner, name)
    except CredentialError:
        return "error"
    if not configured:
        return "not_configured"
    runner = server.connectors.runner(owner, name)
    if runner is not None and runner.status.last_error is not None:
        return "error"
    return "configured"


async def list_connectors(request: Request) -> Response:
    """GET /api/connectors: `{"connectors": [{"name", "enabled", "status"}, ...]}`; `enabled`
    says whether this server polls it for the caller (`ConnectorManager.polled`)."""
    server = server_of(request)
    owner = owner_of(request, server)
    polled = server.connectors.polled
    items = [
        {
            "name": name,
            "enabled": polled(owner, name),
            "status": await _status(server, owner, name),
        }
        for name in KNOWN
    ]
    return json_response({"connectors": items})


async def show(request: Request) -> Response:
    """GET /api/connectors/{name}: status, interval and the last poll's outcome."""
    server = server_of(request)
    info = connector_info(request)
    owner = owner_of(request, server)
    body: dict[str, Any] = {
        "name": info.name,
        "enabled": server.connectors.polled(owner, info.name),
        "status": await _status(server, owner, info.name),
        "poll_interval_seconds": server.connectors.poll_interval(info),
        "last_poll": None,
        "last_error": None,
        "polls": 0,
        "failures": 0,
        "events": 0,
    }
    runner = server.connectors.runner(owner, info.name) if owner is not None else None
    if runner is not None:
        body.update(runner.status.as_dict())
    return json_response(body)


async def store_token(request: Request) -> Response:
    """POST /api/connectors/{name}/token `{"token": "..."}` → `{"success": true}`. The body's
    type is checked first, as on every JSON endpoint (docs/auth.md)."""
    require_json_content_type(request)
    server = server_of(request)
    info = connector_info(request)
    store = _store(server)
    owner = writer_of(request, server)
    doc = await read_json_object(request)
    token = doc.get("token")
    if token is None:
        raise ValidationError("missing field `token`")
    if type(token) is not str:
        raise ValidationError(f"invalid type: {describe(token)}, expected a string")
    if not token.strip():
        raise ValidationError("`token` must not be empty")
    try:
        await asyncio.to_thread(store.put, owner, info.name, token)
    except CredentialError as exc:
        raise CredentialError("Failed to store credentials") from exc
    server.connectors.schedule(owner, info.name)
    logger.info("%s token stored for %s; connector (re)started", info.name, owner)
    return json_response({"success": True})


async def delete_token(request: Request) -> Response:
    """DELETE /api/connectors/{name}/token → `{"success": true}`; 404 when none is stored."""
    server = server_of(request)
    info = connector_info(request)
    store = _store(server)
    owner = writer_of(request, server)
    try:
        deleted = await asyncio.to_thread(store.delete, owner, info.name)
    except CredentialError as exc:
        raise CredentialError("Failed to delete credentials") from exc
    if not deleted:
        raise NotFound(f"No credentials found for connector '{info.name}'")
    await server.connectors.unschedule(owner, info.name)
    logger.info("%s token deleted for %s; connector stopped", info.name, owner)
    return json_response({"success": True})
