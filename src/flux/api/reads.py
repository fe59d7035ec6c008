"""The hot read, `GET /api/state/entities/{id}`, answered before Starlette's router.

Reading one entity is the most frequent request and the cheapest work: a dict lookup and one
`orjson` call. Routing it through Starlette (a regex per route, a `Request`, a `Response`) cost
more than the work itself. This layer answers it directly when the answer needs nothing the
full handler does: the entity exists, and anyone may read it (`Permissions.is_public`, the
same decision the handler's `check_read` asks first: auth off, or a namespace that is not
private). Everything else (404s, private namespaces, HEAD) goes to the router and
`flux.api.http.get_entity`, which stays the reference behaviour; the tests run both paths.

The id is the rest of the decoded path, exactly what the route's `fullpath` convertor captures.
"""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from flux.api.edge import RouteLabel
from flux.api.http import entity_json
from flux.server import Server

PREFIX = "/api/state/entities/"
TEMPLATE = PREFIX + "{entity_id:fullpath}"
_ROUTE = RouteLabel(TEMPLATE)
_JSON = (b"content-type", b"application/json")


class EntityReads:
    def __init__(self, app: ASGIApp, server: Server) -> None:
        self.app = app
        # Bound once: the engine is the server's for its whole life.
        self.is_public = server.permissions.is_public
        self.get = server.engine.get

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET":
            path: str = scope["path"]
            if path.startswith(PREFIX) and len(path) > len(PREFIX):
                entity_id = path[len(PREFIX) :]
                if self.is_public(entity_id):
                    entity = self.get(entity_id)
                    if entity is not None:
                        body = orjson.dumps(entity_json(entity))
                        scope["route"] = _ROUTE
                        await send(
                            {
                                "type": "http.response.start",
                                "status": 200,
                                "headers": [_JSON, (b"content-length", b"%d" % len(body))],
                            }
                        )
                        await send({"type": "http.response.body", "body": body})
                        return
        await self.app(scope, receive, send)
