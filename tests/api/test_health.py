"""GET /api/health: liveness and readiness."""

from __future__ import annotations

import orjson
import pytest
from starlette.testclient import TestClient

from flux import __version__

from .helpers import new_event


def test_health(client: TestClient) -> None:
    body = client.get("/api/health").json()
    assert body == {
        "status": "ok",
        "version": __version__,
        "entities": 0,
        "systemEntities": 0,
        "lastSequence": 0,
    }
    events = [new_event("ns/a"), new_event("ns/b"), new_event("ns/a")]
    client.post("/api/events/batch", content=orjson.dumps(events))
    body = client.get("/api/health").json()
    assert (body["entities"], body["lastSequence"]) == (2, 3)


def test_not_ready_is_a_503(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client.app.state.service, "ready", False)  # type: ignore[attr-defined]
    response = client.get("/api/health")
    assert response.status_code == 503
    assert response.json()["status"] == "starting"
