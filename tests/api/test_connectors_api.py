"""Connectors on the core (reference §4.10): list, show, store and delete a token."""

from __future__ import annotations

import base64
from pathlib import Path

from starlette.testclient import TestClient

from .conftest import ClientFactory

KEY = base64.b64encode(bytes(range(32))).decode()
NAMES = ["github", "gmail", "linkedin", "calendar"]
NO_STORE = "Credential storage not available (FLUX_ENCRYPTION_KEY not set)"


def statuses(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, str]:
    response = client.get("/api/connectors", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()["connectors"]
    assert [c["name"] for c in body] == NAMES
    assert all(c["enabled"] is True for c in body)
    return {c["name"]: c["status"] for c in body}


def test_list_without_store(make_client: ClientFactory) -> None:
    client = make_client()
    assert set(statuses(client).values()) == {"not_configured"}


def test_token_without_store_is_500(make_client: ClientFactory) -> None:
    client = make_client()
    response = client.post("/api/connectors/github/token", json={"token": "ghp_x"})
    assert response.status_code == 500
    assert response.json() == {"error": NO_STORE}
    response = client.delete("/api/connectors/github/token")
    assert response.status_code == 500
    assert response.json() == {"error": NO_STORE}


def test_unknown_connector_is_404(make_client: ClientFactory) -> None:
    client = make_client(encryption_key=KEY)
    for method, path in [
        ("GET", "/api/connectors/nope"),
        ("POST", "/api/connectors/nope/token"),
        ("DELETE", "/api/connectors/nope/token"),
    ]:
        response = client.request(method, path, json={"token": "t"})
        assert response.status_code == 404, (method, path)
        assert response.json() == {"error": "Connector 'nope' not found"}


def test_store_show_delete_with_auth_off(make_client: ClientFactory, data_dir: Path) -> None:
    client = make_client(encryption_key=KEY)
    detail = client.get("/api/connectors/github").json()
    assert detail == {
        "name": "github",
        "enabled": True,
        "status": "not_configured",
        "poll_interval_seconds": 300,
        "last_poll": None,
        "last_error": None,
        "polls": 0,
        "failures": 0,
        "events": 0,
    }
    assert client.get("/api/connectors/gmail").json()["poll_interval_seconds"] == 60
    response = client.post("/api/connectors/github/token", json={"token": "ghp_secret_123"})
    assert response.status_code == 200
    assert response.json() == {"success": True}
    assert statuses(client)["github"] == "configured"
    assert statuses(client)["gmail"] == "not_configured"
    assert client.get("/api/connectors/github").json()["status"] == "configured"
    assert b"ghp_secret_123" not in (data_dir / "credentials.db").read_bytes()
    assert client.delete("/api/connectors/github/token").json() == {"success": True}
    assert statuses(client)["github"] == "not_configured"
    response = client.delete("/api/connectors/github/token")
    assert response.status_code == 404
    assert response.json() == {"error": "No credentials found for connector 'github'"}


def test_token_survives_restart(make_client: ClientFactory) -> None:
    client = make_client(encryption_key=KEY)
    client.post("/api/connectors/github/token", json={"token": "t1"})
    client.__exit__(None, None, None)
    assert statuses(make_client(encryption_key=KEY))["github"] == "configured"


def test_bad_bodies(make_client: ClientFactory) -> None:
    client = make_client(encryption_key=KEY)
    for body in [{}, {"token": 1}, {"token": "  "}, []]:
        response = client.post("/api/connectors/github/token", json=body)
        assert response.status_code == 400, body
    response = client.post(
        "/api/connectors/github/token", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_auth_on_keys_credentials_by_bearer(make_client: ClientFactory) -> None:
    client = make_client(encryption_key=KEY, auth_enabled=True, directory_interval_seconds=0)
    response = client.get("/api/connectors")
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token: Authorization token not provided"}
    assert client.post("/api/connectors/github/token", json={"token": "t"}).status_code == 401
    alice = {"authorization": "Bearer alice-token"}
    bob = {"authorization": "Bearer bob-token"}
    response = client.post("/api/connectors/github/token", json={"token": "t"}, headers=alice)
    assert response.status_code == 200
    assert statuses(client, alice)["github"] == "configured"
    assert statuses(client, bob)["github"] == "not_configured"
    assert client.delete("/api/connectors/github/token", headers=bob).status_code == 404
    assert client.delete("/api/connectors/github/token", headers=alice).status_code == 200
