"""`claim()`: hold a lease for the length of a `with` (or `async with`) block.

Entering acquires the lease (FluxConflict when another owner holds it); while the block runs,
the lease is renewed in the background every `renew_fraction` of its TTL; leaving the block
stops the renewals and releases it. `token` is the fencing token to put on the block's writes
(`fencing_token=claim.token`): the server refuses them once the lease is gone.

`lost` turns True, and `reason` says why, as soon as the claim can no longer count on the
lease: a renewal was refused (expired, or taken over), or no renewal has reached the server for
a whole TTL since the last one that did (the server is down or unreachable: its lease, counted
from when it received that renewal, has run out by then). It is computed when read, so it is
exact even while a renewal hangs. A claim that is lost stays lost (renewals stop); stop acting
for the lease, and note that any write fenced with its token is refused (FluxConflict).

Leaving the block releases the lease if it is not lost. A release that fails is not raised (the
lease then ends by its TTL): `released` says whether it went through; a release refused because
the lease had already gone sets `lost`."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import threading
import time
from collections.abc import Awaitable, Mapping
from typing import Any, Protocol, TypedDict, TypeVar

from flux.client import calls
from flux.client.calls import Call
from flux.client.errors import FluxClientError, FluxConflict
from flux.client.exchange import NO_RETRY, Retry
from flux.client.types import Lease, LeaseReleased

T = TypeVar("T")


class ClaimOptions(TypedDict, total=False):
    """`claim()`'s optional arguments: `properties` (set on the entity with the lease),
    `presence` (True: the entity is deleted when the lease ends) and `renew_fraction` (renew
    every this fraction of the TTL; 1/3 by default, so two renewals can fail before it
    runs out)."""

    properties: Mapping[str, Any] | None
    presence: bool
    renew_fraction: float


class ClaimState:
    """What the sync and the async claim share: the lease, the schedule of its renewals and
    the rules that say it is lost (the module docstring)."""

    def __init__(
        self,
        entity_id: str,
        owner: str,
        ttl_ms: int,
        *,
        properties: Mapping[str, Any] | None = None,
        presence: bool = False,
        renew_fraction: float = 1 / 3,
    ) -> None:
        if not 0 < renew_fraction < 1:
            raise ValueError(f"renew_fraction must be between 0 and 1, got {renew_fraction}")
        self.entity_id = entity_id
        self.owner = owner
        self.ttl_ms = ttl_ms
        self.interval = ttl_ms / 1000 * renew_fraction
        self.lease: Lease | None = None
        self.released = False
        self.renewals = 0
        self._reason: str | None = None
        self._valid_until = 0.0  # monotonic time at which the last lease known held runs out
        self._acquire = calls.lease_acquire(
            entity_id, owner, ttl_ms, properties=properties, presence=presence
        )

    @property
    def token(self) -> int:
        """The fencing token. Raises RuntimeError before the lease is acquired."""
        if self.lease is None:
            raise RuntimeError("the claim has not acquired its lease yet (enter it first)")
        return self.lease["token"]

    @property
    def lost(self) -> bool:
        return self.reason is not None

    @property
    def reason(self) -> str | None:
        """Why the lease was lost (None while it is held, or once released)."""
        if (
            self._reason is None
            and self.lease is not None
            and not self.released
            and time.monotonic() >= self._valid_until
        ):
            self._reason = f"no renewal reached the server within the lease's {self.ttl_ms} ms"
        return self._reason

    def renew_call(self) -> Call[Lease]:
        """The renewal, sent once (the claim retries on its own schedule) with a timeout of one
        renewal interval, so a hung request cannot hold the next one back."""
        call = calls.lease_renew(self.entity_id, self.owner, self.token, self.ttl_ms)
        return dataclasses.replace(call, timeout=max(self.interval, 0.05))

    def release_call(self) -> Call[LeaseReleased]:
        return calls.lease_release(self.entity_id, self.owner, self.token)

    def held(self, lease: Lease, sent_at: float) -> float:
        """Records a lease the server granted to a request sent at `sent_at` (monotonic);
        returns the seconds until the next renewal."""
        self.lease = lease
        self._valid_until = sent_at + self.ttl_ms / 1000
        return self.interval

    def failed(self, error: FluxClientError) -> float | None:
        """Records a renewal that failed; returns the seconds until the next attempt, or None
        when the lease is lost (renewals stop)."""
        if isinstance(error, FluxConflict):
            self._reason = f"the lease was lost: {error.message}"
        if self.lost:
            return None
        return max(0.05, min(self.interval / 4, self._valid_until - time.monotonic()))

    def released_with(self, error: FluxClientError | None) -> None:
        """Records the release's outcome (None: it went through)."""
        if error is None:
            self.released = True
        elif isinstance(error, FluxConflict):
            self._reason = f"the lease was lost: {error.message}"


class _Runs(Protocol):
    def run(self, call: Call[T], retry: Retry | None = None) -> T: ...


class _RunsAsync(Protocol):
    def run(self, call: Call[T], retry: Retry | None = None) -> Awaitable[T]: ...


class Claim(ClaimState):
    """`FluxClient.claim()`: renewed by a background thread (see the module docstring)."""

    def __init__(self, client: _Runs, entity_id: str, owner: str, ttl_ms: int, **options: Any):
        super().__init__(entity_id, owner, ttl_ms, **options)
        self._client = client
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renewing, name=f"claim {entity_id}")

    def __enter__(self) -> Claim:
        sent_at = time.monotonic()
        self.held(self._client.run(self._acquire), sent_at)
        self._thread.daemon = True
        self._thread.start()
        return self

    def _renewing(self) -> None:
        delay: float | None = self.interval
        while delay is not None and not self._stop.wait(delay):
            sent_at = time.monotonic()
            try:
                delay = self.held(self._client.run(self.renew_call(), NO_RETRY), sent_at)
                self.renewals += 1
            except FluxClientError as error:
                delay = self.failed(error)

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        try:
            self._client.run(self.release_call(), NO_RETRY)
        except FluxClientError as error:
            self.released_with(error)
        else:
            self.released_with(None)


class AsyncClaim(ClaimState):
    """`AsyncFluxClient.claim()`: renewed by a task of the running loop (see the module
    docstring)."""

    def __init__(self, client: _RunsAsync, entity_id: str, owner: str, ttl_ms: int, **options: Any):
        super().__init__(entity_id, owner, ttl_ms, **options)
        self._client = client
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AsyncClaim:
        sent_at = time.monotonic()
        self.held(await self._client.run(self._acquire), sent_at)
        self._task = asyncio.create_task(self._renewing(), name=f"claim {self.entity_id}")
        return self

    async def _renewing(self) -> None:
        delay: float | None = self.interval
        while delay is not None:
            await asyncio.sleep(delay)
            sent_at = time.monotonic()
            try:
                delay = self.held(await self._client.run(self.renew_call(), NO_RETRY), sent_at)
                self.renewals += 1
            except FluxClientError as error:
                delay = self.failed(error)

    async def __aexit__(self, *exc_info: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self.lost:
            return
        try:
            await self._client.run(self.release_call(), NO_RETRY)
        except FluxClientError as error:
            self.released_with(error)
        else:
            self.released_with(None)
