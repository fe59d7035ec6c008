"""The hot write, `POST /api/events`, answered before Starlette's router.

Publishing one event is the most frequent write. Its own work is small (decode, validate, hand
the event to the log's group commit), and Starlette's share of it (the router's regex per route,
a `Request`, a `Response`, two more layers of `send` wrappers) was about as large. This layer
takes the success path directly: the whole body within its limit, a valid event, admitted, then
stored. Whatever else happens before the event is handed to the log (a body not typed as JSON,
a body over its limit, a client gone mid-body, bad JSON, a failed check, a refused token, a rate
limit, or `If-Match`/`If-None-Match` headers) is passed to the router with the body read so far
replayed, so `flux.api.http.publish_event` answers it exactly as it answers every request when
this layer is absent; the tests run both paths. An error from the log itself (the event may not
be published twice) and a condition that failed (a 409 with what an agent needs to retry) are
answered here, by the same mapping (`flux.api.errors.response_for`).
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flux.api.body import declared_length, is_json_type
from flux.api.edge import RouteLabel
from flux.api.errors import response_for
from flux.api.identity import credential_of
from flux.auth import ANONYMOUS
from flux.errors import FluxError
from flux.events import decode_json, validate_event
from flux.server import Server

PATH = "/api/events"
_ROUTE = RouteLabel(PATH)
_JSON = (b"content-type", b"application/json")
_CONTENT_LENGTH = b"content-length"
_CONTENT_TYPE = b"content-type"
_APPLICATION_JSON = b"application/json"
_CONDITIONAL = (b"if-match", b"if-none-match")


class EventWrites:
    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        # Bound once, so a request pays no lookups through the server.
        self.runtime = server.runtime
        self.auth_enabled = server.settings.auth_enabled
        self.max_id_length = server.settings.max_entity_id_length
        self.admit = server.permissions.admit
        self.publish = server.service.publish
        self.condition_failed = server.service.condition_failed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] == PATH:
            await self._publish(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _publish(self, scope: Scope, receive: Receive, send: Send) -> None:
        limit = self.runtime.current.body_size_limit_single_bytes
        json = False
        for name, value in scope["headers"]:
            if name == _CONTENT_LENGTH:
                declared = declared_length(value.decode("latin-1"))
                if declared is not None and declared > limit:
                    await self.app(scope, receive, send)  # the handler's 413
                    return
            elif name == _CONTENT_TYPE:
                json = value == _APPLICATION_JSON or is_json_type(value.decode("latin-1"))
            elif name in _CONDITIONAL:
                json = False  # a conditional write: the handler's
                break
        if not json:
            await self.app(scope, receive, send)  # the handler's 415, or a conditional write
            return
        received: list[Message] = []
        size = 0
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return await self._fall_back(scope, receive, send, received)  # gone mid-body
            size += len(message.get("body", b""))
            if size > limit:
                return await self._fall_back(scope, receive, send, received)
            if not message.get("more_body", False):
                break
        body = (
            received[0].get("body", b"")
            if len(received) == 1
            else b"".join(m.get("body", b"") for m in received)
        )
        try:
            event = validate_event(decode_json(body), self.max_id_length)
            # With auth off admission looks at no credential.
            self.admit(credential_of(scope) if self.auth_enabled else ANONYMOUS, event)
        except FluxError:
            return await self._fall_back(scope, receive, send, received)
        scope["route"] = _ROUTE
        try:
            (appended,) = await self.publish([event])
            if appended.failure is not None:
                raise await self.condition_failed(appended.failure)
        except FluxError as exc:
            await response_for(exc, "POST", PATH)(scope, receive, send)
            return
        answer = orjson.dumps(
            {"eventId": event["eventId"], "stream": event["stream"], "sequence": appended.seq}
        )
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [_JSON, (_CONTENT_LENGTH, b"%d" % len(answer))],
            }
        )
        await send({"type": "http.response.body", "body": answer})

    async def _fall_back(
        self, scope: Scope, receive: Receive, send: Send, received: list[Message]
    ) -> None:
        """The router and the full handler, which read the messages taken so far again."""
        replay = list(reversed(received))

        async def receive_again() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, receive_again, send)
