"""Connections: how long a client may take to send a request, and how many it may hold.

uvicorn bounds neither: its keep-alive timeout runs only between requests and is cancelled by any
byte received, so a client that sends a header line (or one byte of a body) now and then holds
its connection forever, and a few hundred such clients use up the server's file descriptors.
`protocols()` returns uvicorn's own HTTP and WebSocket protocols with three additions:

- headers: from a connection's opening (and from the end of each response on a kept-alive
  connection) its next request's headers must be complete within `header_timeout_seconds`;
- body: once its headers are in, a request's body must be complete within
  `body_timeout_seconds` (armed only when the body did not arrive with the headers);
- per client: one client address holds at most `max_connections_per_client` connections at once
  (HTTP, SSE and WebSocket alike: an upgraded connection stays counted until it closes).

The deadlines are times kept on each connection and checked by one sweep per server, a few
times a second (`Deadlines`), not a timer per request: arming and cancelling an event-loop timer
for every request cost about a tenth of a small request's time (measured with `bench/run`). A
deadline therefore fires up to half its length late, at most two seconds.

Past a timeout the answer is `408 {"error": "request timeout"}`, past the limit
`429 {"error": "too many connections from this client"}` (a handshake refused so is a refused
WebSocket); then the server stops reading, half-closes and closes the connection shortly after
(a linger, so that the answer is not lost to a reset when the client is still sending). If the
application was already handling the request, it sees the client as gone.

Both protocols also put an `ABORT` hook in the scope's extensions, for live connections closed
as slow consumers: asyncio's `transport.close()` waits until everything written has been sent,
so a connection whose client stopped reading would be held until the client read again (for
ever). `scope["extensions"][ABORT](delay)` aborts the connection after `delay` seconds if the
transport still holds unsent data then (and the request is still the current one).

The WebSocket protocol also puts a `SEND_TEXTS` hook there, for the live fan-out: ASGI sends
one message per call, and uvicorn writes each to the socket (a system call per message per
subscriber: the largest share of the server's time with many subscribers).
`await scope["extensions"][SEND_TEXTS](texts)` sends several text messages, in order, in one
`transport.write` (flux.api.frames), after waiting as uvicorn's `send` does while the transport
has paused writing (its buffer is over the high-water mark), and raises uvicorn's
`ClientDisconnected` (an OSError) once the connection is closing or gone. It is there only
when the connection negotiated no extension (compression frames each message itself), so an
application falls back to the ASGI `send` without it (and under other servers).

`raise_open_file_limit()` lifts the process's soft limit on open files to its hard limit.
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request
from websockets.protocol import State

from flux.api.errors import status_of
from flux.api.frames import text_frames
from flux.api.hotpaths import HotPaths, HotPublish, HotRead
from flux.config import Settings
from flux.errors import FluxError, RequestTimeout, TooManyConnections

logger = logging.getLogger("flux.api")

LINGER_SECONDS = 0.5  # between an error answer (and half-close) and the close
ABORT = "flux.abort_if_stalled"  # the scope extensions (see the module's doc)
SEND_TEXTS = "flux.send_texts"


class ClientCounts:
    """Connections held per client address; `admit` counts one in (or refuses it), `release`
    counts it out once, whichever protocol (HTTP, then WebSocket) holds it last."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: no limit
        self.counts: dict[str, int] = {}
        self.holders: dict[object, str] = {}

    def admit(self, connection: object, address: str | None) -> bool:
        if address is None or not self.limit:
            return True
        count = self.counts.get(address, 0)
        if count >= self.limit:
            return False
        self.counts[address] = count + 1
        self.holders[connection] = address
        return True

    def release(self, connection: object) -> None:
        address = self.holders.pop(connection, None)
        if address is None:
            return
        count = self.counts[address] - 1
        if count:
            self.counts[address] = count
        else:
            del self.counts[address]


