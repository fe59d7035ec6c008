"""Coordination over HTTP against a real `flux serve`: conditional writes (409 bodies, If-Match,
If-None-Match), atomic batches, leases with fencing, TTL and changes-since."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import FluxServer, module_server, wait_for


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    yield from module_server(tmp_path_factory, "coordination", {"FLUX_TOMBSTONES_KEPT": "5"})


@pytest.fixture
def http(srv: FluxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.url, timeout=20) as client:
        yield client


def event(entity_id: str, source: str = "test", **fields: Any) -> dict[str, Any]:
    props = fields.pop("props", {"n": 1})
    return {
        "stream": "tasks",
        "source": source,
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": props},
        **fields,
    }


def publish(http: httpx.Client, body: dict[str, Any], **headers: str) -> httpx.Response:
    return http.post("/api/events", json=body, headers=headers)


def test_a_failed_condition_is_a_409_an_agent_can_act_on(http: httpx.Client) -> None:
    created = publish(http, event("c1/task", source="planner", props={"status": "open"}))
    version = created.json()["sequence"]
    ok = publish(http, event("c1/task", props={"status": "taken"}, expected_version=version))
    assert ok.status_code == 200, ok.text
    stale = publish(
        http, event("c1/task", source="late", props={"status": "mine"}, expected_version=version)
    )
    assert stale.status_code == 409
    body = stale.json()
    assert body["error"].startswith("condition failed: expected version")
    assert body["entity_id"] == "c1/task"
    assert body["expected"] == {"version": version}
    assert body["current_version"] == ok.json()["sequence"]
    assert body["current"]["properties"] == {"status": "taken"}
    assert body["current"]["version"] == ok.json()["sequence"]
    assert body["last_source"] == "test"
    assert isinstance(body["last_timestamp"], int)
    # nothing was stored
    assert http.get("/api/state/entities/c1/task").json()["properties"] == {"status": "taken"}


def test_expected_properties_and_create_if_absent(http: httpx.Client) -> None:
    claim = event("c2/job", props={"status": "open"}, expected_version=0)
    assert publish(http, claim).status_code == 200
    again = publish(http, event("c2/job", props={"status": "open"}, expected_version=0))
    assert again.status_code == 409 and again.json()["current_version"] > 0
    take = event("c2/job", props={"status": "taken"}, expected_properties={"status": "open"})
    assert publish(http, take).status_code == 200
    second = publish(
        http, event("c2/job", props={"status": "taken"}, expected_properties={"status": "open"})
    )
    assert second.status_code == 409
    assert second.json()["expected"] == {"properties": {"status": "open"}}
    absent = event("c2/job", props={"x": 1}, expected_properties={"owner": None})
    assert publish(http, absent).status_code == 200


def test_if_match_and_if_none_match(http: httpx.Client) -> None:
    first = publish(http, event("c3/doc"), **{"If-None-Match": "*"})
    assert first.status_code == 200
    assert publish(http, event("c3/doc"), **{"If-None-Match": "*"}).status_code == 409
    version = first.json()["sequence"]
    assert publish(http, event("c3/doc"), **{"If-Match": f'"{version}"'}).status_code == 200
    assert publish(http, event("c3/doc"), **{"If-Match": f'"{version}"'}).status_code == 409
    bad = publish(http, event("c3/doc"), **{"If-Match": "abc"})
    assert bad.status_code == 400 and "If-Match" in bad.json()["error"]
    clash = publish(http, event("c3/doc", expected_version=1), **{"If-Match": '"2"'})
    assert clash.status_code == 400


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"expected_version": -1}, "expected_version"),
        ({"expected_version": "3"}, "expected_version"),
        ({"expected_properties": [1]}, "expected_properties"),
        ({"fencing_token": 0}, "fencing_token"),
        ({"ttl_ms": -5}, "ttl_ms"),
    ],
)
def test_bad_conditions_are_400(http: httpx.Client, fields: dict[str, Any], message: str) -> None:
    answer = publish(http, event("c4/x", **fields))
    assert answer.status_code == 400 and message in answer.json()["error"]


def test_reserved_properties_are_refused(http: httpx.Client) -> None:
    forged = event("c4/x", props={"__lease__": {"owner": "me", "token": 10**9}})
    answer = publish(http, forged)
    assert answer.status_code == 400 and "__lease__" in answer.json()["error"]


def test_a_batch_reports_conditional_events_per_index(http: httpx.Client) -> None:
    created = publish(http, event("c5/a")).json()["sequence"]
    answer = http.post(
        "/api/events/batch",
        json={
            "events": [
                event("c5/a", props={"n": 2}, expected_version=created),
                event("c5/a", props={"n": 3}, expected_version=created),
                event("c5/b", props={"n": 1}),
            ]
        },
    )
    body = answer.json()
    assert answer.status_code == 200
    assert body["successful"] == 2 and body["failed"] == 1
    first, second, third = body["results"]
    assert first["error"] is None and first["sequence"] == created + 1
    assert second["error"].startswith("condition failed")
    assert second["conflict"]["current_version"] == created + 1
    assert second["sequence"] is None
    assert third["error"] is None


def test_an_atomic_batch_is_all_or_nothing(http: httpx.Client) -> None:
    task = publish(http, event("c6/task", props={"status": "open"})).json()["sequence"]
    worker = publish(http, event("c6/worker", props={"busy": False})).json()["sequence"]
    refused = http.post(
        "/api/events/batch",
        json={
            "atomic": True,
            "events": [
                event("c6/task", props={"status": "taken"}, expected_version=task),
                event("c6/worker", props={"busy": True}, expected_version=worker + 100),
            ],
        },
    )
    assert refused.status_code == 409
    assert refused.json()["index"] == 1
    assert http.get("/api/state/entities/c6/task").json()["properties"]["status"] == "open"
    done = http.post(
        "/api/events/batch",
        json={
            "atomic": True,
            "events": [
                event("c6/task", props={"status": "taken"}, expected_version=task),
                event("c6/worker", props={"busy": True}, expected_version=worker),
            ],
        },
    )
    assert done.status_code == 200, done.text
    sequences = [r["sequence"] for r in done.json()["results"]]
    assert sequences[1] == sequences[0] + 1
    invalid = http.post(
        "/api/events/batch",
        json={"atomic": True, "events": [event("c6/task"), {"stream": "x"}]},
    )
    assert invalid.status_code == 400 and "event 1" in invalid.json()["error"]


def test_leases_with_fencing_tokens(http: httpx.Client) -> None:
    acquired = http.post(
        "/api/leases/acquire", json={"entity_id": "c7/lock", "owner": "w1", "ttl_ms": 60_000}
    )
    assert acquired.status_code == 200, acquired.text
    lease = acquired.json()
    token = lease["token"]
    assert lease["owner"] == "w1" and lease["version"] == token
    held = http.get("/api/state/entities/c7/lock").json()["properties"]["__lease__"]
    assert held["owner"] == "w1" and held["token"] == token
    other = http.post(
        "/api/leases/acquire", json={"entity_id": "c7/lock", "owner": "w2", "ttl_ms": 60_000}
    )
    assert other.status_code == 409 and "held by 'w1'" in other.json()["error"]
    assert other.json()["current"]["properties"]["__lease__"]["owner"] == "w1"
    write = publish(http, event("c7/lock", props={"step": 1}, fencing_token=token))
    assert write.status_code == 200
    renewed = http.post(
        "/api/leases/renew",
        json={"entity_id": "c7/lock", "owner": "w1", "token": token, "ttl_ms": 30_000},
    )
    assert renewed.status_code == 200 and renewed.json()["token"] == token
    released = http.post(
        "/api/leases/release", json={"entity_id": "c7/lock", "owner": "w1", "token": token}
    )
    assert released.status_code == 200 and released.json()["released"] is True
    after = publish(http, event("c7/lock", props={"step": 2}, fencing_token=token))
    assert after.status_code == 409
    taken = http.post(
        "/api/leases/acquire", json={"entity_id": "c7/lock", "owner": "w2", "ttl_ms": 60_000}
    )
    assert taken.json()["token"] > token
    stale = publish(http, event("c7/lock", props={"step": 3}, fencing_token=token))
    assert stale.status_code == 409 and "stale" in stale.json()["error"]


def test_a_lease_that_expires_frees_itself_through_a_logged_event(http: httpx.Client) -> None:
    acquired = http.post(
        "/api/leases/acquire", json={"entity_id": "c8/lock", "owner": "w1", "ttl_ms": 300}
    ).json()

    def freed() -> bool:
        props = http.get("/api/state/entities/c8/lock").json()["properties"]
        return props["__lease__"] is None

    wait_for(freed, "the lease to expire", timeout=10)
    history = http.get("/api/events", params={"entity": "c8/lock"}).json()
    assert history[0]["payload"]["properties"] == {"__lease__": None}
    assert history[0]["stream"] == "flux.leases.expired"
    assert history[0]["source"] == "flux"
    taken = http.post(
        "/api/leases/acquire", json={"entity_id": "c8/lock", "owner": "w2", "ttl_ms": 60_000}
    )
    assert taken.status_code == 200 and taken.json()["token"] > acquired["token"]


def test_an_entity_not_updated_within_its_ttl_is_deleted(http: httpx.Client) -> None:
    assert publish(http, event("c9/beat", ttl_ms=400)).status_code == 200
    entity = http.get("/api/state/entities/c9/beat").json()
    assert entity["properties"]["__ttl_ms__"] == 400
    for _ in range(3):  # each update refreshes it
        time.sleep(0.2)
        assert publish(http, event("c9/beat", props={"n": 2})).status_code == 200
        assert http.get("/api/state/entities/c9/beat").status_code == 200
    wait_for(
        lambda: http.get("/api/state/entities/c9/beat").status_code == 404,
        "the entity to expire",
        timeout=10,
    )
    history = http.get("/api/events", params={"entity": "c9/beat"}).json()
    assert history[0]["payload"]["properties"]["__expired__"] == "ttl"


def test_changes_since_pages_and_deletions(http: httpx.Client) -> None:
    start = http.get("/api/state/changes", params={"since": 0, "limit": 1})
    assert start.status_code == 200
    base = http.get("/api/health").json()
    cursor = publish(http, event("c10/zero")).json()["sequence"]
    for i in range(5):
        publish(http, event(f"c10/e{i}", props={"i": i}))
    publish(http, event("c10/e1", props={"i": 10}))
    assert http.delete("/api/state/entities/c10/e2").status_code == 200
    seen: dict[str, int] = {}
    deleted: list[str] = []
    pages = 0
    while True:
        page = http.get(
            "/api/state/changes", params={"since": cursor, "limit": 2, "prefix": "c10/"}
        ).json()
        pages += 1
        for entity in page["changes"]:
            seen[entity["id"]] = entity["properties"]["i"]
        deleted += [d["id"] for d in page["deleted"]]
        cursor = page["next"]
        if not page["more"]:
            break
    assert pages >= 3
    assert seen == {"c10/e0": 0, "c10/e1": 10, "c10/e3": 3, "c10/e4": 4}
    assert deleted == ["c10/e2"]
    assert base is not None
    again = http.get("/api/state/changes", params={"since": cursor}).json()
    assert again["changes"] == [] and again["deleted"] == []


def test_changes_since_a_forgotten_deletion_says_resync(http: httpx.Client) -> None:
    cursor = publish(http, event("c11/first")).json()["sequence"]
    for i in range(7):  # the server keeps 5 deletions
        publish(http, event(f"c11/d{i}"))
        http.delete(f"/api/state/entities/c11/d{i}")
    answer = http.get("/api/state/changes", params={"since": cursor})
    assert answer.status_code == 410
    assert answer.json()["resync"] is True and answer.json()["oldest"] > cursor


def test_http_presence_is_a_lease_its_holder_renews(http: httpx.Client) -> None:
    """An agent that only speaks HTTP holds a presence lease: the entity, with the properties
    given at acquire, lives while the lease is renewed and is deleted when it is not."""
    body = {
        "entity_id": "c12/agent-7",
        "owner": "agent-7",
        "ttl_ms": 400,
        "presence": True,
        "properties": {"online": True, "skills": ["search"]},
    }
    lease = http.post("/api/leases/acquire", json=body).json()
    assert http.get("/api/state/entities/c12/agent-7").json()["properties"]["skills"] == ["search"]
    for _ in range(3):
        time.sleep(0.2)
        renewed = http.post(
            "/api/leases/renew",
            json={
                "entity_id": "c12/agent-7",
                "owner": "agent-7",
                "token": lease["token"],
                "ttl_ms": 400,
            },
        )
        assert renewed.status_code == 200, renewed.text
    wait_for(
        lambda: http.get("/api/state/entities/c12/agent-7").status_code == 404,
        "the presence lease to end",
        timeout=10,
    )
    gone = http.get("/api/events", params={"entity": "c12/agent-7"}).json()[0]
    assert gone["payload"]["properties"]["__deleted__"] is True
    assert gone["payload"]["properties"]["__expired__"] == "presence"
    # released by its holder: deleted at once
    again = http.post("/api/leases/acquire", json=body).json()
    released = http.post(
        "/api/leases/release",
        json={"entity_id": "c12/agent-7", "owner": "agent-7", "token": again["token"]},
    )
    assert released.status_code == 200
    assert http.get("/api/state/entities/c12/agent-7").status_code == 404
    bad = http.post("/api/leases/renew", json={**body, "token": 1})
    assert bad.status_code == 400 and "acquire" in bad.json()["error"]


def test_bad_lease_properties_and_deep_conditions_are_400(http: httpx.Client) -> None:
    deep: dict[str, Any] = {}
    for _ in range(300):
        deep = {"d": deep}
    acquire = {"entity_id": "c13/x", "owner": "o", "ttl_ms": 1000, "properties": deep}
    answer = http.post("/api/leases/acquire", json=acquire)
    assert answer.status_code == 400 and "recursion limit" in answer.json()["error"]
    reserved = {**acquire, "properties": {"__ttl_ms__": 5}}
    assert http.post("/api/leases/acquire", json=reserved).status_code == 400
    probe = publish(http, event("c13/y", expected_properties=deep))
    assert probe.status_code == 400 and "expected_properties" in probe.json()["error"]


def test_expected_properties_compare_as_json(http: httpx.Client) -> None:
    assert publish(http, event("c14/f", props={"flag": True, "n": 1})).status_code == 200
    assert publish(http, event("c14/f", expected_properties={"flag": 1})).status_code == 409
    assert publish(http, event("c14/f", expected_properties={"n": 1.0})).status_code == 409
    assert publish(http, event("c14/f", expected_properties={"n": True})).status_code == 409
    ok = event("c14/f", expected_properties={"flag": True, "n": 1})
    assert publish(http, ok).status_code == 200


def test_changes_from_zero_never_need_a_resync(http: httpx.Client) -> None:
    for i in range(7):  # more deletions than the server keeps
        publish(http, event(f"c15/d{i}"))
        http.delete(f"/api/state/entities/c15/d{i}")
    publish(http, event("c15/kept"))
    page = http.get("/api/state/changes", params={"since": 0, "prefix": "c15/"})
    assert page.status_code == 200
    assert [e["id"] for e in page.json()["changes"]] == ["c15/kept"]
