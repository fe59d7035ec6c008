"""The GitHub connector (reference §10.2): the caller's repositories, their open issues and
their notifications become entities.

The event builders are pure (`repository_event`, `issue_event`, `notification_event`,
`github_error`); `GitHub.fetch` does the HTTP through the `httpx.AsyncClient` it is given, so
tests point it at a local fake GitHub (`base_url`) or pass a transport.

Entity ids are the original's (`github/repo/<owner>/<name>`, `github/issue/<o>/<r>/<number>`,
`github/notification/<id>`), prefixed by `<namespace>/` when a namespace is given: with auth
on every id must start with the namespace that publishes it (the original's ids had none, so an
auth-enabled Flux rejected them).
"""

from __future__ import annotations

from typing import Any

import httpx

from flux.connectors.base import ConnectorError, EventDict
from flux.events import now_ms, uuid7

API_URL = "https://api.github.com"
USER_AGENT = "flux-connector/1.0"
STREAM = "connectors"
SOURCE = "connector.github"


def _entity(namespace: str | None, path: str) -> str:
    return f"{namespace}/{path}" if namespace else path


def _event(schema: str, entity_id: str, properties: dict[str, Any], now: int) -> EventDict:
    return {
        "eventId": uuid7(),
        "stream": STREAM,
        "source": SOURCE,
        "timestamp": now,
        "key": entity_id,
        "schema": schema,
        "payload": {"entity_id": entity_id, "properties": properties},
    }


def _optional(target: dict[str, Any], name: str, value: Any) -> None:
    if value is not None:
        target[name] = value


def repository_event(repo: dict[str, Any], namespace: str | None, now: int) -> EventDict:
    """`github.repository` for one item of `/user/repos`."""
    owner = repo["owner"]["login"]
    name = repo["name"]
    properties: dict[str, Any] = {
        "name": name,
        "full_name": repo.get("full_name", f"{owner}/{name}"),
        "stars": repo.get("stargazers_count", 0),
        "forks": repo.get("forks_count", 0),
        "open_issues": repo.get("open_issues_count", 0),
        "private": repo.get("private", False),
        "updated_at": repo.get("updated_at"),
    }
    _optional(properties, "description", repo.get("description"))
    _optional(properties, "language", repo.get("language"))
    entity_id = _entity(namespace, f"github/repo/{owner}/{name}")
    return _event("github.repository", entity_id, properties, now)


def issue_event(
    owner: str, repo: str, issue: dict[str, Any], namespace: str | None, now: int
) -> EventDict:
    """`github.issue` for one item of `/repos/<owner>/<repo>/issues`."""
    number = issue["number"]
    properties = {
        "number": number,
        "title": issue.get("title", ""),
        "state": issue.get("state", ""),
        "author": (issue.get("user") or {}).get("login", ""),
        "created_at": issue.get("created_at"),
        "updated_at": issue.get("updated_at"),
    }
    entity_id = _entity(namespace, f"github/issue/{owner}/{repo}/{number}")
    return _event("github.issue", entity_id, properties, now)


def notification_event(item: dict[str, Any], namespace: str | None, now: int) -> EventDict:
    """`github.notification` for one item of `/notifications`."""
    subject = item.get("subject") or {}
    properties: dict[str, Any] = {
        "id": str(item["id"]),
        "reason": item.get("reason", ""),
        "unread": item.get("unread", False),
        "updated_at": item.get("updated_at"),
        "subject_title": subject.get("title", ""),
        "subject_type": subject.get("type", ""),
    }
    _optional(properties, "subject_url", subject.get("url"))
    entity_id = _entity(namespace, f"github/notification/{item['id']}")
    return _event("github.notification", entity_id, properties, now)


def github_error(status: int, headers: httpx.Headers) -> ConnectorError:
    """The original's messages for a failed GitHub call."""
    if status == 401:
        return ConnectorError("GitHub auth error: token expired or invalid")
    if status == 403:
        remaining = headers.get("X-RateLimit-Remaining", "unknown")
        return ConnectorError(f"GitHub rate limit exceeded (X-RateLimit-Remaining: {remaining})")
    return ConnectorError(f"GitHub API error: {status}")


class GitHub:
    """Polls every 300 s. `namespace` prefixes the entity ids (required with auth on)."""

    name = "github"
    poll_interval_seconds = 300.0

    def __init__(self, namespace: str | None = None, base_url: str = API_URL) -> None:
        self.namespace = namespace
        self.base_url = base_url.rstrip("/")

    async def _get(self, client: httpx.AsyncClient, path: str, token: str | None) -> Any:
        headers = {"User-Agent": USER_AGENT, "Accept": "application/vnd.github+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        response = await client.get(f"{self.base_url}{path}", headers=headers)
        if response.status_code != 200:
            raise github_error(response.status_code, response.headers)
        try:
            return response.json()
        except ValueError as exc:
            raise ConnectorError(f"GitHub API error: invalid JSON from {path}") from exc

    async def fetch(self, client: httpx.AsyncClient, token: str | None) -> list[EventDict]:
        """Repositories (and each one's open issues, skipped on error), then notifications."""
        now = now_ms()
        events: list[EventDict] = []
        repos = await self._get(client, "/user/repos?sort=updated&per_page=30", token)
        for repo in repos if isinstance(repos, list) else []:
            events.append(repository_event(repo, self.namespace, now))
            owner, name = repo["owner"]["login"], repo["name"]
            try:
                issues = await self._get(
                    client, f"/repos/{owner}/{name}/issues?state=open&per_page=10", token
                )
            except ConnectorError:
                continue  # non-fatal, as in the original
            for issue in issues if isinstance(issues, list) else []:
                events.append(issue_event(owner, name, issue, self.namespace, now))
        notifications = await self._get(client, "/notifications?per_page=30", token)
        for item in notifications if isinstance(notifications, list) else []:
            events.append(notification_event(item, self.namespace, now))
        return events
