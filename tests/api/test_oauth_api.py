"""OAuth sign-in (reference §4.11) against a local fake provider: the whole flow, every error of
start and callback in the reference's order, single-use and expiring state, and token refresh
before a poll (reference §10.2)."""

from __future__ import annotations

import base64
import dataclasses
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from conftest import wait_for
from fakegithub import TOKEN, FakeGitHub, repo
from fakeoauth import FakeOAuth
from flux.config import OAuthSettings, Settings
from flux.connectors.oauth import OAuthStates
from flux.credentials import CredentialStore

from .authkit import ADMIN, bearer, register
from .conftest import ClientFactory

KEY = base64.b64encode(bytes(range(32))).decode()
START = "/api/connectors/github/oauth/start"
CALLBACK = "/api/connectors/github/oauth/callback"
BAD_STATE = "Invalid or expired OAuth state (possible CSRF attack)"


def with_github(**changes: Any) -> Mapping[str, OAuthSettings]:
    """The default OAuth settings with the changes to GitHub's app."""
    apps = Settings().oauth
    return {**apps, "github": dataclasses.replace(apps["github"], **changes)}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def provider() -> Iterator[FakeOAuth]:
    fake = FakeOAuth().start()
    fake.access_tokens = [TOKEN]  # what the fake GitHub accepts
    yield fake
    fake.stop()


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    fake.repos = [repo("octo", "hello")]
    yield fake
    fake.stop()


@pytest.fixture
def oauth_client(
    make_client: ClientFactory, provider: FakeOAuth, github: FakeGitHub
) -> Callable[..., TestClient]:
    """An in-process Flux with a credential store, GitHub's OAuth app pointed at the fake
    provider and the connector at the fake GitHub."""

    def make(github_app: Mapping[str, Any] | None = None, **overrides: Any) -> TestClient:
        """`github_app`: changes to GitHub's app (`{"client_id": None}`)."""
        app = {
            "client_id": provider.client_id,
            "client_secret": provider.client_secret,
            "auth_url": provider.authorize_url,
            "token_url": provider.token_url,
            **(github_app or {}),
        }
        values: dict[str, Any] = {
            "encryption_key": KEY,
            "oauth_callback_base_url": "http://localhost",
            "oauth": with_github(**app),
            "github_api_url": github.url,
            "connector_retry_seconds": 0.05,
            "directory_interval_seconds": 0,
            **overrides,
        }
        return make_client(**values)

    return make


def app_of(client: TestClient) -> Any:
    return client.app


def store_of(client: TestClient) -> CredentialStore:
    store: CredentialStore = app_of(client).state.server.credentials
    return store


def authorize(client: TestClient, headers: dict[str, str] | None = None) -> str:
    """Start a sign-in and let the fake provider approve it: the callback URL it sends the
    browser back to."""
    start = client.get(START, headers=headers, follow_redirects=False)
    assert start.status_code == 307, start.text
    back = httpx.get(start.headers["location"], follow_redirects=False)
    assert back.status_code == 302, back.text
    callback: str = back.headers["location"]
    assert callback.startswith(f"http://localhost{CALLBACK}?")
    return callback


