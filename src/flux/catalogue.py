"""The connectors Flux knows, in the original's order (reference §4.10 and §4.11): the one list
that `flux.config` (each one's `FLUX_OAUTH_<NAME>_*` settings) and `flux.connectors` (the status
API, poll intervals, sign-in scopes) are built from. Pure data; imports nothing of Flux.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OAuthProvider:
    """Where a connector's OAuth sign-in goes: the provider (as the docs name it), its default
    authorize and token URLs (each a setting), and the scopes the sign-in asks for."""

    label: str
    auth_url: str
    token_url: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class KnownConnector:
    """A connector the core knows, configured or not; `oauth` is None without sign-in."""

    name: str
    poll_interval_seconds: int
    oauth: OAuthProvider | None = None


_GOOGLE_AUTH_URL = "https://accounts.google.com/o/oauth2/v2/auth"
_GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"

# The original's scopes. For GitHub, `repo` also opens the notifications endpoints (they accept
# `notifications` or `repo`).
CONNECTORS: tuple[KnownConnector, ...] = (
    KnownConnector(
        "github",
        300,
        OAuthProvider(
            "GitHub",
            "https://github.com/login/oauth/authorize",
            "https://github.com/login/oauth/access_token",
            ("repo", "read:user"),
        ),
    ),
    KnownConnector(
        "gmail",
        60,
        OAuthProvider(
            "Google",
            _GOOGLE_AUTH_URL,
            _GOOGLE_TOKEN_URL,
            ("https://www.googleapis.com/auth/gmail.readonly",),
        ),
    ),
    KnownConnector(
        "linkedin",
        600,
        OAuthProvider(
            "LinkedIn",
            "https://www.linkedin.com/oauth/v2/authorization",
            "https://www.linkedin.com/oauth/v2/accessToken",
            ("r_liteprofile", "r_emailaddress"),
        ),
    ),
    KnownConnector(
        "calendar",
        300,
        OAuthProvider(
            "Google",
            _GOOGLE_AUTH_URL,
            _GOOGLE_TOKEN_URL,
            ("https://www.googleapis.com/auth/calendar.readonly",),
        ),
    ),
)
