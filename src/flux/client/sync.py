"""FluxClient: the synchronous client, on `httpx.Client`. Its methods are flux.client.endpoints'
(one per endpoint), plus `iter_changes`, `watch` and `claim`."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TypeVar, Unpack

import httpx

from flux.client.calls import Call
from flux.client.claims import Claim, ClaimOptions
from flux.client.endpoints import FollowOptions, SyncRunner
from flux.client.exchange import Retry, exchange
from flux.client.live import Watch, WatchOptions
from flux.client.types import Changes

T = TypeVar("T")


class FluxClient(SyncRunner):
    """Talks to one Flux server, synchronously (see flux.client). The constructor's arguments
    (address, tokens, transport, timeout, retry policy) are flux.client.endpoints.Client's."""

    def _open(self, transport: httpx.BaseTransport | None, timeout: float | httpx.Timeout) -> None:
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, transport=transport, timeout=timeout
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FluxClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def run(self, call: Call[T], retry: Retry | None = None) -> T:
        request = self._http.build_request(**call.request(self.admin_token))
        steps = exchange(call, retry or self.retry, self.base_url)
        delay = next(steps)
        while True:
            time.sleep(delay)
            answer: httpx.Response | httpx.TransportError
            try:
                answer = self._http.send(request)
            except httpx.TransportError as exc:
                answer = exc
            try:
                delay = steps.send(answer)
            except StopIteration as done:
                result: T = done.value
                return result

    def iter_changes(self, since: int = 0, **options: Unpack[FollowOptions]) -> Iterator[Changes]:
        """Every page of changes after `since` (see `changes`), each asked from the previous
        page's `next`, until the last one (`more` false). With `follow=True`, it then goes on
        polling every `interval` seconds, forever (stop iterating to stop): the pages that
        find nothing are yielded too, empty, so the caller gets control back at every poll.
        Save a page's `next` to resume later. Raises FluxResync (see `changes`)."""
        prefix, namespace = options.get("prefix"), options.get("namespace")
        limit = options.get("limit")
        while True:
            page = self.changes(since, prefix=prefix, namespace=namespace, limit=limit)
            yield page
            since = page["next"]
            if not page["more"]:
                if not options.get("follow", False):
                    return
                time.sleep(options.get("interval", 1.0))

    def watch(self, **options: Unpack[WatchOptions]) -> Watch:
        """The live changes over the WebSocket, for `for` (see `Watch` and `WatchOptions`).
        Raises ValueError for bad options; the first `next()` raises FluxConnectionError when
        the server cannot be reached (later disconnects are reconnected)."""
        return Watch(self._live(options))

    def claim(
        self, entity_id: str, owner: str, ttl_ms: int, **options: Unpack[ClaimOptions]
    ) -> Claim:
        """A lease on `entity_id` for `owner`, held for a `with` block and renewed by a thread
        (flux.client.claims; `ClaimOptions`)."""
        return Claim(self, entity_id, owner, ttl_ms, **options)
