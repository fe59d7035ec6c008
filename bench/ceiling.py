"""The "ceiling" peer: Flux's server stack doing no work.

Same stack and settings as `flux serve` (uvicorn, uvloop, httptools, Starlette, one worker, no
access log), same paths and methods as the benchmarked Flux endpoints. Each handler reads the
request body (when there is one) and returns a small constant JSON document. Whatever Flux does
beyond this is the cost of Flux itself.

For the fan-out scenario it also has a minimal live endpoint: a WebSocket at /api/ws that answers
every client frame with `{"type":"subscribed"}`, and every body POSTed to /api/events is sent
as it is, as one text frame, to every connected socket (before the POST is answered). That is the
most the stack can deliver: no subscriptions to match, no queues, no encoding.

`--bare` serves the same paths from a plain ASGI callable instead (`bare_app`: no Starlette,
no router, no middleware; uvicorn, uvloop and httptools as above): the most any ASGI application
can reach on this server, the ceiling issue 17 measures Flux against. The Starlette one counts
the framework as free; the bare one does not.

Run standalone: `python bench/ceiling.py --port 8000 [--bare]`.
"""

from __future__ import annotations

import argparse
import contextlib

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

_OK = b'{"ok":true}'
_HEALTH = b'{"status":"ok"}'
_SUBSCRIBED = '{"type":"subscribed"}'

_SOCKETS: set[WebSocket] = set()


async def _post(request: Request) -> Response:
    await request.body()
    return Response(_OK, media_type="application/json")


async def _publish(request: Request) -> Response:
    body = await request.body()
    if _SOCKETS:
        text = body.decode()
        for ws in list(_SOCKETS):
            try:
                await ws.send_text(text)
            except Exception:
                _SOCKETS.discard(ws)
    return Response(_OK, media_type="application/json")


async def _get(request: Request) -> Response:
    return Response(_OK, media_type="application/json")


async def _health(request: Request) -> Response:
    return Response(_HEALTH, media_type="application/json")


async def _ws(websocket: WebSocket) -> None:
    await websocket.accept()
    _SOCKETS.add(websocket)
    try:
        while True:
            await websocket.receive_text()
            await websocket.send_text(_SUBSCRIBED)
    except (WebSocketDisconnect, RuntimeError):
        pass
    finally:
        _SOCKETS.discard(websocket)
        with contextlib.suppress(Exception):
            await websocket.close()


def create_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/api/events", _publish, methods=["POST"]),
            Route("/api/events/batch", _post, methods=["POST"]),
            Route("/api/state/entities/{entity_id:path}", _get, methods=["GET"]),
            Route("/api/health", _health, methods=["GET"]),
            WebSocketRoute("/api/ws", _ws),
        ]
    )


# -- the bare ASGI ceiling ---------------------------------------------------------------------

_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(_OK))]
_HEALTH_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(_HEALTH)),
]
_BARE_SOCKETS: set[Send] = set()


async def _body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def bare_app(scope: Scope, receive: Receive, send: Send) -> None:
    """The same paths as `create_app`'s, as one ASGI callable with no framework."""
    kind = scope["type"]
    if kind == "http":
        body, headers = _OK, _HEADERS
        if scope["method"] == "POST":
            text = await _body(receive)
            if _BARE_SOCKETS and scope["path"] == "/api/events":
                frame = {"type": "websocket.send", "text": text.decode()}
                for ws_send in list(_BARE_SOCKETS):
                    try:
                        await ws_send(frame)
                    except Exception:
                        _BARE_SOCKETS.discard(ws_send)
        elif scope["path"] == "/api/health":
            body, headers = _HEALTH, _HEALTH_HEADERS
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    elif kind == "websocket":
        await _bare_socket(receive, send)
    elif kind == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


async def _bare_socket(receive: Receive, send: Send) -> None:
    if (await receive())["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    _BARE_SOCKETS.add(send)
    subscribed = {"type": "websocket.send", "text": _SUBSCRIBED}
    try:
        while (await receive())["type"] == "websocket.receive":
            await send(subscribed)
    except Exception:
        pass
    finally:
        _BARE_SOCKETS.discard(send)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--bare", action="store_true", help="the plain ASGI callable (bare_app)")
    args = parser.parse_args()
    # The same uvicorn settings as `flux serve` (src/flux/cli.py).
    config = uvicorn.Config(
        bare_app if args.bare else create_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        lifespan="on",
        access_log=False,
        log_level="warning",
        log_config=None,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
