"""A closed-loop load driver for the peers' own clients (Redis, NATS KV): N workers each run one
operation after another, for a fixed count of operations or a fixed time, and every operation's
latency is kept. It plays the part wrk plays for HTTP: the same concurrency, the same counting.

It runs on uvloop (as the servers do) so that the client side costs as little as it can in
Python; the report gives its CPU use next to the server's.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import Awaitable, Callable, Coroutine
from multiprocessing.connection import Connection
from typing import Any, TypeVar

from bench.client import ClientResult

T = TypeVar("T")

# op(worker, i): run operation number i (counting over all workers) on worker `worker`'s
# connection. It raises on any error: a failed operation is a failed run, not a figure.
Op = Callable[[int, int], Awaitable[None]]


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on a fresh uvloop event loop (asyncio's when uvloop is missing)."""
    try:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    except ImportError:
        return asyncio.run(main)


async def drive(
    op: Op, workers: int, *, count: int | None = None, seconds: float | None = None
) -> ClientResult:
    """Run `op` on `workers` workers until `count` operations are done (all workers together)
    or `seconds` have passed; the operations in flight at the deadline finish and count."""
    if count is None and seconds is None:
        raise ValueError("drive needs a count or a duration")
    next_index = 0
    latencies: list[float] = []
    deadline = None if seconds is None else time.monotonic() + seconds

    async def worker(w: int) -> None:
        nonlocal next_index
        while True:
            if count is not None and next_index >= count:
                return
            if deadline is not None and time.monotonic() >= deadline:
                return
            i = next_index
            next_index += 1
            sent = time.monotonic()
            await op(w, i)
            latencies.append((time.monotonic() - sent) * 1000)

    cpu0 = time.process_time()
    t0 = time.monotonic()
    await asyncio.gather(*(worker(w) for w in range(workers)))
    elapsed = time.monotonic() - t0
    return ClientResult(len(latencies), elapsed, time.process_time() - cpu0, latencies)


def in_processes(run: Callable[[int], ClientResult], processes: int) -> ClientResult:
    """`run(k)` in `processes` forked processes at once (k = 0..processes-1), results merged:
    a Python client tops out at about one core, and a server written in C or Go can answer more
    than one such client sends. Forked, so the children share the work already encoded."""
    if processes == 1:
        return run(0)
    ctx = multiprocessing.get_context("fork")
    pipes = []
    children = []
    for k in range(processes):
        parent_end, child_end = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child, args=(run, k, child_end), daemon=True)
        child.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(child)
    finished = False
    try:
        results = []
        for pipe in pipes:
            try:
                outcome = pipe.recv()
            except EOFError:
                raise RuntimeError("a load process died without a result") from None
            if isinstance(outcome, BaseException):
                raise RuntimeError(f"load process failed: {outcome!r}") from outcome
            results.append(outcome)
        finished = True
    finally:
        for child in children:
            if finished:
                child.join(5)
            if child.is_alive():  # interrupted or failed: no waiting for the others
                child.kill()
                child.join()
    return ClientResult(
        requests=sum(r.requests for r in results),
        seconds=max(r.seconds for r in results),
        cpu_seconds=sum(r.cpu_seconds for r in results),
        latencies_ms=[x for r in results for x in r.latencies_ms],
    )


def _child(run: Callable[[int], ClientResult], k: int, pipe: Connection) -> None:
    try:
        pipe.send(run(k))
    except Exception as exc:  # reported to the parent, which raises
        pipe.send(RuntimeError(f"{type(exc).__name__}: {exc}"))
    finally:  # Ctrl-C (which the parent gets too) ends the child without a report
        pipe.close()
