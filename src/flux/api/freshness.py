"""Freshness: in a cluster, a request whose token this node does not know waits for the
namespace registry to catch up with the other nodes before it is judged.

A namespace registered through another node is in the shared bucket before its token is handed
out, but reaches this node's index only when the watcher delivers it (milliseconds later). A
client that registers through one node and at once writes through another would be refused
in between. So an unknown token (neither a namespace's nor the admin's) first catches the
registry up to the bucket's last revision (`flux.shared.namespaces.SharedRegistry.catch_up`,
one JetStream API request) and is judged after that. Known tokens, anonymous requests and the
embedded mode (where this layer is not installed) pay nothing. If NATS does not answer, the
request is judged on what this node knows.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from starlette.types import ASGIApp, Receive, Scope, Send

from flux.api.identity import credential_of
from flux.auth import Access
from flux.errors import LogUnavailable

logger = logging.getLogger("flux.api")


class Freshness:
    def __init__(
        self, app: ASGIApp, access: Access, catch_up: Callable[[], Awaitable[None]]
    ) -> None:
        self.app = app
        self.access = access
        self.catch_up = catch_up

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            credential = credential_of(scope)
            access = self.access
            if (
                credential.token_hash is not None
                and access.owner(credential) is None
                and not access.is_admin(credential)
            ):
                try:
                    await self.catch_up()
                except LogUnavailable as exc:
                    logger.warning("unknown token judged without catching up: %s", exc)
        await self.app(scope, receive, send)
