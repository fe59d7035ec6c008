"""One call's exchange with the server, without I/O: the request is sent, its answer read, and
sent again when that is safe and worth it (`Retry`). A client drives `exchange` with its own
transport: it sends the request at each step (after waiting the delay the step gives) and
passes back the response or the transport error, until the generator returns the result or
raises. So the sync and the async clients retry, decode and fail in exactly the same way."""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from flux.client.calls import Call
from flux.client.errors import FluxClientError, FluxConnectionError, FluxUnavailable

T = TypeVar("T")
Answer = httpx.Response | httpx.TransportError


@dataclass(frozen=True)
class Retry:
    """When a request is sent again: at most `attempts` sends in all, waiting
    `backoff * 2**(n - 1)` seconds (at most `max_backoff`, less a random part of up to half, so
    that clients a restart cut off do not come back in step) before the n-th retry.

    Sent again: a request that reached no server (the connection was refused or could not be
    made); a 503 whose `outcome` is `not_stored`; and, for calls that are idempotent (reads,
    `publish` and `batch`, whose events carry the eventIds chosen before the first send, lease
    acquire and renew), a request whose answer was lost (connection broken, timeout) or a 503
    of any other kind (`unknown`, `stored`, a server starting). Anything else fails at once.
    `on_retry(attempt, error, delay)` hears of each retry (to log it)."""

    attempts: int = 5
    backoff: float = 0.25
    max_backoff: float = 4.0
    on_retry: Callable[[int, FluxClientError, float], None] | None = None

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValueError("backoff and max_backoff must not be negative")

    def worth(self, call: Call[Any], error: FluxClientError) -> bool:
        """Whether `call`, which failed with `error`, may be sent again."""
        if isinstance(error, FluxConnectionError):
            return call.idempotent or not error.maybe_sent
        if isinstance(error, FluxUnavailable):
            return call.idempotent or error.outcome == "not_stored"
        return False

    def delay(self, attempt: int) -> float:
        """Seconds to wait after the `attempt`-th send failed."""
        delay = min(self.max_backoff, self.backoff * 2.0 ** min(attempt - 1, 30))
        return delay * random.uniform(0.5, 1.0)


NO_RETRY = Retry(attempts=1)


def exchange(call: Call[T], retry: Retry, base_url: str) -> Generator[float, Answer, T]:
    """Yields the seconds to wait before each send (0 for the first) and receives that send's
    answer; returns the call's result. Raises the FluxClientError of the last answer when it
    may not or need not be sent again."""
    attempt = 0
    delay = 0.0
    while True:
        answer = yield delay
        attempt += 1
        try:
            return call.answer(answer, base_url)
        except FluxClientError as error:
            if attempt >= retry.attempts or not retry.worth(call, error):
                raise
            delay = retry.delay(attempt)
            if retry.on_retry is not None:
                retry.on_retry(attempt, error, delay)
