"""The clients' methods, declared once. Each endpoint is a builder of flux.client.calls; an
`Endpoint` turns it into a method with the builder's signature and docstring that runs the
call with the client's transport: on `FluxClient` the method returns the result, on
`AsyncFluxClient` an awaitable of it. A type checker sees both (the descriptor's overloads),
so the two clients cannot drift apart: there is one list of methods, here."""

from __future__ import annotations

import abc
import functools
from collections.abc import Awaitable, Callable
from typing import Any, Generic, ParamSpec, TypedDict, TypeVar, overload

import httpx

from flux.client import calls
from flux.client.calls import Call
from flux.client.exchange import Retry
from flux.client.live import DEFAULT_TIMEOUT, DEFAULT_URL, LiveWatch, WatchOptions

P = ParamSpec("P")
T = TypeVar("T")
TransportT = TypeVar("TransportT")


class Endpoint(Generic[P, T]):
    """A method defined by a Call builder (see the module docstring)."""

    def __init__(self, build: Callable[P, Call[T]]) -> None:
        self.build = build
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, client: None, owner: type) -> Endpoint[P, T]: ...
    @overload
    def __get__(self, client: SyncRunner, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, client: AsyncRunner, owner: type) -> Callable[P, Awaitable[T]]: ...
    def __get__(self, client: Any, owner: type) -> Any:
        if client is None:
            return self
        build = self.build
        run = client.run

        @functools.wraps(build)
        def method(*args: P.args, **kwargs: P.kwargs) -> Any:
            return run(build(*args, **kwargs))

        return method


class Endpoints:
    """Every endpoint of the API (docs: each builder's docstring in flux.client.calls)."""

    # events
    publish = Endpoint(calls.publish)
    batch = Endpoint(calls.batch)
    history = Endpoint(calls.history)
    # state
    get = Endpoint(calls.get)
    delete = Endpoint(calls.delete)
    batch_delete = Endpoint(calls.batch_delete)
    changes = Endpoint(calls.changes)
    # coordination
    lease_acquire = Endpoint(calls.lease_acquire)
    lease_renew = Endpoint(calls.lease_renew)
    lease_release = Endpoint(calls.lease_release)
    # server, connectors and sources
    health = Endpoint(calls.health)
    connectors = Endpoint(calls.connectors)
    connector = Endpoint(calls.connector)
    connector_store_token = Endpoint(calls.connector_store_token)
    connector_delete_token = Endpoint(calls.connector_delete_token)
    connector_oauth_url = Endpoint(calls.connector_oauth_url)
    source_add = Endpoint(calls.source_add)
    sources = Endpoint(calls.sources)
    source_show = Endpoint(calls.source_show)
    source_remove = Endpoint(calls.source_remove)
    admin_config = Endpoint(calls.admin_config)
    # namespaces
    namespace_create = Endpoint(calls.namespace_create)
    namespace_show = Endpoint(calls.namespace_show)
    namespace_set_private = Endpoint(calls.namespace_set_private)
    namespace_rotate_token = Endpoint(calls.namespace_rotate_token)
    namespace_delete = Endpoint(calls.namespace_delete)
    # last: the name `list` would hide the builtin for the rest of the class body
    list = Endpoint(calls.list_entities)


class FollowOptions(TypedDict, total=False):
    """`iter_changes()`'s optional arguments: `prefix`, `namespace` and `limit` as for
    `changes()`; `follow=True` goes on polling every `interval` seconds (1 by default) once the
    last page is read."""

    prefix: str | None
    namespace: str | None
    limit: int | None
    follow: bool
    interval: float


class Client(Endpoints, Generic[TransportT], abc.ABC):
    """What both clients hold: the server's address, the tokens and the retry policy.
    `token` is sent as `Authorization: Bearer <token>` on every request (and the WebSocket
    handshake); `admin_token` replaces it on admin writes (PUT /api/admin/config, namespace
    changes). `transport` replaces httpx's for HTTP requests (`httpx.MockTransport`, or
    `httpx.ASGITransport` for the async client); `watch()` always opens a real WebSocket.
    `timeout` is each request's, in seconds; `retry` says when a request is sent again
    (`Retry()`: up to 5 sends when it is safe; `NO_RETRY`: never)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        token: str | None = None,
        admin_token: str | None = None,
        transport: TransportT | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retry: Retry = Retry(),  # noqa: B008 - frozen
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.admin_token = admin_token
        self.retry = retry
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._open(transport, timeout)

    @abc.abstractmethod
    def _open(self, transport: TransportT | None, timeout: float | httpx.Timeout) -> None:
        """Open the client's HTTP connection pool."""

    def _live(self, options: WatchOptions) -> LiveWatch:
        """The LiveWatch of `watch(**options)`, with this client's address and token. Raises
        ValueError for an address that is not http(s) or for both `entity_id` and `prefix`."""
        return LiveWatch(self.base_url, token=self.token, **options)


class SyncRunner(Client[httpx.BaseTransport]):
    """A client whose `run` sends a call and returns its result (FluxClient)."""

    @abc.abstractmethod
    def run(self, call: Call[T], retry: Retry | None = None) -> T:
        """Send `call` (retried as `retry`, the client's policy by default); its result."""


class AsyncRunner(Client[httpx.AsyncBaseTransport]):
    """A client whose `run` is a coroutine (AsyncFluxClient)."""

    @abc.abstractmethod
    async def run(self, call: Call[T], retry: Retry | None = None) -> T:
        """Send `call` (retried as `retry`, the client's policy by default); its result."""
