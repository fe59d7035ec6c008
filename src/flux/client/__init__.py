"""The Python SDK: `FluxClient` (sync) and `AsyncFluxClient` (async), with the same methods,
one per endpoint of the HTTP API, plus `watch()` (live changes over the WebSocket), `claim()`
(a lease held for a block) and `iter_changes()`. docs/sdk.md is the guide.

    with FluxClient("http://localhost:3000") as flux:
        flux.publish("sensors", "agent-01", "dawn-coral/sensor-01", {"temperature": 22.5})
        flux.get("dawn-coral/sensor-01")["properties"]   # {'temperature': 22.5}

    async with AsyncFluxClient("http://localhost:3000") as flux:
        await flux.publish("sensors", "agent-01", "dawn-coral/sensor-01", {"temperature": 22.5})

The package's modules, from the bottom: `errors` and `types` (what comes back), `calls` (each
endpoint's request and answer, no I/O), `exchange` (sending again when safe, no I/O), `live`
(the WebSocket), `claims`, `endpoints` (the list of methods), then `sync` and `aio`, which only
move bytes.

Every failure raises `FluxClientError` (flux.client.errors has the tree). Pass an `httpx`
transport (e.g. `httpx.MockTransport`, or `httpx.ASGITransport(app)` to the async client) to
test without sockets.
"""

from flux.client.aio import AsyncFluxClient
from flux.client.calls import Call, entity_path, make_event, path_segment
from flux.client.claims import AsyncClaim, Claim, ClaimOptions
from flux.client.endpoints import FollowOptions
from flux.client.errors import (
    FluxClientError,
    FluxConflict,
    FluxConnectionError,
    FluxNotFound,
    FluxResync,
    FluxTimeoutError,
    FluxUnavailable,
    error_of,
)
from flux.client.exchange import NO_RETRY, Retry
from flux.client.live import (
    DEFAULT_TIMEOUT,
    DEFAULT_URL,
    AsyncWatch,
    LiveWatch,
    Watch,
    WatchOptions,
    websocket_url,
)
from flux.client.sync import FluxClient
from flux.client.types import (
    Accepted,
    BatchDeleted,
    BatchItem,
    BatchResult,
    Changes,
    Deleted,
    DeletedRef,
    Entity,
    Health,
    HistoryEvent,
    JSONList,
    JSONObject,
    Lease,
    LeaseReleased,
    Namespace,
    NamespaceToken,
    WatchMessage,
)

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_URL",
    "NO_RETRY",
    "Accepted",
    "AsyncClaim",
    "AsyncFluxClient",
    "AsyncWatch",
    "BatchDeleted",
    "BatchItem",
    "BatchResult",
    "Call",
    "Changes",
    "Claim",
    "ClaimOptions",
    "Deleted",
    "DeletedRef",
    "Entity",
    "FluxClient",
    "FluxClientError",
    "FluxConflict",
    "FluxConnectionError",
    "FluxNotFound",
    "FluxResync",
    "FluxTimeoutError",
    "FluxUnavailable",
    "FollowOptions",
    "Health",
    "HistoryEvent",
    "JSONList",
    "JSONObject",
    "Lease",
    "LeaseReleased",
    "LiveWatch",
    "Namespace",
    "NamespaceToken",
    "Retry",
    "Watch",
    "WatchMessage",
    "WatchOptions",
    "entity_path",
    "error_of",
    "make_event",
    "path_segment",
    "websocket_url",
]
