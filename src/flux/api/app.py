"""create_app: the Starlette application, its routes and its lifespan."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from flux.api import errors, http
from flux.api.openapi import DOCS_STATIC, docs_page, openapi_document
from flux.config import Settings
from flux.errors import FluxError
from flux.service import FluxService

logger = logging.getLogger("flux.api")


def routes() -> list[Route | Mount]:
    return [
        Route("/api/events", http.publish_event, methods=["POST"]),
        Route("/api/events", http.history, methods=["GET"]),
        Route("/api/events/batch", http.publish_batch, methods=["POST"]),
        Route("/api/state/entities", http.list_entities, methods=["GET"]),
        Route("/api/state/entities/delete", http.batch_delete, methods=["POST"]),
        Route("/api/state/entities/{entity_id:path}", http.get_entity, methods=["GET"]),
        Route("/api/state/entities/{entity_id:path}", http.delete_entity, methods=["DELETE"]),
        Route("/api/health", http.health, methods=["GET"]),
        Route("/api/admin/config", http.get_admin_config, methods=["GET"]),
        Route("/api/admin/config", http.put_admin_config, methods=["PUT"]),
        Route("/api/connectors", http.list_connectors, methods=["GET"]),
        Route("/openapi.json", openapi_document, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Mount("/docs/static", StaticFiles(directory=DOCS_STATIC), name="docs-static"),
    ]


def create_app(settings: Settings, service: FluxService | None = None) -> Starlette:
    """The Flux ASGI app. Nothing starts until the lifespan runs: it restores the state, serves,
    and on shutdown writes a final snapshot and closes the log."""
    flux = service if service is not None else FluxService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await flux.start()
        try:
            yield
        finally:
            await flux.stop()

    app = Starlette(
        routes=routes(),
        middleware=[
            Middleware(
                CORSMiddleware,
                allow_origins=["*"],
                allow_methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"],
                allow_headers=["authorization", "content-type"],
            )
        ],
        exception_handlers={
            FluxError: errors.flux_error,
            HTTPException: errors.http_error,
            Exception: errors.server_error,
        },
        lifespan=lifespan,
    )
    app.state.service = flux
    return app
