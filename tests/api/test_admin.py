"""GET/PUT /api/admin/config and GET /api/connectors."""

from __future__ import annotations

from starlette.testclient import TestClient

from .conftest import ClientFactory
from .helpers import assert_error

DEFAULTS = {
    "rate_limit_enabled": True,
    "rate_limit_per_namespace_per_minute": 10_000,
    "body_size_limit_single_bytes": 1_048_576,
    "body_size_limit_batch_bytes": 10_485_760,
    "max_batch_delete": 10_000,
}


def test_get_config(client: TestClient) -> None:
    assert client.get("/api/admin/config").json() == DEFAULTS


def test_put_is_partial_ignores_unknown_keys_and_returns_the_whole_config(
    client: TestClient,
) -> None:
    response = client.put("/api/admin/config", json={"max_batch_delete": 7, "unknown": 1})
    assert response.status_code == 200
    assert response.json() == {**DEFAULTS, "max_batch_delete": 7}
    assert client.get("/api/admin/config").json() == {**DEFAULTS, "max_batch_delete": 7}


def test_a_bad_value_changes_nothing(client: TestClient) -> None:
    response = client.put(
        "/api/admin/config", json={"max_batch_delete": 7, "body_size_limit_single_bytes": -1}
    )
    assert_error(response, 400, "body_size_limit_single_bytes must be a positive integer")
    assert client.get("/api/admin/config").json() == DEFAULTS


def test_changes_survive_a_restart(make_client: ClientFactory) -> None:
    first = make_client()
    assert first.put("/api/admin/config", json={"max_batch_delete": 3}).status_code == 200
    first.__exit__(None, None, None)
    assert make_client().get("/api/admin/config").json()["max_batch_delete"] == 3


def test_connectors(client: TestClient) -> None:
    body = client.get("/api/connectors").json()
    assert [c["name"] for c in body["connectors"]] == ["github", "gmail", "linkedin", "calendar"]
    assert all(
        c["enabled"] is False and c["status"] == "not_configured" for c in body["connectors"]
    )
