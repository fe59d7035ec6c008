"""The directory `flux-core/directory`: what it lists (registered public namespaces with auth on,
id prefixes with auth off), that it is written only when it changed, through the log (state,
history, live updates), on its timer, and that clients cannot write it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from api.authkit import ADMIN, bearer, open_client, publish, register, run, server_of, service_of
from api.helpers import assert_error, encode_id, new_event
from flux.directory import (
    DIRECTORY_ID,
    DIRECTORY_SOURCE,
    DIRECTORY_STREAM,
    directory_event,
    directory_properties,
    registered_counts,
)
from flux.events import validate_event

PATH = f"/api/state/entities/{encode_id(DIRECTORY_ID)}"


def listing(**counts: int) -> list[dict[str, Any]]:
    return [{"name": name, "entityCount": n} for name, n in sorted(counts.items())]


# -- pure ---------------------------------------------------------------------------------------


def test_directory_properties() -> None:
    assert directory_properties({}, 1) == {
        "namespaces": [],
        "namespaceCount": 0,
        "totalEntities": 1,
    }
    props = directory_properties({"zeta": 2, "alpha": 1, "flux-core": 1}, 5)
    assert props == {
        "namespaces": listing(alpha=1, zeta=2),
        "namespaceCount": 2,
        "totalEntities": 5,
    }


def test_registered_counts() -> None:
    counts = registered_counts(["alpha", "beta", "secret"], {"secret"}, {"alpha": 3, "other": 9})
    assert counts == {"alpha": 3, "beta": 0}


def test_directory_event_is_a_valid_event() -> None:
    event = directory_event(directory_properties({"a": 1}, 2))
    assert validate_event(orjson.loads(orjson.dumps(event))) == event
    assert (event["source"], event["stream"], event["key"]) == (
        DIRECTORY_SOURCE,
        DIRECTORY_STREAM,
        DIRECTORY_ID,
    )


# -- on a server --------------------------------------------------------------------------------


@pytest.fixture
def open_server(data_dir: Path) -> Iterator[TestClient]:
    """Auth off; the directory refreshed by hand (`refresh`)."""
    client = open_client(data_dir / "open", auth_enabled=False, admin_token=None)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def auth_server(data_dir: Path) -> Iterator[TestClient]:
    client = open_client(data_dir / "auth")
    yield client
    client.__exit__(None, None, None)


def refresh(client: TestClient) -> bool:
    return run(client, server_of(client).directory.refresh)


def directory(client: TestClient) -> dict[str, Any]:
    response = client.get(PATH)
    assert response.status_code == 200, response.text
    properties: dict[str, Any] = response.json()["properties"]
    return properties


def post(client: TestClient, entity_id: str) -> None:
    response = client.post("/api/events", content=orjson.dumps(new_event(entity_id)))
    assert response.status_code == 200


def test_with_auth_off_it_lists_the_prefixes_in_use(open_server: TestClient) -> None:
    assert refresh(open_server)
    assert directory(open_server) == {
        "namespaces": [],
        "namespaceCount": 0,
        "totalEntities": 1,
    }
    for entity_id in ("a/1", "a/2/x", "b/1", "solo"):
        post(open_server, entity_id)
    assert refresh(open_server)
    assert directory(open_server) == {
        "namespaces": listing(a=2, b=1),
        "namespaceCount": 2,
        "totalEntities": 5,  # solo and the directory count too
    }
    health = open_server.get("/api/health").json()
    assert (health["entities"], health["systemEntities"]) == (4, 1)
    assert not refresh(open_server)  # nothing changed: no event
    open_server.delete("/api/state/entities/b%2F1")
    assert refresh(open_server)
    assert directory(open_server)["namespaces"] == listing(a=2)
    history = open_server.get("/api/events", params={"entity": DIRECTORY_ID}).json()
    assert len(history) == 3
    assert {(e["source"], e["stream"]) for e in history} == {(DIRECTORY_SOURCE, DIRECTORY_STREAM)}
    assert history[0]["payload"]["properties"]["namespaceCount"] == 1


def test_with_auth_on_it_lists_registered_public_namespaces(auth_server: TestClient) -> None:
    alpha = register(auth_server, "alpha")
    register(auth_server, "empty")
    secret = register(auth_server, "secret", private=True)
    publish(auth_server, alpha, "alpha/1")
    publish(auth_server, secret, "secret/1")
    assert refresh(auth_server)
    assert directory(auth_server) == {
        "namespaces": listing(alpha=1, empty=0),
        "namespaceCount": 2,
        "totalEntities": 3,
    }
    auth_server.put("/api/namespaces/secret", json={"private": False}, headers=bearer(secret))
    auth_server.delete("/api/namespaces/empty", headers=bearer(ADMIN))
    assert refresh(auth_server)
    assert directory(auth_server)["namespaces"] == listing(alpha=1, secret=1)


def test_clients_cannot_write_it(auth_server: TestClient, open_server: TestClient) -> None:
    token = register(auth_server, "alpha")
    for client, headers in ((auth_server, bearer(token)), (open_server, {})):
        refresh(client)
        event = orjson.dumps(new_event(DIRECTORY_ID, {"namespaces": []}))
        assert_error(client.post("/api/events", content=event, headers=headers), 403)
        assert_error(client.delete(PATH, headers=headers), 403)
        assert client.get(PATH).status_code == 200
    # with auth off a batch delete by prefix passes over it
    post(open_server, "fluxy/1")
    response = open_server.post(
        "/api/state/entities/delete",
        json={"prefix": "flux"},
        headers={"content-type": "application/json"},
    )
    assert response.json()["deleted"] == 1
    assert open_server.get(PATH).status_code == 200


def test_it_reaches_websocket_subscribers(open_server: TestClient) -> None:
    with open_server.websocket_connect("/api/ws") as ws:
        ws.send_text(orjson.dumps({"type": "subscribe", "entity_id": DIRECTORY_ID}).decode())
        assert ws.receive_json()["type"] == "subscribed"
        post(open_server, "a/1")
        assert refresh(open_server)
        updates = {}
        while len(updates) < 3:
            message = ws.receive_json()
            if message["type"] == "state_update":
                assert message["entity_id"] == DIRECTORY_ID
                updates[message["property"]] = message["value"]
        assert updates == {
            "namespaces": listing(a=1),
            "namespaceCount": 1,
            "totalEntities": 2,
        }


def test_the_timer_coalesces_changes(data_dir: Path) -> None:
    client = open_client(data_dir, auth_enabled=False, directory_interval_seconds=0.05)
    try:
        service = service_of(client)
        for n in range(20):
            post(client, f"ns/{n}")
        deadline = time.monotonic() + 10
        while (entity := service.engine.get(DIRECTORY_ID)) is None or entity.properties[
            "namespaces"
        ] != listing(ns=20):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        written = len(client.get("/api/events", params={"entity": DIRECTORY_ID}).json())
        assert 1 <= written <= 20  # changes during a tick's interval share one event
        time.sleep(0.3)  # several more ticks, nothing changed: nothing written
        history = client.get("/api/events", params={"entity": DIRECTORY_ID}).json()
        assert len(history) == written
    finally:
        client.__exit__(None, None, None)


def test_it_can_be_turned_off(open_server: TestClient) -> None:
    assert service_of(open_server).settings.directory_interval_seconds == 0
    post(open_server, "a/1")
    time.sleep(0.1)
    assert_error(open_server.get(PATH), 404)
