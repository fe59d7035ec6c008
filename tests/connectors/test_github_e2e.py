"""The GitHub connector end to end: a real `flux serve` (auth on) polls a local fake GitHub.

Covers the issue's done-when points for GitHub: entities with the right ids and properties, an
upstream change reaching a WebSocket subscriber, conditional requests, upstream errors in the
status with the waits GitHub asks for, restart survival, namespace isolation, and the token
never appearing in the clear on disk, in the server's log or in a response.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer, wait_for
from fakegithub import TOKEN, FakeGitHub, issue, notification, repo
from liveclient import ws_client

KEY = base64.b64encode(bytes(range(32, 64))).decode()
ADMIN = "e2e-admin-token"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    fake.repos = [repo("octo", "hello", description="greetings")]
    fake.issues[("octo", "hello")] = [issue(7, "Crash on start")]
    fake.notifications = [notification("900")]
    yield fake
    fake.stop()


def server_env(github: FakeGitHub) -> dict[str, str]:
    return {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_ENCRYPTION_KEY": KEY,
        "FLUX_GITHUB_API_URL": github.url,
        "FLUX_GITHUB_POLL_INTERVAL_SECONDS": "0.3",
        "FLUX_CONNECTOR_RETRY_SECONDS": "0.1",
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        "FLUX_LOG_LEVEL": "debug",
    }


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def register(url: str, name: str) -> str:
    response = httpx.post(f"{url}/api/namespaces", json={"name": name}, headers=bearer(ADMIN))
    assert response.status_code == 200, response.text
    token: str = response.json()["token"]
    return token


def entity(url: str, entity_id: str) -> dict[str, Any] | None:
    response = httpx.get(f"{url}/api/state/entities/{entity_id}")
    if response.status_code == 404:
        return None
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def status(url: str, token: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/connectors/github", headers=bearer(token))
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def history(url: str, entity_id: str) -> list[Any]:
    response = httpx.get(f"{url}/api/events", params={"entity": entity_id, "limit": 100})
    assert response.status_code == 200, response.text
    events: list[Any] = response.json()
    return events


def store_token(url: str, token: str, secret: str = TOKEN) -> None:
    response = httpx.post(
        f"{url}/api/connectors/github/token", json={"token": secret}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text


REPO_ID = "team/github/repo/octo/hello"
ISSUE_ID = "team/github/issue/octo/hello/7"
NOTE_ID = "team/github/notification/900"


def test_entities_updates_conditional_requests_and_isolation(
    server_factory: type[FluxServer], data_dir: Path, github: FakeGitHub
) -> None:
    server = server_factory(data_dir, server_env(github)).start()
    team = register(server.url, "team")
    other = register(server.url, "other")
    store_token(server.url, team)

    found = wait_for(what="the repository entity", check=lambda: entity(server.url, REPO_ID))
    assert found["properties"] == {
        "name": "hello",
        "full_name": "octo/hello",
        "description": "greetings",
        "language": "Python",
        "stars": 3,
        "forks": 1,
        "open_issues": 2,
        "private": False,
        "updated_at": "2026-01-01T00:00:00Z",
    }
    found = wait_for(what="the issue entity", check=lambda: entity(server.url, ISSUE_ID))
    assert found["properties"]["title"] == "Crash on start"
    assert found["properties"]["author"] == "alice"
    found = wait_for(what="the notification entity", check=lambda: entity(server.url, NOTE_ID))
    assert found["properties"]["reason"] == "mention"
    (event,) = history(server.url, REPO_ID)
    assert event["stream"] == "connectors" and event["source"] == "connector.github"

    # Later polls are conditional: GitHub answers 304 and nothing new is logged.
    wait_for(what="304 answers", check=lambda: github.not_modified >= 6)
    assert any("if-none-match" in headers for _, headers in github.requests)
    assert len(history(server.url, REPO_ID)) == 1
    assert status(server.url, team)["status"] == "configured"
    assert status(server.url, team)["last_error"] is None

    async def watch_change() -> list[dict[str, Any]]:
        async with ws_client(server.url) as ws:
            await ws.subscribe(entity_id=REPO_ID)
            github.repos = [repo("octo", "hello", description="greetings", stargazers_count=4)]
            return await ws.changes(1)

    (update,) = asyncio.run(watch_change())
    assert update["entity_id"] == REPO_ID
    assert (update["property"], update["value"]) == ("stars", 4)
    assert entity(server.url, REPO_ID)["properties"]["stars"] == 4  # type: ignore[index]

    # Another namespace sees nothing of team's connector and cannot remove its token.
    assert status(server.url, other)["status"] == "not_configured"
    assert status(server.url, other)["polls"] == 0
    response = httpx.delete(f"{server.url}/api/connectors/github/token", headers=bearer(other))
    assert response.status_code == 404
    assert status(server.url, team)["polls"] >= 2

    # Deleting the token stops the connector.
    response = httpx.delete(f"{server.url}/api/connectors/github/token", headers=bearer(team))
    assert response.status_code == 200
    time.sleep(0.5)  # let a poll in flight finish
    calls = len(github.requests)
    time.sleep(1.0)  # more than three poll intervals
    assert len(github.requests) == calls
    server.stop()

    # The GitHub token is nowhere in the clear: not on disk, not in the log output.
    for path in data_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert TOKEN not in server.logs()


def test_upstream_errors_show_in_status_and_wait(
    server_factory: type[FluxServer], data_dir: Path, github: FakeGitHub
) -> None:
    server = server_factory(data_dir, server_env(github)).start()
    team = register(server.url, "team")

    github.status = 500
    store_token(server.url, team)
    shown = wait_for(
        what="the 5xx in the status", check=lambda: status(server.url, team)["last_error"] or None
    )
    assert shown == "GitHub API error: 500"
    assert status(server.url, team)["status"] == "error"
    assert status(server.url, team)["failures"] >= 1

    # A wrong token: GitHub's 401.
    github.status = None
    store_token(server.url, team, "ghp_wrong")
    wait_for(
        what="the 401 in the status",
        check=lambda: (
            status(server.url, team)["last_error"] == "GitHub auth error: token expired or invalid"
        ),
    )

    # Rate limited until an hour from now: the connector stops asking (no retry, no poll).
    github.status = 403
    github.rate_remaining = "0"
    github.reset_at = int(time.time()) + 3600
    store_token(server.url, team)
    wait_for(
        what="the rate limit in the status",
        check=lambda: (
            status(server.url, team)["last_error"]
            == "GitHub rate limit exceeded (X-RateLimit-Remaining: 0)"
        ),
    )
    time.sleep(0.3)
    calls = len(github.requests)
    time.sleep(1.5)  # five poll intervals, fifteen retry waits
    assert len(github.requests) == calls

    # 429 with Retry-After: the same.
    github.status = 429
    github.reset_at = None
    github.retry_after = "3600"
    store_token(server.url, team)
    wait_for(
        what="the 429 in the status",
        check=lambda: "rate limit" in (status(server.url, team)["last_error"] or ""),
    )
    time.sleep(0.3)
    calls = len(github.requests)
    time.sleep(1.5)
    assert len(github.requests) == calls

    # Recovery: the next stored token polls at once and clears the error.
    github.status = None
    github.retry_after = None
    store_token(server.url, team)
    wait_for(what="recovery", check=lambda: entity(server.url, REPO_ID))
    wait_for(
        what="a clean status", check=lambda: status(server.url, team)["status"] == "configured"
    )
    for response_text in (
        httpx.get(f"{server.url}/api/connectors", headers=bearer(team)).text,
        httpx.get(f"{server.url}/api/connectors/github", headers=bearer(team)).text,
    ):
        assert TOKEN not in response_text and "ghp_wrong" not in response_text
    server.stop()
    assert TOKEN not in server.logs() and "ghp_wrong" not in server.logs()


def test_connector_survives_restart(
    server_factory: type[FluxServer], data_dir: Path, github: FakeGitHub
) -> None:
    env = server_env(github)
    server = server_factory(data_dir, env).start()
    team = register(server.url, "team")
    store_token(server.url, team)
    wait_for(what="the repository entity", check=lambda: entity(server.url, REPO_ID))
    server.stop()

    github.repos = [repo("octo", "hello", description="greetings", forks_count=9)]
    again = server_factory(data_dir, env).start()
    found = wait_for(
        what="the change after the restart",
        check=lambda: (entity(again.url, REPO_ID) or {}).get("properties", {}).get("forks") == 9,
    )
    assert found
    assert status(again.url, team)["polls"] >= 1
    again.stop()
