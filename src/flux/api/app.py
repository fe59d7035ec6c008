"""create_app: the Starlette application, its routes and its lifespan."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles

from flux.api import connectors, console, coordination, errors, http, namespaces, oauth, sources
from flux.api.cors import CrossOrigin
from flux.api.edge import Edge
from flux.api.freshness import Freshness
from flux.api.hosts import host_check
from flux.api.mcp import PATH as MCP_PATH
from flux.api.mcp import McpEndpoint
from flux.api.openapi import DOCS_STATIC, docs_page, openapi_document
from flux.api.prometheus import Histograms, metrics_endpoint
from flux.api.reads import EntityReads
from flux.api.sse import sse_endpoint
from flux.api.writes import EventWrites
from flux.api.ws import LiveSocketRoute
from flux.config import Settings
from flux.connectors.oauth import OAuthStates
from flux.errors import FluxError
from flux.server import Server

logger = logging.getLogger("flux.api")

GC_YOUNG_THRESHOLD = 50_000  # allocations between young-generation collections (default 700)


class FullPathConvertor(Convertor[str]):
    """The rest of the path, newlines included. Starlette's `path` is `.*`, which stops at a
    newline, and its pattern ends in `$`, which also matches before a final newline: with it,
    `/api/state/entities/ns%2Fa%0A` was entity `ns/a` (and DELETE deleted the wrong one)."""

    regex = "(?s:.*)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("fullpath", FullPathConvertor())


Handler = Callable[[Request], Awaitable[Response]]


def _route(path: str, **handlers: Handler) -> Route:
    """One route per path, whatever its methods, so that a 405 lists them all in `Allow`
    (separate routes on one path each answer 405 with only their own methods)."""

    async def endpoint(request: Request) -> Response:
        method = "GET" if request.method == "HEAD" else request.method
        return await handlers[method](request)

    return Route(path, endpoint, methods=list(handlers), name=path)


def routes() -> list[BaseRoute]:
    """The HTTP API's routes (docs/openapi.json describes each; `/mcp` is added beside them by
    `create_app`: MCP, not part of the API)."""
    return [
        _route("/api/events", GET=http.history, POST=http.publish_event),
        _route("/api/events/stream", GET=sse_endpoint),
        WebSocketRoute("/api/ws", LiveSocketRoute(), name="/api/ws"),
        _route("/metrics", GET=metrics_endpoint),
        _route("/api/events/batch", POST=http.publish_batch),
        _route("/api/state/entities", GET=http.list_entities),
        _route("/api/state/entities/delete", POST=http.batch_delete),
        _route("/api/state/groups", GET=http.list_groups),
        _route("/api/state/changes", GET=coordination.changes),
        _route("/api/leases/acquire", POST=coordination.acquire),
        _route("/api/leases/renew", POST=coordination.renew),
        _route("/api/leases/release", POST=coordination.release),
        _route(
            "/api/state/entities/{entity_id:fullpath}",
            GET=http.get_entity,
            DELETE=http.delete_entity,
        ),
        _route("/api/health", GET=http.health),
        _route("/api/admin/config", GET=http.get_admin_config, PUT=http.put_admin_config),
        _route("/api/namespaces", POST=namespaces.register),
        _route(
            "/api/namespaces/{name}",
            GET=namespaces.show,
            PUT=namespaces.update,
            DELETE=namespaces.delete,
        ),
        _route("/api/namespaces/{name}/token", POST=namespaces.rotate),
        _route("/api/connectors", GET=connectors.list_connectors),
        # Generic sources before `/api/connectors/{name}`, so `generic` is not a connector name.
        _route("/api/connectors/generic", GET=sources.list_sources, POST=sources.create),
        _route("/api/connectors/generic/{id}", GET=sources.show, DELETE=sources.delete),
        _route("/api/connectors/{name}", GET=connectors.show),
        _route(
            "/api/connectors/{name}/token",
            POST=connectors.store_token,
            DELETE=connectors.delete_token,
        ),
        _route("/api/connectors/{name}/oauth/start", GET=oauth.start),
        _route("/api/connectors/{name}/oauth/callback", GET=oauth.callback),
        _route("/openapi.json", GET=openapi_document),
        _route("/docs", GET=docs_page),
        Mount("/docs/static", StaticFiles(directory=DOCS_STATIC), name="docs-static"),
        # The web console (flux.api.console): a page for people, reading the API above.
        _route("/", GET=console.page),
        _route("/console/{name}", GET=console.asset),
    ]


def _freshness(settings: Settings, server: Server) -> list[Middleware]:
    """In a cluster with auth on: an unknown token first catches the registry up with the
    other nodes (`flux.api.freshness`). Nothing otherwise."""
    if server.catch_up is None or not settings.auth_enabled:
        return []
    return [Middleware(Freshness, access=server.access, catch_up=server.catch_up)]


def create_app(settings: Settings, server: Server | None = None) -> Starlette:
    """The Flux ASGI app serving `server`'s parts (a `flux.server.Server` built from `settings`
    when none is given). Nothing starts until the lifespan runs: it starts the server (restores
    the state), serves, and on shutdown stops it (a final snapshot, the log closed)."""
    flux = server if server is not None else Server(settings)
    histograms: Histograms = {}
    mcp = McpEndpoint(flux.live, settings.mcp_allowed_origins)  # /mcp (flux.api.mcp)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # A batch keeps thousands of fresh containers alive across the default 700-allocation
        # young collections, so each one re-scanned them and promoted them to the older
        # generations (measured: 2.9 s of GC in 10 s of batch ingest, 10 ms per middle-aged
        # collection). With a threshold of 50,000 the young collections are rare and find
        # mostly freed objects; garbage cycles still go, a little later.
        # Set before the start-up, whose replay decodes batches of 10,000 events at a time.
        gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
        await flux.start()
        # The restored state is long-lived: move it out of the cyclic GC's generations so full
        # collections stop rescanning every entity (measured: 40% of a batch's loop time).
        gc.collect()
        gc.freeze()
        try:
            async with mcp.run():
                yield
        finally:
            await flux.stop()

    app = Starlette(
        routes=[*routes(), Route(MCP_PATH, mcp, name=MCP_PATH)],
        # One layer for the Host check, timing, CORS and the JSON 500 (see flux.api.edge:
        # three layers cost a third of a GET's time in the app).
        middleware=[
            Middleware(
                Edge,
                histograms=histograms,
                cors=CrossOrigin.from_settings(settings),
                hosts=host_check(settings),
                access_log=settings.access_log,
            ),
            *_freshness(settings, flux),
            Middleware(EntityReads, server=flux),  # the hot read, before the router
            Middleware(EventWrites, server=flux),  # the hot write, before the router
        ],
        exception_handlers={
            FluxError: errors.flux_error,
            HTTPException: errors.http_error,
            ClientDisconnect: errors.client_disconnected,
            Exception: errors.server_error,
        },
        lifespan=lifespan,
    )
    app.state.server = flux
    app.state.service = flux.service
    app.state.live = flux.live
    app.state.histograms = histograms
    app.state.hot_counts = {}  # filled by `flux serve`'s hot paths (flux.api.hotpaths)
    mcp.bind(app)  # the MCP tools call this app, in-process, as their caller
    app.state.oauth_states = OAuthStates()  # sign-ins in progress (flux.api.oauth)
    return app
