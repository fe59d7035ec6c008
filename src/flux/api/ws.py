"""GET /api/ws: the WebSocket protocol (docs/websocket.md). GET /api/events/stream: the same
changes as Server-Sent Events."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from flux.api.identity import credential_of
from flux.auth import Credential
from flux.errors import FluxError, ValidationError
from flux.events import check_id_part
from flux.hub import WILDCARD
from flux.live import Filter, Live, Message, Outbox, encode

logger = logging.getLogger("flux.ws")

CLOSE_SLOW_CONSUMER = 1013  # "try again later"
CLOSE_WAIT_SECONDS = 10.0  # how long a slow consumer's close frame may wait for socket room
SSE_KEEPALIVE_SECONDS = 15.0


def live_of(scope_holder: WebSocket | Request) -> Live:
    live: Live = scope_holder.app.state.live
    return live


def parse_filter(message: dict[str, Any], max_id_length: int) -> Filter:
    """The subscription a subscribe or unsubscribe frame names. Raises ValidationError (an id
    or prefix longer than `max_id_length` included: it could match nothing)."""
    prefix = message.get("prefix")
    entity_id = message.get("entity_id", message.get("entityId"))
    if prefix is not None:
        if type(prefix) is not str:
            raise ValidationError("`prefix` must be a string")
        return Filter(prefix=check_id_part(prefix, "prefix", max_id_length))
    if entity_id is None:
        raise ValidationError("missing field `entity_id` (or `prefix`)")
    if type(entity_id) is not str:
        raise ValidationError("`entity_id` must be a string")
    return Filter(entity_id=check_id_part(entity_id, "entity_id", max_id_length))


def parse_since(value: Any) -> int | None:
    if value is None:
        return None
    if type(value) is not int or value < 0:
        raise ValidationError("`since` must be a non-negative integer (a version)")
    return value


def error_message(text: str) -> Message:
    return encode({"type": "error", "error": text})


async def handle(live: Live, outbox: Outbox, text: str) -> None:
    """Act on one client frame; problems become an `error` message, never a closed socket."""
    try:
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            raise ValidationError("message is not valid JSON") from None
        if type(message) is not dict:
            raise ValidationError("message must be a JSON object")
        kind = message.get("type")
        if kind == "subscribe":
            flt = parse_filter(message, live.settings.max_entity_id_length)
            since = parse_since(message.get("since"))
            snapshot = message.get("snapshot", False)
            if type(snapshot) is not bool:
                raise ValidationError("`snapshot` must be true or false")
            limit = live.settings.ws_max_subscriptions
            if live.hub.count(outbox) >= limit:
                raise ValidationError(f"too many subscriptions on this connection (max {limit})")
            await live.subscribe(outbox, flt, snapshot=snapshot, since=since)
        elif kind == "unsubscribe":
            live.unsubscribe(outbox, parse_filter(message, live.settings.max_entity_id_length))
        elif kind == "auth":
            token = message.get("token")
            if type(token) is not str or not token.strip():
                raise ValidationError("`token` must be a non-empty string")
            if live.settings.auth_enabled:
                outbox.credential = Credential.from_token(token)
            outbox.push(encode({"type": "authenticated"}))
        elif kind == "ping":
            outbox.push(encode({"type": "pong"}))
        elif kind is None:
            raise ValidationError("missing field `type`")
        else:
            raise ValidationError(
                f"unknown message type {kind!r}; expected subscribe, unsubscribe or ping"
            )
    except FluxError as exc:  # a bad message, or the log failing under a replay
        outbox.push(error_message(exc.message))


async def _send_loop(send: Send, outbox: Outbox) -> None:
    """Send what the outbox holds until it ends, each message straight to the server's ASGI
    `send` (Starlette's `send_text` adds two calls and a state check per message: about 8% of
    the server's time with 100 subscribers). May block on a client that does not read (the
    server stops writing once the socket's buffer is full); the endpoint then cancels it. A
    client gone away ends it with the server's error (an OSError)."""
    while True:
        batch = await outbox.take()
        if not batch:
            return
        for _, _, text in batch:
            await send({"type": "websocket.send", "text": text})


async def _receive_loop(websocket: WebSocket, live: Live, outbox: Outbox) -> None:
    """Handle client frames one at a time (a subscription's replay included) until the client
    goes away."""
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        text = frame.get("text")
        if text is None:
            outbox.push(error_message("binary frames are not supported; send JSON text"))
            continue
        await handle(live, outbox, text)


async def _ended(outbox: Outbox) -> None:
    while not outbox.ended:
        outbox.room.clear()
        await outbox.room.wait()


def _quiet(task: asyncio.Task[None]) -> None:
    """Collect a finished task's outcome: a client going away is normal; anything else is a
    bug worth a traceback in the log."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError | FluxError):
        logger.error("WebSocket task %s failed", task.get_name(), exc_info=exc)


class LiveSocketRoute:
    """`/api/ws` as a plain ASGI app, not a function endpoint: Starlette then hands it the
    server's `send` (through its exception layer), which the send loop uses directly."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await websocket_endpoint(WebSocket(scope, receive=receive, send=send), send)


async def websocket_endpoint(websocket: WebSocket, send: Send) -> None:
    """One connection: a receiver task (client frames), a sender task (the outbox) and a
    watcher for the outbox ending (overflow, or server shutdown). When any of them finishes,
    all three are cancelled and awaited, so no task outlives the connection. A slow consumer
    is then closed with 1013 and a reason; the close frame waits behind what the socket already
    holds, so the client sees it after reading that (or never, if it never reads again)."""
    live = live_of(websocket)
    try:
        await websocket.accept()
    except (WebSocketDisconnect, OSError):  # gone before the handshake completed
        return
    outbox = live.connect(credential_of(websocket.scope))
    tasks = [
        asyncio.create_task(_send_loop(send, outbox), name="flux-ws-send"),
        asyncio.create_task(_receive_loop(websocket, live, outbox), name="flux-ws-receive"),
        asyncio.create_task(_ended(outbox), name="flux-ws-ended"),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        overflowed = outbox.overflowed
        live.disconnect(outbox)
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
        for task in tasks:
            _quiet(task)
    if overflowed:
        logger.warning("closing a slow WebSocket consumer (queue over %d)", outbox.limit)
        reason = (
            f"slow consumer: more than {outbox.limit} messages queued; "
            "reconnect and subscribe with since"
        )
        with contextlib.suppress(TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
            await asyncio.wait_for(websocket.close(CLOSE_SLOW_CONSUMER, reason), CLOSE_WAIT_SECONDS)


def parse_sse(request: Request) -> tuple[Filter, int | None]:
    """The filter (`entity_id`, `prefix`, or everything) and the resume version (the
    Last-Event-ID header, else `since`) of an SSE request. Raises ValidationError."""
    params = request.query_params
    max_length = live_of(request).settings.max_entity_id_length
    if "prefix" in params:
        flt = Filter(prefix=check_id_part(params["prefix"], "prefix", max_length))
    else:
        entity_id = params.get("entity_id") or WILDCARD
        flt = Filter(entity_id=check_id_part(entity_id, "entity_id", max_length))
    since_text = request.headers.get("last-event-id") or params.get("since")
    since = None
    if since_text:
        if not since_text.isascii() or not since_text.isdigit():
            raise ValidationError("`since` (or Last-Event-ID) must be a version number")
        since = int(since_text)
    return flt, since


def sse_frame(message: Message) -> str:
    """One Server-Sent Event; the `id` is the message's resume version when it has one."""
    version, kind, text = message
    head = f"id: {version}\n" if version is not None else ""
    return f"{head}event: {kind}\ndata: {text}\n\n"


async def _subscribe_or_error(live: Live, outbox: Outbox, flt: Filter, since: int | None) -> None:
    try:
        await live.subscribe(outbox, flt, since=since)
    except FluxError as exc:
        outbox.push(error_message(exc.message))


async def sse_endpoint(request: Request) -> Response:
    """The same changes as the WebSocket, one subscription per stream. The subscription (and
    its replay) runs beside the stream, which drains the outbox meanwhile. An `error` event
    ends the stream (the browser reconnects with Last-Event-ID)."""
    live = live_of(request)
    flt, since = parse_sse(request)
    credential = credential_of(request.scope)

    async def stream() -> AsyncIterator[bytes]:
        # Connected here, not in the endpoint: this `finally` runs only once iteration began.
        outbox = live.connect(credential)
        task = asyncio.create_task(_subscribe_or_error(live, outbox, flt, since))
        task.add_done_callback(_quiet)
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    batch = await asyncio.wait_for(outbox.take(), SSE_KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if outbox.overflowed:
                    error = error_message("slow consumer: queue overflow; reconnect to resume")
                    yield sse_frame(error).encode()
                    return
                if not batch:
                    return
                yield "".join(map(sse_frame, batch)).encode()
                if any(kind == "error" for _, kind, _ in batch):
                    return
        finally:
            task.cancel()
            live.disconnect(outbox)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
