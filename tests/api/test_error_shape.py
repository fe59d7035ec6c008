"""Every error is JSON `{"error": "<message>"}`: framework errors (404, 405), our own (400,
401, 403, 404, 413, 415, 503) and unexpected ones (500, with no traceback)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from flux.errors import LogError, LogUnavailable

from .conftest import ClientFactory
from .helpers import assert_error, new_event

JSON = {"content-type": "application/json"}
TEXT = {"content-type": "text/plain"}

CASES: list[tuple[str, str, dict[str, Any], int, str | None]] = [
    ("GET", "/console/nothing.js", {}, 404, "No console file named 'nothing.js'"),
    ("GET", "/nope", {}, 404, "Not Found"),
    ("GET", "/api", {}, 404, "Not Found"),
    ("GET", "/api/unknown", {}, 404, "Not Found"),
    ("POST", "/api/nope", {}, 404, "Not Found"),
    ("GET", "/docs/static/missing.js", {}, 404, "Not Found"),
    ("GET", "/api/state/entities/missing", {}, 404, "Entity not found"),
    ("PUT", "/api/events", {}, 405, "Method Not Allowed"),
    ("DELETE", "/api/events", {}, 405, "Method Not Allowed"),
    ("GET", "/api/events/batch", {}, 405, "Method Not Allowed"),
    ("PATCH", "/api/state/entities", {}, 405, "Method Not Allowed"),
    ("POST", "/api/state/entities/x", {}, 405, "Method Not Allowed"),
    ("PUT", "/api/state/entities/x", {}, 405, "Method Not Allowed"),
    ("GET", "/api/state/entities/delete", {}, 404, "Entity not found"),
    ("POST", "/api/health", {}, 405, "Method Not Allowed"),
    ("DELETE", "/api/admin/config", {}, 405, "Method Not Allowed"),
    ("POST", "/openapi.json", {}, 405, "Method Not Allowed"),
    ("POST", "/docs", {}, 405, "Method Not Allowed"),
    ("POST", "/docs/static/swagger-ui.css", {}, 405, "Method Not Allowed"),
    ("OPTIONS", "/api/events", {}, 405, "Method Not Allowed"),
    ("POST", "/api/events", {"content": b""}, 400, None),
    ("POST", "/api/events", {"content": b"{"}, 400, None),
    ("POST", "/api/events/batch", {"content": b"[]"}, 400, None),
    ("GET", "/api/events", {}, 400, "entity parameter is required"),
    ("POST", "/api/state/entities/delete", {"content": b"{}", "headers": TEXT}, 415, None),
    ("POST", "/api/events", {"content": b"{}", "headers": TEXT}, 415, None),
    ("POST", "/api/events/batch", {"content": b"[]", "headers": TEXT}, 415, None),
    ("POST", "/api/state/entities/delete", {"content": b"{}", "headers": JSON}, 400, None),
    ("PUT", "/api/admin/config", {"content": b"{}", "headers": TEXT}, 415, None),
    ("PUT", "/api/admin/config", {"content": b"[]", "headers": JSON}, 400, None),
    (
        "PUT",
        "/api/admin/config",
        {"content": b'{"max_batch_delete": 0}', "headers": JSON},
        400,
        "max_batch_delete must be a positive integer",
    ),
    (
        "PUT",
        "/api/admin/config",
        {"content": b'{"rate_limit_enabled": "yes"}', "headers": JSON},
        400,
        "rate_limit_enabled must be true or false",
    ),
    (
        "POST",
        "/api/events",
        {"content": b" " * 1_048_577},
        413,
        "payload too large: a body of 1048577 bytes is over the limit of 1048576 bytes (raise "
        "it with FLUX_BODY_SIZE_LIMIT_SINGLE_BYTES, or `body_size_limit_single_bytes` in "
        "PUT /api/admin/config)",
    ),
]


def test_error_shape(client: TestClient) -> None:
    for method, path, kwargs, status, message in CASES:
        response = client.request(method, path, **kwargs)
        assert response.status_code == status, (method, path)
        assert_error(response, status, message)


def test_405_names_the_allowed_methods(client: TestClient) -> None:
    response = client.put("/api/events")
    assert sorted(response.headers["allow"].split(", ")) == ["GET", "HEAD", "POST"]


def test_head_is_answered_without_a_body(client: TestClient) -> None:
    response = client.head("/api/health")
    assert response.status_code == 200
    assert response.content == b""


def test_415_message(client: TestClient) -> None:
    assert_error(
        client.post("/api/state/entities/delete", content=b'{"prefix":"a"}', headers=TEXT),
        415,
        "Expected request with `Content-Type: application/json`",
    )


def test_admin_put_with_a_token(make_client: ClientFactory) -> None:
    client = make_client(admin_token="s3cret")
    body = b'{"max_batch_delete": 5}'
    # One bearer parser for every endpoint (the original had three): the scheme in any case,
    # the token trimmed; anything else is refused.
    for auth in (None, "Bearer wrong", "s3cret", "Basic s3cret", "Bearer", "Bearer s3cretX"):
        headers = dict(JSON)
        if auth is not None:
            headers["authorization"] = auth
        assert_error(
            client.put("/api/admin/config", content=body, headers=headers), 401, "Unauthorized"
        )
    for auth in ("Bearer s3cret", "bearer s3cret", "BEARER  s3cret "):
        ok = client.put("/api/admin/config", content=body, headers={**JSON, "authorization": auth})
        assert ok.status_code == 200
        assert ok.json()["max_batch_delete"] == 5
    # body errors come before the auth check, as in the original
    assert_error(client.put("/api/admin/config", content=b"{", headers=JSON), 400)


def test_admin_put_refused_with_auth_on_and_no_admin_token(make_client: ClientFactory) -> None:
    client = make_client(auth_enabled=True)
    response = client.put("/api/admin/config", content=b"{}", headers=JSON)
    assert_error(
        response,
        403,
        "admin operations are disabled: this server has auth on and no FLUX_ADMIN_TOKEN",
    )


def test_unexpected_errors_are_a_bare_500(
    make_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(raise_server_exceptions=False, cors_origins=("*",))
    service = client.app.state.service  # type: ignore[attr-defined]

    def broken(entity_id: str) -> None:
        raise RuntimeError("secret internal detail")

    monkeypatch.setattr(service.engine, "get", broken)
    response = client.get("/api/state/entities/ns%2Fa", headers={"Origin": "https://x.example"})
    message = assert_error(response, 500, "internal server error")
    assert "secret" not in message
    assert response.headers["access-control-allow-origin"] == "*"  # a browser can read it
    assert client.get("/api/health").status_code == 200


@pytest.mark.parametrize(
    ("error", "status"),
    [(LogUnavailable("event log unavailable: disk full"), 503), (LogError("event log error"), 500)],
)
def test_log_failures(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, error: Exception, status: int
) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    kept = orjson.dumps(new_event("ns/kept"))
    assert client.post("/api/events", content=kept).status_code == 200

    def failing(entries: Any, **options: Any) -> Any:
        raise error

    monkeypatch.setattr(service.log, "submit", failing)
    body = orjson.dumps(new_event("ns/lost"))
    assert_error(client.post("/api/events", content=body), status, str(error))
    assert_error(client.post("/api/events/batch", content=b"[" + body + b"]"), status, str(error))
    assert_error(client.delete("/api/state/entities/ns%2Fkept"), status, str(error))
    deleting = client.post("/api/state/entities/delete", content=b'{"entity_ids":["ns/kept"]}')
    assert_error(deleting, status, str(error))
    monkeypatch.undo()
    assert_error(client.get("/api/state/entities/ns%2Flost"), 404, "Entity not found")
    assert client.get("/api/state/entities/ns%2Fkept").status_code == 200  # not deleted
    assert client.delete("/api/state/entities/ns%2Fkept").json()["deleted"] is True


@pytest.mark.parametrize("outcome", [LogError.NOT_STORED, LogError.UNKNOWN, LogError.STORED])
def test_a_failed_write_says_what_became_of_it(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    """A log error that knows the write's outcome adds it as `outcome`, next to `error`."""
    service = client.app.state.service  # type: ignore[attr-defined]
    message = "event log unavailable: NATS is gone"

    def failing(entries: Any, **options: Any) -> Any:
        raise LogUnavailable(message, outcome)

    monkeypatch.setattr(service.log, "submit", failing)
    body = orjson.dumps(new_event("ns/maybe"))
    for answer in (
        client.post("/api/events", content=body),
        client.post("/api/events/batch", content=b"[" + body + b"]"),
    ):
        assert answer.status_code == 503
        assert answer.headers["content-type"].startswith("application/json")
        assert answer.json() == {"error": message, "outcome": outcome}
