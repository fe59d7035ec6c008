"""Live changes over the WebSocket (docs/websocket.md): `LiveWatch` follows a subscription,
reconnecting and resuming by version by itself; `AsyncWatch` and `Watch` are what the clients'
`watch()` return: its changes for `async for` and for `for`."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypedDict, cast

from flux import __version__
from flux.client.errors import FluxClientError, FluxConnectionError
from flux.client.types import WatchMessage

DEFAULT_URL = "http://localhost:3000"
DEFAULT_TIMEOUT = 10.0

CHANGE_TYPES = frozenset({"state_update", "entity_deleted"})
# Handshake answers worth retrying after a disconnect (a server restarting behind a proxy).
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def websocket_url(base_url: str) -> str:
    """The WebSocket address of a Flux server: http becomes ws, https wss, plus `/api/ws` (a
    ws:// or wss:// address is taken as it is). Raises ValueError for any other scheme."""
    scheme, sep, rest = base_url.rstrip("/").partition("://")
    ws_scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(scheme.lower())
    if not sep or ws_scheme is None or not rest:
        raise ValueError(f"expected an http:// or https:// address, got {base_url!r}")
    return f"{ws_scheme}://{rest}/api/ws"


class LiveWatch:
    """The live changes of a Flux server, as an async iterator of `(message, text)`: each
    server message decoded, and its raw JSON text.

    Subscribes to `entity_id` (`*`, the default, is every entity) or to `prefix`; `since`
    replays the changes after that version first, `snapshot` sends the current state first.
    After a disconnect or a server restart it reconnects by itself (backoff from 0.1 s up to
    `max_delay`) and subscribes again with `since` = the last version it passed on, so every
    change arrives once, in order; as a safety net it drops any change at or below a version
    already passed on. `on_status(text)` hears about disconnects and reconnects.

    The first connection is not retried: an unreachable server raises `FluxConnectionError`,
    a refused handshake `FluxClientError` (with the HTTP status). An `error` message from the
    server (a subscription it refused) raises `FluxClientError`.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        entity_id: str | None = None,
        prefix: str | None = None,
        since: int | None = None,
        snapshot: bool = False,
        token: str | None = None,
        on_status: Callable[[str], None] | None = None,
        max_delay: float = 5.0,
        open_timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        if entity_id is not None and prefix is not None:
            raise ValueError("give entity_id or prefix, not both")
        self.url = websocket_url(base_url)
        self.filter: dict[str, str] = (
            {"prefix": prefix} if prefix is not None else {"entity_id": entity_id or "*"}
        )
        self.snapshot = snapshot
        self.token = token
        self.on_status = on_status
        self.max_delay = max_delay
        self.open_timeout = open_timeout
        # The highest version passed on. `_keys` holds the changes passed on at that version
        # (an event that set several properties is several messages), or is None when that
        # version is known to be complete (a `subscribed` ack, or the caller's `since`).
        self.version: int | None = since
        self._keys: set[tuple[str, str, str]] | None = None
        self.subscribed = False  # a subscription has been acknowledged (snapshot done)
        self.reconnects = 0

    def subscribe_message(self) -> dict[str, Any]:
        """The subscribe message for the next connection: it resumes where the last one ended."""
        message: dict[str, Any] = {"type": "subscribe", **self.filter}
        if self.version is not None:
            # Resume after the last complete version; an event seen only in part is replayed
            # whole and its messages already passed on are dropped.
            message["since"] = self.version - 1 if self._keys else self.version
        if self.snapshot and not self.subscribed:
            message["snapshot"] = True
        return message

    def matches(self, message: dict[str, Any]) -> bool:
        """Whether a change is about what this watch subscribed to."""
        entity_id = message.get("entity_id")
        if type(entity_id) is not str:
            return False
        if "prefix" in self.filter:
            return entity_id.startswith(self.filter["prefix"])
        wanted = self.filter["entity_id"]
        return wanted == "*" or entity_id == wanted

    def accept(self, message: dict[str, Any]) -> bool:
        """Whether to pass a message on (False: a change already passed on); tracks versions."""
        kind = message.get("type")
        version = message.get("version")
        if type(version) is not int:
            return True
        if kind in CHANGE_TYPES:
            key = (str(kind), str(message.get("entity_id")), str(message.get("property")))
            if self.version is not None and version <= self.version:
                if version < self.version or self._keys is None or key in self._keys:
                    return False
                self._keys.add(key)
                return True
            self.version = version
            self._keys = {key}
        elif kind == "subscribed":
            self.subscribed = True
            if self.version is not None and version < self.version:
                # The server's log ends before what was asked for or already seen: a server
                # with a new data dir, or a `since` from elsewhere. Follow it from where it is.
                self._status(
                    f"the server is at version {version}, before version {self.version}; "
                    f"following it from version {version}"
                )
            self.version = version  # everything up to it has been sent
            self._keys = None
        return True

    def _status(self, text: str) -> None:
        if self.on_status is not None:
            self.on_status(text)

    def __aiter__(self) -> AsyncIterator[tuple[dict[str, Any], str]]:
        return self.messages()

    async def messages(self) -> AsyncGenerator[tuple[dict[str, Any], str], None]:
        """The messages, forever (stop iterating to stop; close the generator to disconnect)."""
        from websockets.asyncio.client import connect
        from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        failures = 0
        while True:
            try:
                ws = await connect(
                    self.url,
                    additional_headers=headers,
                    compression=None,  # small messages; deflate would only cost the server CPU
                    max_size=None,  # a snapshot of a large entity is one message
                    open_timeout=self.open_timeout,
                    user_agent_header=f"flux/{__version__} (watch)",
                )
            except InvalidStatus as exc:
                status = exc.response.status_code
                if not self.reconnects or status not in RETRY_STATUSES:
                    raise FluxClientError(
                        status, f"the server refused the WebSocket connection at {self.url}"
                    ) from None
                reason = f"the server answered HTTP {status}"
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                reason = _reason(exc)
                if not self.reconnects:
                    raise FluxConnectionError(self.url, reason) from None
            else:
                if self.reconnects:
                    self._status(f"reconnected to {self.url}")
                try:
                    async with ws:
                        await ws.send(json.dumps(self.subscribe_message(), ensure_ascii=False))
                        # Until `subscribed`, changes are held back: a new connection receives
                        # every change until its subscription is in place (the original's
                        # rule), so the replay may follow newer changes. Sorted by version and
                        # filtered, they come out once and in order.
                        pending: list[tuple[dict[str, Any], str]] | None = []
                        while True:
                            data = await ws.recv()
                            text = data if isinstance(data, str) else data.decode()
                            message = json.loads(text)
                            if type(message) is not dict:
                                continue
                            kind = message.get("type")
                            if kind == "error":
                                raise FluxClientError(
                                    None, f"the server refused: {message.get('error')}"
                                )
                            if pending is not None and kind in CHANGE_TYPES:
                                if self.matches(message):
                                    pending.append((message, text))
                                continue
                            if pending is not None and kind == "subscribed":
                                pending.sort(key=_version_of)
                                for held, held_text in pending:
                                    if self.accept(held):
                                        yield held, held_text
                                pending = None
                                failures = 0
                            if not self.accept(message):
                                continue
                            yield message, text
                except ConnectionClosed as exc:
                    reason = _close_reason(exc)
                except (OSError, TimeoutError) as exc:
                    reason = _reason(exc)
                except ValueError:
                    reason = "the server sent a message that is not JSON"
            failures += 1
            self.reconnects += 1
            delay = min(self.max_delay, 0.1 * 2 ** min(failures - 1, 10))
            delay *= random.uniform(0.8, 1.0)
            after = f", resuming after version {self.version}" if self.version is not None else ""
            self._status(f"{reason}; reconnecting in {delay:.1f} s{after}")
            await asyncio.sleep(delay)


def _version_of(item: tuple[dict[str, Any], str]) -> int:
    version = item[0].get("version")
    return version if type(version) is int else 0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    text = str(exc).strip()
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    return text or type(exc).__name__


def _close_reason(exc: Exception) -> str:
    rcvd = getattr(exc, "rcvd", None)
    if rcvd is None:
        return "connection lost"
    reason = f": {rcvd.reason}" if rcvd.reason else ""
    return f"closed by the server (code {rcvd.code}{reason})"


# -- watch() -----------------------------------------------------------------------------------

# What watch() passes on: changes, snapshots, and the two messages that say where the stream
# stands (`subscribed`: everything up to its version was sent; `resync`: rebuild from the
# snapshots that follow). Metrics, pongs and other answers are left out.
WATCHED = frozenset({"state_update", "entity_deleted", "snapshot", "subscribed", "resync"})


class WatchOptions(TypedDict, total=False):
    """`watch()`'s arguments (all optional, by keyword).

    - `entity_id`: one entity (`"*"`: every entity, the default), or `prefix`: the entities
      whose id starts with it;
    - `since`: first the changes after this version (a version you saved: `Watch.version`);
      `snapshot=True`: first the current state, one `snapshot` message per entity;
    - `on_status(text)`: hears of disconnects and reconnects; `max_delay`: the longest wait
      between reconnection attempts (seconds, 5 by default)."""

    entity_id: str | None
    prefix: str | None
    since: int | None
    snapshot: bool
    on_status: Callable[[str], None] | None
    max_delay: float


class AsyncWatch:
    """The messages of a subscription, for `async for` (see `WatchOptions` and
    docs/sdk.md#watching-changes): each change once and in version order, across disconnects
    and server restarts (it reconnects and resumes after `version`, the last version passed
    on). Close it (`aclose()`, or `async with`) to disconnect."""

    def __init__(self, live: LiveWatch) -> None:
        self.live = live
        self._messages = live.messages()

    @property
    def version(self) -> int | None:
        """The last version passed on: every change up to it has been (save it to resume with
        `since` later)."""
        return self.live.version

    def __aiter__(self) -> AsyncWatch:
        return self

    async def __anext__(self) -> WatchMessage:
        while True:
            message, _ = await self._messages.__anext__()
            if message.get("type") in WATCHED:
                return cast(WatchMessage, message)

    async def aclose(self) -> None:
        await self._messages.aclose()

    async def __aenter__(self) -> AsyncWatch:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class Watch:
    """`AsyncWatch` for `for`: each `next()` runs the watch on an event loop of its own until
    the next message. Between two `next()` calls nothing reads the connection; a consumer that
    stays away long enough to be dropped by the server (a slow consumer, or pings unanswered
    for FLUX_WS_PING_INTERVAL_SECONDS plus FLUX_WS_PING_TIMEOUT_SECONDS) is reconnected and
    resumed from `version` at the next call, so nothing is missed. Not for use inside a running
    event loop (use AsyncFluxClient there). Close it (`close()`, or `with`) to disconnect."""

    def __init__(self, live: LiveWatch) -> None:
        self._watch = AsyncWatch(live)
        self._runner: asyncio.Runner | None = asyncio.Runner()

    @property
    def version(self) -> int | None:
        """As `AsyncWatch.version`."""
        return self._watch.version

    def __iter__(self) -> Watch:
        return self

    def __next__(self) -> WatchMessage:
        if self._runner is None:
            raise StopIteration
        try:
            return self._runner.run(self._next())
        except StopAsyncIteration:
            raise StopIteration from None

    async def _next(self) -> WatchMessage:
        return await self._watch.__anext__()

    def close(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            try:
                runner.run(self._watch.aclose())
            finally:
                runner.close()

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
