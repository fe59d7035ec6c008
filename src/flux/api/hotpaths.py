"""The two hot requests answered in the HTTP protocol itself, below ASGI.

Reading one entity (`GET /api/state/entities/{id}`) and publishing one event (`POST
/api/events`) are most of the traffic, and their own work is small. Through ASGI each one also
pays uvicorn's request cycle (an object, a task, the scope's message dicts, two socket writes),
Starlette's entry and its error layer, and the edge's `send` wrapper: measured with `bench/run`,
a do-nothing ASGI callable on the same server answered twice as many GETs as Flux did. Here the
HTTP protocol (`flux.api.connections.Connection`, uvicorn's httptools protocol) hands
such a request to `HotPaths` once its headers are in; the answer is written with one
`transport.write`.

Answers are written in bursts, after the event loop's pass has read what its sockets hold: a
GET's is made at once, a publish's when its group commits, and both are written from one
callback per pass (`HotPaths._flush`). Written at once, between two reads, each GET's
answer found a client on the same machine asleep, and the kernel woke it inside the server's
own `send`: measured with `perf` under `bench/run`'s GET load, those wake-ups were 12% of
the server's CPU time, and deferring the write to the end of the pass took Flux from 14k to
25k GETs a second (bench/RESULTS.md, issue 17).

Only the plain success case is taken; the rest goes to the ASGI app exactly as before, which
stays the reference behaviour (the ASGI layers `flux.api.reads` and `flux.api.writes`, then the
router's handlers). `HotPaths.take` declines, at the headers, a request that is not HTTP/1.1
keep-alive, that carries an `Origin` (CORS), a `Host` the server does not answer, an `Expect`,
an upgrade, a body on a GET, a chunked or oversized body, a non-JSON type or conditional headers,
or that arrives while an earlier request on the connection is still being answered (pipelining
keeps its order through uvicorn's queue). `HotRead` and `HotPublish` decline later when the
answer is not the plain one: a missing or private entity; a body that does not decode, validate
or pass admission (token, namespace, rate limit). A declined request is given to uvicorn with
its body as read, so the app answers it as if this module were absent; the tests send both kinds
to servers with `FLUX_HOT_PATHS` on and off and compare the bytes.

What the edge does for every request is done here too for these: the latency histogram under
the route's template (GET /metrics) and the `Vary: Origin` header; with `FLUX_ACCESS_LOG` on,
the hot paths are off (each request then goes through the edge, which writes the line).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import urllib.parse
from typing import NamedTuple, Protocol, cast

import httptools
import orjson
from starlette.responses import Response
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle
from uvicorn.server import ServerState

from flux.api.body import is_json_type
from flux.api.edge import histogram_of
from flux.api.errors import error_response, response_for, status_of
from flux.api.hosts import HostCheck
from flux.api.http import entity_json
from flux.api.identity import AUTHORIZATION, credential_in
from flux.api.prometheus import Histograms, HotCounts
from flux.api.reads import PREFIX, TEMPLATE
from flux.api.writes import PATH
from flux.auth import ANONYMOUS
from flux.errors import FluxError
from flux.events import Event, decode_json, validate_event
from flux.log import Appended
from flux.server import Server


class Connection(Protocol):
    """What the hot paths use of the HTTP protocol (`flux.api.connections.Connection`,
    uvicorn's httptools protocol): the request parsed so far and the connection to answer on."""

    parser: httptools.HttpRequestParser
    url: bytes
    headers: list[tuple[bytes, bytes]]
    transport: asyncio.Transport
    server_state: ServerState
    cycle: RequestResponseCycle

    def on_response_complete(self) -> None: ...


logger = logging.getLogger("flux.api")

_GET = b"GET"
_POST = b"POST"
_PREFIX = PREFIX.encode()
_PATH = PATH.encode()
_OK = b"HTTP/1.1 200 OK\r\n"
_JSON_HEAD = b"content-type: application/json\r\ncontent-length: %d\r\nvary: Origin\r\n\r\n"

# Request headers that send a request to the ASGI app (the edge's CORS, uvicorn's
# `Expect: 100-continue` and upgrades, chunked bodies, conditional writes).
_DECLINE = frozenset(
    {
        b"origin",
        b"expect",
        b"upgrade",
        b"transfer-encoding",
        b"if-match",
        b"if-none-match",
        b"access-control-request-method",
    }
)


class _Pending:
    """What stands in `protocol.cycle` while a hot publish waits for its commit, with the
    attributes uvicorn's protocol and the connection guard look at: a pipelined request queues
    behind it, a shutdown clears `keep_alive`, a lost connection sets `disconnected`."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")

    more_body = False
    response_started = False

    def __init__(self) -> None:
        self.response_complete = False
        self.keep_alive = True
        self.disconnected = False

    class message_event:  # noqa: N801 - uvicorn calls `cycle.message_event.set()`
        @staticmethod
        def set() -> None:
            pass


class _Out(NamedTuple):
    """An answer made, to be written after the event loop's pass (`HotPaths._flush`)."""

    protocol: Connection
    pending: _Pending
    answer: bytes
    method: str
    route: str
    status: int
    began: float


class HotPaths:
    """The hot requests of one server (`server`, the app's `flux.server.Server`), bound once:
    the protocol calls `take` at each request's headers."""

    def __init__(
        self,
        server: Server,
        histograms: Histograms,
        hosts: HostCheck | None,
        counts: HotCounts,
    ) -> None:
        """`histograms` and `counts`: GET /metrics' (the app's `state.histograms` and
        `state.hot_counts`); `hosts`: the edge's `Host` check."""
        self.histograms = histograms
        self.counts = counts
        counts[TEMPLATE] = counts[PATH] = 0
        self.hosts = hosts
        self.is_public = server.permissions.is_public
        self.get = server.engine.get
        self.runtime = server.runtime
        self.auth_enabled = server.settings.auth_enabled
        self.max_id_length = server.settings.max_entity_id_length
        self.admit = server.permissions.admit
        self.submit = server.service.submit
        self.condition_failed = server.service.condition_failed
        self._tasks: set[asyncio.Task[None]] = set()
        # The answers made in this pass of the event loop, written after its reads (`_flush`).
        self._out: list[_Out] = []

    def take(self, protocol: Connection) -> HotRead | HotPublish | None:
        """The hot request `protocol` is parsing (its headers are in), or None for the ASGI app."""
        parser = protocol.parser
        method = parser.get_method()
        url: bytes = protocol.url
        if method == _GET:
            if not url.startswith(_PREFIX) or len(url) == len(_PREFIX):
                return None
        elif method != _POST or not url.startswith(_PATH):
            return None
        if parser.get_http_version() != "1.1" or not parser.should_keep_alive():
            return None
        length = 0
        token = None
        json = False
        host = None
        for name, value in protocol.headers:
            if name in _DECLINE:
                return None
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    return None
            elif name == AUTHORIZATION:
                token = value
            elif name == b"content-type":  # any JSON type, as the app takes (flux.api.body)
                json = value == b"application/json" or is_json_type(value.decode("latin-1"))
            elif name == b"host":
                host = value
            elif name == b"connection" and value.lower() != b"keep-alive":
                return None
        if self.hosts is not None and host is not None and not self.hosts.allowed(host):
            return None
        path = _path_of(url)
        if path is None:
            return None
        if method == _GET:
            if length or len(path) == len(PREFIX):
                return None
            return HotRead(self, path[len(PREFIX) :])
        if path != PATH or not json:
            return None
        if not 0 < length <= self.runtime.current.body_size_limit_single_bytes:
            return None
        return HotPublish(self, token, length)

    def run(self, protocol: Connection, publish: HotPublish, event: Event) -> None:
        """Hand `event` to the log for `protocol`, answered from the future's callback (no task
        per request); the connection waits meanwhile (a pipelined request queues behind
        `_Pending`)."""
        pending = _Pending()
        protocol.cycle = pending  # type: ignore[assignment]
        try:
            future = self.submit([event])
        except FluxError as exc:  # the log refused it at once (closed, full, unreachable)
            self._refused(protocol, publish, pending, exc)
            return
        future.add_done_callback(functools.partial(self._stored, protocol, publish, event, pending))

    def _stored(
        self,
        protocol: Connection,
        publish: HotPublish,
        event: Event,
        pending: _Pending,
        future: asyncio.Future[list[Appended]],
    ) -> None:
        exc = future.exception()
        if exc is not None:
            self._refused(protocol, publish, pending, exc)
            return
        (appended,) = future.result()
        if appended.failure is not None:  # its 409 says what the log holds: a coroutine's work
            task = asyncio.ensure_future(self._conflict(protocol, publish, pending, appended))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            return
        body = orjson.dumps(
            {"eventId": event["eventId"], "stream": event["stream"], "sequence": appended.seq}
        )
        answer = b"".join((_OK, default_headers(protocol), _JSON_HEAD % len(body), body))
        self._answer(protocol, publish, pending, answer, 200)

    def read(self, protocol: Connection, answer: bytes, began: float) -> None:
        """Answer a hot GET with `answer`; the connection waits meanwhile, as for a publish."""
        pending = _Pending()
        protocol.cycle = pending  # type: ignore[assignment]
        self._later(_Out(protocol, pending, answer, "GET", TEMPLATE, 200, began))

    def _later(self, out: _Out) -> None:
        """Write `out`'s answer once this pass of the event loop is over (`_flush`)."""
        if not self._out:
            asyncio.get_running_loop().call_soon(self._flush)
        self._out.append(out)

    def _flush(self) -> None:
        """Write the answers made in the last pass one after another, then count them."""
        done = self._out
        self._out = []
        for out in done:
            try:
                _send(out.protocol, out.pending, out.answer)
            except Exception:  # one connection's failure must not leave the others unanswered
                logger.exception("%s %s: writing the answer failed", out.method, out.route)
                out.protocol.transport.abort()
        counts = self.counts
        observe = self.observe
        for out in done:
            counts[out.route] += 1
            observe(out.method, out.route, out.status, out.began)

    async def _conflict(
        self, protocol: Connection, publish: HotPublish, pending: _Pending, appended: Appended
    ) -> None:
        assert appended.failure is not None
        try:
            exc: BaseException = await self.condition_failed(appended.failure)
        except Exception as error:
            exc = error
        self._refused(protocol, publish, pending, exc)

    def _refused(
        self, protocol: Connection, publish: HotPublish, pending: _Pending, exc: BaseException
    ) -> None:
        """The answer to a publish that was not stored as asked: the error's own answer (a
        `FluxError`), or the edge's JSON 500 for anything else."""
        if isinstance(exc, FluxError):
            answer = response_bytes(protocol, response_for(exc, "POST", PATH))
            status = status_of(exc)
        else:
            logger.error("POST %s raised", PATH, exc_info=exc)
            answer = response_bytes(protocol, error_response(500, "internal server error"))
            status = 500
        self._answer(protocol, publish, pending, answer, status)

    def _answer(
        self,
        protocol: Connection,
        publish: HotPublish,
        pending: _Pending,
        answer: bytes,
        status: int,
    ) -> None:
        self._later(_Out(protocol, pending, answer, "POST", PATH, status, publish.began))

    def observe(self, method: str, route: str, status: int, began: float) -> None:
        """Into GET /metrics' latency histograms, as the edge times every other request."""
        histogram_of(self.histograms, method, route, status).observe(time.perf_counter() - began)


class HotRead:
    """A GET of one entity: answered at the end of the message when the entity exists and
    anyone may read it."""

    __slots__ = ("began", "entity_id", "hot")

    def __init__(self, hot: HotPaths, entity_id: str) -> None:
        self.hot = hot
        self.entity_id = entity_id
        self.began = time.perf_counter()

    def body(self, chunk: bytes) -> None:  # never called: a GET with a body is declined
        raise AssertionError("a hot GET has no body")

    def complete(self, protocol: Connection) -> bool:
        hot = self.hot
        if not hot.is_public(self.entity_id):
            return False
        entity = hot.get(self.entity_id)
        if entity is None:
            return False
        body = orjson.dumps(entity_json(entity))
        answer = b"".join((_OK, default_headers(protocol), _JSON_HEAD % len(body), body))
        hot.read(protocol, answer, self.began)
        return True


class HotPublish:
    """A POST of one event: its body gathered, then decoded, validated and admitted at the end
    of the message; published in a task when all of that passed."""

    __slots__ = ("began", "chunks", "hot", "length", "token")

    def __init__(self, hot: HotPaths, token: bytes | None, length: int) -> None:
        self.hot = hot
        self.token = token
        self.length = length
        self.chunks: list[bytes] = []
        self.began = time.perf_counter()

    def body(self, chunk: bytes) -> None:
        self.chunks.append(chunk)

    @property
    def received(self) -> bytes:
        chunks = self.chunks
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def complete(self, protocol: Connection) -> bool:
        hot = self.hot
        try:
            event = validate_event(decode_json(self.received), hot.max_id_length)
            # With auth off admission looks at no credential (as in flux.api.writes).
            hot.admit(credential_in(self.token) if hot.auth_enabled else ANONYMOUS, event)
        except FluxError:
            return False
        hot.run(protocol, self, event)
        return True


def _send(protocol: Connection, pending: _Pending, answer: bytes) -> None:
    """Write `answer` to the request `pending` stands for, unless its client is gone, and let
    the connection go on (to a request pipelined behind it, or to wait for the next)."""
    pending.response_complete = True
    if cast(object, protocol.cycle) is pending:
        protocol.cycle = None  # type: ignore[assignment]
    if not pending.disconnected and not protocol.transport.is_closing():
        protocol.transport.write(answer)
        if not pending.keep_alive:  # the server is shutting down
            protocol.transport.close()
        protocol.on_response_complete()


def _path_of(url: bytes) -> str | None:
    """The request's path as uvicorn decodes it for the scope (percent-decoded), or None for a
    URL it would not parse."""
    try:
        raw = httptools.parse_url(url).path
    except httptools.HttpParserInvalidURLError:
        return None
    path = raw.decode("ascii")
    return urllib.parse.unquote(path) if "%" in path else path


_cached_defaults: tuple[object, bytes] = (None, b"")


def default_headers(protocol: Connection) -> bytes:
    """uvicorn's headers on every answer (`date`, and `server` unless turned off), encoded once
    per second (uvicorn makes a new list when the date changes)."""
    global _cached_defaults
    headers = protocol.server_state.default_headers
    if _cached_defaults[0] is not headers:
        _cached_defaults = (headers, b"".join(b"%s: %s\r\n" % pair for pair in headers))
    return _cached_defaults[1]


def response_bytes(protocol: Connection, response: Response) -> bytes:
    """A Starlette `Response` as the bytes uvicorn would write for it (after the edge's
    `Vary: Origin`), keeping the connection open."""
    head = [STATUS_LINE[response.status_code], default_headers(protocol)]
    head += [b"%s: %s\r\n" % pair for pair in response.raw_headers]
    head.append(b"vary: Origin\r\n\r\n")
    return b"".join(head) + bytes(response.body)
