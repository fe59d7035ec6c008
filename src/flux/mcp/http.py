"""The MCP server inside `flux serve` (`/mcp`, served by flux.api.mcp_sessions): how its tools and
subscriptions reach Flux as the MCP request's caller.

The tools run an `AsyncFluxClient` whose requests go in-process to the Flux app itself
(`httpx.ASGITransport`, no socket), made by the API layer with the MCP request's credential, so
each call is decided by exactly the HTTP API's code (the permissions, the rate limit, the
handlers). Subscriptions follow the server's live fan-out (`flux.live`) as a connection holding
the subscriber's credential, which gets the same per-change read check as a WebSocket
subscriber.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import orjson
from mcp.server.context import ServerRequestContext
from starlette.types import Scope

from flux.auth import Credential
from flux.client import AsyncFluxClient
from flux.live import CHANGE_TYPES, Filter, Live, Outbox
from flux.mcp.subscriptions import Feed
from flux.mcp.uris import Target

logger = logging.getLogger("flux.mcp")


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


class HttpBinding:
    """The tools' and subscriptions' way into Flux for an MCP request over HTTP, given by the
    API layer: `client_for(scope)`, a client whose requests carry the credential of the MCP
    request `scope`, and `credential_of(scope)`, that credential (flux.api.identity)."""

    def __init__(
        self,
        live: Live,
        client_for: Callable[[Scope], AsyncFluxClient],
        credential_of: Callable[[Scope], Credential],
    ) -> None:
        self.live = live
        self.client_for = client_for
        self.credential_of = credential_of

    def client(
        self, ctx: ServerRequestContext[Any, Any]
    ) -> AbstractAsyncContextManager[AsyncFluxClient]:
        return self.client_for(_scope(ctx))

    def feed(self, ctx: ServerRequestContext[Any, Any]) -> Feed:
        return LiveFeed(self.live, self.credential_of(_scope(ctx)))


def _scope(ctx: ServerRequestContext[Any, Any]) -> Scope:
    """The ASGI scope of the HTTP request that carried the MCP request (never missing on this
    transport; an empty one, anonymous, otherwise)."""
    request = ctx.request
    scope: Scope = request.scope if request is not None else {"type": "http", "headers": []}
    return scope