class Deadlines:
    """The HTTP connections of one server with a deadline, and the one sweep that checks them:
    it runs every `interval` seconds while any connection is open and calls `_expired` on
    those whose `deadline_at` (event-loop time) has passed."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.connections: set[GuardedHttpProtocol] = set()
        self.sweeping: asyncio.TimerHandle | None = None
        # Event-loop time as of the last sweep (or the last connection added), plus one
        # interval: `soon + seconds` is a deadline at least `seconds` away, without a clock
        # call per request.
        self.soon = 0.0

    def add(self, connection: GuardedHttpProtocol) -> None:
        self.connections.add(connection)
        self.soon = connection.loop.time() + self.interval
        if self.sweeping is None:
            self.sweeping = connection.loop.call_later(self.interval, self.sweep, connection.loop)

    def discard(self, connection: GuardedHttpProtocol) -> None:
        self.connections.discard(connection)

    def sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        self.sweeping = None
        now = loop.time()
        self.soon = now + self.interval
        for connection in [c for c in self.connections if c.due(now)]:
            connection.deadline_at = None
            try:
                connection._expired()
            except Exception:  # one connection's failure must not stop the sweep
                logger.exception("closing a connection past its deadline failed")
        if self.connections:
            self.sweeping = loop.call_later(self.interval, self.sweep, loop)


def error_bytes(error: FluxError) -> bytes:
    """A whole HTTP/1.1 error answer that closes the connection, in the usual JSON shape."""
    status = status_of(error)
    body = orjson.dumps({"error": error.message})
    return b"".join(
        (
            b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode()),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n\r\n",
            body,
        )
    )


TIMED_OUT = error_bytes(RequestTimeout("request timeout"))
TOO_MANY = error_bytes(TooManyConnections("too many connections from this client"))


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the header and body deadlines and the per-client count
    (`protocols()` makes a subclass bound to one server's settings and counts)."""

    counts: ClientCounts
    deadlines: Deadlines
    header_timeout: float
    body_timeout: float
    hot: HotPaths | None = None  # the requests answered below ASGI (flux.api.hotpaths)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_request: HotRead | HotPublish | None = None  # the one being parsed
        self.deadline_at: float | None = None  # event-loop time; None: no deadline running
        self.refused = False
        self.upgraded = False
        # Every request's scope gets these extensions (the abort hook), one dict per
        # connection: made once, not per request.
        self.extensions = {ABORT: self.abort_if_stalled}

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if not self.counts.admit(transport, self.client[0] if self.client else None):
            logger.warning(
                "%s: too many connections, refused", self.client[0] if self.client else ""
            )
            self._refuse(TOO_MANY)
            return
        self.deadlines.add(self)
        self._arm(self.header_timeout)

    def abort_if_stalled(self, delay: float) -> None:
        """In `delay` seconds (at once for 0), abort the connection if it still holds unsent
        data and still serves the request that asked."""
        if delay > 0:
            self.loop.call_later(delay, self._abort_if_stalled, self.cycle)
        else:
            self._abort_if_stalled(self.cycle)

    def _abort_if_stalled(self, cycle: object) -> None:
        if self.cycle is cycle and self.transport.get_write_buffer_size():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadline_at = None
        self.deadlines.discard(self)
        if not self.upgraded:
            self.counts.release(self.transport)
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        # The headers are in: their deadline is over and the body's begins (`_arm`, inlined,
        # with the sweep's clock: this runs once per request). A body that came with the
        # headers is in once this call returns; the sweep then sees that (`_expired`), so no
        # `data_received` or `on_message_complete` of our own. The request's scope (made in
        # `on_message_begin`, handed to the application here) gets the abort hook.
        self.deadline_at = self.deadlines.soon + self.body_timeout
        hot = self.hot
        if hot is not None:
            cycle = self.cycle
            if cycle is None or cycle.response_complete:  # nothing before it to answer first
                request = hot.take(self)
                if request is not None:
                    self.hot_request = request
                    return
        self.scope["extensions"] = self.extensions  # type: ignore[typeddict-item]
        HttpToolsProtocol.on_headers_complete(self)

    def on_body(self, body: bytes) -> None:
        request = self.hot_request
        if request is None:
            HttpToolsProtocol.on_body(self, body)
        else:
            request.body(body)

    def on_message_complete(self) -> None:
        request = self.hot_request
        if request is None:
            HttpToolsProtocol.on_message_complete(self)
            return
        self.hot_request = None
        try:
            if request.complete(self):
                return
        except Exception:
            logger.exception("%s: the hot path failed; the app answers", self.url)
        # Not the plain case: the ASGI app answers it, with the body as read.
        self.scope["extensions"] = self.extensions  # type: ignore[typeddict-item]
        HttpToolsProtocol.on_headers_complete(self)
        cycle = self.cycle
        if isinstance(request, HotPublish):
            cycle.body += request.received
        cycle.more_body = False
        cycle.message_event.set()

    def on_response_complete(self) -> None:
        HttpToolsProtocol.on_response_complete(self)
        if self.transport.is_closing() or self.refused:
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:  # no pipelined request started
            # `_arm`, inlined (once per request), with the sweep's clock
            self.deadline_at = self.deadlines.soon + self.header_timeout

    def handle_websocket_upgrade(self) -> None:
        self.deadline_at = None
        self.deadlines.discard(self)
        self.upgraded = True  # the WebSocket protocol releases the count
        super().handle_websocket_upgrade()

    def _arm(self, seconds: float) -> None:
        self.deadline_at = self.loop.time() + seconds

    def due(self, now: float) -> bool:
        deadline = self.deadline_at
        return deadline is not None and now >= deadline

    def _expired(self) -> None:
        self.deadline_at = None
        if self.transport.is_closing() or self.upgraded:
            return
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            return  # a body deadline, but the body is in: the application has the request
        if cycle is not None and not cycle.response_complete:
            # The application is handling this request: to it, the client is gone.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.transport.close()
                return
        self._refuse(TIMED_OUT)

    def _refuse(self, answer: bytes) -> None:
        """Send `answer`, stop reading, half-close, and close after a short linger."""
        self.refused = True
        transport = self.transport
        transport.pause_reading()  # what else comes is not read
        transport.write(answer)
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER_SECONDS, transport.close)


