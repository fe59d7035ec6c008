"""Coordination with auth on: a namespace cannot lease, condition on or see another's private
entities; conflicts show state only to a caller who may write (so read) the entity."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from .authkit import ADMIN, bearer, open_client, publish, register
from .helpers import new_event


@pytest.fixture
def auth(data_dir: Path) -> Iterator[tuple[TestClient, str, str]]:
    client = open_client(data_dir)
    try:
        yield client, register(client, "alpha", private=True), register(client, "beta")
    finally:
        client.__exit__(None, None, None)


def lease(client: TestClient, op: str, bearer_token: str | None, **body: Any) -> Any:
    return client.post(f"/api/leases/{op}", json=body, headers=bearer(bearer_token))


def test_a_namespace_cannot_lease_another_namespaces_entity(
    auth: tuple[TestClient, str, str],
) -> None:
    client, alpha, beta = auth
    assert publish(client, alpha, "alpha/lock").status_code == 200
    taken = lease(client, "acquire", beta, entity_id="alpha/lock", owner="b", ttl_ms=1000)
    assert taken.status_code == 403
    anonymous = lease(client, "acquire", None, entity_id="alpha/lock", owner="x", ttl_ms=1000)
    assert anonymous.status_code == 401
    own = lease(client, "acquire", alpha, entity_id="alpha/lock", owner="a", ttl_ms=1000)
    assert own.status_code == 200
    # nor release or renew it, even knowing its token
    token = own.json()["token"]
    refused = lease(client, "release", beta, entity_id="alpha/lock", owner="a", token=token)
    assert refused.status_code == 403
    assert lease(
        client, "acquire", ADMIN, entity_id="alpha/lock", owner="x", ttl_ms=9
    ).status_code in (401, 403)


def test_a_condition_on_another_namespaces_entity_is_refused_before_it_is_decided(
    auth: tuple[TestClient, str, str],
) -> None:
    client, alpha, beta = auth
    assert publish(client, alpha, "alpha/secret", value="hidden").status_code == 200
    probe = {**new_event("alpha/secret", {"x": 1}), "expected_version": 999}
    answer = client.post("/api/events", content=orjson.dumps(probe), headers=bearer(beta))
    assert answer.status_code == 403
    assert "hidden" not in answer.text  # no state in the refusal
    atomic = client.post(
        "/api/events/batch",
        content=orjson.dumps({"atomic": True, "events": [new_event("beta/x", {"a": 1}), probe]}),
        headers=bearer(beta),
    )
    assert atomic.status_code == 403 and "event 1" in atomic.json()["error"]
    assert "hidden" not in atomic.text
    assert client.get("/api/state/entities/beta/x", headers=bearer(beta)).status_code == 404


def test_the_owner_sees_the_state_in_its_own_conflicts(auth: tuple[TestClient, str, str]) -> None:
    client, alpha, _ = auth
    assert publish(client, alpha, "alpha/task", status="open").status_code == 200
    stale = {**new_event("alpha/task", {"status": "x"}), "expected_version": 0}
    answer = client.post("/api/events", content=orjson.dumps(stale), headers=bearer(alpha))
    assert answer.status_code == 409
    assert answer.json()["current"]["properties"] == {"status": "open"}


def test_changes_since_hides_private_namespaces_from_other_tokens(
    auth: tuple[TestClient, str, str],
) -> None:
    client, alpha, beta = auth
    assert publish(client, alpha, "alpha/private-thing").status_code == 200
    assert publish(client, beta, "beta/public-thing").status_code == 200
    assert publish(client, alpha, "alpha/gone").status_code == 200
    assert client.delete("/api/state/entities/alpha/gone", headers=bearer(alpha)).json()["deleted"]

    def seen(token: str | None) -> tuple[set[str], set[str]]:
        page = client.get("/api/state/changes", params={"since": 0}, headers=bearer(token)).json()
        return {e["id"] for e in page["changes"]}, {d["id"] for d in page["deleted"]}

    assert seen(None) == ({"beta/public-thing"}, set())
    assert seen(beta) == ({"beta/public-thing"}, set())
    assert seen(alpha) == ({"alpha/private-thing", "beta/public-thing"}, {"alpha/gone"})
    assert seen(ADMIN)[1] == {"alpha/gone"}
