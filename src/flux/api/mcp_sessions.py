"""The MCP server over streamable HTTP behind `/mcp` (docs/mcp.md), with the MCP SDK: this
module is what `flux.api.mcp` loads once the server is up (importing the SDK takes as long as
the rest of `flux serve`'s start).

Each MCP request reaches Flux as its caller. Its credential is `credential_of` its own
request; the tools' calls (flux.mcp.http) go to this very app in-process
(`httpx.ASGITransport`, no socket) with that credential already decided (`identity.assume`)
and the request's own `Host`, so the HTTP API's checks and handlers decide each one, as for a
request the caller had sent. The session manager runs while the app serves (`run`, entered by
`flux.api.mcp`).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

import httpx
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from flux.api.identity import assume, credential_of
from flux.client import AsyncFluxClient
from flux.errors import OriginNotAllowed
from flux.live import Live
from flux.mcp.http import HttpBinding
from flux.mcp.tools import build_server

_HOST = b"host"


class McpSessions:
    """The ASGI app behind `/mcp`: the Origin check, then the MCP session manager. `app`: the
    Flux app the tools send their requests to."""

    def __init__(self, live: Live, allowed_origins: tuple[str, ...], app: ASGIApp) -> None:
        self.app = app
        self.server = build_server(HttpBinding(live, self.client_for, credential_of))
        self.allowed_origins = frozenset(allowed_origins)
        self.sessions = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server,
            # Host is checked by the app's edge for every path (FLUX_ALLOWED_HOSTS), Origin
            # here (FLUX_MCP_ALLOWED_ORIGINS).
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    def client_for(self, scope: Scope) -> AsyncFluxClient:
        """A client whose requests reach the app as the caller of the MCP request `scope`."""
        app = self.app
        credential = credential_of(scope)
        host = [(name, value) for name, value in scope["headers"] if name == _HOST]

        async def as_caller(inner: Scope, receive: Receive, send: Send) -> None:
            assume(inner, credential)
            inner["headers"] = [(n, v) for n, v in inner["headers"] if n != _HOST] + host
            await app(inner, receive, send)

        # The address is a placeholder: every request goes to `as_caller`.
        return AsyncFluxClient("http://flux.invalid", transport=httpx.ASGITransport(as_caller))

    def run(self) -> AbstractAsyncContextManager[None]:
        """The session manager's life: enter it while the app serves (its exit ends every
        session). Open streams do not hold up a shutdown: a listen stream ends with its live
        connection (`Live.close_all`), a session's SSE stream on the server's exit signal
        (sse-starlette watches uvicorn's)."""
        return self.sessions.run()

    def origin_allowed(self, headers: Headers) -> bool:
        origin = headers.get("origin")
        if origin is None or "*" in self.allowed_origins:
            return True
        origin = origin.rstrip("/").lower()
        if origin in self.allowed_origins:
            return True
        _, _, netloc = origin.partition("://")
        host = headers.get("host")
        return host is not None and netloc == host.lower()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.origin_allowed(Headers(scope=scope)):
            raise OriginNotAllowed("this page's origin may not use /mcp (FLUX_MCP_ALLOWED_ORIGINS)")
        # The session manager binds an MCP session to the principal of the request that opened
        # it and answers 404 to any other: the principal here is the bearer token's hash, so a
        # session (and the subscriptions it holds) is usable only with the token that made it.
        principal = credential_of(scope).token_hash or "anonymous"
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=principal, scopes=[]))
        await self.sessions.handle_request(scope, receive, send)
