"""`/mcp` in `flux serve`: the MCP server over streamable HTTP, inside the Flux app.

Every MCP request reaches Flux as its caller: the tools run an `AsyncFluxClient` whose requests
go in-process to the Flux app itself (`httpx.ASGITransport`, no socket) carrying the MCP
request's own `Authorization` and `Host` headers, so each call is decided by exactly the HTTP
API's code (the credential, the read and write permissions, the rate limit, the Host check).
Subscriptions follow the server's live fan-out (`flux.live`) as a connection with the
subscriber's credential, which gets the same per-change read check as a WebSocket subscriber.

The session manager (MCP sessions of the handshake protocol versions, and the 2026-07-28
per-request exchanges) runs inside the app's lifespan (`McpEndpoint.run`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import httpx
import orjson
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import ServerRequestContext
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from flux.auth import Credential
from flux.client import AsyncFluxClient
from flux.errors import OriginNotAllowed
from flux.live import CHANGE_TYPES, Filter, Live, Outbox
from flux.mcp.subscriptions import Feed
from flux.mcp.tools import build_server
from flux.mcp.uris import Target

logger = logging.getLogger("flux.mcp")

PATH = "/mcp"


class LiveFeed:
    """A `Feed` on the server's live fan-out: one outbox with the subscriber's credential,
    subscribed to its targets (flux.mcp.subscriptions)."""

    def __init__(self, live: Live, credential: Credential) -> None:
        self.live = live
        self.credential = credential
        self.outbox: Outbox | None = None
        self.ended = False
        self._end = asyncio.Event()

    async def follow(self, target: Target) -> None:
        """Raises AuthError or Forbidden for an entity the credential may not read."""
        flt = _filter(target)
        self.live.check(self.credential, flt)
        if self.ended:
            return
        if self.outbox is None:
            # Subscribed at once, without an await between: a new connection would otherwise
            # receive every change until it subscribes.
            self.outbox = self.live.connect(self.credential)
        self.live.hub.subscribe(self.outbox, entity_id=flt.entity_id, prefix=flt.prefix)

    async def unfollow(self, target: Target) -> None:
        if self.outbox is not None:
            self.live.unsubscribe(self.outbox, _filter(target))

    async def changed(self) -> list[str]:
        outbox = self.outbox
        if outbox is None:
            # Nothing followed (a listen stream for no address): nothing comes until the end.
            await self._end.wait()
            return []
        while True:
            messages = await outbox.take()
            if not messages:
                if outbox.overflowed:
                    logger.warning("MCP subscription ended: %s (a slow subscriber)", outbox.reason)
                return []
            ids = [
                orjson.loads(text)["entity_id"]
                for _, kind, text in messages
                if kind in CHANGE_TYPES
            ]
            if ids:
                return ids

    async def aclose(self) -> None:
        self.ended = True
        self._end.set()
        if self.outbox is not None:
            self.live.disconnect(self.outbox)


def _filter(target: Target) -> Filter:
    return Filter(entity_id=target.entity_id, prefix=target.prefix)


class AsCaller(httpx.AsyncBaseTransport):
    """Sends each request to the Flux app with the MCP request's `Authorization` and `Host`
    headers, as if its caller had sent it."""

    def __init__(self, app: ASGIApp, headers: Headers) -> None:
        self.transport = httpx.ASGITransport(app=app)
        self.authorization = headers.get("authorization")
        self.host = headers.get("host")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self.authorization is not None:
            request.headers["authorization"] = self.authorization
        if self.host is not None:
            request.headers["host"] = self.host
        return await self.transport.handle_async_request(request)


class HttpBinding:
    """The tools' and subscriptions' way into Flux for an MCP request over HTTP."""

    def __init__(self, live: Live) -> None:
        self.live = live
        self.app: ASGIApp | None = None  # the Flux app, set once it is built

    def client(
        self, ctx: ServerRequestContext[Any, Any]
    ) -> AbstractAsyncContextManager[AsyncFluxClient]:
        assert self.app is not None, "McpEndpoint.bind was not called"
        transport = AsCaller(self.app, _headers(ctx))
        # The address is a placeholder: every request goes through `transport`.
        return AsyncFluxClient("http://flux.invalid", transport=transport)

    def feed(self, ctx: ServerRequestContext[Any, Any]) -> Feed:
        return LiveFeed(self.live, Credential.from_header(_headers(ctx).get("authorization")))


def _headers(ctx: ServerRequestContext[Any, Any]) -> Headers:
    request = ctx.request
    return request.headers if request is not None else Headers()


class McpEndpoint:
    """The ASGI app at `/mcp`: the Origin check, then the MCP session manager."""

    def __init__(self, live: Live, allowed_origins: tuple[str, ...]) -> None:
        self.binding = HttpBinding(live)
        self.server = build_server(self.binding)
        self.allowed_origins = frozenset(allowed_origins)
        self.sessions = StreamableHTTPSessionManager(
            app=self.server._lowlevel_server,
            # Host is checked by the Flux app's edge for every path (FLUX_ALLOWED_HOSTS) and
            # Origin here, against FLUX_MCP_ALLOWED_ORIGINS.
            security_settings=TransportSecuritySettings(enable_dns_rebinding_protection=False),
        )

    def bind(self, app: ASGIApp) -> None:
        """Name the Flux app the tools send their requests to."""
        self.binding.app = app

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """The session manager's life: enter it in the app's lifespan."""
        async with self.sessions.run():
            try:
                yield
            finally:
                await self.close()

    async def close(self) -> None:
        """End every MCP session (and with it its standalone stream), so that a shutdown does
        not wait for the clients to hang up."""
        for transport in list(self.sessions._server_instances.values()):
            with contextlib.suppress(Exception):
                await transport.terminate()

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
        headers = Headers(scope=scope)
        if not self.origin_allowed(headers):
            raise OriginNotAllowed("this page's origin may not use /mcp (FLUX_MCP_ALLOWED_ORIGINS)")
        # The session manager binds an MCP session to the principal of the request that opened
        # it and answers 404 to any other: the principal here is the bearer token's hash, so a
        # session (and the subscriptions it holds) is usable only with the token that made it.
        credential = Credential.from_header(headers.get("authorization"))
        principal = credential.token_hash or "anonymous"
        scope["user"] = AuthenticatedUser(AccessToken(token="", client_id=principal, scopes=[]))
        await self.sessions.handle_request(scope, receive, send)
