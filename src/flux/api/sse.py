"""GET /api/events/stream: the WebSocket protocol's messages as Server-Sent Events.

One subscription per stream, registered as the stream opens (before anything can be queued for
it), so a stream never carries a message its filter does not match, and its changes come in
version order: the replay from `since` (or Last-Event-ID), `subscribed`, then live changes. An
`id:` goes only on a message after which the client has every change up to that version, so a
browser that resumes from the last id it saw skips nothing.

The stream has the WebSocket's bounds: an outbox bounded by messages and bytes, and the send
timeout. A stream whose client does not keep up gets an `error` event and ends; if the client
does not take even that within the close wait, the connection is aborted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from flux.api.identity import credential_of
from flux.api.ws import (
    abort_if_stalled,
    end_connection,
    ended,
    error_message,
    live_of,
)
from flux.auth import Credential
from flux.errors import FluxError, ValidationError
from flux.events import check_id_part
from flux.hub import WILDCARD
from flux.live import Filter, Live, Message, Outbox, Pending

logger = logging.getLogger("flux.sse")

KEEPALIVE_SECONDS = 15.0
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


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


def _chunk(body: bytes, more: bool = True) -> dict[str, Any]:
    return {"type": "http.response.body", "body": body, "more_body": more}


async def _send_events(send: Send, outbox: Outbox) -> None:
    """Send what the outbox holds, a batch per chunk, with a comment after 15 s of silence,
    until the outbox ends or an `error` event went out (a replay the log could not serve)."""
    await send(_chunk(b"retry: 1000\n\n"))
    while True:
        try:
            batch = await asyncio.wait_for(outbox.take(), KEEPALIVE_SECONDS)
        except TimeoutError:
            batch = []
            body = b": keep-alive\n\n"
        else:
            if not batch:
                return
            body = "".join(map(sse_frame, batch)).encode()
        outbox.busy = True
        await send(_chunk(body))
        outbox.sent += 1
        outbox.busy = False
        if any(kind == "error" for _, kind, _ in batch):
            return


async def _complete(live: Live, outbox: Outbox, pending: Pending, since: int | None) -> None:
    try:
        await live.complete(outbox, pending, since=since)
    except FluxError as exc:  # the log failing under the replay: the stream ends with it
        outbox.push(error_message(exc.message))


async def _disconnected(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class EventStream(Response):
    """The endless response of one SSE subscription: a sender (the outbox), the subscription's
    completion (replay), a watcher for the outbox ending and one for the client leaving, all
    ended together. The subscription is registered before the response starts."""

    media_type = "text/event-stream"

    def __init__(self, live: Live, credential: Credential, flt: Filter, since: int | None):
        # Not Response.__init__: it would declare a Content-Length (of an empty body).
        self.status_code = 200
        self.background = None
        self.init_headers(HEADERS)
        self.live = live
        self.credential = credential
        self.flt = flt
        self.since = since

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        live = self.live
        try:
            outbox, pending = live.open(self.credential, self.flt)
        except FluxError as exc:  # a private entity: one error event, and the end
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            await send(_chunk(b"retry: 1000\n\n" + sse_frame(error_message(exc.message)).encode()))
            await send(_chunk(b"", more=False))
            return
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        except BaseException:
            live.disconnect(outbox)
            raise
        if scope["method"] == "HEAD":
            live.disconnect(outbox)
            await send(_chunk(b"", more=False))
            return
        tasks = [
            asyncio.create_task(_send_events(send, outbox), name="flux-sse-send"),
            asyncio.create_task(
                _complete(live, outbox, pending, self.since), name="flux-sse-subscribe"
            ),
            asyncio.create_task(ended(outbox), name="flux-sse-ended"),
            asyncio.create_task(_disconnected(receive), name="flux-sse-disconnected"),
        ]
        slow = False
        try:
            await asyncio.wait([tasks[0], *tasks[2:]], return_when=asyncio.FIRST_COMPLETED)
        finally:
            slow = await end_connection(live, outbox, tasks)
        if not slow:
            with contextlib.suppress(OSError):
                await send(_chunk(b"", more=False))  # a no-op once the client has gone
            return
        live.slow_consumer("sse")
        logger.warning("closing a slow SSE consumer (%s)", outbox.reason)
        error = error_message(f"slow consumer: {outbox.reason}; reconnect to resume")
        wait = live.close_wait
        try:
            await asyncio.wait_for(send(_chunk(sse_frame(error).encode(), more=False)), wait)
        except (TimeoutError, OSError):
            wait = 0  # it never made it into the socket: abort now
        abort_if_stalled(scope, wait)
        if not wait:
            await asyncio.sleep(0)  # the server sees the connection lost, not an unfinished answer


async def sse_endpoint(request: Request) -> Response:
    """The same changes as the WebSocket, one subscription per stream (docs/websocket.md). An
    `error` event ends the stream (the browser reconnects with Last-Event-ID)."""
    live = live_of(request)
    flt, since = parse_sse(request)
    return EventStream(live, credential_of(request.scope), flt, since)
