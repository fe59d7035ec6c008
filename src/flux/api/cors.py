"""CORS, open to every origin as in the original (plus PUT, which the admin config PUT needs).

Starlette answers a preflight it would refuse (a method or header not on the lists) with a
plain-text 400; here that answer is the usual JSON error, so every error has one shape.
"""

from __future__ import annotations

from typing import Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware import cors as starlette_cors
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flux.api.errors import error_response

ALLOW_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS")
ALLOW_HEADERS = ("authorization", "content-type", "last-event-id")


class CORSMiddleware(starlette_cors.CORSMiddleware):
    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        headers = {
            name: value
            for name, value in response.headers.items()
            if name not in ("content-length", "content-type")
        }
        return error_response(response.status_code, bytes(response.body).decode(), headers)


def cors() -> Middleware:
    """The policy as a Starlette middleware (for an app that wants it as a layer of its own)."""
    return Middleware(CORSMiddleware, **_POLICY)


def cors_policy() -> CORSMiddleware:
    """The policy as an object whose preflight answer and header logic `flux.api.edge.Edge`
    uses; its own `app` is never called."""
    return CORSMiddleware(_never_called, **_POLICY)


async def _never_called(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the CORS policy object is not an ASGI layer")


_POLICY: dict[str, Any] = {
    "allow_origins": ["*"],
    "allow_methods": list(ALLOW_METHODS),
    "allow_headers": list(ALLOW_HEADERS),
    "expose_headers": ["Retry-After"],  # so a browser client can read how long to wait
}
