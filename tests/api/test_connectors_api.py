"""Connectors on the core (reference §4.10): list, show, store and delete a token."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from fakegithub import FakeGitHub

from .authkit import ADMIN, bearer, register
from .conftest import ClientFactory

KEY = base64.b64encode(bytes(range(32))).decode()
NAMES = ["github", "gmail", "linkedin", "calendar"]
NO_STORE = "Credential storage not available (FLUX_ENCRYPTION_KEY not set)"


@pytest.fixture
def github() -> Iterator[FakeGitHub]:
    """A local GitHub stand-in: storing a token starts the connector, which polls at once."""
    fake = FakeGitHub().start()
    yield fake
    fake.stop()


def statuses(client: TestClient, headers: dict[str, str] | None = None) -> dict[str, str]:
    response = client.get("/api/connectors", headers=headers)
    assert response.status_code == 200, response.text
    body = response.json()["connectors"]
    assert [c["name"] for c in body] == NAMES
    # `enabled`: whether the server polls it (test_first_contact.py)
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


def test_store_show_delete_with_auth_off(
    make_client: ClientFactory, data_dir: Path, github: FakeGitHub
) -> None:
    client = make_client(encryption_key=KEY, github_api_url=github.url)
    detail = client.get("/api/connectors/github").json()
    assert detail == {
        "name": "github",
        "enabled": False,  # no token: nothing polls it
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
    # The fake refuses that token (401): the connector shows the poll's error.
    assert statuses(client)["github"] in ("configured", "error")
    assert statuses(client)["gmail"] == "not_configured"
    assert client.get("/api/connectors/github").json()["status"] in ("configured", "error")
    assert b"ghp_secret_123" not in (data_dir / "credentials.db").read_bytes()
    assert client.delete("/api/connectors/github/token").json() == {"success": True}
    assert statuses(client)["github"] == "not_configured"
    response = client.delete("/api/connectors/github/token")
    assert response.status_code == 404
    assert response.json() == {"error": "No credentials found for connector 'github'"}


def test_token_survives_restart(make_client: ClientFactory, github: FakeGitHub) -> None:
    client = make_client(encryption_key=KEY, github_api_url=github.url)
    client.post("/api/connectors/github/token", json={"token": "t1"})
    client.__exit__(None, None, None)
    again = make_client(encryption_key=KEY, github_api_url=github.url)
    assert statuses(again)["github"] in ("configured", "error")


def test_bad_bodies(make_client: ClientFactory) -> None:
    client = make_client(encryption_key=KEY)
    for body in [{}, {"token": 1}, {"token": "  "}, []]:
        response = client.post("/api/connectors/github/token", json=body)
        assert response.status_code == 400, body
    response = client.post(
        "/api/connectors/github/token", content=b"{", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400


def test_auth_on_keys_credentials_by_namespace(
    make_client: ClientFactory, github: FakeGitHub
) -> None:
    client = make_client(
        encryption_key=KEY,
        auth_enabled=True,
        admin_token=ADMIN,
        directory_interval_seconds=0,
        github_api_url=github.url,
    )
    response = client.get("/api/connectors")
    assert response.status_code == 401
    assert response.json() == {"error": "Invalid token: Authorization token not provided"}
    assert client.post("/api/connectors/github/token", json={"token": "t"}).status_code == 401
    alice = bearer(register(client, "alice"))
    bob = bearer(register(client, "bob"))
    # A bearer of no namespace may look (it owns nothing) but not store: 401; the admin's: 403.
    stranger = bearer("not-a-token")
    assert set(statuses(client, stranger).values()) == {"not_configured"}
    response = client.post("/api/connectors/github/token", json={"token": "t"}, headers=stranger)
    assert response.status_code == 401
    response = client.post(
        "/api/connectors/github/token", json={"token": "t"}, headers=bearer(ADMIN)
    )
    assert response.status_code == 403
    assert "namespace" in response.json()["error"]
    response = client.post("/api/connectors/github/token", json={"token": "t"}, headers=alice)
    assert response.status_code == 200
    assert statuses(client, alice)["github"] in ("configured", "error")
    assert statuses(client, bob)["github"] == "not_configured"
    assert client.get("/api/connectors/github", headers=bob).json()["polls"] == 0
    assert client.delete("/api/connectors/github/token", headers=bob).status_code == 404
    assert client.delete("/api/connectors/github/token", headers=alice).status_code == 200
    assert statuses(client, alice)["github"] == "not_configured"
