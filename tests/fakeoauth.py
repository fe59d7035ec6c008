"""A fake OAuth provider on a local HTTP server (a thread), for the sign-in tests.

`FakeOAuth(client_id, client_secret).start()` listens on 127.0.0.1 port 0:

- `GET /authorize?client_id&redirect_uri&scope&state&response_type=code` checks the client and
  `response_type`, issues a single-use code bound to the redirect URI and answers 302 to
  `<redirect_uri>?code=<code>&state=<state>` (with `deny` set: `?error=access_denied&...`).
- `POST /token` (a form) checks `Accept: application/json`, the client id and secret, and then
  either `grant_type=authorization_code` (the code, used once, and the same `redirect_uri`) or
  `grant_type=refresh_token` (a refresh token it issued). It answers JSON: `access_tokens`
  (popped in order, the last one repeats), `expires_in` and, unless `rotate` is off on a
  refresh, a new `refresh_token`. A refused request gets 400 `{"error", "error_description"}`;
  `token_status` forces a status (GitHub-style 200 with an `error` when `error_with_200`).

`authorizations` and `token_requests` record what came in (query and form dicts).
"""

from __future__ import annotations

import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from localhttp import LocalHTTP


class FakeOAuth:
    def __init__(self, client_id: str = "flux-client", client_secret: str = "flux-secret") -> None:
        self.client_id = client_id
        self.client_secret = client_secret
        self.access_tokens: list[str] = ["access-1"]
        self.expires_in: int | None = 3600
        self.rotate = True
        self.deny = False
        self.revoked = False  # every refresh token is refused, as after a revocation
        self.token_status: int | None = None
        self.error_with_200 = False
        self.codes: dict[str, str] = {}  # code -> redirect_uri
        self.refresh_tokens: set[str] = set()
        self.authorizations: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self._lock = threading.Lock()
        self._http: LocalHTTP | None = None
        self.url = ""

    @property
    def authorize_url(self) -> str:
        return f"{self.url}/authorize"

    @property
    def token_url(self) -> str:
        return f"{self.url}/token"

    def _authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], Any]:
        self.authorizations.append(query)
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            return 400, {}, {"error": "invalid_request"}
        redirect, state = query["redirect_uri"], query.get("state", "")
        if self.deny:
            params = {"error": "access_denied", "error_description": "The user said no"}
        else:
            code = secrets.token_urlsafe(8)
            self.codes[code] = redirect
            params = {"code": code}
        params["state"] = state
        return 302, {"Location": f"{redirect}?{urlencode(params)}"}, None

    def _issue(self, rotate: bool = True) -> dict[str, Any]:
        access = self.access_tokens.pop(0) if len(self.access_tokens) > 1 else self.access_tokens[0]
        body: dict[str, Any] = {"access_token": access, "token_type": "bearer", "scope": "repo"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        if rotate:
            refresh = "refresh-" + secrets.token_urlsafe(8)
            self.refresh_tokens.add(refresh)
            body["refresh_token"] = refresh
        return body

    def _token(self, form: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
        self.token_requests.append(form)
        if self.token_status is not None:
            return self.token_status, {"error": "server_error", "error_description": "forced"}
        refused: str | None = None
        grant = form.get("grant_type")
        if headers.get("accept") != "application/json":
            refused = "Accept is not application/json"
        elif headers.get("content-type") != "application/x-www-form-urlencoded":
            refused = "not a form"
        elif (form.get("client_id"), form.get("client_secret")) != (
            self.client_id,
            self.client_secret,
        ):
            refused = "bad client credentials"
        elif grant == "authorization_code":
            redirect = self.codes.pop(form.get("code", ""), None)
            if redirect is None:
                refused = "unknown or used code"
            elif redirect != form.get("redirect_uri"):
                refused = "redirect_uri mismatch"
        elif grant == "refresh_token":
            if self.revoked or form.get("refresh_token") not in self.refresh_tokens:
                refused = "unknown refresh token"
        else:
            refused = f"unsupported grant_type {grant}"
        if refused is not None:
            error = {"error": "invalid_grant", "error_description": refused}
            return (200 if self.error_with_200 else 400), error
        if grant == "refresh_token" and not self.rotate:
            return 200, self._issue(rotate=False)
        return 200, self._issue()

    def start(self) -> FakeOAuth:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _send(self, status: int, headers: dict[str, str], body: Any) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                if parts.path != "/authorize":
                    self._send(404, {}, {"error": "not_found"})
                    return
                with fake._lock:
                    status, headers, body = fake._authorize(dict(parse_qsl(parts.query)))
                self._send(status, headers, body)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                form = dict(parse_qsl(self.rfile.read(length).decode()))
                headers = {k.lower(): v for k, v in self.headers.items()}
                if urlsplit(self.path).path != "/token":
                    self._send(404, {}, {"error": "not_found"})
                    return
                with fake._lock:
                    status, body = fake._token(form, headers)
                self._send(status, {}, body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._http = LocalHTTP(Handler)
        self.url = self._http.url
        return self

    def stop(self) -> None:
        if self._http is not None:
            self._http.stop()
