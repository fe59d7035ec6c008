"""The MCP server of Flux: its tools, resources and subscriptions, written once for both
transports (`flux mcp` over stdio, `/mcp` in `flux serve`). Every tool calls Flux through an
`AsyncFluxClient` that a `Binding` hands it for the request, carrying the caller's token, so
a tool does exactly what the HTTP API lets that token do (docs/mcp.md).

Tool results are the API's answers and carry versions. A failed condition (a conditional
publish, a lease that is not the caller's) is a tool error whose text gives the entity's current
version and state, so that a model can decide and retry in one turn.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, contextmanager
from typing import Annotated, Any, Protocol

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, ResourceSecurity
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError, ToolError
from mcp_types import ToolAnnotations
from pydantic import Field

from flux import __version__
from flux.client import (
    AsyncFluxClient,
    FluxClientError,
    FluxConflict,
    FluxNotFound,
    FluxResync,
)
from flux.mcp import subscribing
from flux.mcp.results import (
    Changes,
    Deleted,
    Entities,
    Entity,
    History,
    Lease,
    Published,
    Released,
)
from flux.mcp.subscriptions import Feed
from flux.mcp.uris import ENTITY_TEMPLATE, NAMESPACE_TEMPLATE

INSTRUCTIONS = """\
Flux is shared state for agents: entities (id `namespace/name`) with JSON properties and a
version that grows with every change. `publish` merges properties into an entity; give
`expected_version` (or `if_absent`, or `expected_properties`) to write only if nobody changed it
meanwhile: on a conflict nothing is stored and the error names the current version and state,
so decide and retry. `claim` takes a lease (one holder at a time; renew before it expires,
publish with its token as fencing_token). To follow changes, keep the `next` of
`changes_since` and ask again from it; resources flux://entities/{id} and
flux://namespaces/{namespace} can also be subscribed to."""


class Binding(Protocol):
    """How the tools reach Flux for one MCP request."""

    def client(
        self, ctx: ServerRequestContext[Any, Any]
    ) -> AbstractAsyncContextManager[AsyncFluxClient]:
        """An AsyncFluxClient with the request's credential, for the request's duration."""

    def feed(self, ctx: ServerRequestContext[Any, Any]) -> Feed:
        """A new change feed read with the request's credential (flux.mcp.subscriptions)."""


def conflict_text(exc: FluxConflict) -> str:
    """A failed condition, told so that a model can retry at once: what failed, the entity's
    version and state now, who changed it last, and what to send next."""
    lines = [f"{exc.message}. Nothing was stored."]
    entity = exc.entity_id or "the entity"
    if exc.current is None:
        lines.append(f"{entity} does not exist now (current version 0).")
    else:
        state = json.dumps(exc.current, ensure_ascii=False, sort_keys=True)
        lines.append(f"{entity} is now at version {exc.current_version}: {state}")
    if exc.last_source is not None:
        lines.append(f"Last changed by {exc.last_source!r} at {exc.last_timestamp} (epoch ms).")
    if "lease" in exc.expected or "fencing_token" in exc.expected:
        holder = exc.lease
        if holder is not None:
            lines.append(
                f"The lease is held by {holder.get('owner')!r} (token {holder.get('token')}) "
                f"until {holder.get('expires_at')} (epoch ms)."
            )
        if "fencing_token" in exc.expected:
            lines.append("Your lease is gone: stop acting as its holder; claim for a new token.")
        else:
            lines.append("To take it, claim again once it is released or expired.")
    else:
        lines.append(
            f"To retry, decide from the state above and publish again with "
            f"expected_version={exc.current_version}."
        )
    return "\n".join(lines)


@contextmanager
def tool_errors() -> Iterator[None]:
    """Flux's refusals as tool errors (what the model reads): a failed condition with the
    current state, a changes cursor that is too old with what to do, anything else as the
    server said it (with its HTTP status)."""
    try:
        yield
    except FluxConflict as exc:
        raise ToolError(conflict_text(exc)) from exc
    except FluxResync as exc:
        raise ToolError(
            f"{exc.message}. Read the whole state again (the `list` tool), then call "
            f"changes_since with since={exc.version}."
        ) from exc
    except FluxClientError as exc:
        raise ToolError(str(exc)) from exc


