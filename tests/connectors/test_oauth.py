"""flux.connectors.oauth, the pure parts: settings, the authorize URL, the pending sign-ins
(with a fake clock), the token endpoint's answers and when to refresh."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from conftest import free_port
from fakeoauth import FakeOAuth
from flux.config import Settings
from flux.connectors.oauth import (
    OAuthClient,
    OAuthStates,
    TokenError,
    Tokens,
    authorize_url,
    exchange_code,
    needs_refresh,
    oauth_client,
    parse_token_response,
    redirect_uri,
    refresh_tokens,
    token_url,
)
from flux.credentials import StoredCredential

NOW = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_client_needs_both_id_and_secret() -> None:
    assert oauth_client(Settings(), "github") is None
    only_id = Settings.from_env({"FLUX_OAUTH_GITHUB_CLIENT_ID": "id"})
    assert oauth_client(only_id, "github") is None
    only_secret = Settings.from_env({"FLUX_OAUTH_GITHUB_CLIENT_SECRET": "s"})
    assert oauth_client(only_secret, "github") is None
    assert oauth_client(Settings(), "nope") is None
    both = {"FLUX_OAUTH_GITHUB_CLIENT_ID": "id", "FLUX_OAUTH_GITHUB_CLIENT_SECRET": "s3cr3t"}
    client = oauth_client(Settings.from_env(both), "github")
    assert client == OAuthClient(
        "github",
        "id",
        "s3cr3t",
        "https://github.com/login/oauth/authorize",
        "https://github.com/login/oauth/access_token",
        ("repo", "read:user"),
    )
    assert "s3cr3t" not in repr(client)


def test_providers_are_the_references() -> None:
    env = {
        f"FLUX_OAUTH_{name.upper()}_CLIENT_{part}": "x"
        for name in ("github", "gmail", "linkedin", "calendar")
        for part in ("ID", "SECRET")
    }
    settings = Settings.from_env(env)
    gmail, linkedin, calendar = (
        oauth_client(settings, name) for name in ("gmail", "linkedin", "calendar")
    )
    assert gmail is not None and linkedin is not None and calendar is not None
    assert gmail.auth_url == "https://accounts.google.com/o/oauth2/v2/auth"
    assert gmail.token_url == "https://oauth2.googleapis.com/token"
    assert gmail.scopes == ("https://www.googleapis.com/auth/gmail.readonly",)
    assert calendar.scopes == ("https://www.googleapis.com/auth/calendar.readonly",)
    assert linkedin.auth_url == "https://www.linkedin.com/oauth/v2/authorization"
    assert linkedin.token_url == "https://www.linkedin.com/oauth/v2/accessToken"
    assert linkedin.scopes == ("r_liteprofile", "r_emailaddress")
    assert token_url(Settings(), "github") == "https://github.com/login/oauth/access_token"


def test_settings_override_the_provider_urls_and_hide_the_secret() -> None:
    settings = Settings.from_env(
        {
            "FLUX_OAUTH_GITHUB_AUTH_URL": "http://127.0.0.1:9/authorize/",
            "FLUX_OAUTH_GITHUB_TOKEN_URL": "http://127.0.0.1:9/token",
            "FLUX_OAUTH_CALLBACK_BASE_URL": "https://flux.example.com/",
            "FLUX_OAUTH_GITHUB_CLIENT_SECRET": "very-secret",
        }
    )
    assert settings.oauth["github"].auth_url == "http://127.0.0.1:9/authorize"
    assert settings.oauth["github"].token_url == "http://127.0.0.1:9/token"
    assert settings.oauth_callback_base_url == "https://flux.example.com"
    assert "very-secret" not in repr(settings)
    with pytest.raises(ValueError, match="FLUX_OAUTH_GITHUB_TOKEN_URL='ftp://x'"):
        Settings.from_env({"FLUX_OAUTH_GITHUB_TOKEN_URL": "ftp://x"})


def test_redirect_uri() -> None:
    assert (
        redirect_uri("http://localhost:3000/", "github")
        == "http://localhost:3000/api/connectors/github/oauth/callback"
    )


def test_authorize_url_percent_encodes_every_parameter() -> None:
    client = OAuthClient(
        "github", "id/1", "s", "https://p.example/auth", "t", ("repo", "read:user")
    )
    url = authorize_url(client, "http://localhost:3000/api/connectors/github/oauth/callback", "a+b")
    assert url == (
        "https://p.example/auth?client_id=id%2F1"
        "&redirect_uri=http%3A%2F%2Flocalhost%3A3000%2Fapi%2Fconnectors%2Fgithub%2Foauth%2Fcallback"
        "&scope=repo%20read%3Auser&state=a%2Bb&response_type=code"
    )
    query = parse_qs(urlsplit(url).query)
    assert query["scope"] == ["repo read:user"] and query["state"] == ["a+b"]
    with_query = OAuthClient("x", "id", "s", "https://p.example/auth?tenant=1", "t", ("a",))
    assert authorize_url(with_query, "r", "s").startswith(
        "https://p.example/auth?tenant=1&client_id"
    )


# -- pending sign-ins ------------------------------------------------------------------------


def test_a_state_is_random_and_single_use() -> None:
    states = OAuthStates()
    first, second = states.issue("github", "default"), states.issue("github", "default")
    assert first != second and len(first) >= 32
    taken = states.take(first)
    assert taken is not None and (taken.connector, taken.owner) == ("github", "default")
    assert states.take(first) is None  # used
    assert states.take("never-issued") is None
    assert len(states) == 1


def test_a_state_expires_after_600_seconds() -> None:
    clock = Clock()
    states = OAuthStates(clock=clock)
    fresh, stale = states.issue("github", "a"), states.issue("github", "b")
    clock.now += 599.9
    assert states.take(fresh) is not None
    clock.now += 0.1
    assert states.take(stale) is None  # 600 s old
    assert len(states) == 0  # taking it removed it, expired or not


def test_expired_states_are_swept_every_300_seconds() -> None:
    clock = Clock()
    states = OAuthStates(clock=clock)
    for _ in range(3):
        states.issue("github", "default")
    clock.now += 299
    states.issue("github", "default")  # not time to sweep yet
    assert len(states) == 4
    clock.now += 302  # the first three are now 601 s old, the fourth 302 s
    kept = states.issue("github", "default")  # sweeps first
    assert len(states) == 2
    clock.now += 599
    assert states.sweep() == 1  # the fourth
    assert states.take(kept) is not None


def test_at_most_max_pending_states_oldest_dropped() -> None:
    names = iter(["s1", "s2", "s3", "s4"])
    states = OAuthStates(max_pending=3, new_state=lambda: next(names))
    for _ in range(4):
        states.issue("github", "default")
    assert len(states) == 3
    assert states.take("s1") is None
    assert states.take("s4") is not None


# -- token answers ---------------------------------------------------------------------------


def test_parse_a_json_token_answer() -> None:
    text = '{"access_token":"a","refresh_token":"r","expires_in":3600,"token_type":"bearer"}'
    tokens = parse_token_response(200, "application/json", text, NOW)
    assert (tokens.access_token, tokens.refresh_token) == ("a", "r")
    assert tokens.expires_at == NOW + timedelta(seconds=3600)
    assert "'a'" not in repr(tokens) and "'r'" not in repr(tokens)
    bare = parse_token_response(200, "application/json; charset=utf-8", '{"access_token":"a"}', NOW)
    assert bare.refresh_token is None and bare.expires_at is None


def test_parse_a_form_token_answer() -> None:
    tokens = parse_token_response(
        200, "application/x-www-form-urlencoded", "access_token=a&scope=repo", NOW
    )
    assert tokens.access_token == "a"


@pytest.mark.parametrize(
    ("status", "text", "message"),
    [
        (200, '{"error":"bad_verification_code","error_description":"The code is wrong"}',
         "bad_verification_code - The code is wrong"),
        (400, '{"error":"invalid_grant"}', "invalid_grant"),
        (500, "oops", "the token endpoint answered HTTP 500"),
        (200, "<html>", "the token endpoint did not answer with JSON"),
        (200, "[1]", "the token endpoint did not answer with JSON"),
        (200, '{"token_type":"bearer"}', "the token endpoint's answer has no access_token"),
        (200, '{"access_token":""}', "the token endpoint's answer has no access_token"),
        (200, '{"access_token":"a","expires_in":"soon"}', "expires_in is not a number"),
    ],
)  # fmt: skip
def test_token_answers_that_fail(status: int, text: str, message: str) -> None:
    with pytest.raises(TokenError, match=message):
        parse_token_response(status, "application/json", text, NOW)


def test_needs_refresh_within_90_seconds_with_a_refresh_token() -> None:
    def credential(seconds: float | None, refresh: str | None = "r") -> StoredCredential:
        expires = None if seconds is None else NOW + timedelta(seconds=seconds)
        return StoredCredential("a", refresh, expires)

    assert not needs_refresh(credential(91), NOW)
    assert needs_refresh(credential(90), NOW)
    assert needs_refresh(credential(-5), NOW)  # already expired
    assert not needs_refresh(credential(10, refresh=None), NOW)  # nothing to refresh with
    assert not needs_refresh(credential(None), NOW)  # no expiry known (a PAT)


# -- the two requests, against the local fake provider ---------------------------------------


def test_exchange_and_refresh_send_the_references_forms() -> None:
    provider = FakeOAuth().start()
    try:
        client = OAuthClient(
            "github", "flux-client", "flux-secret", provider.authorize_url, provider.token_url, ()
        )
        provider.codes["the-code"] = "http://cb"

        async def go() -> tuple[Tokens, Tokens]:
            async with httpx.AsyncClient() as http:
                first = await exchange_code(http, client, "the-code", "http://cb")
                assert first.refresh_token is not None
                return first, await refresh_tokens(
                    http, provider.token_url, first.refresh_token, client
                )

        first, second = asyncio.run(go())
        assert first.access_token == "access-1" and first.expires_at is not None
        assert second.refresh_token not in (None, first.refresh_token)  # rotated
        exchange, refresh = provider.token_requests
        assert exchange == {
            "grant_type": "authorization_code",
            "code": "the-code",
            "redirect_uri": "http://cb",
            "client_id": "flux-client",
            "client_secret": "flux-secret",
        }
        assert refresh == {
            "grant_type": "refresh_token",
            "refresh_token": first.refresh_token,
            "client_id": "flux-client",
            "client_secret": "flux-secret",
        }

        async def without_client() -> Tokens:
            async with httpx.AsyncClient() as http:
                return await refresh_tokens(http, provider.token_url, "r", None)

        with pytest.raises(TokenError, match="bad client credentials"):
            asyncio.run(without_client())
        assert "client_id" not in provider.token_requests[-1]
    finally:
        provider.stop()


def test_an_unreachable_token_endpoint_is_a_token_error() -> None:
    client = OAuthClient("github", "id", "s", "a", f"http://127.0.0.1:{free_port()}/token", ())

    async def go() -> Tokens:
        async with httpx.AsyncClient() as http:
            return await exchange_code(http, client, "c", "r")

    with pytest.raises(TokenError, match="cannot reach the token endpoint"):
        asyncio.run(go())
