"""OAuth sign-in for connectors (reference §4.11 and §10.2): providers, the pending sign-ins,
the authorize URL, and the token endpoint's answers.

Everything here is pure except `exchange_code` and `refresh_tokens`, which make one request
each through the `httpx.AsyncClient` they are given (as a connector's `fetch` does).

The flow: `/oauth/start` issues a random `state` remembered with the connector and the owner
who asked (`OAuthStates`) and redirects to the provider's authorize URL (`authorize_url`); the
provider sends the browser back to `/oauth/callback` with `code` and `state`; the state is
taken (single use, 600 s at most) and the code exchanged for tokens (`exchange_code`), which the
credential store keeps encrypted. Before a poll, a token that expires within
`REFRESH_MARGIN_SECONDS` is refreshed first (`needs_refresh`, `refresh_tokens`).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx

from flux.catalogue import CONNECTORS
from flux.config import Settings
from flux.credentials import StoredCredential

STATE_TTL_SECONDS = 600.0
SWEEP_EVERY_SECONDS = 300.0
MAX_PENDING = 10_000
REFRESH_MARGIN_SECONDS = 90.0

# Scopes each connector's sign-in asks for: the original's (reference §4.11, `flux.catalogue`).
SCOPES: Mapping[str, tuple[str, ...]] = {
    c.name: c.oauth.scopes for c in CONNECTORS if c.oauth is not None
}


@dataclass(frozen=True)
class OAuthClient:
    """A connector's OAuth app: the client registered with the provider, and its URLs."""

    connector: str
    client_id: str
    client_secret: str = field(repr=False)
    auth_url: str
    token_url: str
    scopes: tuple[str, ...]


def oauth_client(settings: Settings, connector: str) -> OAuthClient | None:
    """The connector's OAuth app from the settings (FLUX_OAUTH_<NAME>_*), or None when its
    client id or secret is not set (or the connector has no sign-in)."""
    app = settings.oauth.get(connector)
    if app is None or connector not in SCOPES or not app.client_id or not app.client_secret:
        return None
    return OAuthClient(
        connector,
        app.client_id,
        app.client_secret,
        app.auth_url,
        app.token_url,
        SCOPES[connector],
    )


def token_url(settings: Settings, connector: str) -> str:
    """Where the connector's tokens are refreshed (set even without a client)."""
    return settings.oauth[connector].token_url


def redirect_uri(callback_base_url: str, connector: str) -> str:
    """`<FLUX_OAUTH_CALLBACK_BASE_URL>/api/connectors/<name>/oauth/callback`."""
    return f"{callback_base_url.rstrip('/')}/api/connectors/{connector}/oauth/callback"


def authorize_url(client: OAuthClient, redirect: str, state: str) -> str:
    """The provider's authorize URL with `client_id`, `redirect_uri`, `scope` (space-joined),
    `state` and `response_type=code`, each percent-encoded (a space is `%20`)."""
    params = {
        "client_id": client.client_id,
        "redirect_uri": redirect,
        "scope": " ".join(client.scopes),
        "state": state,
        "response_type": "code",
    }
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in params.items())
    separator = "&" if "?" in client.auth_url else "?"
    return f"{client.auth_url}{separator}{query}"


# -- pending sign-ins ------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingSignIn:
    """What a state stands for: who started a sign-in for which connector, and when."""

    connector: str
    owner: str
    created_at: float


class OAuthStates:
    """The states of sign-ins in progress, in memory: each is random, single use and good for
    `ttl` seconds. Expired ones are swept every `sweep_every` seconds (checked when a state is
    issued, so no task is needed), and at most `max_pending` are kept (the oldest go first), so
    a flood of `/oauth/start` calls cannot grow memory without bound. `clock` is injected:
    tests move time instead of waiting."""

    def __init__(
        self,
        ttl: float = STATE_TTL_SECONDS,
        *,
        sweep_every: float = SWEEP_EVERY_SECONDS,
        max_pending: int = MAX_PENDING,
        clock: Callable[[], float] = time.monotonic,
        new_state: Callable[[], str] = lambda: secrets.token_urlsafe(32),
    ) -> None:
        self.ttl = ttl
        self.sweep_every = sweep_every
        self.max_pending = max(max_pending, 1)
        self.clock = clock
        self.new_state = new_state
        self._pending: dict[str, PendingSignIn] = {}
        self._last_sweep = clock()

    def __len__(self) -> int:
        return len(self._pending)

    def issue(self, connector: str, owner: str) -> str:
        """A new state for `owner`'s sign-in to `connector`."""
        now = self.clock()
        if now - self._last_sweep >= self.sweep_every:
            self.sweep()
        while len(self._pending) >= self.max_pending:
            del self._pending[next(iter(self._pending))]
        state = self.new_state()
        self._pending[state] = PendingSignIn(connector, owner, now)
        return state

    def take(self, state: str) -> PendingSignIn | None:
        """The sign-in `state` stands for, removed (single use); None when the state is unknown,
        already used or older than `ttl`."""
        pending = self._pending.pop(state, None)
        if pending is None or self._expired(pending, self.clock()):
            return None
        return pending

    def sweep(self) -> int:
        """Forget every expired state; returns how many went."""
        now = self.clock()
        self._last_sweep = now
        expired = [s for s, pending in self._pending.items() if self._expired(pending, now)]
        for state in expired:
            del self._pending[state]
        return len(expired)

    def _expired(self, pending: PendingSignIn, now: float) -> bool:
        return now - pending.created_at >= self.ttl


