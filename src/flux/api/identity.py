"""Who a request is: the one function that turns an HTTP request, a WebSocket or an SSE stream
into a `flux.auth.Credential`, from its `Authorization` header.

Every path asks `credential_of` (the hot write, the handlers, the admin gate, the namespace,
connector and source endpoints, WebSocket and SSE), or, below ASGI, `credential_in` (the hot
paths of `flux.api.hotpaths`, which have the header's value and no scope), so a header is read
the same way everywhere. It is parsed and hashed once per request and kept in the ASGI scope.
What the credential may do is `flux.permissions`' decision; with auth off nothing but the admin
gate (when an admin token is set) looks at it.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

from flux.auth import ANONYMOUS, Credential

AUTHORIZATION = b"authorization"  # the header's name, as ASGI and uvicorn give it
_KEY = "flux.credential"


def credential_of(scope: MutableMapping[str, Any]) -> Credential:
    """The credential an ASGI `http` or `websocket` scope presents in its `Authorization`
    header (`Bearer <token>`), or, without one, the anonymous credential, which says why it
    has no token. Never raises: a missing or malformed header is a credential without a token,
    refused (401) by whatever check needs one."""
    credential: Credential | None = scope.get(_KEY)
    if credential is None:
        credential = ANONYMOUS
        for name, value in scope["headers"]:
            if name == AUTHORIZATION:
                credential = credential_in(value)
                break
        scope[_KEY] = credential
    return credential


def assume(scope: MutableMapping[str, Any], credential: Credential) -> None:
    """Give a scope a credential already decided: an in-process request made on behalf of
    another request's caller (the MCP tools, flux.api.mcp_sessions), which `credential_of`
    then answers with, whatever the scope's own headers say."""
    scope[_KEY] = credential


def credential_in(value: bytes | None) -> Credential:
    """The credential an `Authorization` header's value presents (None: no such header)."""
    if value is None:
        return ANONYMOUS
    return Credential.from_header(value.decode("latin-1"))
