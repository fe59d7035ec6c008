"""Which web pages may call the API from another origin (CORS), and open a WebSocket.

`FLUX_CORS_ORIGINS` names the origins. Left empty, it depends on auth:
- auth off: no origin. Pages served elsewhere get no `Access-Control-Allow-Origin` and their
  preflights are refused, so they cannot send a JSON body, a PUT or a DELETE. (An auth-off server
  trusts whoever can reach it; a page in a local browser must not count as such a caller.)
- auth on: any origin (`*`), as before. Every write and every private read needs a bearer token,
  which a browser never adds by itself: a page can only use a token it was given.
The admin config (`/api/admin/...`) is open cross-origin only to origins named explicitly, never
through a default or a `*`.

A WebSocket handshake is not subject to CORS: a page on any site can open one. Its `Origin` is
checked here instead: a browser's handshake (it has an `Origin`) is accepted from the server's
own origin (same host and port) or from an allowed origin.

Starlette answers a preflight it would refuse (an origin, method or header not on the lists)
with a plain-text 400; here that answer is the usual JSON error, so every error has one shape.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.middleware import cors as starlette_cors
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flux.api.errors import error_response
from flux.config import Settings

ALLOW_METHODS = ("GET", "POST", "PUT", "DELETE", "OPTIONS")
ALLOW_HEADERS = ("authorization", "content-type", "last-event-id")
ADMIN_PREFIX = "/api/admin/"


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


class CrossOrigin:
    """The policy for one server: `api` for every path, `admin` for the admin config. Both are
    configured Starlette CORS objects whose preflight answer and header logic
    `flux.api.edge.Edge` uses; their own `app` is never called."""

    def __init__(self, origins: list[str], admin_origins: list[str]) -> None:
        self.origins = origins
        self.api = _policy(origins)
        self.admin = _policy(admin_origins)

    @classmethod
    def from_settings(cls, settings: Settings) -> CrossOrigin:
        origins = list(settings.cors_origins)
        if not origins and settings.auth_enabled:
            origins = ["*"]
        named = [origin for origin in settings.cors_origins if origin != "*"]
        return cls(origins, named)

    def for_path(self, path: str) -> CORSMiddleware:
        return self.admin if path.startswith(ADMIN_PREFIX) else self.api

    def allows_socket(self, origin: str, host: str | None) -> bool:
        """Whether a WebSocket handshake with this `Origin` is accepted: the server's own
        origin (its host and port as the `Host` header names them), or an allowed one."""
        if "*" in self.origins or origin in self.origins:
            return True
        _, sep, authority = origin.partition("://")
        return bool(sep) and host is not None and authority.lower() == host.lower()


def _policy(origins: list[str]) -> CORSMiddleware:
    return CORSMiddleware(
        _never_called,
        allow_origins=origins,
        allow_methods=list(ALLOW_METHODS),
        allow_headers=list(ALLOW_HEADERS),
        expose_headers=["Retry-After"],  # so a browser client can read how long to wait
    )


async def _never_called(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("the CORS policy object is not an ASGI layer")
