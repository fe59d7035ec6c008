"""The GitHub connector: pure event builders, then fetch against a local fake GitHub."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from fakegithub import TOKEN, FakeGitHub, issue, notification, repo
from flux.connectors.base import Connector, ConnectorError, EventDict
from flux.connectors.github import (
    GitHub,
    github_error,
    issue_event,
    notification_event,
    repository_event,
)
from flux.events import validate_event


def test_repository_event() -> None:
    event = repository_event(repo("octo", "hello", description="d"), None, 1000)
    assert event["payload"]["entity_id"] == "github/repo/octo/hello"
    assert event["key"] == "github/repo/octo/hello"
    assert event["schema"] == "github.repository"
    assert event["stream"] == "connectors" and event["timestamp"] == 1000
    props = event["payload"]["properties"]
    assert props == {
        "name": "hello",
        "full_name": "octo/hello",
        "description": "d",
        "language": "Python",
        "stars": 3,
        "forks": 1,
        "open_issues": 2,
        "private": False,
        "updated_at": "2026-01-01T00:00:00Z",
    }
    assert validate_event(event) == event


def test_optional_fields_omitted_and_namespace_prefix() -> None:
    event = repository_event(repo("octo", "x", language=None), "team", 1)
    assert event["payload"]["entity_id"] == "team/github/repo/octo/x"
    assert "description" not in event["payload"]["properties"]
    assert "language" not in event["payload"]["properties"]
    assert issue_event("o", "r", issue(7), "team", 1)["payload"]["entity_id"] == (
        "team/github/issue/o/r/7"
    )
    note = notification_event(notification("42"), None, 1)
    assert note["payload"]["entity_id"] == "github/notification/42"
    assert "subject_url" not in note["payload"]["properties"]
    assert note["schema"] == "github.notification"


def test_github_errors() -> None:
    headers = httpx.Headers({"X-RateLimit-Remaining": "0"})
    assert github_error(401, headers).message == "GitHub auth error: token expired or invalid"
    assert github_error(403, headers).message == (
        "GitHub rate limit exceeded (X-RateLimit-Remaining: 0)"
    )
    assert github_error(502, headers).message == "GitHub API error: 502"


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    server = FakeGitHub().start()
    yield server
    server.stop()


def fetch(connector: GitHub, token: str | None) -> list[EventDict]:
    async def go() -> list[EventDict]:
        async with httpx.AsyncClient(timeout=5) as client:
            return await connector.fetch(client, token)

    return asyncio.run(go())


def test_fetch_against_fake_github(fake: FakeGitHub) -> None:
    fake.repos = [repo("octo", "a"), repo("octo", "b")]
    fake.issues[("octo", "a")] = [issue(1), issue(2)]
    fake.notifications = [notification("9")]
    connector = GitHub(namespace="team", base_url=fake.url)
    assert isinstance(connector, Connector)
    ids = [e["payload"]["entity_id"] for e in fetch(connector, TOKEN)]
    assert ids == [
        "team/github/repo/octo/a",
        "team/github/issue/octo/a/1",
        "team/github/issue/octo/a/2",
        "team/github/repo/octo/b",
        "team/github/notification/9",
    ]
    paths = [p for p, _ in fake.requests]
    assert paths[0] == "/user/repos?sort=updated&per_page=30"
    assert "/repos/octo/a/issues?state=open&per_page=10" in paths
    assert paths[-1] == "/notifications?per_page=30"
    assert all(h["user-agent"] == "flux-connector/1.0" for _, h in fake.requests)


def test_issue_failure_is_not_fatal(fake: FakeGitHub) -> None:
    fake.repos = [repo("octo", "a")]
    fake.fail_paths = {"/repos/octo/a/issues"}
    events = fetch(GitHub(base_url=fake.url), TOKEN)
    assert [e["schema"] for e in events] == ["github.repository"]


@pytest.mark.parametrize(
    ("status", "token", "message"),
    [
        (None, "wrong", "GitHub auth error: token expired or invalid"),
        (403, TOKEN, "GitHub rate limit exceeded (X-RateLimit-Remaining: 0)"),
        (500, TOKEN, "GitHub API error: 500"),
    ],
)
def test_fetch_errors(fake: FakeGitHub, status: int | None, token: str, message: str) -> None:
    fake.status = status
    with pytest.raises(ConnectorError) as info:
        fetch(GitHub(base_url=fake.url), token)
    assert info.value.message == message
