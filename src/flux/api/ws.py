"""GET /api/ws: the WebSocket protocol (docs/websocket.md). SSE is in flux.api.sse.

A connection may name its subscription in its URL (`?entity_id=…` or `?prefix=…`, with `since`
or `snapshot`): it is then registered as the connection opens, so the connection never receives
a message the subscription would not send, nor one out of order (a connection that subscribes
with a frame receives every change until the frame is processed, as in the original)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any

import orjson
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from flux.api.connections import ABORT, SEND_TEXTS
from flux.api.errors import response_for
from flux.api.identity import credential_of
from flux.auth import Credential
from flux.errors import FluxError, ValidationError
from flux.events import check_id_part
from flux.hub import WILDCARD
from flux.live import Filter, Live, Message, Outbox, Pending, encode
from flux.presence import Presence

logger = logging.getLogger("flux.ws")

CLOSE_SLOW_CONSUMER = 1013  # "try again later"
WRITE_CHARS = 64 * 1024  # the most text one write takes (about the transport's high-water mark)

# The server's hook that sends several text messages in one write (flux.api.connections).
SendTexts = Callable[[Sequence[str]], Awaitable[None]]


def live_of(scope_holder: WebSocket | Request) -> Live:
    live: Live = scope_holder.app.state.live
    return live


def presence_of(websocket: WebSocket) -> Presence:
    presence: Presence = websocket.app.state.server.presence
    return presence


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


async def handle(live: Live, outbox: Outbox, text: str, presence: Presence) -> None:
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
                credential = Credential.from_token(token)
                # A token of nothing would read as anonymous: say so rather than answer
                # `authenticated` and leave the client wondering why private entities never come.
                live.permissions.check_known(credential)
                outbox.credential = credential
            outbox.push(encode({"type": "authenticated"}))
        elif kind == "ping":
            outbox.push(encode({"type": "pong"}))
        elif kind == "presence":
            done = await presence.declare(
                outbox,
                outbox.credential,
                message.get("entity_id", message.get("entityId")),
                message.get("properties"),
                message.get("source"),
            )
            outbox.push(
                encode(
                    {
                        "type": "presence",
                        "entity_id": message.get("entity_id", message.get("entityId")),
                        "version": done.seq,
                    }
                )
            )
        elif kind is None:
            raise ValidationError("missing field `type`")
        else:
            raise ValidationError(
                f"unknown message type {kind!r}; expected subscribe, unsubscribe, presence, "
                "auth or ping"
            )
    except FluxError as exc:  # a bad message, or the log failing under a replay
        outbox.push(error_message(exc.message))


async def _send_loop(send: Send, outbox: Outbox) -> None:
    """Send what the outbox holds until it ends, each message straight to the server's ASGI
    `send` (Starlette's `send_text` adds two calls and a state check per message: about 8% of
    the server's time with 100 subscribers). Under `flux serve`, `_write_loop` does this
    instead. May block on a client that does not read (the server stops writing once the
    socket's buffer is full): `busy` and `sent` let the live watchdog see that. A client gone
    away ends it with the server's error (an OSError)."""
    while True:
        batch = await outbox.take()
        if not batch:
            return
        outbox.busy = True
        for _, _, text in batch:
            await send({"type": "websocket.send", "text": text})
            outbox.sent += 1
        outbox.busy = False


def writes(batch: list[Message], most: int) -> Iterator[list[str]]:
    """The texts of a non-empty `batch`, in order, in groups of at most `most` characters (a
    longer message in a group of its own)."""
    texts: list[str] = []
    size = 0
    for _, _, text in batch:
        if texts and size + len(text) > most:
            yield texts
            texts, size = [], 0
        texts.append(text)
        size += len(text)
    yield texts


async def _write_loop(send_texts: SendTexts, outbox: Outbox) -> None:
    """`_send_loop` through the server's `SEND_TEXTS` hook (flux.api.connections): what the
    outbox holds goes out in one write of up to `WRITE_CHARS` of text, not one per message.
    Each write waits, as an ASGI send does, while the server has paused writing, so a client
    that does not read holds at most the transport's buffer plus one write; `sent` counts
    each write's messages once it is made, for the watchdog as before."""
    while True:
        batch = await outbox.take()
        if not batch:
            return
        outbox.busy = True
        for texts in writes(batch, WRITE_CHARS):
            await send_texts(texts)
            outbox.sent += len(texts)
        outbox.busy = False


async def _receive_loop(
    websocket: WebSocket, live: Live, outbox: Outbox, subscription: Subscription | None
) -> None:
    """Complete the URL's subscription, if any, then handle client frames one at a time (a
    subscription's replay included) until the client goes away."""
    if subscription is not None:
        pending, since, snapshot = subscription
        try:
            await live.complete(outbox, pending, since=since, snapshot=snapshot)
        except FluxError as exc:  # the log failing under the replay
            outbox.push(error_message(exc.message))
    while True:
        frame = await websocket.receive()
        if frame["type"] == "websocket.disconnect":
            return
        text = frame.get("text")
        if text is None:
            outbox.push(error_message("binary frames are not supported; send JSON text"))
            continue
        await handle(live, outbox, text, presence_of(websocket))


async def ended(outbox: Outbox) -> None:
    """Return once the outbox has ended (overflow, a stalled send, or server shutdown)."""
    await outbox.finished.wait()


def quiet(task: asyncio.Task[None]) -> None:
    """Collect a finished task's outcome: a client going away is normal; anything else is a
    bug worth a traceback in the log."""
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None and not isinstance(exc, WebSocketDisconnect | OSError | FluxError):
        logger.error("live connection task %s failed", task.get_name(), exc_info=exc)


async def end_connection(live: Live, outbox: Outbox, tasks: list[asyncio.Task[None]]) -> bool:
    """Take the connection out of the live layer, then cancel and collect its tasks. Returns
    whether it ended as a slow consumer."""
    slow = outbox.overflowed
    live.disconnect(outbox)
    for task in tasks:
        task.cancel()
    await asyncio.wait(tasks)
    for task in tasks:
        quiet(task)
    return slow


def abort_if_stalled(scope: Scope, delay: float) -> None:
    """Have the server abort the connection in `delay` seconds if it still holds data the
    client has not taken by then (flux.api.connections; nothing under other servers)."""
    hook = scope.get("extensions", {}).get(ABORT)
    if hook is not None:
        hook(delay)


# A URL subscription once registered: the registration, `since` and `snapshot`.
Subscription = tuple[Pending, int | None, bool]


def parse_url_subscription(
    params: QueryParams, max_id_length: int
) -> tuple[Filter, int | None, bool] | None:
    """The subscription a WebSocket URL names (`entity_id` or `prefix`, `since`, `snapshot`),
    or None when it names none. Raises ValidationError (an id or prefix longer than
    `max_id_length` included)."""
    if not any(key in params for key in ("entity_id", "entityId", "prefix", "since", "snapshot")):
        return None
    entity_id = params.get("entity_id", params.get("entityId"))
    prefix = params.get("prefix")
    if entity_id is not None and prefix is not None:
        raise ValidationError("give `entity_id` or `prefix`, not both")
    if prefix is not None:
        flt = Filter(prefix=check_id_part(prefix, "prefix", max_id_length))
    else:
        flt = Filter(entity_id=check_id_part(entity_id or WILDCARD, "entity_id", max_id_length))
    since = None
    since_text = params.get("since")
    if since_text is not None:
        if not since_text.isascii() or not since_text.isdigit():
            raise ValidationError("`since` must be a version number")
        since = int(since_text)
    snapshot_text = params.get("snapshot", "false")
    if snapshot_text not in ("true", "false"):
        raise ValidationError("`snapshot` must be true or false")
    return flt, since, snapshot_text == "true"


async def _deny(websocket: WebSocket, refusal: FluxError) -> None:
    """Refuse the handshake with the error's status and JSON body (a plain refusal where the
    server cannot send one)."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(response_for(refusal, "GET", "/api/ws"))
    else:
        await websocket.close(code=1008, reason=refusal.message)


class LiveSocketRoute:
    """`/api/ws` as a plain ASGI app, not a function endpoint: Starlette then hands it the
    server's `send` (through its exception layer), which the send loop uses directly."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await websocket_endpoint(WebSocket(scope, receive=receive, send=send), send)


async def websocket_endpoint(websocket: WebSocket, send: Send) -> None:
    """One connection: a receiver task (client frames), a sender task (the outbox) and a
    watcher for the outbox ending (overflow, a stalled send, or server shutdown). When any of
    them finishes, all three are cancelled and awaited, so no task outlives the connection. A
    slow consumer is then closed with 1013 and a reason; the close frame waits behind what the
    socket already holds, so the client sees it after reading that. A client that does not read
    it within the close wait has its connection aborted."""
    live = live_of(websocket)
    credential = credential_of(websocket.scope)
    try:
        wanted = parse_url_subscription(websocket.query_params, live.settings.max_entity_id_length)
        if wanted is not None:
            live.check(credential, wanted[0])
    except FluxError as exc:
        with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
            await _deny(websocket, exc)
        return
    try:
        await websocket.accept()
    except (WebSocketDisconnect, OSError):  # gone before the handshake completed
        return
    subscription: Subscription | None = None
    if wanted is None:
        outbox = live.connect(credential)
    else:
        flt, since, snapshot = wanted
        try:
            outbox, pending = live.open(credential, flt)
        except FluxError as exc:  # the token lost its access since the check above
            with contextlib.suppress(WebSocketDisconnect, OSError, RuntimeError):
                await websocket.close(1008, exc.message[:120])
            return
        subscription = (pending, since, snapshot)
    send_texts: SendTexts | None = websocket.scope.get("extensions", {}).get(SEND_TEXTS)
    sender = _send_loop(send, outbox) if send_texts is None else _write_loop(send_texts, outbox)
    tasks = [
        asyncio.create_task(sender, name="flux-ws-send"),
        asyncio.create_task(
            _receive_loop(websocket, live, outbox, subscription), name="flux-ws-receive"
        ),
        asyncio.create_task(ended(outbox), name="flux-ws-ended"),
    ]
    overflowed = False
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        overflowed = await end_connection(live, outbox, tasks)
        # Shielded: a presence is removed even when this task is cancelled (server shutdown).
        await asyncio.shield(presence_of(websocket).leave(outbox))
    if overflowed:
        live.slow_consumer("ws")
        logger.warning("closing a slow WebSocket consumer (%s)", outbox.reason)
        reason = f"slow consumer: {outbox.reason}; reconnect and subscribe with since"
        wait = live.close_wait
        try:
            await asyncio.wait_for(websocket.close(CLOSE_SLOW_CONSUMER, reason), wait)
        except (TimeoutError, WebSocketDisconnect, OSError, RuntimeError):
            wait = 0  # the close frame never made it into the socket: abort now
        abort_if_stalled(websocket.scope, wait)
