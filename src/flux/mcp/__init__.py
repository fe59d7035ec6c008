"""Flux as an MCP server (docs/mcp.md): the same tools, resources and subscriptions over stdio
(`flux mcp`, flux.mcp.stdio) and over streamable HTTP at `/mcp` in `flux serve` (flux.mcp.http,
served by flux.api.mcp_sessions).

    uris           the resource addresses and what a subscription to one follows (pure)
    subscriptions  a subscriber and the `Feed` of changes it reads with its own credential
    subscribing    the MCP subscription requests: per session, and per listen stream
    tools          the MCPServer: tools and resources, reaching Flux through a `Binding`
    stdio          `flux mcp`: one AsyncFluxClient for FLUX_URL and FLUX_TOKEN
    http           inside `flux serve`: the caller's client (from flux.api.mcp_sessions), live feeds
"""
