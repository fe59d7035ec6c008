"""Edge: the one ASGI layer around the app for what every HTTP request needs.

It does, in this order from the outside in, what three layers did before: time the request into
the latency histogram of its (method, route template, status class) for GET /metrics; add the
CORS headers (answering preflights, via `flux.api.cors.CORSMiddleware`); and turn an unexpected
exception into the JSON 500 inside the CORS layer, so a browser can read it (Starlette's own
catch-all sits outside every middleware, and its 500 carries no CORS headers). An exception
raised after the response started is re-raised, as nothing else can be done with it.

Why one layer: each middleware wraps `send` in a closure and adds a coroutine frame to every
call; the three together cost about a third of a GET's time in the app (measured in-process:
about 70-80 µs per GET entity with them, 47-52 µs without).
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux.api.cors import CORSMiddleware
from flux.api.errors import error_response
from flux.api.prometheus import METHODS, Histogram, Histograms

logger = logging.getLogger("flux.api")

_ORIGIN = b"origin"
_VARY = b"vary"
_PREFLIGHT = b"access-control-request-method"


class Edge:
    def __init__(self, app: ASGIApp, histograms: Histograms, cors: CORSMiddleware) -> None:
        """`cors` is configured but not in the stack: the edge uses its preflight answer and
        its header logic for requests that carry an `Origin`."""
        self.app = app
        self.histograms = histograms
        self.cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        started = False
        try:
            origin = preflight = False
            for name, _ in scope["headers"]:
                if name == _ORIGIN:
                    origin = True
                elif name == _PREFLIGHT:
                    preflight = True
            if origin and preflight and scope["method"] == "OPTIONS":
                response = self.cors.preflight_response(Headers(scope=scope))
                status = response.status_code
                await response(scope, receive, send)
                return
            cors = self.cors

            async def edge_send(message: Message) -> None:
                """Notes the status for the timing and adds the CORS headers (one wrapper
                for both: each wrapper is a coroutine call per message)."""
                nonlocal status, started
                if message["type"] == "http.response.start":
                    status = message["status"]
                    started = True
                    headers = message.setdefault("headers", [])
                    if origin or any(name == _VARY for name, _ in headers):
                        # The rarer cases take Starlette's own code: the same headers, exactly.
                        await cors.send(message, send=send, request_headers=Headers(scope=scope))
                        return
                    headers.append((_VARY, b"Origin"))  # what Starlette adds without an Origin
                await send(message)

            try:
                await self.app(scope, receive, edge_send)
            except Exception as exc:
                if started:
                    raise
                logger.exception("%s %s raised", scope["method"], scope["path"], exc_info=exc)
                await error_response(500, "internal server error")(scope, receive, edge_send)
        finally:
            self._observe(scope, status, time.perf_counter() - began)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        method = scope["method"] if scope["method"] in METHODS else "other"
        key = (method, _route(scope), f"{status // 100}xx")
        histogram = self.histograms.get(key)
        if histogram is None:
            histogram = self.histograms[key] = Histogram()
        histogram.observe(seconds)


class RouteLabel:
    """What a layer that answers before the router puts in `scope["route"]`, so its requests
    are timed under their route template like the router's."""

    def __init__(self, path: str) -> None:
        self.path = path


def _route(scope: Scope) -> str:
    """The matched route's path template (the router records it in the scope; a Mount's is its
    prefix), or "unmatched"."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else "unmatched"
