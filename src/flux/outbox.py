"""Outbox: one live connection's outgoing queue, bounded by messages and by bytes.

The fan-out (`flux.live.Live.on_changes`) puts each change's messages on every matching outbox
without awaiting anything; the connection's own sender drains it. A client that does not keep up
must not hold memory without bound, and one change must not be able to close a client that does:

- bounds: `limit` messages and `max_bytes` bytes (the length of their JSON text), whichever is
  reached first;
- a push that finds the outbox at a bound overflows it instead: everything queued is dropped, the
  connection leaves the hub and is closed as a slow consumer;
- one change's messages go in whole, in one `push_change`, and the fan-out checks the bounds once
  per round (one commit's changes) against what the outbox held before the round: so a change
  larger than the bounds (an event with 10,001 properties) still reaches a client whose outbox was
  drained, and the changes committed with it follow it;
- a snapshot or replay `feed`s the outbox from an iterator, taking its next group only when there
  is room: it is produced at the pace the client reads, never built whole;
- while a subscription replays, live messages wait in `staging`, bounded the same way.

The sender marks `busy` around each send and counts `sent`: `Live`'s watchdog closes a connection
whose send made no progress for `FLUX_LIVE_SEND_TIMEOUT_SECONDS` (`stall`).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterable

from flux.auth import ANONYMOUS, Credential

# A queued message: (resume version or None, type, JSON text). Encoded once, shared by every
# outbox. The resume version is set only on a message after which a client has everything up to
# that version: the last message of a change (an update sends one message per property) and
# `subscribed`. SSE turns it into the event `id`, so a Last-Event-ID resume never skips the rest
# of a half-received change.
Message = tuple[int | None, str, str]

DEFAULT_MAX_BYTES = 4 * 1024 * 1024
YIELD_EVERY = 256  # groups a feed queues before it lets other tasks run


def size_of(messages: Iterable[Message]) -> int:
    """What messages count against an outbox's byte bound: the length of their JSON text."""
    return sum(len(text) for _, _, text in messages)


