"""Poll connectors on their interval: timeout, retries with exponential backoff, status.

One `ConnectorRunner` per configured connector. Each poll fetches (under `timeout_seconds`),
hands the events to the `sink` (the service's ingestion path, so auth and validation are the
same as for `POST /api/events`), and records the outcome in `ConnectorStatus` (a failure as
`describe` puts it; the log has the full reason). A failed
attempt is retried after `backoff_seconds`, doubled each time up to `max_backoff_seconds`;
after `attempts` failures the poll is given up until the next interval. Nothing a connector
or the sink raises leaves the runner (only cancellation does), so a bad source can never take
the server down.

The clock and the sleep are injected, so the schedule is tested without waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx

from flux.config import Settings
from flux.connectors.base import Connector, ConnectorError, EventDict
from flux.errors import FluxError, RateLimited
from flux.events import format_time

logger = logging.getLogger("flux.connectors")

# Publishes a poll's events; returns how many it published (None: all of them).
Sink = Callable[[list[EventDict]], Awaitable[int | None]]
TokenSource = Callable[[], Awaitable[str | None]]
Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], float]
Describe = Callable[[BaseException], str]


@dataclass
class ConnectorStatus:
    """What the status API reports for one runner."""

    name: str
    poll_interval_seconds: float
    last_poll: str | None = None
    last_error: str | None = None
    polls: int = 0
    failures: int = 0
    events: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "poll_interval_seconds": _number(self.poll_interval_seconds),
            "last_poll": self.last_poll,
            "last_error": self.last_error,
            "polls": self.polls,
            "failures": self.failures,
            "events": self.events,
        }


def _number(value: float) -> float | int:
    """A whole number of seconds as an int (`300`, as the original wrote it, not `300.0`)."""
    return int(value) if float(value).is_integer() else value


def describe_failure(exc: BaseException) -> str:
    """The `last_error` text for an exception raised by a poll."""
    if isinstance(exc, ConnectorError):
        return exc.message
    if isinstance(exc, FluxError):
        return f"Flux refused the events: {exc.message}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, httpx.HTTPError):
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return f"{type(exc).__name__}: {exc}"


def log_failure(exc: BaseException) -> str:
    """What the server log says of a failed attempt: `describe_failure`, or a connector
    error's fuller `detail`."""
    if isinstance(exc, ConnectorError) and exc.detail is not None:
        return exc.detail
    return describe_failure(exc)


def backoff_delays(attempts: int, first: float, maximum: float) -> list[float]:
    """The sleeps between `attempts` tries: first, 2*first, 4*first, ... capped at maximum."""
    return [min(first * 2**i, maximum) for i in range(max(attempts - 1, 0))]


def _asked_wait(exc: BaseException) -> float | None:
    """How long the source (or Flux's own rate limit) asked us to wait, if it said."""
    if isinstance(exc, ConnectorError) and exc.retry_after is not None:
        return max(exc.retry_after, 0.0)
    if isinstance(exc, RateLimited):
        return float(exc.retry_after)
    return None


async def _no_token() -> str | None:
    return None


class ConnectorRunner:
    def __init__(
        self,
        connector: Connector,
        sink: Sink,
        *,
        token: TokenSource = _no_token,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout_seconds: float = Settings.connector_timeout_seconds,
        attempts: int = 3,
        backoff_seconds: float = Settings.connector_retry_seconds,
        max_backoff_seconds: float = Settings.connector_retry_seconds * 10,
        sleep: Sleep = asyncio.sleep,
        clock: Clock = time.time,
        describe: Describe = describe_failure,
    ) -> None:
        self.connector = connector
        self.describe = describe
        self.sink = sink
        self.token = token
        self.transport = transport
        self.timeout_seconds = timeout_seconds
        self.attempts = max(attempts, 1)
        self.backoff_seconds = backoff_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self.sleep = sleep
        self.clock = clock
        self.status = ConnectorStatus(connector.name, connector.poll_interval_seconds)
        # When the source (or Flux's rate limit) asked to wait: no poll before this clock time.
        self.resume_at: float | None = None

    async def _attempt(self, client: httpx.AsyncClient) -> int:
        async with asyncio.timeout(self.timeout_seconds):
            events = await self.connector.fetch(client, await self.token())
        if not events:
            return 0
        published = await self.sink(events)
        return len(events) if published is None else published

    async def poll_once(self) -> bool:
        """One poll with its retries; True if it succeeded. Never raises (but cancellation)."""
        delays = backoff_delays(self.attempts, self.backoff_seconds, self.max_backoff_seconds)
        self.status.polls += 1
        async with httpx.AsyncClient(
            transport=self.transport, timeout=self.timeout_seconds
        ) as client:
            for attempt in range(self.attempts):
                self.status.last_poll = format_time(int(self.clock() * 1_000_000))
                try:
                    count = await self._attempt(client)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    self.status.failures += 1
                    self.status.last_error = self.describe(exc)
                    wait = _asked_wait(exc)
                    logger.warning(
                        "connector %s: attempt %d failed: %s%s",
                        self.connector.name,
                        attempt + 1,
                        log_failure(exc),
                        f" (the source asks to wait {wait:.0f}s)" if wait is not None else "",
                    )
                    if wait is not None and (attempt >= len(delays) or wait > delays[attempt]):
                        # Retrying sooner than asked would only be refused again (and count
                        # against the limit): give this poll up and resume when allowed.
                        self.resume_at = self.clock() + wait
                        return False
                    if attempt < len(delays):
                        await self.sleep(max(delays[attempt], wait or 0.0))
                    continue
                self.status.events += count
                self.status.last_error = None
                return True
        return False

    async def run(self) -> None:
        """Poll now, then every `poll_interval_seconds`, until cancelled."""
        while True:
            await self.poll_once()
            await self.sleep(self.next_delay())

    def next_delay(self) -> float:
        """Seconds until the next poll: the interval, or longer when the source asked to wait."""
        delay = float(self.connector.poll_interval_seconds)
        if self.resume_at is not None:
            delay = max(delay, self.resume_at - self.clock())
            self.resume_at = None
        return delay


class Scheduler:
    """Runs a set of `ConnectorRunner`s as tasks; `stop` cancels them and waits."""

    def __init__(self) -> None:
        self.runners: dict[str, ConnectorRunner] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    def add(self, key: str, runner: ConnectorRunner) -> None:
        """Register a runner under `key` (e.g. `github` or `github:<owner>`); it starts with
        `start`, or at once if the scheduler is already running."""
        old = self._tasks.pop(key, None)
        if old is not None:
            old.cancel()  # a replaced runner stops at its next await
        self.runners[key] = runner
        if self._running:
            self._start(key)

    def _start(self, key: str) -> None:
        if key not in self._tasks:
            self._tasks[key] = asyncio.create_task(
                self.runners[key].run(), name=f"flux-connector-{key}"
            )

    @property
    def running(self) -> bool:
        """Whether this scheduler runs its runners (in a cluster: on the `connectors` job's
        holder only)."""
        return self._running

    def start(self) -> None:
        self._running = True
        for key in self.runners:
            self._start(key)

    async def remove(self, key: str) -> None:
        self.runners.pop(key, None)
        task = self._tasks.pop(key, None)
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def stop(self) -> None:
        self._running = False
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
