"""Harness for the SDK's tests (tests/test_client.py).

`Blocking` drives an AsyncFluxClient from a test's thread: its event loop runs in a thread of
its own, so what the client does in the background (a claim's renewals, a watch's connection)
goes on between two calls, as it would in an async program. `AnswerDropper` is a network fault:
a TCP proxy that loses the answer to the first request it passes on."""

from __future__ import annotations

import asyncio
import inspect
import socket
import threading
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from flux.client import AsyncClaim, AsyncFluxClient


class Blocking:
    """An AsyncFluxClient called like a FluxClient: each method's awaitable is run on the
    client's own loop (in a thread) and its result returned; an async iterator, watch or claim
    comes back wrapped the same way."""

    def __init__(self, client: AsyncFluxClient) -> None:
        self.client = client
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def wait(self, awaitable: Awaitable[Any]) -> Any:
        async def run() -> Any:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result()

    def wrap(self, value: Any) -> Any:
        if inspect.isawaitable(value):
            return self.wait(value)
        if isinstance(value, AsyncClaim):
            return BlockingClaim(self, value)
        if isinstance(value, AsyncIterator):
            return BlockingIterator(self, value)
        return value

    def __getattr__(self, name: str) -> Any:
        value = getattr(self.client, name)
        if not callable(value):
            return value
        return lambda *args, **kwargs: self.wrap(value(*args, **kwargs))

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.wait(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingIterator:
    def __init__(self, blocking: Blocking, iterator: AsyncIterator[Any]) -> None:
        self.blocking = blocking
        self.iterator = iterator

    def __iter__(self) -> BlockingIterator:
        return self

    def __next__(self) -> Any:
        try:
            return self.blocking.wait(self.iterator.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.iterator, name)

    def close(self) -> None:
        self.blocking.wait(self.iterator.aclose())  # type: ignore[attr-defined]

    def __enter__(self) -> BlockingIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlockingClaim:
    def __init__(self, blocking: Blocking, claim: AsyncClaim) -> None:
        self.blocking = blocking
        self.claim = claim

    def __getattr__(self, name: str) -> Any:
        return getattr(self.claim, name)

    def __enter__(self) -> BlockingClaim:
        self.blocking.wait(self.claim.__aenter__())
        return self

    def __exit__(self, *exc: Any) -> None:
        self.blocking.wait(self.claim.__aexit__(*exc))


class AnswerDropper:
    """A TCP proxy to a server that passes the first request on and drops its answer (the
    connection breaks as the answer arrives), then passes everything through."""

    def __init__(self, target: str) -> None:
        self.target = ("127.0.0.1", int(target.rsplit(":", 1)[1]))
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.dropped: list[bytes] = []
        threading.Thread(target=self.accept, daemon=True).start()

    def accept(self) -> None:
        while True:
            try:
                near, _ = self.listener.accept()
            except OSError:
                return
            far = socket.create_connection(self.target)
            threading.Thread(target=self.pump, args=(near, far, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(far, near, True), daemon=True).start()

    def pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        try:
            while data := source.recv(65536):
                if answers and not self.dropped:
                    self.dropped.append(data)
                    break
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                end.close()

    def close(self) -> None:
        self.listener.close()