class Outbox:
    """One live connection's outgoing side: a bounded queue drained by the connection's sender."""

    __slots__ = (
        "messages",
        "size",
        "limit",
        "max_bytes",
        "wake",
        "room",
        "finished",
        "overflowed",
        "reason",
        "staging",
        "staged_size",
        "closed",
        "done",
        "on_overflow",
        "credential",
        "round",
        "busy",
        "sent",
        "mark",
        "since",
    )

    def __init__(
        self,
        limit: int,
        credential: Credential = ANONYMOUS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.credential = credential  # whose private namespaces this connection may read
        self.messages: deque[Message] = deque()
        self.size = 0  # bytes in `messages`
        self.limit = limit
        self.max_bytes = max_bytes
        self.wake = asyncio.Event()  # set when there is something for the sender
        self.room = asyncio.Event()  # set when the sender took messages (or the outbox ended)
        # Set once the outbox ends: what a connection's watcher waits on (not `room`, which
        # the sender sets at every take: a task woken per delivery for nothing).
        self.finished = asyncio.Event()
        self.overflowed = False  # ended as a slow consumer (over a bound, or a send timed out)
        self.reason = ""  # why, when it overflowed
        self.staging: list[Message] | None = None
        self.staged_size = 0
        self.closed = False
        self.done = False  # overflowed or closed (one attribute for the fan-out to check)
        self.on_overflow: Callable[[], None] | None = None
        self.round = 0  # the last fan-out round that found the outbox under its bounds
        self.busy = False  # the sender is in a send
        self.sent = 0  # sends completed
        self.mark = 0  # `sent` when the watchdog last saw progress ...
        self.since = 0.0  # ... and when

    @property
    def ended(self) -> bool:
        return self.overflowed or self.closed

    def at_bound(self) -> bool:
        """Whether the queue live messages go to (staging, during a replay) is at a bound."""
        staging = self.staging
        if staging is not None:
            return len(staging) >= self.limit or self.staged_size >= self.max_bytes
        return len(self.messages) >= self.limit or self.size >= self.max_bytes

    def push(self, message: Message) -> None:
        """Queue one message, or overflow when the outbox is already at a bound."""
        if self.done:
            return
        if self.at_bound():
            self._overflow()
            return
        staging = self.staging
        if staging is not None:
            staging.append(message)
            self.staged_size += len(message[2])
            return
        self.messages.append(message)
        self.size += len(message[2])
        self.wake.set()

    def push_change(self, messages: list[Message], size: int, round: int) -> None:
        """Queue one change's messages (`size` bytes) whole. The bounds are checked once per
        fan-out `round`, against what the outbox held when the round began: `round` is the
        last round that found the outbox under them. (The fan-out's inner loop, kept lean:
        one call per matching connection and change; `push_one` for a one-message change.)"""
        if self.done:
            return
        staging = self.staging
        if self.round != round:
            if self.at_bound():
                self._overflow()
                return
            self.round = round
        if staging is None:
            self.messages.extend(messages)
            self.size += size
            self.wake.set()
        else:
            staging.extend(messages)
            self.staged_size += size

    def push_one(self, message: Message, size: int, round: int) -> None:
        """`push_change` for a change of one message (the common case: `append`, not
        `extend`)."""
        if self.done:
            return
        staging = self.staging
        if self.round != round:
            if self.at_bound():
                self._overflow()
                return
            self.round = round
        if staging is None:
            self.messages.append(message)
            self.size += size
            self.wake.set()
        else:
            staging.append(message)
            self.staged_size += size

    def _overflow(self, reason: str | None = None) -> None:
        if reason is None:
            count = len(self.staging) if self.staging is not None else len(self.messages)
            reason = (
                f"more than {self.limit} messages queued"
                if count >= self.limit
                else f"more than {self.max_bytes} bytes queued"
            )
        self.overflowed = True
        self.reason = reason
        self._drop()
        if self.on_overflow is not None:
            self.on_overflow()

    def stall(self, seconds: float) -> None:
        """End the outbox as a slow consumer: a send made no progress for `seconds`."""
        if not self.ended:
            self._overflow(f"a send took more than {seconds:g} s")

    def close(self) -> None:
        self.closed = True
        self._drop()

    def _drop(self) -> None:
        self.done = True
        self.messages.clear()
        self.size = 0
        self.staging = None
        self.staged_size = 0
        self.wake.set()
        self.room.set()
        self.finished.set()

    def begin_staging(self) -> None:
        if self.staging is None:
            self.staging = []
            self.staged_size = 0

    def drop_staged(self, drop: Callable[[Message], bool]) -> None:
        """Drop the staged messages `drop` says are no longer needed."""
        if self.staging:
            kept = [message for message in self.staging if not drop(message)]
            self.staging = kept
            self.staged_size = size_of(kept)

    def end_staging(self, first: Message | None = None) -> None:
        """Queue `first`, then the staged live messages, and go back to queueing directly."""
        staged, self.staging = self.staging, None
        staged_size, self.staged_size = self.staged_size, 0
        if self.ended:
            return
        if first is not None:
            self.messages.append(first)
            self.size += len(first[2])
        if staged:
            self.messages.extend(staged)
            self.size += staged_size
        self.wake.set()

    async def feed(self, groups: Iterable[list[Message]]) -> bool:
        """Queue groups of messages (a group stays whole: one change's messages), bypassing the
        staging list. A group waits for the queue to be under its bounds, and the one after it
        is taken from `groups` only then, so a generator runs at the pace the client reads (one
        group ahead). False once the outbox ended."""
        for count, group in enumerate(groups, 1):
            if len(self.messages) >= self.limit or self.size >= self.max_bytes:
                await self.wait_for_room()
            elif count % YIELD_EVERY == 0:
                await asyncio.sleep(0)  # a fast reader: let the rest of the server run
            if self.ended:
                return False
            self.messages.extend(group)
            self.size += size_of(group)
            self.wake.set()
        return not self.ended

    async def wait_for_room(self, below: int | None = None) -> None:
        """Wait until fewer than `below` messages (the limit by default) and fewer than
        `max_bytes` bytes are queued, or the outbox ended."""
        most = self.limit if below is None else max(below, 1)
        while not self.ended and (len(self.messages) >= most or self.size >= self.max_bytes):
            self.room.clear()
            await self.room.wait()

    async def take(self) -> list[Message]:
        """Wait for messages and take them all (empty when the outbox overflowed or closed)."""
        while not self.messages and not self.ended:
            self.wake.clear()
            await self.wake.wait()
        if self.ended:
            return []
        taken = list(self.messages)
        self.messages.clear()
        self.size = 0
        self.room.set()
        return taken