class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's WebSocket protocol, counting its connection out of the per-client count, with
    the `ABORT` and `SEND_TEXTS` hooks."""

    counts: ClientCounts

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:  # accepted: the application's task has not run yet
            extensions = scope["extensions"]
            extensions[ABORT] = self.abort_if_stalled
            if not self.conn.extensions:
                extensions[SEND_TEXTS] = self.send_texts

    async def send_texts(self, texts: Sequence[str]) -> None:
        """Send `texts` as text messages, in order, in one write (see the module's doc).
        Raises ClientDisconnected when the connection is closing or gone."""
        await self.writable.wait()  # as uvicorn's `send`: the transport's flow control
        if self.disconnected or self.close_sent or self.conn.state is not State.OPEN:
            raise ClientDisconnected()
        self.transport.write(text_frames(texts))

    def abort_if_stalled(self, delay: float) -> None:
        """In `delay` seconds (at once for 0), abort the connection if it still holds unsent
        data."""
        if delay > 0:
            self.loop.call_later(delay, self._abort_if_stalled)
        else:
            self._abort_if_stalled()

    def _abort_if_stalled(self) -> None:
        if self.transport.get_write_buffer_size():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.counts.release(self.transport)
        super().connection_lost(exc)


def protocols(
    settings: Settings, hot: HotPaths | None = None
) -> tuple[type[GuardedHttpProtocol], type[GuardedWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes for one server, sharing its per-client counts;
    `hot`: the requests the HTTP protocol answers itself (None: all go to the app)."""
    counts = ClientCounts(settings.max_connections_per_client)

    class Http(GuardedHttpProtocol):
        pass

    class WebSocket(GuardedWebSocketProtocol):
        pass

    Http.counts = WebSocket.counts = counts
    Http.deadlines = Deadlines(
        min(1.0, settings.header_timeout_seconds / 4, settings.body_timeout_seconds / 4)
    )
    Http.header_timeout = settings.header_timeout_seconds
    Http.body_timeout = settings.body_timeout_seconds
    Http.hot = hot
    return Http, WebSocket


def raise_open_file_limit() -> tuple[int, int]:
    """Lift the soft limit on open files to the hard limit (each connection holds one); returns
    (soft, hard) as they are afterwards. A limit the system refuses is left as it was."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:
            logger.warning("could not raise the open file limit to %d: %s", hard, exc)
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard
