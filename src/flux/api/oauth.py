"""HTTP handlers for OAuth sign-in (reference §4.11): `GET /api/connectors/{name}/oauth/start`
redirects to the provider, `GET /api/connectors/{name}/oauth/callback` takes the code back.

The routes exist only with a credential store (FLUX_ENCRYPTION_KEY set): without one there is
nowhere to keep the tokens, so both answer 404 (with the JSON error, which says why). The
callback needs no bearer: the browser comes back from the provider without one, and the state
(issued to an authenticated caller by `start`, single use, 600 s) says whose sign-in it is.
"""

from __future__ import annotations

import asyncio
import logging

import httpx
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from flux.api.connectors import connector_info, writer_of
from flux.api.http import json_response, server_of
from flux.config import oauth_env
from flux.connectors.base import owner_namespace
from flux.connectors.oauth import (
    OAuthStates,
    TokenError,
    authorize_url,
    exchange_code,
    oauth_client,
    redirect_uri,
)
from flux.credentials import Credentials
from flux.errors import (
    AuthError,
    CredentialError,
    NotFound,
    OAuthNotConfigured,
    UpstreamError,
    ValidationError,
)
from flux.server import Server

logger = logging.getLogger("flux.connectors")

NO_STORE = (
    "OAuth sign-in is not available: it needs the credential store (FLUX_ENCRYPTION_KEY not set)"
)
BAD_STATE = "Invalid or expired OAuth state (possible CSRF attack)"


def states_of(request: Request) -> OAuthStates:
    states: OAuthStates = request.app.state.oauth_states
    return states


def _store(server: Server) -> Credentials:
    if server.credentials is None:
        raise NotFound(NO_STORE)
    return server.credentials


def _owner_exists(server: Server, owner: str) -> bool:
    """Whether the sign-in's owner is still there: a namespace deleted since `start` gets no
    credentials (its state is as good as expired)."""
    namespace = owner_namespace(owner)
    return namespace is None or server.access.get(namespace) is not None


async def start(request: Request) -> Response:
    """GET /api/connectors/{name}/oauth/start → 307 to the provider's authorize URL."""
    server = server_of(request)
    _store(server)
    info = connector_info(request)
    owner = writer_of(request, server)
    client = oauth_client(server.settings, info.name)
    if client is None:
        raise OAuthNotConfigured(
            f"OAuth not configured for connector '{info.name}'. Set "
            f"{oauth_env(info.name, 'client_id')} and {oauth_env(info.name, 'client_secret')} "
            "environment variables."
        )
    state = states_of(request).issue(info.name, owner)
    redirect = redirect_uri(server.settings.oauth_callback_base_url, info.name)
    return RedirectResponse(
        authorize_url(client, redirect, state),
        status_code=307,
        headers={"Cache-Control": "no-store"},
    )


async def callback(request: Request) -> Response:
    """GET /api/connectors/{name}/oauth/callback?code&state: exchange the code, store the
    tokens encrypted and (re)start the connector. The checks run in the reference's order."""
    server = server_of(request)
    store = _store(server)
    name = request.path_params["name"]
    query = request.query_params
    error = query.get("error")
    if error is not None:
        description = query.get("error_description") or "Unknown error"
        raise ValidationError(f"OAuth authorization failed: {error} - {description}")
    code = query.get("code")
    if not code:
        raise ValidationError("Missing 'code' parameter")
    state = query.get("state")
    if not state:
        raise ValidationError("Missing 'state' parameter")
    pending = states_of(request).take(state)
    if pending is None or not _owner_exists(server, pending.owner):
        raise AuthError(BAD_STATE)
    if pending.connector != name:
        raise ValidationError("Connector name mismatch")
    client = oauth_client(server.settings, name)
    if client is None:
        raise OAuthNotConfigured(f"OAuth not configured for connector '{name}'")
    redirect = redirect_uri(server.settings.oauth_callback_base_url, name)
    try:
        async with httpx.AsyncClient(timeout=server.settings.connector_timeout_seconds) as http:
            tokens = await exchange_code(http, client, code, redirect)
    except TokenError as exc:
        raise UpstreamError(f"Failed to exchange authorization code: {exc}") from None
    try:
        await asyncio.to_thread(
            store.put,
            pending.owner,
            name,
            tokens.access_token,
            tokens.refresh_token,
            tokens.expires_at,
        )
    except CredentialError as exc:
        raise CredentialError(f"Failed to store credentials: {exc.message}") from exc
    server.connectors.schedule(pending.owner, name)
    logger.info("%s connected over OAuth for %s; connector (re)started", name, pending.owner)
    return json_response(
        {"success": True, "message": f"Successfully connected {name}", "connector": name}
    )