# -- the token endpoint ----------------------------------------------------------------------


class TokenError(Exception):
    """The token endpoint refused or answered something unusable; the message says why (and
    never holds a token)."""


@dataclass(frozen=True)
class Tokens:
    """A token endpoint's answer: the access token, the refresh token if one was given, and
    when the access token expires (None: the provider did not say)."""

    access_token: str = field(repr=False)
    refresh_token: str | None = field(default=None, repr=False)
    expires_at: datetime | None = None


def _describe_error(body: Mapping[str, Any]) -> str:
    error = str(body.get("error"))
    description = body.get("error_description")
    return f"{error} - {description}" if description else error


def parse_token_response(status: int, content_type: str, text: str, now: datetime) -> Tokens:
    """The tokens in a token endpoint's answer: JSON (asked for with `Accept:
    application/json`), or form-encoded (what GitHub sends when that header is missing).
    `expires_in` (seconds) becomes `expires_at` = now + expires_in. Raises TokenError for an
    HTTP error, an `error` field (GitHub answers a bad code with 200 and one), or no
    `access_token`."""
    body: Mapping[str, Any] | None
    if "application/x-www-form-urlencoded" in content_type:
        body = dict(parse_qsl(text))
    else:
        try:
            decoded = json.loads(text)
        except ValueError:
            decoded = None
        body = decoded if isinstance(decoded, dict) else None
    if body is not None and body.get("error"):
        raise TokenError(_describe_error(body))
    if not 200 <= status < 300:
        raise TokenError(f"the token endpoint answered HTTP {status}")
    if body is None:
        raise TokenError("the token endpoint did not answer with JSON")
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise TokenError("the token endpoint's answer has no access_token")
    refresh = body.get("refresh_token")
    expires_at = None
    expires_in = body.get("expires_in")
    if expires_in is not None and not isinstance(expires_in, bool):
        try:
            expires_at = now + timedelta(seconds=float(expires_in))
        except (TypeError, ValueError, OverflowError):
            raise TokenError(f"expires_in is not a number of seconds: {expires_in!r}") from None
    return Tokens(access, refresh if isinstance(refresh, str) and refresh else None, expires_at)


def needs_refresh(credential: StoredCredential, now: datetime) -> bool:
    """Whether to refresh before using the credential: it has a refresh token and its access
    token expires within `REFRESH_MARGIN_SECONDS` (or has expired)."""
    if credential.refresh_token is None or credential.expires_at is None:
        return False
    return credential.expires_at - now <= timedelta(seconds=REFRESH_MARGIN_SECONDS)


async def _post_form(client: httpx.AsyncClient, url: str, form: dict[str, str]) -> Tokens:
    try:
        response = await client.post(url, data=form, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        reason = str(exc) or type(exc).__name__
        raise TokenError(f"cannot reach the token endpoint: {reason}") from exc
    return parse_token_response(
        response.status_code,
        response.headers.get("content-type", ""),
        response.text,
        datetime.now(UTC),
    )


async def exchange_code(
    http: httpx.AsyncClient, client: OAuthClient, code: str, redirect: str
) -> Tokens:
    """Trade an authorization code for tokens (form POST `grant_type=authorization_code`).
    Raises TokenError."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect,
        "client_id": client.client_id,
        "client_secret": client.client_secret,
    }
    return await _post_form(http, client.token_url, form)


async def refresh_tokens(
    http: httpx.AsyncClient,
    url: str,
    refresh_token: str,
    client: OAuthClient | None,
) -> Tokens:
    """New tokens for a refresh token (form POST `grant_type=refresh_token`, with the client id
    and secret when they are set). A provider that does not rotate refresh tokens returns
    none: the caller keeps the old one. Raises TokenError."""
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if client is not None:
        form["client_id"] = client.client_id
        form["client_secret"] = client.client_secret
    return await _post_form(http, url, form)
