"""AsyncFluxClient: the asynchronous client, on `httpx.AsyncClient`. Its methods are
flux.client.endpoints' (the same as FluxClient's, awaited), plus `iter_changes`, `watch` and
`claim`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar, Unpack

import httpx

from flux.client.calls import Call
from flux.client.claims import AsyncClaim, ClaimOptions
from flux.client.endpoints import AsyncRunner, FollowOptions
from flux.client.exchange import Retry, exchange
from flux.client.live import AsyncWatch, WatchOptions
from flux.client.types import Changes

T = TypeVar("T")


class AsyncFluxClient(AsyncRunner):
    """FluxClient's twin for asyncio: the same constructor (with an `httpx.AsyncBaseTransport`,
    for example `httpx.ASGITransport(app)`), and the same methods, to await."""

    def _open(
        self, transport: httpx.AsyncBaseTransport | None, timeout: float | httpx.Timeout
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self._headers, transport=transport, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFluxClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def run(self, call: Call[T], retry: Retry | None = None) -> T:
        request = self._http.build_request(**call.request(self.admin_token))
        steps = exchange(call, retry or self.retry, self.base_url)
        delay = next(steps)
        while True:
            await asyncio.sleep(delay)
            answer: httpx.Response | httpx.TransportError
            try:
                answer = await self._http.send(request)
            except httpx.TransportError as exc:
                answer = exc
            try:
                delay = steps.send(answer)
            except StopIteration as done:
                result: T = done.value
                return result

    async def iter_changes(
        self, since: int = 0, **options: Unpack[FollowOptions]
    ) -> AsyncIterator[Changes]:
        """FluxClient.iter_changes, for `async for`."""
        prefix, namespace = options.get("prefix"), options.get("namespace")
        limit = options.get("limit")
        while True:
            page = await self.changes(since, prefix=prefix, namespace=namespace, limit=limit)
            yield page
            since = page["next"]
            if not page["more"]:
                if not options.get("follow", False):
                    return
                await asyncio.sleep(options.get("interval", 1.0))

    def watch(self, **options: Unpack[WatchOptions]) -> AsyncWatch:
        """The live changes over the WebSocket, for `async for` (see `AsyncWatch` and
        `WatchOptions`); FluxClient.watch says what it raises."""
        return AsyncWatch(self._live(options))

    def claim(
        self, entity_id: str, owner: str, ttl_ms: int, **options: Unpack[ClaimOptions]
    ) -> AsyncClaim:
        """A lease on `entity_id` for `owner`, held for an `async with` block and renewed by a
        task (flux.client.claims; `ClaimOptions`)."""
        return AsyncClaim(self, entity_id, owner, ttl_ms, **options)
