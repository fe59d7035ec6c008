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
from starlette.websockets import WebSocket, WebSocketDisconnect

from flux.errors import ValidationError
from flux.live import Filter, Live, Message, Outbox, encode

logger = logging.getLogger("flux.ws")

CLOSE_SLOW_CONSUMER = 1013  # "try again later"
SSE_KEEPALIVE_SECONDS = 15.0


def live_of(scope_holder: WebSocket | Request) -> Live:
    live: Live = scope_holder.app.state.live
    return live


def parse_filter(message: dict[str, Any]) -> Filter:
    prefix = message.get("prefix")
    entity_id = message.get("entity_id", message.get("entityId"))
    if prefix is not None:
        if type(prefix) is not str:
            raise ValidationError("`prefix` must be a string")
        return Filter(prefix=prefix)
    if entity_id is None:
        raise ValidationError("missing field `entity_id` (or `prefix`)")
    if type(entity_id) is not str:
        raise ValidationError("`entity_id` must be a string")
    return Filter(entity_id=entity_id)


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
            flt = parse_filter(message)
            since = parse_since(message.get("since"))
            snapshot = message.get("snapshot", False)
            if type(snapshot) is not bool:
                raise ValidationError("`snapshot` must be true or false")
            subs = live.hub.subscriptions(outbox)
            if len(subs) >= live.settings.ws_max_subscriptions:
                raise ValidationError(
                    f"too many subscriptions on this connection "
                    f"(max {live.settings.ws_max_subscriptions})"
                )
            await live.subscribe(outbox, flt, snapshot=snapshot, since=since)
        elif kind == "unsubscribe":
            live.unsubscribe(outbox, parse_filter(message))
        elif kind == "ping":
            outbox.push(encode({"type": "pong"}))
        elif kind is None:
            raise ValidationError("missing field `type`")
        else:
            raise ValidationError(
                f"unknown message type {kind!r}; expected subscribe, unsubscribe or ping"
            )
    except ValidationError as exc:
        outbox.push(error_message(exc.message))


async def _send_loop(websocket: WebSocket, outbox: Outbox) -> None:
    while True:
        batch = await outbox.take()
        if outbox.overflowed:
            logger.warning("closing a slow WebSocket consumer (queue over %d)", outbox.limit)
            with contextlib.suppress(Exception):
                await websocket.close(
                    CLOSE_SLOW_CONSUMER,
                    f"slow consumer: more than {outbox.limit} messages queued; "
                    "reconnect and subscribe with since=<last version>",
                )
            return
        if outbox.closed:
            return
        for _, _, text in batch:
            await websocket.send_text(text)


async def websocket_endpoint(websocket: WebSocket) -> None:
    live = live_of(websocket)
    await websocket.accept()
    outbox = live.connect()
    sender = asyncio.create_task(_send_loop(websocket, outbox))
    try:
        while not sender.done():
            receive = asyncio.ensure_future(websocket.receive())
            done, _ = await asyncio.wait({receive, sender}, return_when=asyncio.FIRST_COMPLETED)
            if receive not in done:
                receive.cancel()
                break
            frame = receive.result()
            if frame["type"] == "websocket.disconnect":
                break
            text = frame.get("text")
            if text is None:
                outbox.push(error_message("binary frames are not supported; send JSON text"))
                continue
            await handle(live, outbox, text)
    except WebSocketDisconnect:
        pass
    finally:
        live.disconnect(outbox)
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await sender


async def sse_endpoint(request: Request) -> Response:
    live = live_of(request)
    params = request.query_params
    if "prefix" in params:
        flt = Filter(prefix=params["prefix"])
    else:
        flt = Filter(entity_id=params.get("entity_id") or "*")
    since_text = request.headers.get("last-event-id") or params.get("since")
    since = None
    if since_text:
        if not since_text.isdigit():
            raise ValidationError("`since` (or Last-Event-ID) must be a version number")
        since = int(since_text)
    outbox = live.connect()
    await live.subscribe(outbox, flt, since=since)

    async def stream() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 1000\n\n"
            while True:
                try:
                    batch = await asyncio.wait_for(outbox.take(), SSE_KEEPALIVE_SECONDS)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if outbox.overflowed:
                    yield (
                        b"event: error\ndata: "
                        + orjson.dumps({"type": "error", "error": "slow consumer: queue overflow"})
                        + b"\n\n"
                    )
                    return
                if outbox.closed:
                    return
                parts = []
                for version, kind, text in batch:
                    head = f"id: {version}\n" if version is not None else ""
                    parts.append(f"{head}event: {kind}\ndata: {text}\n\n")
                yield "".join(parts).encode()
        finally:
            live.disconnect(outbox)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
