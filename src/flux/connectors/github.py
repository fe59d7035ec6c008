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

import time
from dataclasses import dataclass
from typing import Any

import httpx

from flux.config import Settings
from flux.connectors.base import ConnectorError, EventDict
from flux.events import now_ms, uuid7

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


def _retry_after(headers: httpx.Headers, now: float) -> float | None:
    """Seconds GitHub asks us to wait: `Retry-After`, else the rate limit's reset time when
    no request is left (`X-RateLimit-Remaining: 0`, `X-RateLimit-Reset` in epoch seconds)."""
    try:
        if "Retry-After" in headers:
            return max(float(headers["Retry-After"]), 0.0)
        if headers.get("X-RateLimit-Remaining") == "0" and "X-RateLimit-Reset" in headers:
            return max(float(headers["X-RateLimit-Reset"]) - now, 0.0)
    except ValueError:
        return None
    return None


def github_error(status: int, headers: httpx.Headers, now: float | None = None) -> ConnectorError:
    """The original's messages for a failed GitHub call; a rate limit (403 or 429 with no
    request left, or a `Retry-After`) carries how long to wait."""
    if status == 401:
        return ConnectorError("GitHub auth error: token expired or invalid")
    if status in (403, 429):
        remaining = headers.get("X-RateLimit-Remaining", "unknown")
        wait = _retry_after(headers, time.time() if now is None else now)
        return ConnectorError(
            f"GitHub rate limit exceeded (X-RateLimit-Remaining: {remaining})", wait
        )
    return ConnectorError(f"GitHub API error: {status}")


@dataclass
class _Cached:
    """The validators and body of a resource's last 200, for conditional requests."""

    etag: str | None
    last_modified: str | None
    body: Any


class GitHub:
    """Polls every `poll_interval_seconds` (300 by default). `namespace` prefixes the entity
    ids (required with auth on).

    Every resource is fetched conditionally (`If-None-Match` with its last ETag, or
    `If-Modified-Since` with its last `Last-Modified`): GitHub answers an unchanged one with
    304, which costs no rate limit, and the resource then yields no events (its entities
    already hold those values). The validators live in memory, so the first poll after a
    restart fetches everything once."""

    name = "github"

    def __init__(
        self,
        namespace: str | None = None,
        base_url: str = Settings.github_api_url,
        poll_interval_seconds: float = Settings.github_poll_interval_seconds,
    ) -> None:
        self.namespace = namespace
        self.base_url = base_url.rstrip("/")
        self.poll_interval_seconds = poll_interval_seconds
        self._cache: dict[str, _Cached] = {}
        self.rate_remaining: str | None = None  # X-RateLimit-Remaining of the last answer

    async def _get(
        self, client: httpx.AsyncClient, path: str, token: str | None
    ) -> tuple[Any, bool]:
        """The resource's body, and whether it changed since the last poll."""
        headers = {"User-Agent": USER_AGENT, "Accept": "application/vnd.github+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        cached = self._cache.get(path)
        if cached is not None and cached.etag:
            headers["If-None-Match"] = cached.etag
        elif cached is not None and cached.last_modified:
            headers["If-Modified-Since"] = cached.last_modified
        response = await client.get(f"{self.base_url}{path}", headers=headers)
        self.rate_remaining = response.headers.get("X-RateLimit-Remaining", self.rate_remaining)
        if response.status_code == 304 and cached is not None:
            return cached.body, False
        if response.status_code != 200:
            raise github_error(response.status_code, response.headers)
        try:
            body = response.json()
        except ValueError as exc:
            raise ConnectorError(f"GitHub API error: invalid JSON from {path}") from exc
        etag, modified = response.headers.get("ETag"), response.headers.get("Last-Modified")
        if etag or modified:
            self._cache[path] = _Cached(etag, modified, body)
        return body, True

    async def fetch(self, client: httpx.AsyncClient, token: str | None) -> list[EventDict]:
        """Repositories (and each one's open issues, skipped on error), then notifications;
        only from resources that changed since the last poll."""
        now = now_ms()
        events: list[EventDict] = []
        repos, changed = await self._get(client, "/user/repos?sort=updated&per_page=30", token)
        for repo in repos if isinstance(repos, list) else []:
            if changed:
                events.append(repository_event(repo, self.namespace, now))
            owner, name = repo["owner"]["login"], repo["name"]
            try:
                issues, fresh = await self._get(
                    client, f"/repos/{owner}/{name}/issues?state=open&per_page=10", token
                )
            except ConnectorError as exc:
                if exc.retry_after is not None:
                    raise  # rate limited: every further call would be refused too
                continue  # non-fatal, as in the original
            if fresh:
                for issue in issues if isinstance(issues, list) else []:
                    events.append(issue_event(owner, name, issue, self.namespace, now))
        notifications, changed = await self._get(client, "/notifications?per_page=30", token)
        if changed:
            for item in notifications if isinstance(notifications, list) else []:
                events.append(notification_event(item, self.namespace, now))
        return events
