"""HTTP handlers for generic sources (reference §10.3, on the main server): create, list, show
and delete.

Owners are those of the connector API (`flux.api.connectors.owner_of`): `default` with auth off
(anyone manages every source), the caller's namespace with auth on. With auth on a source must
write under its creator's namespace, and another namespace's token neither sees it nor can
read or delete it (404, as for a source that does not exist). The upstream secret (`token`) goes
to the encrypted credential store and is never shown again (`has_token`); without
FLUX_ENCRYPTION_KEY a source with a token answers 500, a source without one works.

With auth on a namespace holds at most FLUX_SOURCES_MAX_PER_NAMESPACE sources (429 past it),
each polling no faster than FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS (400), and a URL on an
internal address is refused (400) unless the operator allows it (`flux.connectors.ssrf`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from flux.api.body import read_json_object, require_json_content_type
from flux.api.connectors import NO_STORE, owner_of, writer_of
from flux.api.http import json_response, server_of
from flux.api.identity import credential_of
from flux.auth import Credential
from flux.connectors.source_config import parse_config, parse_token
from flux.connectors.sources import EVERY_OWNER, Sources
from flux.connectors.ssrf import Refused, check_url, port_of, resolve_checked
from flux.errors import CredentialStoreUnavailable, Forbidden, ValidationError
from flux.events import describe
from flux.server import Server

RESOLVE_SECONDS = 5.0  # how long creating a source waits for DNS


def _sources(server: Server) -> Sources:
    return server.connectors.sources


def _check_namespace(server: Server, owner: str, namespace: str, doc: dict[str, Any]) -> None:
    """With auth on: the source writes under the caller's own namespace, and a
    `flux_namespace_token` (accepted for compatibility, never stored) must be that namespace's
    token."""
    extra = doc.get("flux_namespace_token")
    if extra is not None and type(extra) is not str:
        raise ValidationError(
            f"`flux_namespace_token`: invalid type: {describe(extra)}, expected a string"
        )
    if not server.settings.auth_enabled:
        return
    if owner != f"namespace:{namespace}":
        raise Forbidden(f"Token does not have permission to write to namespace '{namespace}'")
    if extra and server.access.owner(Credential.from_token(extra)) != namespace:
        raise Forbidden(f"`flux_namespace_token` is not the token of namespace '{namespace}'")


async def create(request: Request) -> Response:
    """POST /api/connectors/generic → 201 `{"source_id": "<uuid4>"}`. The body's type is
    checked first, as on every JSON endpoint (docs/auth.md)."""
    require_json_content_type(request)
    server = server_of(request)
    owner = writer_of(request, server)
    doc = await read_json_object(request)
    sources = _sources(server)
    policy = sources.policy
    config = parse_config(doc, policy, sources.min_interval)
    token = parse_token(doc, config.auth)
    _check_namespace(server, owner, config.namespace, doc)
    url = check_url(config.url, policy)
    try:
        async with asyncio.timeout(RESOLVE_SECONDS):
            await resolve_checked(url.host, port_of(url), policy)
    except Refused as exc:
        if not exc.message.startswith("cannot resolve"):
            raise ValidationError(f"`url`: {exc.message}") from None
        # A name that does not resolve (yet) is accepted: every poll resolves and checks again.
    except TimeoutError:
        pass  # a slow resolver: the same
    if token is not None and server.credentials is None:
        raise CredentialStoreUnavailable(NO_STORE)
    source = await sources.create(owner, config, token)
    return json_response({"source_id": source.id}, status=201)


def _reader(request: Request, server: Server) -> str | None:
    """Whose sources the caller sees: its own, or with auth on and the admin token every
    source (the admin creates none: sources write under a namespace)."""
    if server.settings.auth_enabled and server.access.is_admin(credential_of(request.scope)):
        return EVERY_OWNER
    return owner_of(request, server)


def _remover(request: Request, server: Server) -> str:
    owner = _reader(request, server)
    return owner if owner == EVERY_OWNER else writer_of(request, server)


async def list_sources(request: Request) -> Response:
    """GET /api/connectors/generic → `{"sources": [...]}`, the caller's sources (the admin's:
    all)."""
    server = server_of(request)
    sources = _sources(server)
    owner = _reader(request, server)
    await sources.catch_up()  # in a cluster: sources just added through other nodes too
    return json_response({"sources": [sources.status(s) for s in sources.list(owner)]})


async def show(request: Request) -> Response:
    """GET /api/connectors/generic/{id} → one source with its status."""
    server = server_of(request)
    sources = _sources(server)
    owner = _reader(request, server)
    source = await sources.find(owner, request.path_params["id"])
    return json_response(sources.status(source))


async def delete(request: Request) -> Response:
    """DELETE /api/connectors/generic/{id} → 204; the source stops and its secret is deleted."""
    server = server_of(request)
    owner = _remover(request, server)
    await asyncio.shield(_sources(server).delete(owner, request.path_params["id"]))
    return Response(status_code=204)
