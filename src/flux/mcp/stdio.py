"""`flux mcp`: the MCP server over stdio, for desktop agent hosts. It talks to the Flux server at
FLUX_URL with FLUX_TOKEN, like the CLI: the tools through one `AsyncFluxClient`, subscriptions
through WebSocket subscriptions of that client (`watch()`), one per subscribed address, so the
server's read check applies to every change passed on."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import AbstractAsyncContextManager
from typing import Any

from mcp.server.context import ServerRequestContext

from flux.client import AsyncFluxClient, AsyncWatch, FluxClientError
from flux.mcp.subscriptions import Feed
from flux.mcp.tools import build_server
from flux.mcp.uris import Target

SUBSCRIBE_TIMEOUT = 10.0  # seconds for a WebSocket subscription to be acknowledged
CHANGED = frozenset({"state_update", "entity_deleted", "snapshot"})

logger = logging.getLogger("flux.mcp")


def _reconnecting(text: str) -> None:
    """A watch's disconnects and reconnects (it resumes by version by itself)."""
    logger.warning("subscription: %s", text)


class WatchFeed:
    """A `Feed` of WebSocket subscriptions to the Flux server (flux.mcp.subscriptions)."""

    def __init__(self, client: AsyncFluxClient) -> None:
        self.client = client
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.watches: dict[Target, tuple[AsyncWatch, asyncio.Task[None]]] = {}
        self.closed = False

    async def follow(self, target: Target) -> None:
        """Subscribe, and return once the server acknowledged it (so no later change is
        missed). Raises FluxClientError when the server refuses it (an entity the token may
        not read) or cannot be reached."""
        if target in self.watches:
            return
        watch = self.client.watch(
            entity_id=target.entity_id, prefix=target.prefix, on_status=_reconnecting
        )
        try:
            async with asyncio.timeout(SUBSCRIBE_TIMEOUT):
                first = await anext(watch)
        except BaseException:
            await watch.aclose()
            raise
        if first.get("type") != "subscribed":
            await watch.aclose()
            raise FluxClientError(None, f"unexpected first message {first.get('type')!r}")
        task = asyncio.create_task(self._pump(watch), name=f"flux-mcp-watch {target.uri}")
        self.watches[target] = (watch, task)

    async def _pump(self, watch: AsyncWatch) -> None:
        try:
            async for message in watch:
                entity_id = message.get("entity_id")
                # A `snapshot` comes after a `resync` (the server could not replay what a
                # reconnection missed): the entity may have changed meanwhile.
                if message["type"] in CHANGED and entity_id:
                    self.queue.put_nowait(entity_id)
        except FluxClientError:
            self.queue.put_nowait(None)  # the server refused it later: the feed ends

    async def unfollow(self, target: Target) -> None:
        entry = self.watches.pop(target, None)
        if entry is not None:
            await _stop(*entry)

    async def changed(self) -> list[str]:
        first = await self.queue.get()
        ids = [first]
        while not self.queue.empty():
            ids.append(self.queue.get_nowait())
        if None in ids or self.closed:
            return []
        return [i for i in ids if i is not None]

    async def aclose(self) -> None:
        self.closed = True
        watches, self.watches = self.watches, {}
        for watch, task in watches.values():
            await _stop(watch, task)
        self.queue.put_nowait(None)


async def _stop(watch: AsyncWatch, task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await watch.aclose()


class StdioBinding:
    """One client for every request: over stdio there is one caller, with FLUX_TOKEN."""

    def __init__(self, client: AsyncFluxClient) -> None:
        self._client = client

    def client(
        self, ctx: ServerRequestContext[Any, Any]
    ) -> AbstractAsyncContextManager[AsyncFluxClient]:
        return contextlib.nullcontext(self._client)

    def feed(self, ctx: ServerRequestContext[Any, Any]) -> Feed:
        return WatchFeed(self._client)


async def serve_stdio(url: str, token: str | None) -> None:
    """Serve MCP on stdin/stdout until the host closes it, reaching Flux at `url`."""
    async with AsyncFluxClient(url, token=token) as client:
        await build_server(StdioBinding(client)).run_stdio_async()