@contextmanager
def resource_errors(uri: str) -> Iterator[None]:
    try:
        yield
    except FluxNotFound as exc:
        raise ResourceNotFoundError(f"{uri}: {exc.message}") from exc
    except FluxClientError as exc:
        raise ResourceError(f"{uri}: {exc}") from exc


# Hints for hosts (which may, say, run reads without asking): reads change nothing; a delete
# destroys; a write to the same entity twice is a new version, so only reads are idempotent.
READ = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)
DESTROY = ToolAnnotations(read_only_hint=False, destructive_hint=True, open_world_hint=False)


def build_server(binding: Binding) -> MCPServer[Any]:
    """The MCP server whose tools and resources reach Flux through `binding`."""
    server: MCPServer[Any] = MCPServer(
        "flux",
        title="Flux",
        description="Shared world state for agents: versions, compare-and-set, leases, changes",
        instructions=INSTRUCTIONS,
        version=__version__,
        # Entity ids are not file paths: `..` or a leading `/` in one is Flux's to judge.
        resource_security=ResourceSecurity(
            reject_path_traversal=False, reject_absolute_paths=False
        ),
        # `subscriptions/listen` is served by flux.mcp.subscribing, with each stream's own
        # credential (the SDK's default handler fans every event out to every stream).
        subscriptions=False,
    )

    @asynccontextmanager
    async def flux(ctx: Context) -> AsyncIterator[AsyncFluxClient]:
        async with binding.client(ctx.request_context) as client:
            yield client

    @server.tool(
        name="publish",
        annotations=WRITE,
        description=(
            "Merge properties into an entity (created if absent). Conditions, all optional: "
            "expected_version (0: must not exist yet), if_absent, expected_properties (null "
            "value: must be absent), fencing_token (the token of a lease from `claim`). On a "
            "failed condition nothing is stored and the error gives the current version and "
            "state. ttl_ms: delete the entity if not updated within it (0 removes the TTL)."
        ),
    )
    async def publish(
        ctx: Context,
        entity_id: Annotated[str, Field(description="`namespace/name`, e.g. `lab/door-1`")],
        properties: Annotated[dict[str, Any], Field(description="Properties to set")],
        expected_version: int | None = None,
        if_absent: bool = False,
        expected_properties: dict[str, Any] | None = None,
        fencing_token: int | None = None,
        ttl_ms: int | None = None,
        stream: str = "mcp",
        source: str = "mcp",
    ) -> Published:
        if if_absent and expected_version not in (None, 0):
            raise ToolError("if_absent means expected_version 0; give one or the other")
        with tool_errors():
            async with flux(ctx) as client:
                accepted = await client.publish(
                    stream,
                    source,
                    entity_id,
                    properties,
                    expected_version=expected_version,
                    if_absent=if_absent,
                    expected_properties=expected_properties,
                    fencing_token=fencing_token,
                    ttl_ms=ttl_ms,
                )
        return {
            "entity_id": entity_id,
            "version": accepted["sequence"],
            "eventId": accepted["eventId"],
            "stream": accepted["stream"],
        }

    @server.tool(
        name="get", annotations=READ, description="One entity: its properties and version."
    )
    async def get(ctx: Context, entity_id: str) -> Entity:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.get(entity_id)

    @server.tool(
        name="list",
        annotations=READ,
        description="The entities whose id starts with `prefix` and/or in `namespace`.",
    )
    async def list_entities(
        ctx: Context, prefix: str | None = None, namespace: str | None = None
    ) -> Entities:
        with tool_errors():
            async with flux(ctx) as client:
                entities = await client.list(prefix=prefix, namespace=namespace)
        return {"entities": entities, "count": len(entities)}

    @server.tool(
        name="history",
        annotations=READ,
        description=(
            "An entity's stored events, newest first. `since`: ISO 8601 time (default: the "
            "last 24 hours); `limit`: 1 to 500."
        ),
    )
    async def history(
        ctx: Context, entity_id: str, since: str | None = None, limit: int | None = None
    ) -> History:
        with tool_errors():
            async with flux(ctx) as client:
                events = await client.history(entity_id, since=since, limit=limit)
        return {"entity_id": entity_id, "events": events}

    @server.tool(
        name="changes_since",
        annotations=READ,
        description=(
            "What changed after version `since` (0: everything), oldest first: the changed "
            "entities as they are now and the deleted ids. Keep `next` and call again with "
            "since=next to follow changes; `more: true` means another page is waiting."
        ),
    )
    async def changes_since(
        ctx: Context,
        since: int = 0,
        prefix: str | None = None,
        namespace: str | None = None,
        limit: int | None = None,
    ) -> Changes:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.changes(since, prefix=prefix, namespace=namespace, limit=limit)

    @server.tool(
        name="delete",
        annotations=DESTROY,
        description="Delete an entity (logged; `deleted: false` if absent).",
    )
    async def delete(ctx: Context, entity_id: str) -> Deleted:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.delete(entity_id)

    @server.tool(
        name="claim",
        annotations=WRITE,
        description=(
            "Take the lease on an entity for `owner`, for ttl_ms. Returns the fencing `token` "
            "(pass it to publish as fencing_token, and to renew/release). Refused while another "
            "owner holds it (the error names the holder and until when)."
        ),
    )
    async def claim(ctx: Context, entity_id: str, owner: str, ttl_ms: int) -> Lease:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.lease_acquire(entity_id, owner, ttl_ms)

    @server.tool(
        name="renew",
        annotations=WRITE,
        description="Extend a held lease to ttl_ms from now. An error means the lease was lost.",
    )
    async def renew(ctx: Context, entity_id: str, owner: str, token: int, ttl_ms: int) -> Lease:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.lease_renew(entity_id, owner, token, ttl_ms)

    @server.tool(name="release", annotations=WRITE, description="Give a held lease back at once.")
    async def release(ctx: Context, entity_id: str, owner: str, token: int) -> Released:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.lease_release(entity_id, owner, token)

    @server.tool(
        name="presence",
        annotations=WRITE,
        description=(
            "Announce presence: set `properties` on an entity (e.g. `agents/<you>`) that lives "
            "as long as you renew the returned lease (renew tool) and is deleted when it "
            "expires or is released."
        ),
    )
    async def presence(
        ctx: Context,
        entity_id: str,
        owner: str,
        ttl_ms: int,
        properties: dict[str, Any] | None = None,
    ) -> Lease:
        with tool_errors():
            async with flux(ctx) as client:
                return await client.lease_acquire(
                    entity_id, owner, ttl_ms, properties=properties or {}, presence=True
                )

    @server.resource(
        ENTITY_TEMPLATE,
        name="entity",
        description="One Flux entity (JSON: id, properties, version, lastUpdated).",
        mime_type="application/json",
    )
    async def entity_resource(entity_id: str, ctx: Context) -> str:
        uri = f"flux://entities/{entity_id}"
        with resource_errors(uri):
            async with flux(ctx) as client:
                return json.dumps(await client.get(entity_id), ensure_ascii=False)

    @server.resource(
        NAMESPACE_TEMPLATE,
        name="namespace",
        description="The entities of a namespace (JSON list), those the caller may read.",
        mime_type="application/json",
    )
    async def namespace_resource(namespace: str, ctx: Context) -> str:
        with resource_errors(f"flux://namespaces/{namespace}"):
            async with flux(ctx) as client:
                entities = await client.list(namespace=namespace)
        return json.dumps(entities, ensure_ascii=False)

    subscribing.install(server, binding.feed)
    return server
