"""A key-value bucket followed in memory: `BucketMirror`.

The mirror watches every key of the bucket (an ordered consumer: nats-py re-creates it after a
reconnect) and hands each change to `apply(key, value)` (value None: the key was deleted or
purged), in the bucket's order. `offer` is the one door for both the watcher and a local
write: a key's change applies only when its revision is above the one the key shows, so the
watcher's echo of a local write, or a stale change delivered after a newer local one, is a
no-op.

`catch_up` answers "has this node seen everything the bucket had when I asked?": it reads the
bucket's last revision (one JetStream API request) and waits until the watcher has delivered
it. Callers use it on a miss (an unknown token, a missing credential), never on the hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

import nats.errors
from nats.js.kv import KeyValue

from flux.errors import LogUnavailable

logger = logging.getLogger("flux.shared")

T = TypeVar("T")

_DELETED = ("DEL", "PURGE")

# Applies one key's change to an in-memory index (value None: the key is gone).
Apply = Callable[[str, bytes | None], Awaitable[None]]


class BucketMirror:
    def __init__(self, kv: KeyValue, name: str, apply: Apply, *, timeout: float = 10.0) -> None:
        """Follows the bucket `kv` (named `name`, for messages) into `apply`; nothing happens
        until `start`. `timeout` bounds the initial load and a catch-up."""
        self.kv = kv
        self.name = name
        self.timeout = timeout
        self._apply = apply
        self._revisions: dict[str, int] = {}
        self._seen = 0  # the highest revision the watcher has delivered
        self._advanced = asyncio.Condition()
        self._watcher: KeyValue.KeyWatcher | None = None
        self._task: asyncio.Task[None] | None = None
        # `catch_up` rounds: the one callers join next, and the task that runs them.
        self._waiting: asyncio.Future[None] | None = None
        self._rounds: asyncio.Task[None] | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        """Apply every key the bucket holds, then follow its changes. Raises LogUnavailable
        when NATS does not answer."""
        self.loop = asyncio.get_running_loop()
        try:
            watcher = await self.kv.watchall()
            while (entry := await watcher.updates(timeout=self.timeout)) is not None:  # type: ignore[no-untyped-call]
                await self._take(entry)
        except (TimeoutError, nats.errors.Error) as exc:
            raise LogUnavailable(f"cluster state unavailable: bucket {self.name}: {exc}") from exc
        self._watcher = watcher
        self._task = asyncio.create_task(self._follow(watcher), name=f"flux-watch-{self.name}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                await self._take(entry)

    async def _take(self, entry: KeyValue.Entry) -> None:
        value = None if entry.operation in _DELETED else entry.value
        try:
            await self.offer(entry.key, value, entry.revision or 0)
        except Exception:
            # One value that does not apply must not stop the node following the others.
            logger.exception("bucket %s: cannot apply key %s", self.name, entry.key)
        finally:
            async with self._advanced:
                self._seen = max(self._seen, entry.revision or 0)
                self._advanced.notify_all()

    async def offer(self, key: str, value: bytes | None, revision: int) -> bool:
        """Apply a key's change at `revision` unless the key already shows that revision or a
        later one; True when it was applied."""
        if revision <= self._revisions.get(key, 0):
            return False
        self._revisions[key] = revision
        await self._apply(key, value)
        return True

    def revision(self, key: str) -> int:
        """The revision `key` shows here (0: never seen)."""
        return self._revisions.get(key, 0)

    async def catch_up(self) -> None:
        """Wait until the watcher has delivered everything the bucket holds now. Raises
        LogUnavailable when NATS does not answer in time.

        Concurrent callers share rounds: a caller joins the round that has not asked NATS yet
        (so what was stored before the caller came is included), never one that is already
        asking. A flood of unknown tokens costs at most one request in flight and one waiting,
        not one request each."""
        waiting = self._waiting
        if waiting is None:
            waiting = self._waiting = asyncio.get_running_loop().create_future()
            # Read by the round's runner even when every caller went away (no warning).
            waiting.add_done_callback(lambda f: f.cancelled() or f.exception())
            if self._rounds is None or self._rounds.done():
                self._rounds = asyncio.create_task(self._run_rounds())
        await asyncio.shield(waiting)

    async def _run_rounds(self) -> None:
        while (round_ := self._waiting) is not None:
            self._waiting = None
            try:
                await self._catch_up_once()
            except LogUnavailable as exc:
                round_.set_exception(exc)
            else:
                round_.set_result(None)

    async def _catch_up_once(self) -> None:
        try:
            status = await self.kv.status()
            last = status.stream_info.state.last_seq
            async with self._advanced:
                await asyncio.wait_for(
                    self._advanced.wait_for(lambda: self._seen >= last), self.timeout
                )
        except (TimeoutError, nats.errors.Error) as exc:
            raise LogUnavailable(f"cluster state unavailable: bucket {self.name}: {exc}") from exc

    def blocking(self, work: Coroutine[Any, Any, T]) -> T:
        """Run `work` on the mirror's event loop from a worker thread and wait for it: how
        the synchronous stores (called through `asyncio.to_thread`, like their SQLite twins)
        reach the bucket. Raises what `work` raises; RuntimeError when called on the loop
        itself (it would wait for itself)."""
        loop = self.loop
        if loop is None:
            work.close()
            raise LogUnavailable(f"cluster state unavailable: bucket {self.name} not open")
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None  # a worker thread: the expected case
        if running is loop:
            work.close()
            raise RuntimeError("a shared store's blocking call was made on the event loop")
        done: Future[T] = asyncio.run_coroutine_threadsafe(work, loop)
        return done.result()
