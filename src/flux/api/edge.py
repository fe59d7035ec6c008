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

Before any of that, the edge checks the `Host` header (`flux.api.hosts`: 421 for a name the
server does not answer, against DNS rebinding), for HTTP and WebSocket alike, and refuses a
browser's WebSocket handshake from a page whose origin is not allowed (`flux.api.cors`: 403).
"""

from __future__ import annotations

import logging
import time

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocket

from flux.api.cors import CrossOrigin
from flux.api.errors import error_response, response_for
from flux.api.hosts import HostCheck
from flux.api.prometheus import METHODS, Histogram, Histograms
from flux.errors import FluxError, MisdirectedRequest, OriginNotAllowed

logger = logging.getLogger("flux.api")
access = logging.getLogger("flux.access")  # FLUX_ACCESS_LOG

_ORIGIN = b"origin"
_VARY = b"vary"
_PREFLIGHT = b"access-control-request-method"
_HOST = b"host"


class Edge:
    def __init__(
        self,
        app: ASGIApp,
        histograms: Histograms,
        cors: CrossOrigin,
        hosts: HostCheck | None = None,
        access_log: bool = False,
    ) -> None:
        """`cors` holds configured CORS objects that are not in the stack: the edge uses their
        preflight answer and header logic for requests that carry an `Origin`. `hosts` is None
        when every `Host` is answered. `access_log`: a line per request on `flux.access`."""
        self.app = app
        self.histograms = histograms
        self.cors = cors
        self.hosts = hosts
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "websocket":
                refusal = self._refuse_socket(scope)
                if refusal is not None:
                    await self._deny(scope, receive, send, refusal)
                    return
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        status = 500
        started = False
        try:
            origin = preflight = False
            host = None
            for name, value in scope["headers"]:
                if name == _HOST:
                    host = value
                elif name == _ORIGIN:
                    origin = True
                elif name == _PREFLIGHT:
                    preflight = True
            if self.hosts is not None and host is not None and not self.hosts.allowed(host):
                refused = _misdirected(host)
                response = response_for(refused, scope["method"], scope["path"])
                status = response.status_code
                await response(scope, receive, send)
                return
            if origin and preflight and scope["method"] == "OPTIONS":
                policy = self.cors.for_path(scope["path"])
                response = policy.preflight_response(Headers(scope=scope))
                status = response.status_code
                await response(scope, receive, send)
                return
            cors = self.cors.for_path(scope["path"]) if origin else self.cors.api

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
            seconds = time.perf_counter() - began
            self._observe(scope, status, seconds)
            if self.access_log:
                _log_access(scope, status, seconds)

    def _refuse_socket(self, scope: Scope) -> FluxError | None:
        """Why a WebSocket handshake is refused (its `Host`, or a browser page's `Origin`), or
        None when it may proceed."""
        host = origin = None
        for name, value in scope["headers"]:
            if name == _HOST:
                host = value
            elif name == _ORIGIN:
                origin = value
        if self.hosts is not None and host is not None and not self.hosts.allowed(host):
            return _misdirected(host)
        if origin is not None:
            text = origin.decode("latin-1")
            if not self.cors.allows_socket(text, host.decode("latin-1") if host else None):
                return OriginNotAllowed(f"Origin not allowed: {text}")
        return None

    @staticmethod
    async def _deny(scope: Scope, receive: Receive, send: Send, refusal: FluxError) -> None:
        """An HTTP answer to the handshake where the server can send one (a JSON error with
        its status), else a plain refusal (uvicorn answers 403 to a close before accept)."""
        websocket = WebSocket(scope, receive, send)
        if "websocket.http.response" in scope.get("extensions", {}):
            await websocket.send_denial_response(response_for(refusal, "GET", scope["path"]))
        else:
            await websocket.close(code=1008, reason=refusal.message)

    def _observe(self, scope: Scope, status: int, seconds: float) -> None:
        histogram_of(self.histograms, scope["method"], _route(scope), status).observe(seconds)


def histogram_of(histograms: Histograms, method: str, route: str, status: int) -> Histogram:
    """The latency histogram of (method, route template, status class), made on first use."""
    key = (method if method in METHODS else "other", route, f"{status // 100}xx")
    histogram = histograms.get(key)
    if histogram is None:
        histogram = histograms[key] = Histogram()
    return histogram


def _log_access(scope: Scope, status: int, seconds: float) -> None:
    """`127.0.0.1:51234 "GET /api/state/entities/a%2Fb?x=1" 200 0.41ms`: the path as sent
    (percent-encoding kept, so an entity id's `/` reads as it was written)."""
    client = scope.get("client")
    who = f"{client[0]}:{client[1]}" if client else "-"
    path = (scope.get("raw_path") or scope["path"].encode()).decode("latin-1")
    query = scope.get("query_string", b"")
    if query:
        path = f"{path}?{query.decode('latin-1')}"
    access.info('%s "%s %s" %d %.2fms', who, scope["method"], path, status, seconds * 1000)


def _misdirected(host: bytes) -> MisdirectedRequest:
    return MisdirectedRequest(f"Host not allowed: {host.decode('latin-1')}")


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
