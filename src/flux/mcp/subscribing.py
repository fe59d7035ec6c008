"""The MCP requests that subscribe to resources, served with the subscriber's credential.

Both ways the protocol has are served:

- `resources/subscribe` and `resources/unsubscribe` (protocol versions up to 2025-11-25): the
  subscriptions belong to the MCP session (its connection), and `notifications/resources/updated`
  goes out on the session's standalone stream (stdio itself, or the streamable HTTP GET stream)
  until the session ends;
- `subscriptions/listen` (2026-07-28): one request is one stream of notifications for the
  addresses it names, acknowledged first, until the client closes it.

Each subscription scope reads its changes through a `Feed` made with the credential of the
request that opened it (flux.mcp.subscriptions). An address of an entity the credential may not
read is refused with an error; a namespace's address follows only the entities it may read.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp.shared.subscriptions import SUBSCRIPTION_ID_META_KEY
from mcp_types import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    EmptyResult,
    ResourceUpdatedNotification,
    ResourceUpdatedNotificationParams,
    SubscribeRequestParams,
    SubscriptionFilter,
    SubscriptionsAcknowledgedNotification,
    SubscriptionsAcknowledgedNotificationParams,
    SubscriptionsListenRequestParams,
    SubscriptionsListenResult,
    UnsubscribeRequestParams,
)

from flux.client import FluxClientError
from flux.errors import FluxError
from flux.mcp.subscriptions import Feed, Subscriber
from flux.mcp.uris import Target, target_of

FeedFactory = Callable[[ServerRequestContext[Any, Any]], Feed]

_SESSION_KEY = "flux.subscriber"
FORBIDDEN = -32003  # an address the credential may not read (a server-defined JSON-RPC code)


def _target(uri: str) -> Target:
    try:
        return target_of(uri)
    except ValueError as exc:
        raise MCPError(INVALID_PARAMS, str(exc), data={"uri": uri}) from None


async def _follow(subscriber: Subscriber, target: Target) -> None:
    try:
        await subscriber.add(target)
    except (FluxClientError, FluxError) as exc:  # stdio: the server's answer; HTTP: the check's
        raise MCPError(
            FORBIDDEN, f"cannot subscribe to {target.uri}: {exc}", data={"uri": target.uri}
        ) from None


def install(server: MCPServer[Any], feed_of: FeedFactory) -> None:
    """Serve the subscription requests on `server`, with feeds made by `feed_of`."""
    # MCPServer has no decorator for these requests: they go on its low-level server.
    lowlevel = server._lowlevel_server

    async def subscribe(
        ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams
    ) -> EmptyResult:
        target = _target(params.uri)
        session = ctx.session
        connection = session._connection  # the MCP session; its state outlives the request
        subscriber: Subscriber | None = connection.state.get(_SESSION_KEY)
        if subscriber is None:

            async def notify(uri: str) -> None:
                await session.send_resource_updated(uri)

            subscriber = Subscriber(feed_of(ctx), notify)
            connection.state[_SESSION_KEY] = subscriber
            connection.exit_stack.push_async_callback(subscriber.aclose)
        await _follow(subscriber, target)
        subscriber.start()
        return EmptyResult()

    async def unsubscribe(
        ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams
    ) -> EmptyResult:
        _target(params.uri)
        subscriber: Subscriber | None = ctx.session._connection.state.get(_SESSION_KEY)
        if subscriber is not None:
            await subscriber.remove(params.uri)
        return EmptyResult()

    async def listen(
        ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams
    ) -> SubscriptionsListenResult:
        subscription_id = ctx.request_id
        if subscription_id is None:
            raise MCPError(INVALID_REQUEST, "subscriptions/listen requires a request id")
        meta: dict[str, Any] = {SUBSCRIPTION_ID_META_KEY: subscription_id}
        wanted = params.notifications
        uris = list(dict.fromkeys(wanted.resource_subscriptions or ()))
        targets = [_target(uri) for uri in uris]

        async def notify(uri: str) -> None:
            await ctx.session.send_notification(
                ResourceUpdatedNotification(
                    params=ResourceUpdatedNotificationParams(uri=uri, _meta=meta)
                ),
                related_request_id=subscription_id,
            )

        subscriber = Subscriber(feed_of(ctx), notify)
        try:
            for target in targets:
                await _follow(subscriber, target)
            # Flux's tools, resources and prompts never change: those kinds are honored (as
            # a subscription to an address that never changes is) and never sent.
            honored = SubscriptionFilter(
                tools_list_changed=True if wanted.tools_list_changed else None,
                prompts_list_changed=True if wanted.prompts_list_changed else None,
                resources_list_changed=True if wanted.resources_list_changed else None,
                resource_subscriptions=uris or None,
            )
            await ctx.session.send_notification(
                SubscriptionsAcknowledgedNotification(
                    params=SubscriptionsAcknowledgedNotificationParams(
                        notifications=honored, _meta=meta
                    )
                ),
                related_request_id=subscription_id,
            )
            await subscriber.run()
        finally:
            await subscriber.aclose()
        return SubscriptionsListenResult(_meta=meta)

    lowlevel.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    lowlevel.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)
    lowlevel.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, listen)
