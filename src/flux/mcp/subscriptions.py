"""Resource subscriptions: a subscriber holds the addresses it follows and tells its MCP client
when one of them changed.

A `Feed` is where a subscriber's changes come from, read with the subscriber's own credential:
over stdio, WebSocket subscriptions to the Flux server (`flux.mcp.stdio`); inside `flux serve`,
a live connection in the server's fan-out (`flux.mcp.http`). Either way Flux's read check runs
before a change is passed on, so a subscriber never hears of an entity its token may not read,
and `follow` refuses an entity it may not read.

One `Subscriber` serves each MCP subscription scope: an MCP session of the handshake protocol
versions (`resources/subscribe`, notifications on the session's standalone stream), or one
`subscriptions/listen` stream of the 2026-07-28 protocol (notifications on that stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from flux.mcp.uris import Target

logger = logging.getLogger("flux.mcp")


class Feed(Protocol):
    """The changed entity ids a subscriber may read, for the targets it follows."""

    async def follow(self, target: Target) -> None:
        """Start following a target. Raises FluxClientError (the server's refusal, over stdio)
        or flux.errors.AuthError / Forbidden (inside the server) when the credential may not
        read the entity it names."""

    async def unfollow(self, target: Target) -> None:
        """Stop following a target."""

    async def changed(self) -> list[str]:
        """Wait for changes: the ids of the entities changed since the last call, in order
        (possibly repeated). Empty when the feed ended (closed, or too slow a reader)."""

    async def aclose(self) -> None:
        """End the feed; a pending `changed` returns an empty list."""


Notify = Callable[[str], Awaitable[None]]


class Subscriber:
    """The addresses one MCP subscription scope follows, and the task that tells its client
    (`notify(uri)`, `notifications/resources/updated`) when the resource at one changed."""

    def __init__(self, feed: Feed, notify: Notify) -> None:
        self.feed = feed
        self.notify = notify
        self.targets: dict[str, Target] = {}
        self._task: asyncio.Task[None] | None = None

    async def add(self, target: Target) -> None:
        """Follow `target` (again: no effect). Raises as `Feed.follow` when refused."""
        if target.uri in self.targets:
            return
        await self.feed.follow(target)
        self.targets[target.uri] = target

    async def remove(self, uri: str) -> None:
        target = self.targets.pop(uri, None)
        if target is not None and not any(t == target for t in self.targets.values()):
            await self.feed.unfollow(target)

    def start(self) -> None:
        """Run `run` in a task of its own (a session's subscriptions outlive their request)."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="flux-mcp-subscriber")

    async def run(self) -> None:
        """Pass changes on until the feed ends: one notification per changed address (a batch
        of changes to one address is one notification: the client reads it again anyway)."""
        while True:
            changed = await self.feed.changed()
            if not changed:
                return
            uris: dict[str, None] = {}
            for entity_id in changed:
                for target in self.targets.values():
                    if target.matches(entity_id):
                        uris[target.uri] = None
            for uri in uris:
                await self.notify(uri)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.feed.aclose()
