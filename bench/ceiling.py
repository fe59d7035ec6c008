"""The "ceiling" peer: Flux's server stack doing no work.

Same stack and settings as `flux serve` (uvicorn, uvloop, httptools, Starlette, one worker, no
access log), same paths and methods as the benchmarked Flux endpoints. Each handler reads the
request body (when there is one) and returns a small constant JSON document. Whatever Flux does
beyond this is the cost of Flux itself.

For the fan-out scenario it also has a minimal live endpoint: a WebSocket at /api/ws that answers
every client frame with `{"type":"subscribed"}`, and every body POSTed to /api/events is sent
as it is, as one text frame, to every connected socket (before the POST is answered). That is the
most the stack can deliver: no subscriptions to match, no queues, no encoding.

Run standalone: `python bench/ceiling.py --port 8000`.
"""

from __future__ import annotations

import argparse
import contextlib

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    # The same uvicorn settings as `flux serve` (src/flux/cli.py).
    config = uvicorn.Config(
        create_app(),
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