def show(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = client.get("/api/connectors/github", headers=headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_start_redirects_to_the_provider(
    oauth_client: Callable[..., TestClient], provider: FakeOAuth
) -> None:
    client = oauth_client()
    response = client.get(START, follow_redirects=False)
    assert response.status_code == 307
    assert response.headers["cache-control"] == "no-store"
    location = response.headers["location"]
    assert location.startswith(provider.authorize_url + "?client_id=flux-client&redirect_uri=")
    assert "&scope=repo%20read%3Auser&state=" in location
    query = parse_qs(urlsplit(location).query)
    assert query["redirect_uri"] == [f"http://localhost{CALLBACK}"]
    assert query["response_type"] == ["code"]
    assert list(query) == ["client_id", "redirect_uri", "scope", "state", "response_type"]
    assert len(app_of(client).state.oauth_states) == 1


def test_full_flow_stores_the_tokens_encrypted_and_the_connector_polls(
    oauth_client: Callable[..., TestClient],
    provider: FakeOAuth,
    github: FakeGitHub,
    data_dir: Path,
) -> None:
    client = oauth_client()
    response = client.get(authorize(client))
    assert response.status_code == 200, response.text
    assert response.json() == {
        "success": True,
        "message": "Successfully connected github",
        "connector": "github",
    }
    (exchange,) = provider.token_requests
    assert exchange["grant_type"] == "authorization_code"
    assert exchange["redirect_uri"] == f"http://localhost{CALLBACK}"
    assert (exchange["client_id"], exchange["client_secret"]) == ("flux-client", "flux-secret")
    # The connector started with the access token: the fake GitHub's data became entities.
    wait_for(
        what="the repository entity",
        check=lambda: client.get("/api/state/entities/github/repo/octo/hello").status_code == 200,
    )
    assert any(h.get("authorization") == f"Bearer {TOKEN}" for _, h in github.requests)
    detail = wait_for(what="a successful poll", check=lambda: (d := show(client))["events"] and d)
    assert detail["status"] == "configured" and detail["last_error"] is None
    # Stored encrypted: the access and refresh tokens are on disk only sealed.
    store = store_of(client)
    record = store.record("default", "github")
    assert record.access_token == TOKEN and record.refresh_token in provider.refresh_tokens
    assert record.expires_at is not None
    raw = (data_dir / "credentials.db").read_bytes()
    assert TOKEN.encode() not in raw and record.refresh_token.encode() not in raw
    with sqlite3.connect(data_dir / "credentials.db") as db:
        row = db.execute(
            "SELECT refresh_token, refresh_token_nonce, expires_at FROM credentials"
        ).fetchone()
    assert row[0] and row[1] and row[2].endswith("Z")


def test_start_errors_in_order(
    oauth_client: Callable[..., TestClient], make_client: ClientFactory
) -> None:
    # No credential store: the routes do not exist (404, saying why).
    bare = make_client(oauth=with_github(client_id="id", client_secret="s"))
    for path in (START, CALLBACK + "?code=c&state=s", "/api/connectors/nope/oauth/start"):
        response = bare.get(path, follow_redirects=False)
        assert response.status_code == 404, path
        assert "FLUX_ENCRYPTION_KEY not set" in response.json()["error"]
    bare.__exit__(None, None, None)
    # Unknown connector (404) before auth (401) before configuration (500).
    client = oauth_client(
        auth_enabled=True,
        admin_token=ADMIN,
        github_app={"client_id": None},
    )
    response = client.get("/api/connectors/nope/oauth/start")
    assert response.status_code == 404
    assert response.json() == {"error": "Connector 'nope' not found"}
    response = client.get(START)
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token: Authorization token not provided"}
    assert client.get(START, headers=bearer("not-a-namespace-token")).status_code == 401
    assert client.get(START, headers=bearer(ADMIN)).status_code == 403
    alice = bearer(register(client, "alice"))
    response = client.get(START, headers=alice)
    assert response.status_code == 500
    assert response.json() == {
        "error": "OAuth not configured for connector 'github'. Set FLUX_OAUTH_GITHUB_CLIENT_ID "
        "and FLUX_OAUTH_GITHUB_CLIENT_SECRET environment variables."
    }
    assert client.get("/api/connectors/gmail/oauth/start", headers=alice).json() == {
        "error": "OAuth not configured for connector 'gmail'. Set FLUX_OAUTH_GMAIL_CLIENT_ID "
        "and FLUX_OAUTH_GMAIL_CLIENT_SECRET environment variables."
    }


def test_callback_errors_in_order(
    oauth_client: Callable[..., TestClient], provider: FakeOAuth, data_dir: Path
) -> None:
    client = oauth_client()
    states: OAuthStates = app_of(client).state.oauth_states

    def callback(path: str = CALLBACK, **params: str) -> tuple[int, str]:
        response = client.get(path, params=params)
        return response.status_code, response.json()["error"]

    # Each case also breaks every later check, so it shows which check comes first.
    assert callback(error="access_denied", error_description="The user said no") == (
        400,
        "OAuth authorization failed: access_denied - The user said no",
    )
    assert callback(error="access_denied") == (
        400,
        "OAuth authorization failed: access_denied - Unknown error",
    )
    assert callback(state="x") == (400, "Missing 'code' parameter")
    assert callback(code="c") == (400, "Missing 'state' parameter")
    assert callback(code="c", state="never-issued") == (401, BAD_STATE)
    gmail_state = states.issue("gmail", "default")
    assert callback(code="c", state=gmail_state) == (400, "Connector name mismatch")
    assert callback(code="c", state=gmail_state) == (401, BAD_STATE)  # it was used up
    assert callback(
        "/api/connectors/gmail/oauth/callback", code="c", state=states.issue("gmail", "default")
    ) == (500, "OAuth not configured for connector 'gmail'")
    # The provider refuses the code (unknown to it): 502, and nothing is stored.
    status, error = callback(code="forged", state=states.issue("github", "default"))
    assert status == 502
    assert error == ("Failed to exchange authorization code: invalid_grant - unknown or used code")
    # GitHub's way of refusing: 200 with an `error` field.
    provider.error_with_200 = True
    status, error = callback(code="forged", state=states.issue("github", "default"))
    assert (status, error.split(":")[0]) == (502, "Failed to exchange authorization code")
    provider.error_with_200 = False
    provider.token_status = 503
    status, error = callback(code="c", state=states.issue("github", "default"))
    assert (status, error) == (502, "Failed to exchange authorization code: server_error - forced")
    provider.token_status = None
    assert not store_of(client).has("default", "github")
    # The store fails last: 500.
    callback_url = authorize(client)
    store_of(client).close()
    response = client.get(callback_url)
    assert response.status_code == 500
    assert response.json()["error"].startswith("Failed to store credentials: credential store:")


def test_the_provider_denying_reaches_the_callback(
    oauth_client: Callable[..., TestClient], provider: FakeOAuth
) -> None:
    client = oauth_client()
    provider.deny = True
    response = client.get(authorize(client))
    assert response.status_code == 400
    assert response.json() == {
        "error": "OAuth authorization failed: access_denied - The user said no"
    }


def test_a_state_is_single_use(oauth_client: Callable[..., TestClient]) -> None:
    client = oauth_client()
    callback = authorize(client)
    assert client.get(callback).status_code == 200
    response = client.get(callback)
    assert response.status_code == 401
    assert response.json() == {"error": BAD_STATE}


def test_a_state_expires_after_600_seconds(oauth_client: Callable[..., TestClient]) -> None:
    client = oauth_client()
    clock = Clock()
    app_of(client).state.oauth_states = OAuthStates(clock=clock)
    late, in_time = authorize(client), authorize(client)
    clock.now += 600
    response = client.get(late)
    assert (response.status_code, response.json()) == (401, {"error": BAD_STATE})
    fresh = authorize(client)
    clock.now += 599
    assert client.get(fresh).status_code == 200
    assert client.get(in_time).status_code == 401  # 1199 s old


def test_with_auth_on_the_sign_in_belongs_to_the_callers_namespace(
    oauth_client: Callable[..., TestClient], github: FakeGitHub
) -> None:
    client = oauth_client(auth_enabled=True, admin_token=ADMIN)
    alice = bearer(register(client, "alice"))
    bob = bearer(register(client, "bob"))
    response = client.get(authorize(client, alice))  # the callback itself carries no bearer
    assert response.status_code == 200, response.text
    assert show(client, alice)["status"] == "configured"
    assert show(client, bob)["status"] == "not_configured"
    wait_for(
        what="alice's repository entity",
        check=lambda: (
            client.get("/api/state/entities/alice/github/repo/octo/hello").status_code == 200
        ),
    )
    store = store_of(client)
    assert store.owners("github") == ["namespace:alice"]
    # A namespace deleted between start and callback gets nothing: its state is dead.
    callback = authorize(client, bob)
    deleted = client.delete("/api/namespaces/bob", headers=bearer(ADMIN))
    assert deleted.status_code in (200, 204), deleted.text
    response = client.get(callback)
    assert (response.status_code, response.json()) == (401, {"error": BAD_STATE})
    assert store.owners("github") == ["namespace:alice"]


def test_an_expiring_token_is_refreshed_before_the_poll(
    oauth_client: Callable[..., TestClient], provider: FakeOAuth, github: FakeGitHub
) -> None:
    provider.access_tokens = ["expiring-token", TOKEN]  # the sign-in's, then the refresh's
    provider.expires_in = 30  # within the 90 s margin: refresh at once
    client = oauth_client()
    assert client.get(authorize(client)).status_code == 200
    wait_for(what="a successful poll", check=lambda: show(client)["events"])
    grants = [r["grant_type"] for r in provider.token_requests]
    assert grants[:2] == ["authorization_code", "refresh_token"]
    refresh = provider.token_requests[1]
    assert (refresh["client_id"], refresh["client_secret"]) == ("flux-client", "flux-secret")
    assert all(h.get("authorization") == f"Bearer {TOKEN}" for _, h in github.requests)
    record = store_of(client).record("default", "github")
    assert record.access_token == TOKEN
    # The rotated refresh token was persisted in place of the one used.
    assert record.refresh_token in provider.refresh_tokens
    assert record.refresh_token != refresh["refresh_token"]


def test_a_refresh_token_that_is_not_rotated_is_kept(
    oauth_client: Callable[..., TestClient], provider: FakeOAuth
) -> None:
    provider.access_tokens = ["expiring-token", TOKEN]
    provider.expires_in = 30
    provider.rotate = False
    client = oauth_client()
    assert client.get(authorize(client)).status_code == 200
    wait_for(what="a successful poll", check=lambda: show(client)["events"])
    (issued,) = provider.refresh_tokens  # only the sign-in issued one
    record = store_of(client).record("default", "github")
    assert (record.access_token, record.refresh_token) == (TOKEN, issued)


def test_a_failed_refresh_fails_the_poll_with_a_clear_error(
    oauth_client: Callable[..., TestClient], provider: FakeOAuth, github: FakeGitHub
) -> None:
    provider.access_tokens = ["expiring-token"]
    provider.expires_in = 30
    # Revoked from the start: the first poll may begin as soon as the sign-in stored the
    # credential, before the test could revoke it afterwards.
    provider.revoked = True
    client = oauth_client()
    assert client.get(authorize(client)).status_code == 200
    detail = wait_for(what="a failed poll", check=lambda: (d := show(client))["last_error"] and d)
    assert detail["status"] == "error"
    assert detail["last_error"] == (
        "OAuth token refresh failed: invalid_grant - unknown refresh token"
    )
    assert github.requests == []  # the poll stopped before GitHub
    record = store_of(client).record("default", "github")
    assert record.access_token == "expiring-token"  # unchanged
