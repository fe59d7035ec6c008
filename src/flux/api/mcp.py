"""`/mcp`: the MCP server over streamable HTTP (docs/mcp.md), an ASGI endpoint of the app.

The MCP SDK (with pydantic under it) takes about as long to import as the rest of `flux
serve`: 0.9 s of a 1.9 s start on the bench machine, and as much of every restart. So the
server does not wait for it. Once the app's lifespan has started the server, `McpEndpoint.run`
imports `flux.api.mcp_sessions` on a thread while the server already answers, then runs its
session manager until the lifespan ends. An MCP request that comes before that waits for it;
if the SDK cannot be loaded, `/mcp` answers 503 and the log says why, and the rest of the API is
unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Receive, Scope, Send

from flux.errors import McpUnavailable
from flux.live import Live

if TYPE_CHECKING:
    from flux.api.mcp_sessions import McpSessions

PATH = "/mcp"

logger = logging.getLogger("flux.api")


def _load() -> type[McpSessions]:
    """The SDK-bound endpoint (run on a thread: the import is the slow part)."""
    from flux.api.mcp_sessions import McpSessions

    return McpSessions


class McpEndpoint:
    """The ASGI app at `/mcp`: waits for the MCP session manager, then hands it the request."""

    def __init__(self, live: Live, allowed_origins: tuple[str, ...]) -> None:
        self.live = live
        self.allowed_origins = allowed_origins
        self.app: ASGIApp | None = None  # the Flux app, named by `bind`
        self.sessions: McpSessions | None = None  # while the session manager runs
        self._ready: asyncio.Event | None = None  # made by `run`; set once loaded (or failed)

    def bind(self, app: ASGIApp) -> None:
        """Name the Flux app the tools send their requests to."""
        self.app = app

    @contextlib.asynccontextmanager
    async def run(self) -> AsyncIterator[None]:
        """Load and run the session manager beside the server, from the app's lifespan: its
        exit ends every session."""
        ready = self._ready = asyncio.Event()
        stop = asyncio.Event()
        task = asyncio.create_task(self._serve(ready, stop), name="flux-mcp")
        try:
            yield
        finally:
            stop.set()
            await task

    async def _serve(self, ready: asyncio.Event, stop: asyncio.Event) -> None:
        try:
            began = time.monotonic()
            sessions_type = await asyncio.to_thread(_load)
            # The SDK's modules live as long as the server: out of the cyclic GC's
            # generations, as the app's lifespan does for the restored state (collected
            # first, so that no garbage of the import is frozen with them).
            gc.collect()
            gc.freeze()
            assert self.app is not None, "McpEndpoint.bind was not called"
            sessions = sessions_type(self.live, self.allowed_origins, self.app)
            async with sessions.run():
                self.sessions = sessions
                ready.set()
                logger.info(
                    "MCP endpoint ready at %s (loaded in %.1f s)", PATH, time.monotonic() - began
                )
                await stop.wait()
                self.sessions = None  # requests from here on get 503, not a stopping manager
        except Exception:
            logger.exception("the MCP endpoint did not start; /mcp answers 503")
        finally:
            self.sessions = None
            ready.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        ready = self._ready
        if ready is None:
            raise McpUnavailable("the MCP endpoint is not running")
        if not ready.is_set():
            await ready.wait()
        sessions = self.sessions
        if sessions is None:
            raise McpUnavailable("the MCP endpoint is not running (see the server's log)")
        await sessions(scope, receive, send)
