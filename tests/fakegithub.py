"""A fake GitHub API on a local HTTP server (a thread), for the GitHub connector's tests.

`FakeGitHub.start()` listens on 127.0.0.1 port 0; `url` is its base URL. Replies are canned:
`repos`, `issues[(owner, repo)]`, `notifications`; `status` forces an error status on every
path (`fail_paths` on some); `requests` records (path, headers) of every call.

Like GitHub, every 200 carries an `ETag` (a hash of the body) and the rate-limit headers; a
request whose `If-None-Match` equals the current ETag gets 304 with no body, and does not count
against `rate_remaining`. A forced 403 or 429 carries `X-RateLimit-Remaining` and
`X-RateLimit-Reset` (`reset_at`), and `Retry-After` when `retry_after` is set.
"""

from __future__ import annotations

import hashlib
import json
from http.server import BaseHTTPRequestHandler
from typing import Any

from localhttp import LocalHTTP

TOKEN = "ghp_fake_token"


class FakeGitHub:
    def __init__(self) -> None:
        self.repos: list[dict[str, Any]] = []
        self.issues: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.notifications: list[dict[str, Any]] = []
        self.status: int | None = None
        self.fail_paths: set[str] = set()
        self.rate_remaining = "0"
        self.reset_at: int | None = None
        self.retry_after: str | None = None
        self.not_modified = 0  # 304s answered
        self.requests: list[tuple[str, dict[str, str]]] = []
        self._http: LocalHTTP | None = None
        self.url = ""

    def _reply(self, path: str, headers: dict[str, str]) -> tuple[int, Any]:
        self.requests.append((path, headers))
        if headers.get("authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Bad credentials"}
        if self.status is not None:
            return self.status, {"message": "forced"}
        route = path.split("?", 1)[0]
        if route in self.fail_paths:
            return 500, {"message": "boom"}
        if route == "/user/repos":
            return 200, self.repos
        if route == "/notifications":
            return 200, self.notifications
        parts = route.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "repos" and parts[3] == "issues":
            return 200, self.issues.get((parts[1], parts[2]), [])
        return 404, {"message": "Not Found"}

    def start(self) -> FakeGitHub:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, body = fake._reply(self.path, headers)
                data = json.dumps(body).encode()
                etag = '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
                if status == 200 and headers.get("if-none-match") == etag:
                    fake.not_modified += 1
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                    return
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if status == 200:
                    self.send_header("ETag", etag)
                    self.send_header("X-RateLimit-Remaining", "4999")
                if status in (403, 429):
                    self.send_header("X-RateLimit-Remaining", fake.rate_remaining)
                    if fake.reset_at is not None:
                        self.send_header("X-RateLimit-Reset", str(fake.reset_at))
                    if fake.retry_after is not None:
                        self.send_header("Retry-After", fake.retry_after)
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalHTTP(Handler)
        self.url = self._http.url
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()


def repo(owner: str, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "full_name": f"{owner}/{name}",
        "owner": {"login": owner},
        "description": None,
        "language": "Python",
        "stargazers_count": 3,
        "forks_count": 1,
        "open_issues_count": 2,
        "private": False,
        "updated_at": "2026-01-01T00:00:00Z",
        **extra,
    }


def issue(number: int, title: str = "Bug") -> dict[str, Any]:
    return {
        "number": number,
        "title": title,
        "state": "open",
        "user": {"login": "alice"},
        "created_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-02T00:00:00Z",
    }


def notification(ident: str) -> dict[str, Any]:
    return {
        "id": ident,
        "reason": "mention",
        "unread": True,
        "updated_at": "2026-01-03T00:00:00Z",
        "subject": {"title": "Hi", "type": "Issue", "url": None},
    }
