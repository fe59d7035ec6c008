"""Rate limits through the API, on a fake clock: 429 with the real Retry-After, a batch counts
each event, deletes count too, namespaces are independent, the runtime switch and limit apply at
once, and auth off means no limits (docs/auth.md)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from .authkit import ADMIN, bearer, open_client, publish, register
from .helpers import assert_error, new_event


class Clock:
    def __init__(self) -> None:
        self.now = 5000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limited(data_dir: Path, clock: Clock) -> Iterator[TestClient]:
    """Auth on, 6 events per namespace per minute (one per 10 s), on the fake clock."""
    client = open_client(data_dir, clock=clock, rate_limit_per_namespace_per_minute=6)
    yield client
    client.__exit__(None, None, None)


def batch(client: TestClient, token: str, entity_ids: list[str]) -> object:
    events = [new_event(entity_id) for entity_id in entity_ids]
    return client.post(
        "/api/events/batch", content=orjson.dumps({"events": events}), headers=bearer(token)
    )


def test_429_with_the_real_wait(limited: TestClient, clock: Clock) -> None:
    token = register(limited, "matt")
    for n in range(6):
        assert publish(limited, token, f"matt/{n}").status_code == 200
    refused = publish(limited, token, "matt/6")
    assert_error(refused, 429, "rate limit exceeded")
    assert refused.headers["retry-after"] == "10"
    clock.now += 3.5
    assert publish(limited, token, "matt/6").headers["retry-after"] == "7"
    clock.now += 6.5
    assert publish(limited, token, "matt/6").status_code == 200
    assert publish(limited, token, "matt/7").status_code == 429
    assert len(limited.get("/api/state/entities").json()) == 7


def test_a_batch_counts_each_event(limited: TestClient, clock: Clock) -> None:
    token = register(limited, "matt")
    response = batch(limited, token, [f"matt/{n}" for n in range(9)])
    body = response.json()  # type: ignore[attr-defined]
    assert (body["successful"], body["failed"]) == (6, 3)
    assert [r["error"] for r in body["results"]] == [None] * 6 + ["rate limit exceeded"] * 3
    assert response.headers["retry-after"] == "10"  # type: ignore[attr-defined]
    # invalid and unauthorized events cost nothing
    clock.now += 10
    mixed = batch(limited, token, ["other/x", "solo", "matt/a", "matt/b"]).json()  # type: ignore[attr-defined]
    assert [r["error"] is None for r in mixed["results"]] == [False, False, True, False]
    assert mixed["results"][3]["error"] == "rate limit exceeded"


def test_namespaces_are_limited_independently(limited: TestClient, clock: Clock) -> None:
    greedy = register(limited, "greedy")
    quiet = register(limited, "quiet")
    for round in range(3):
        batch(limited, greedy, [f"greedy/{round}-{n}" for n in range(50)])
        assert publish(limited, quiet, "quiet/x").status_code == 200
        clock.now += 10
    # the greedy namespace got its limit and its refill, no more; the quiet one lost nothing
    assert len(limited.get("/api/state/entities", params={"namespace": "greedy"}).json()) == 8
    quiet_batch = batch(limited, quiet, [f"quiet/{n}" for n in range(6)]).json()  # type: ignore[attr-defined]
    assert quiet_batch["successful"] == 6


def test_the_runtime_switch_and_limit_apply_at_once(limited: TestClient, clock: Clock) -> None:
    token = register(limited, "matt")
    assert batch(limited, token, [f"matt/{n}" for n in range(6)]).json()["successful"] == 6  # type: ignore[attr-defined]
    assert publish(limited, token, "matt/x").status_code == 429
    off = {"rate_limit_enabled": False}
    assert limited.put("/api/admin/config", json=off, headers=bearer(ADMIN)).status_code == 200
    assert batch(limited, token, [f"matt/{n}" for n in range(100)]).json()["failed"] == 0  # type: ignore[attr-defined]
    on = {"rate_limit_enabled": True, "rate_limit_per_namespace_per_minute": 600}
    assert limited.put("/api/admin/config", json=on, headers=bearer(ADMIN)).status_code == 200
    clock.now += 1  # 10 more at 600 per minute
    assert batch(limited, token, [f"matt/{n}" for n in range(20)]).json()["successful"] == 10  # type: ignore[attr-defined]
    refused = publish(limited, token, "matt/y")
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"


def delete_batch(client: TestClient, token: str, body: dict[str, object]) -> object:
    return client.post(
        "/api/state/entities/delete", content=orjson.dumps(body), headers=bearer(token)
    )


def test_deletes_count_against_the_limit(limited: TestClient, clock: Clock) -> None:
    """Each id a delete names takes one event of the namespace's limit, whether its entity
    exists or not (issue 11, defect 6: deletes were free, so a namespace over its limit logged
    100,000 tombstones in under a second)."""
    token = register(limited, "matt")
    batch(limited, token, [f"matt/{n}" for n in range(3)])
    missing = limited.delete("/api/state/entities/matt%2Fnever", headers=bearer(token))
    assert missing.json() == {"entity_id": "matt/never", "deleted": False}
    answer = delete_batch(limited, token, {"entity_ids": ["matt/0", "matt/x", "matt/1"]})
    body = answer.json()  # type: ignore[attr-defined]
    assert body == {  # 3 events + 1 delete + 2 of these 3 ids: the 6 of the minute
        "deleted": 1,
        "deleted_ids": ["matt/0"],
        "not_found": ["matt/x"],
        "failed": 1,
        "errors": ["matt/1: rate limit exceeded"],
    }
    assert answer.headers["retry-after"] == "10"  # type: ignore[attr-defined]
    refused = limited.delete("/api/state/entities/matt%2F1", headers=bearer(token))
    assert_error(refused, 429, "rate limit exceeded")
    assert refused.headers["retry-after"] == "10"
    clock.now += 10
    by_prefix = delete_batch(limited, token, {"prefix": "matt/"}).json()  # type: ignore[attr-defined]
    assert by_prefix["deleted_ids"] == ["matt/1"] and by_prefix["failed"] == 1
    assert [e["id"] for e in limited.get("/api/state/entities").json()] == ["matt/2"]
    clock.now += 60
    done = delete_batch(limited, token, {"namespace": "matt"}).json()  # type: ignore[attr-defined]
    assert (done["deleted_ids"], done["failed"]) == (["matt/2"], 0)


def test_deletes_are_not_limited_with_the_limit_off(limited: TestClient) -> None:
    token = register(limited, "matt")
    off = {"rate_limit_enabled": False}
    assert limited.put("/api/admin/config", json=off, headers=bearer(ADMIN)).status_code == 200
    ids = [f"matt/{n}" for n in range(20)]
    assert batch(limited, token, ids).json()["successful"] == 20  # type: ignore[attr-defined]
    answer = delete_batch(limited, token, {"entity_ids": ids}).json()  # type: ignore[attr-defined]
    assert (answer["deleted"], answer["failed"]) == (20, 0)


def test_no_limits_with_auth_off(data_dir: Path, clock: Clock) -> None:
    client = open_client(
        data_dir, clock=clock, auth_enabled=False, rate_limit_per_namespace_per_minute=1
    )
    try:
        for n in range(5):
            response = client.post("/api/events", content=orjson.dumps(new_event(f"ns/{n}")))
            assert response.status_code == 200
    finally:
        client.__exit__(None, None, None)
