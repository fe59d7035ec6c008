"""The SDK, sync and async: every test runs once with `FluxClient` and once with
`AsyncFluxClient` (the `connect` fixture), against a real `flux serve` process, plus error
mapping and retries with canned replies.

The async client is driven from the test's thread by `sdkharness.Blocking`."""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer, free_port, module_server, wait_for
from flux.client import (
    NO_RETRY,
    AsyncFluxClient,
    FluxClient,
    FluxClientError,
    FluxConflict,
    FluxConnectionError,
    FluxNotFound,
    FluxResync,
    FluxTimeoutError,
    FluxUnavailable,
    Retry,
    entity_path,
    make_event,
)
from jsonserver import JsonServer, Reply
from sdkharness import AnswerDropper, Blocking

ADMIN_TOKEN = "admin-secret"
TOMBSTONES_KEPT = 4


Connect = Callable[..., Any]


@pytest.fixture(scope="module", params=["sync", "async"])
def kind(request: pytest.FixtureRequest) -> str:
    """The client under test (module-scoped: all the tests of one kind run, then the other's)."""
    param: str = request.param
    return param


@pytest.fixture
def connect(kind: str) -> Iterator[Connect]:
    """Makes clients of the kind under test: `connect(url, **FluxClient's options)`; each is
    closed after the test."""
    made: list[Any] = []

    def make(url: str, **options: Any) -> Any:
        client: Any
        if kind == "sync":
            client = FluxClient(url, **options)
        else:
            client = Blocking(AsyncFluxClient(url, **options))
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Iterator[FluxServer]:
    """One server for each kind of client; it has an admin token (which only admin writes need) and
    remembers only a few deletions (so a changes cursor can grow too old)."""
    env = {"FLUX_ADMIN_TOKEN": ADMIN_TOKEN, "FLUX_TOMBSTONES_KEPT": str(TOMBSTONES_KEPT)}
    yield from module_server(tmp_path_factory, f"client-{kind}", env)


@pytest.fixture
def flux(flux_server: FluxServer, connect: Connect) -> Any:
    return connect(flux_server.url)


# -- against a real server -----------------------------------------------------------------


def test_publish_then_get_merges_properties(flux: FluxClient) -> None:
    first = flux.publish("sensors", "agent-01", "client/sensor-01", {"temperature": 22.5})
    assert first["stream"] == "sensors"
    assert len(first["eventId"]) == 36
    flux.publish("sensors", "agent-02", "client/sensor-01", {"unit": "celsius"})
    entity = flux.get("client/sensor-01")
    assert entity["id"] == "client/sensor-01"
    assert entity["properties"] == {"temperature": 22.5, "unit": "celsius"}
    assert "lastUpdated" in entity


def test_publish_sends_the_timestamp_in_epoch_ms(flux: FluxClient) -> None:
    before = time.time_ns() // 1_000_000
    flux.publish("sensors", "agent-01", "client/ts-now", {"n": 1})
    after = time.time_ns() // 1_000_000
    flux.publish("sensors", "agent-01", "client/ts-given", {"n": 2}, timestamp=1_700_000_000_000)
    (now_event,) = flux.history("client/ts-now")
    assert before <= now_event["timestamp"] <= after
    (given_event,) = flux.history("client/ts-given")
    assert given_event["timestamp"] == 1_700_000_000_000


@pytest.mark.parametrize(
    "entity_id",
    ["client/we ird?x=1&y=2#frag", "client/100%", "client/a+b/c", "client/ü€", "..", "."],
)
def test_ids_with_reserved_characters_round_trip(flux: FluxClient, entity_id: str) -> None:
    flux.publish("sensors", "agent-01", entity_id, {"ok": True})
    assert flux.get(entity_id)["id"] == entity_id
    flux.delete(entity_id)
    with pytest.raises(FluxClientError) as caught:
        flux.get(entity_id)
    assert caught.value.status == 404


def test_entity_path_encodes_one_segment() -> None:
    assert entity_path("dawn-coral/sensor-01") == "/api/state/entities/dawn-coral%2Fsensor-01"
    assert entity_path("a b?#%") == "/api/state/entities/a%20b%3F%23%25"
    assert entity_path("..") == "/api/state/entities/%2E%2E"


def test_list_filters_by_prefix_and_namespace(flux: FluxClient) -> None:
    flux.publish("sensors", "a", "listns/one", {"v": 1})
    flux.publish("sensors", "a", "listns/two", {"v": 2})
    flux.publish("sensors", "a", "listns-other/three", {"v": 3})
    by_prefix = {e["id"] for e in flux.list(prefix="listns")}
    assert by_prefix == {"listns/one", "listns/two", "listns-other/three"}
    by_namespace = {e["id"] for e in flux.list(namespace="listns")}
    assert by_namespace == {"listns/one", "listns/two"}
    both = {e["id"] for e in flux.list(prefix="listns/t", namespace="listns")}
    assert both == {"listns/two"}
    everything = {e["id"] for e in flux.list()}
    assert by_prefix <= everything


def test_delete_removes_the_entity(flux: FluxClient) -> None:
    flux.publish("sensors", "a", "client/doomed", {"v": 1})
    result = flux.delete("client/doomed")
    assert result["entity_id"] == "client/doomed"
    assert result["eventId"]
    with pytest.raises(FluxClientError) as caught:
        flux.get("client/doomed")
    assert (caught.value.status, caught.value.message) == (404, "Entity not found")
    assert str(caught.value) == "Entity not found (HTTP 404)"


def test_batch_reports_each_event(flux: FluxClient) -> None:
    now = time.time_ns() // 1_000_000
    good = {
        "stream": "sensors",
        "source": "a",
        "timestamp": now,
        "payload": {"entity_id": "batch/one", "properties": {"temp": 22}},
    }
    bad = {**good, "stream": "Bad"}
    result = flux.batch([good, bad])
    assert (result["successful"], result["failed"]) == (1, 1)
    assert result["results"][0]["error"] is None
    assert "invalid stream format 'Bad'" in result["results"][1]["error"]
    assert flux.get("batch/one")["properties"] == {"temp": 22}


def test_batch_delete_by_prefix_and_ids(flux: FluxClient) -> None:
    for name in ("a", "b", "c"):
        flux.publish("sensors", "x", f"bulk/{name}", {"v": 1})
    assert flux.batch_delete({"entity_ids": ["bulk/a"]})["deleted"] == 1
    assert flux.batch_delete({"prefix": "bulk/"}) == {
        "deleted": 2,
        "deleted_ids": ["bulk/b", "bulk/c"],
        "not_found": [],
        "failed": 0,
        "errors": [],
    }
    assert flux.batch_delete({"entity_ids": ["bulk/a"]})["not_found"] == ["bulk/a"]
    assert flux.delete("bulk/a") == {"entity_id": "bulk/a", "deleted": False}
    assert flux.list(prefix="bulk/") == []


def test_history_newest_first_with_limit_and_since(flux: FluxClient) -> None:
    for n in range(3):
        flux.publish("sensors", "a", "client/hist", {"n": n})
    events = flux.history("client/hist")
    assert [e["payload"]["properties"]["n"] for e in events] == [2, 1, 0]
    assert len(flux.history("client/hist", limit=1)) == 1
    future = datetime.now(UTC) + timedelta(hours=1)
    assert flux.history("client/hist", since=future) == []
    past = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    assert len(flux.history("client/hist", since=past)) == 3


def test_server_errors_carry_status_and_message(flux: FluxClient) -> None:
    with pytest.raises(FluxClientError) as caught:
        flux.publish("Bad", "a", "client/x", {"v": 1})
    assert caught.value.status == 400
    assert caught.value.message == (
        "invalid stream format 'Bad': must be lowercase with optional dots"
    )
    with pytest.raises(FluxClientError) as caught:
        flux.history("client/x", since="yesterday")
    assert caught.value.status == 400
    assert "invalid `since` timestamp" in caught.value.message
    with pytest.raises(FluxClientError) as caught:
        flux.batch_delete({})
    assert caught.value.status == 400


def test_health_and_connectors(flux: FluxClient) -> None:
    flux.publish("sensors", "a", "client/health", {"v": 1})
    health = flux.health()
    assert health["status"] == "ok"
    assert health["entities"] == len(flux.list())
    names = [c["name"] for c in flux.connectors()["connectors"]]
    assert names == ["github", "gmail", "linkedin", "calendar"]


def test_admin_config_read(flux: FluxClient) -> None:
    config = flux.admin_config()
    assert config["rate_limit_per_namespace_per_minute"] > 0
    assert "body_size_limit_single_bytes" in config


def test_admin_config_update_needs_the_admin_token(
    flux_server: FluxServer, connect: Connect
) -> None:
    with connect(flux_server.url, admin_token=ADMIN_TOKEN) as flux:
        updated = flux.admin_config({"rate_limit_per_namespace_per_minute": 5000})
        assert updated["rate_limit_per_namespace_per_minute"] == 5000
        assert flux.admin_config()["rate_limit_per_namespace_per_minute"] == 5000
    for client in (
        connect(flux_server.url),
        connect(flux_server.url, admin_token="wrong"),
        connect(flux_server.url, token="namespace-token"),
    ):
        with client, pytest.raises(FluxClientError) as caught:
            client.admin_config({"rate_limit_per_namespace_per_minute": 1})
        assert (caught.value.status, caught.value.message) == (401, "Unauthorized")


# -- coordination against a real server ---------------------------------------------------


def test_a_failed_condition_raises_a_conflict_with_the_current_state(flux: FluxClient) -> None:
    created = flux.publish("tasks", "planner", "coord/task", {"status": "open"}, if_absent=True)
    with pytest.raises(FluxConflict) as caught:
        flux.publish("tasks", "late", "coord/task", {"status": "open"}, if_absent=True)
    conflict = caught.value
    assert isinstance(conflict, FluxClientError)
    assert conflict.status == 409
    assert conflict.message == (
        f"condition failed: the entity exists (version {created['sequence']}); expected it not to"
    )
    assert conflict.entity_id == "coord/task"
    assert conflict.expected == {"version": 0}
    assert conflict.current_version == created["sequence"]
    assert conflict.current is not None
    assert conflict.current["properties"] == {"status": "open"}
    assert conflict.last_source == "planner"
    assert isinstance(conflict.last_timestamp, int)
    assert conflict.index is None and conflict.lease is None
    assert conflict.details["error"] == conflict.message

    # a read-modify-write retried from the conflict's version
    taken = flux.publish(
        "tasks",
        "w1",
        "coord/task",
        {"status": "taken"},
        expected_version=conflict.current_version,
    )
    with pytest.raises(FluxConflict) as stale:
        flux.publish(
            "tasks", "w2", "coord/task", {"status": "x"}, expected_version=created["sequence"]
        )
    assert stale.value.current_version == taken["sequence"]
    assert flux.get("coord/task")["properties"] == {"status": "taken"}


def test_expected_properties_and_absent_ones(flux: FluxClient) -> None:
    flux.publish("tasks", "p", "coord/job", {"status": "open"})
    flux.publish(
        "tasks", "w1", "coord/job", {"status": "taken"}, expected_properties={"status": "open"}
    )
    with pytest.raises(FluxConflict) as caught:
        flux.publish(
            "tasks", "w2", "coord/job", {"status": "taken"}, expected_properties={"status": "open"}
        )
    assert caught.value.expected == {"properties": {"status": "open"}}
    flux.publish("tasks", "w1", "coord/job", {"owner": "w1"}, expected_properties={"owner": None})
    with pytest.raises(FluxConflict):
        flux.publish(
            "tasks", "w2", "coord/job", {"owner": "w2"}, expected_properties={"owner": None}
        )
    assert flux.get("coord/job")["properties"] == {"status": "taken", "owner": "w1"}
    with pytest.raises(FluxConflict) as missing:
        flux.publish("tasks", "w1", "coord/nothing", {"n": 1}, expected_version=3)
    assert missing.value.current_version == 0 and missing.value.current is None


def test_ttl_ms_sets_and_clears_the_time_to_live(flux: FluxClient) -> None:
    flux.publish("agents", "a", "coord/beat", {"alive": True}, ttl_ms=60_000)
    assert flux.get("coord/beat")["properties"]["__ttl_ms__"] == 60_000
    flux.publish("agents", "a", "coord/beat", {"alive": True}, ttl_ms=0)
    assert flux.get("coord/beat")["properties"]["__ttl_ms__"] is None


def test_leases_and_fenced_writes(flux: FluxClient) -> None:
    lease = flux.lease_acquire("coord/lock", "w1", 60_000)
    assert lease["entity_id"] == "coord/lock" and lease["owner"] == "w1"
    token = lease["token"]
    assert lease["expires_at"] - lease["acquired_at"] == 60_000
    with pytest.raises(FluxConflict) as caught:
        flux.lease_acquire("coord/lock", "w2", 60_000)
    assert caught.value.message.startswith("condition failed: the lease is held by 'w1'")
    assert caught.value.lease is not None
    assert (caught.value.lease["owner"], caught.value.lease["token"]) == ("w1", token)

    flux.publish("tasks", "w1", "coord/lock", {"step": 1}, fencing_token=token)
    renewed = flux.lease_renew("coord/lock", "w1", token, 30_000)
    assert renewed["token"] == token
    with pytest.raises(FluxConflict):
        flux.lease_renew("coord/lock", "w2", token, 30_000)
    with pytest.raises(FluxConflict):
        flux.lease_release("coord/lock", "w1", token + 1)
    released = flux.lease_release("coord/lock", "w1", token)
    assert released["released"] is True and released["entity_id"] == "coord/lock"
    assert flux.get("coord/lock")["properties"]["__lease__"] is None

    newer = flux.lease_acquire("coord/lock", "w2", 60_000)
    assert newer["token"] > token
    with pytest.raises(FluxConflict) as stale:
        flux.publish("tasks", "w1", "coord/lock", {"step": 2}, fencing_token=token)
    assert "stale" in stale.value.message
    assert stale.value.expected == {"fencing_token": token}
    assert flux.get("coord/lock")["properties"]["step"] == 1


def test_a_presence_lease_sets_properties_and_deletes_its_entity_when_released(
    flux: FluxClient,
) -> None:
    lease = flux.lease_acquire(
        "coord/agent-7", "agent-7", 60_000, properties={"skills": ["scrape"]}, presence=True
    )
    entity = flux.get("coord/agent-7")
    assert entity["properties"]["skills"] == ["scrape"]
    assert entity["properties"]["__lease__"]["presence"] is True
    flux.lease_release("coord/agent-7", "agent-7", lease["token"])
    with pytest.raises(FluxClientError) as caught:
        flux.get("coord/agent-7")
    assert caught.value.status == 404


def test_an_atomic_batch_stores_all_or_raises_a_conflict_naming_the_event(
    flux: FluxClient,
) -> None:
    task = flux.publish("tasks", "p", "coord/a-task", {"status": "open"})["sequence"]
    worker = flux.publish("tasks", "p", "coord/a-worker", {"busy": False})["sequence"]
    claim = make_event("tasks", "w1", "coord/a-task", {"status": "taken"}, expected_version=task)
    busy = make_event("tasks", "w1", "coord/a-worker", {"busy": True}, expected_version=task)
    with pytest.raises(FluxConflict) as caught:
        flux.batch([claim, busy], atomic=True)
    assert caught.value.index == 1
    assert caught.value.entity_id == "coord/a-worker"
    assert caught.value.current_version == worker
    assert flux.get("coord/a-task")["properties"] == {"status": "open"}

    busy["expected_version"] = worker
    done = flux.batch([claim, busy], atomic=True)
    sequences = [r["sequence"] for r in done["results"]]
    assert sequences == [sequences[0], sequences[0] + 1]

    # not atomic: the failed condition is reported in its result, the rest is stored
    again = make_event("tasks", "w2", "coord/a-task", {"status": "x"}, expected_version=task)
    other = make_event("tasks", "w2", "coord/a-other", {"n": 1})
    result = flux.batch([again, other])
    assert (result["successful"], result["failed"]) == (1, 1)
    first, second = result["results"]
    assert first["error"].startswith("condition failed: expected version")
    assert first["sequence"] is None
    assert first["conflict"]["current_version"] == sequences[0]
    assert second["error"] is None


def test_changes_pages_and_the_iterator(flux: FluxClient) -> None:
    cursor = flux.publish("tasks", "p", "coord-feed/zero", {"i": -1})["sequence"]
    for i in range(4):
        flux.publish("tasks", "p", f"coord-feed/e{i}", {"i": i})
    flux.publish("tasks", "p", "coord-feed/e1", {"i": 10})
    flux.delete("coord-feed/e2")

    first = flux.changes(cursor, prefix="coord-feed/", limit=2)
    assert [e["id"] for e in first["changes"]] == ["coord-feed/e0", "coord-feed/e3"]
    assert first["more"] is True and first["next"] > cursor

    pages = list(flux.iter_changes(cursor, prefix="coord-feed/", limit=2))
    assert pages[0] == first
    assert [p["more"] for p in pages] == [True] * (len(pages) - 1) + [False]
    changed = {e["id"]: e["properties"]["i"] for p in pages for e in p["changes"]}
    assert changed == {"coord-feed/e0": 0, "coord-feed/e3": 3, "coord-feed/e1": 10}
    assert [d["id"] for p in pages for d in p["deleted"]] == ["coord-feed/e2"]

    last = pages[-1]["next"]
    assert flux.changes(last, prefix="coord-feed/") == {
        "changes": [],
        "deleted": [],
        "next": last,
        "more": False,
    }
    by_namespace = flux.changes(cursor, namespace="coord-feed")
    assert {e["id"] for e in by_namespace["changes"]} == set(changed)


def test_iter_changes_follows_new_changes(
    flux: FluxClient, flux_server: FluxServer, connect: Connect
) -> None:
    cursor = flux.publish("tasks", "p", "coord-follow/start", {"n": 0})["sequence"]
    polls = 0
    seen: list[str] = []
    with connect(flux_server.url) as writer:
        for page in flux.iter_changes(cursor, prefix="coord-follow/", follow=True, interval=0.05):
            polls += 1
            seen += [e["id"] for e in page["changes"]]
            if polls == 2:  # the follower has caught up and polls again: now something happens
                writer.publish("tasks", "p", "coord-follow/later", {"n": 1})
            if seen:
                break
            assert polls < 200, "the change never showed"
    assert seen == ["coord-follow/later"]
    assert polls >= 3


def test_a_cursor_older_than_the_remembered_deletions_raises_resync(flux: FluxClient) -> None:
    cursor = flux.publish("tasks", "p", "coord-old/first", {"n": 1})["sequence"]
    for i in range(TOMBSTONES_KEPT + 1):
        flux.publish("tasks", "p", f"coord-old/d{i}", {"n": i})
        flux.delete(f"coord-old/d{i}")
    with pytest.raises(FluxResync) as caught:
        flux.changes(cursor)
    assert caught.value.status == 410
    assert caught.value.oldest > cursor
    # the server's version when it answered (a background write may follow it)
    assert cursor + 2 * (TOMBSTONES_KEPT + 1) <= caught.value.version
    assert caught.value.version <= flux.health()["lastSequence"]
    assert "no longer known" in caught.value.message
    with pytest.raises(FluxResync):
        next(flux.iter_changes(cursor))
    assert flux.changes(caught.value.version)["changes"] == []


def test_unreachable_server_is_a_connection_error(connect: Connect) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with connect(url, retry=NO_RETRY) as flux, pytest.raises(FluxConnectionError) as caught:
        flux.get("x")
    assert caught.value.status is None
    assert caught.value.message.startswith(f"cannot reach Flux at {url}: ")
    assert isinstance(caught.value, FluxClientError)


# -- with canned replies ---------------------------------------------------------------------


def copy(response: httpx.Response) -> httpx.Response:
    """A new response like `response` (one is read once: a parametrized one serves twice)."""
    return httpx.Response(response.status_code, headers=response.headers, content=response.read())


@pytest.fixture
def mock_client(connect: Connect) -> Callable[..., Any]:
    """A client of the kind under test whose requests get `handler`'s canned replies (and whose
    retries do not wait)."""

    def make(handler: Callable[[httpx.Request], httpx.Response], **options: Any) -> Any:
        options.setdefault("retry", Retry(backoff=0))
        return connect("http://flux.test/", transport=httpx.MockTransport(handler), **options)

    return make


def test_token_is_sent_on_every_call_and_admin_token_on_admin_writes(
    mock_client: Callable[..., Any],
) -> None:
    seen: list[tuple[str, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, json=[] if request.url.path.endswith("entities") else {})

    with mock_client(handler, token="ns-token", admin_token="admin-token") as flux:
        flux.get("a/b")
        flux.list()
        flux.publish("s", "src", "a/b", {})
        flux.delete("a/b")
        flux.admin_config()
        flux.admin_config({"max_batch_delete": 3})
    assert [auth for _, _, auth in seen] == ["Bearer ns-token"] * 5 + ["Bearer admin-token"]
    assert seen[0][1] == "/api/state/entities/a/b"  # httpx shows the decoded path


def test_no_authorization_header_without_a_token(mock_client: Callable[..., Any]) -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, json=[])

    with mock_client(handler) as flux:
        flux.list()
    assert "authorization" not in headers[0]


def test_request_bodies_are_json(mock_client: Callable[..., Any]) -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/json"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={})

    with mock_client(handler) as flux:
        flux.publish("sensors", "agent-01", "ns/ü", {"t": 1.5}, timestamp=42)
        flux.batch([{"stream": "s"}, {"stream": "s", "eventId": "mine"}])
        flux.publish("sensors", "agent-01", "ns/ü", {}, timestamp=42, event_id="given")
    # an event is given its id before it is sent (so that a retry sends the same one)
    first_id = bodies[0].pop("eventId")  # type: ignore[union-attr]
    generated = bodies[1]["events"][0].pop("eventId")  # type: ignore[index]
    assert len(first_id) == len(generated) == 36 and first_id != generated
    assert bodies == [
        {
            "stream": "sensors",
            "source": "agent-01",
            "timestamp": 42,
            "payload": {"entity_id": "ns/ü", "properties": {"t": 1.5}},
        },
        {"events": [{"stream": "s"}, {"eventId": "mine", "stream": "s"}]},
        {
            "eventId": "given",
            "stream": "sensors",
            "source": "agent-01",
            "timestamp": 42,
            "payload": {"entity_id": "ns/ü", "properties": {}},
        },
    ]


def test_coordination_request_bodies(mock_client: Callable[..., Any]) -> None:
    sent: list[tuple[str, object]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        for event in body.get("events", [body]):
            event.pop("eventId", None)
        sent.append((request.url.path, body))
        return httpx.Response(200, json={})

    with mock_client(handler) as flux:
        flux.publish(
            "tasks",
            "w1",
            "ns/t",
            {"s": 1},
            timestamp=7,
            expected_version=3,
            expected_properties={"s": None},
            fencing_token=9,
            ttl_ms=0,
        )
        flux.publish("tasks", "w1", "ns/t", {}, timestamp=7, if_absent=True)
        flux.batch([{"stream": "s"}], atomic=True)
        flux.lease_acquire("ns/l", "w1", 500)
        flux.lease_acquire("ns/p", "w1", 500, properties={"on": True}, presence=True)
        flux.lease_renew("ns/l", "w1", 4, 600)
        flux.lease_release("ns/l", "w1", 4)
    event = {"stream": "tasks", "source": "w1", "timestamp": 7}
    assert sent == [
        (
            "/api/events",
            {
                **event,
                "payload": {"entity_id": "ns/t", "properties": {"s": 1}},
                "expected_version": 3,
                "expected_properties": {"s": None},
                "fencing_token": 9,
                "ttl_ms": 0,
            },
        ),
        (
            "/api/events",
            {**event, "payload": {"entity_id": "ns/t", "properties": {}}, "expected_version": 0},
        ),
        ("/api/events/batch", {"events": [{"stream": "s"}], "atomic": True}),
        ("/api/leases/acquire", {"entity_id": "ns/l", "owner": "w1", "ttl_ms": 500}),
        (
            "/api/leases/acquire",
            {
                "entity_id": "ns/p",
                "owner": "w1",
                "ttl_ms": 500,
                "properties": {"on": True},
                "presence": True,
            },
        ),
        ("/api/leases/renew", {"entity_id": "ns/l", "owner": "w1", "token": 4, "ttl_ms": 600}),
        ("/api/leases/release", {"entity_id": "ns/l", "owner": "w1", "token": 4}),
    ]


def test_if_absent_with_another_expected_version_is_refused() -> None:
    with pytest.raises(ValueError, match="if_absent expects version 0"):
        make_event("s", "a", "ns/x", {}, expected_version=2, if_absent=True)
    assert (
        make_event("s", "a", "ns/x", {}, expected_version=0, if_absent=True)["expected_version"]
        == 0
    )


@pytest.mark.parametrize(
    ("response", "error_type"),
    [
        (httpx.Response(409, json={"error": "Namespace name already exists"}), FluxClientError),
        (
            httpx.Response(409, json={"error": "condition failed: x", "current_version": 2}),
            FluxConflict,
        ),
        (httpx.Response(410, json={"error": "gone"}), FluxClientError),
        (
            httpx.Response(410, json={"error": "old", "resync": True, "oldest": 5, "version": 9}),
            FluxResync,
        ),
        (httpx.Response(404, json={"error": "Entity not found"}), FluxNotFound),
        (httpx.Response(503, json={"error": "log", "outcome": "stored"}), FluxUnavailable),
    ],
)
def test_answers_become_the_error_that_says_what_happened(
    response: httpx.Response, error_type: type[FluxClientError], mock_client: Callable[..., Any]
) -> None:
    with (
        mock_client(lambda request: copy(response)) as flux,
        pytest.raises(FluxClientError) as caught,
    ):
        flux.get("x")
    assert type(caught.value) is error_type
    assert caught.value.status == response.status_code


@pytest.mark.parametrize(
    ("response", "message"),
    [
        (httpx.Response(404, json={"error": "Entity not found"}), "Entity not found"),
        (httpx.Response(502, text="<html>bad gateway</html>"), "Bad Gateway: <html>bad gateway"),
        (httpx.Response(500, json={"detail": "x"}), 'Internal Server Error: {"detail"'),
        (httpx.Response(405), "Method Not Allowed"),
        (httpx.Response(503, json={"status": "starting"}), "Flux is starting"),
    ],
)
def test_error_mapping(
    response: httpx.Response, message: str, mock_client: Callable[..., Any]
) -> None:
    with (
        mock_client(lambda request: copy(response)) as flux,
        pytest.raises(FluxClientError) as caught,
    ):
        flux.health()
    assert caught.value.status == response.status_code
    assert caught.value.message.startswith(message)


def test_success_without_json_is_an_error(mock_client: Callable[..., Any]) -> None:
    with (
        mock_client(lambda request: httpx.Response(200, text="<html>")) as flux,
        pytest.raises(FluxClientError) as caught,
    ):
        flux.get("x")
    assert caught.value.status == 200
    assert "did not answer with JSON" in caught.value.message


def test_timeout_is_a_timeout_error(mock_client: Callable[..., Any]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with mock_client(handler) as flux, pytest.raises(FluxTimeoutError) as caught:
        flux.get("x")
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, FluxConnectionError)
    assert (
        caught.value.message == "cannot reach Flux at http://flux.test: timed out (read timed out)"
    )


def test_both_clients_have_the_same_methods_with_the_same_signatures() -> None:
    def methods(client: object) -> dict[str, inspect.Signature]:
        return {
            name: inspect.signature(getattr(client, name))
            for name in dir(client)
            if not name.startswith("_") and callable(getattr(client, name))
        }

    sync, async_ = FluxClient(), AsyncFluxClient()
    only_sync, only_async = {"close"}, {"aclose"}
    assert methods(sync).keys() - only_sync == methods(async_).keys() - only_async
    for name, signature in methods(sync).items():
        if name not in only_sync | {"run"}:
            assert methods(async_)[name].parameters == signature.parameters, name
    assert {"publish", "get", "list", "changes", "lease_acquire", "watch", "claim"} <= set(
        methods(sync)
    )
    sync.close()
    asyncio.run(async_.aclose())


# -- retries -----------------------------------------------------------------------------------


def test_a_write_whose_answer_is_lost_is_sent_again_with_the_same_event_ids(
    mock_client: Callable[..., Any],
) -> None:
    bodies: list[bytes] = []
    retries: list[tuple[int, int | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.content)
        if len(bodies) % 3 == 1:
            raise httpx.ReadError("connection reset", request=request)
        if len(bodies) % 3 == 2:
            return httpx.Response(503, json={"error": "event log: timeout", "outcome": "unknown"})
        return httpx.Response(200, json={"eventId": "x", "stream": "s", "sequence": 7})

    def heard(attempt: int, error: FluxClientError, delay: float) -> None:
        retries.append((attempt, error.status))

    retry = Retry(backoff=0, on_retry=heard)
    with mock_client(handler, retry=retry) as flux:
        assert flux.publish("s", "a", "ns/x", {"n": 1})["sequence"] == 7
        flux.batch([make_event("s", "a", "ns/x", {"n": 2})])
    assert len(bodies) == 6 and len(set(bodies[:3])) == 1 and len(set(bodies[3:])) == 1
    assert b'"eventId"' in bodies[0] and b'"eventId"' in bodies[3]
    assert retries == [(1, None), (2, 503)] * 2


def test_what_may_not_be_stored_twice_is_not_sent_again(
    mock_client: Callable[..., Any],
) -> None:
    sent: list[str] = []
    answers: list[Callable[[httpx.Request], httpx.Response]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request.url.path)
        return answers.pop(0)(request) if answers else httpx.Response(200, json={})

    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadError("connection reset", request=request)

    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    def unavailable(outcome: str) -> Callable[[httpx.Request], httpx.Response]:
        return lambda request: httpx.Response(503, json={"error": "log", "outcome": outcome})

    with mock_client(handler, retry=Retry(attempts=3, backoff=0)) as flux:
        # a delete whose answer was lost may have been done: it is not sent again ...
        answers[:] = [lost]
        with pytest.raises(FluxConnectionError) as caught:
            flux.delete("ns/x")
        assert caught.value.maybe_sent and len(sent) == 1
        # ... nor after a 503 that may have stored it ...
        answers[:] = [unavailable("unknown")]
        with pytest.raises(FluxUnavailable) as unknown:
            flux.lease_release("ns/x", "w", 3)
        assert unknown.value.outcome == "unknown" and len(sent) == 2
        # ... but a request that never reached the server, or was not stored, is
        answers[:] = [refused, unavailable("not_stored")]
        flux.delete("ns/x")
        assert len(sent) == 5
        # and retries are bounded
        answers[:] = [unavailable("unknown")] * 3
        with pytest.raises(FluxUnavailable):
            flux.publish("s", "a", "ns/x", {})
        assert len(sent) == 8
    with pytest.raises(ValueError, match="attempts must be at least 1"):
        Retry(attempts=0)


def test_a_publish_waits_out_a_server_restart(
    server_factory: type[FluxServer], tmp_path: Path, connect: Connect
) -> None:
    srv = server_factory(tmp_path / "data").start()
    retries: list[FluxClientError] = []
    retry = Retry(
        attempts=100, backoff=0.05, max_backoff=0.2, on_retry=lambda n, e, d: retries.append(e)
    )
    flux = connect(srv.url, retry=retry)
    before = flux.publish("sensors", "a", "restart/p", {"n": 1})["sequence"]
    srv.stop()
    restarted = threading.Timer(0.5, server_factory(srv.data_dir, port=srv.port).start)
    restarted.start()
    try:
        accepted = flux.publish("sensors", "a", "restart/p", {"n": 2})
    finally:
        restarted.join()
    assert retries and all(isinstance(e, FluxConnectionError) for e in retries)
    assert accepted["sequence"] > before
    assert [e["eventId"] for e in flux.history("restart/p")] == [
        accepted["eventId"],
        flux.history("restart/p")[1]["eventId"],
    ]
    assert flux.get("restart/p")["version"] == accepted["sequence"]


def test_an_event_whose_answer_was_lost_is_stored_once(
    flux_server: FluxServer, connect: Connect
) -> None:
    proxy = AnswerDropper(flux_server.url)
    try:
        flux = connect(proxy.url, retry=Retry(backoff=0.01))
        accepted = flux.publish("sensors", "a", "client/once", {"n": 1})
    finally:
        proxy.close()
    # the server stored the first send and answered it; the client never heard that answer
    assert [answer.split(b"\r\n", 1)[0] for answer in proxy.dropped] == [b"HTTP/1.1 200 OK"]
    direct = connect(flux_server.url)
    assert [e["eventId"] for e in direct.history("client/once")] == [accepted["eventId"]]
    assert direct.get("client/once")["version"] == accepted["sequence"]


# -- watch -------------------------------------------------------------------------------------


def test_watch_follows_across_a_server_restart_without_missing_a_version(
    server_factory: type[FluxServer], tmp_path: Path, connect: Connect
) -> None:
    srv = server_factory(tmp_path / "data").start()
    flux = connect(srv.url, retry=Retry(attempts=100, backoff=0.05, max_backoff=0.2))

    def publish(n: int) -> list[int]:
        return [
            flux.publish("sensors", "a", f"live/s{i % 2}", {"n": i})["sequence"] for i in range(n)
        ]

    published = publish(3)
    statuses: list[str] = []
    seen: list[tuple[str, int]] = []
    with flux.watch(prefix="live/", since=0, on_status=statuses.append) as changes:

        def take(count: int) -> None:
            while len([s for s in seen if s[0] == "state_update"]) < count:
                message = next(changes)
                seen.append((message["type"], message["version"]))

        take(3)
        srv.stop()
        srv = server_factory(srv.data_dir, port=srv.port).start()
        published += publish(3)  # while the watch is still away
        take(6)
        assert changes.version == published[-1]
    updates = [version for kind, version in seen if kind == "state_update"]
    assert updates == published
    # the replay, then the subscription's acknowledgement (past any version Flux took itself)
    assert [kind for kind, _ in seen[:4]] == ["state_update"] * 3 + ["subscribed"]
    assert seen[3][1] >= published[2]
    assert any("reconnect" in status for status in statuses)


def test_watch_hands_on_a_resync_when_the_server_cannot_replay(
    flux: Any,
) -> None:
    accepted = flux.publish("sensors", "a", "resync/a", {"n": 1})
    with flux.watch(prefix="resync/", since=accepted["sequence"] + 10**6) as changes:
        first, second, third = next(changes), next(changes), next(changes)
    assert first["type"] == "resync" and first["version"] >= accepted["sequence"]
    assert (second["type"], second["entity_id"], second["properties"]) == (
        "snapshot",
        "resync/a",
        {"n": 1},
    )
    assert third["type"] == "subscribed"


def test_watch_of_an_unreachable_server_raises(connect: Connect) -> None:
    flux = connect(f"http://127.0.0.1:{free_port()}")
    with flux.watch(entity_id="x") as changes, pytest.raises(FluxConnectionError):
        next(changes)
    with pytest.raises(ValueError, match="not both"):
        flux.watch(entity_id="x", prefix="y")


# -- claim -------------------------------------------------------------------------------------


def test_a_claim_is_renewed_in_the_background_and_released_on_exit(flux: Any) -> None:
    with flux.claim("claim/leader", "node-a", 1500) as claim:
        flux.publish("s", "node-a", "claim/leader", {"step": 1}, fencing_token=claim.token)
        wait_for(lambda: claim.renewals >= 4, "four renewals")  # > one TTL since it was taken
        assert not claim.lost and claim.reason is None
        flux.publish("s", "node-a", "claim/leader", {"step": 2}, fencing_token=claim.token)
        with pytest.raises(FluxConflict):
            flux.lease_acquire("claim/leader", "node-b", 1000)
    assert claim.released and not claim.lost
    entity = flux.get("claim/leader")
    assert entity["properties"]["__lease__"] is None and entity["properties"]["step"] == 2
    assert flux.lease_acquire("claim/leader", "node-b", 1000)["token"] > claim.token


def test_a_claim_held_by_another_owner_is_refused(flux: Any) -> None:
    held = flux.lease_acquire("claim/busy", "node-b", 60_000)
    with pytest.raises(FluxConflict) as caught, flux.claim("claim/busy", "node-a", 1000):
        raise AssertionError("the block ran without the lease")
    assert caught.value.lease is not None and caught.value.lease["token"] == held["token"]


def test_a_claim_whose_renewal_is_refused_is_lost(flux: Any) -> None:
    with flux.claim("claim/taken", "node-a", 900, properties={"role": "leader"}) as claim:
        assert flux.get("claim/taken")["properties"]["role"] == "leader"
        flux.lease_release("claim/taken", "node-a", claim.token)  # behind the claim's back
        flux.lease_acquire("claim/taken", "node-b", 60_000)
        wait_for(lambda: claim.lost, "the claim to be lost")
        assert claim.reason.startswith("the lease was lost: condition failed")
        with pytest.raises(FluxConflict):
            flux.publish("s", "node-a", "claim/taken", {"x": 1}, fencing_token=claim.token)
    assert not claim.released
    assert flux.get("claim/taken")["properties"]["__lease__"]["owner"] == "node-b"


def test_a_claim_is_lost_when_the_server_is_down_past_its_ttl(
    server_factory: type[FluxServer], tmp_path: Path, connect: Connect
) -> None:
    srv = server_factory(tmp_path / "data").start()
    flux = connect(srv.url)
    with flux.claim("claim/down", "node-a", 1500) as claim:
        token = claim.token
        wait_for(lambda: claim.renewals >= 1, "a renewal")
        srv.stop()
        wait_for(lambda: claim.lost, "the claim to be lost")
        assert claim.reason == "no renewal reached the server within the lease's 1500 ms"
        srv = server_factory(srv.data_dir, port=srv.port).start()
        with pytest.raises(FluxConflict) as caught:
            flux.publish("s", "node-a", "claim/down", {"x": 1}, fencing_token=token)
        assert caught.value.expected == {"fencing_token": token}
    assert claim.lost and not claim.released
    with pytest.raises(ValueError, match="renew_fraction"):
        flux.claim("claim/down", "node-a", 1500, renew_fraction=1)


# -- namespaces, connectors and sources (auth on) ----------------------------------------------

ENCRYPTION_KEY = base64.b64encode(bytes(range(100, 132))).decode()


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, kind: str) -> Iterator[FluxServer]:
    """A server with auth on, connector credentials and GitHub sign-in configured (GitHub
    itself is an address nobody answers: only what the server says about it is tested)."""
    nobody = f"http://127.0.0.1:{free_port()}"
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN_TOKEN,
        "FLUX_ENCRYPTION_KEY": ENCRYPTION_KEY,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        "FLUX_GITHUB_API_URL": nobody,
        "FLUX_CONNECTOR_RETRY_SECONDS": "60",
        "FLUX_SOURCES_ALLOW_PRIVATE": "true",
        "FLUX_OAUTH_GITHUB_CLIENT_ID": "client-1",
        "FLUX_OAUTH_GITHUB_CLIENT_SECRET": "secret-1",
        "FLUX_OAUTH_GITHUB_AUTH_URL": f"{nobody}/authorize",
        "FLUX_OAUTH_GITHUB_TOKEN_URL": f"{nobody}/token",
    }
    yield from module_server(tmp_path_factory, f"client-auth-{kind}", env)


def test_namespaces_from_creation_to_deletion(auth_server: FluxServer, connect: Connect) -> None:
    admin = connect(auth_server.url, admin_token=ADMIN_TOKEN)
    created = admin.namespace_create("team-a")
    assert (created["name"], created["private"]) == ("team-a", False)
    team = connect(auth_server.url, token=created["token"])
    team.publish("s", "a", "team-a/dev", {"on": True})
    shown = admin.namespace_show("team-a")
    assert shown["entityCount"] == 1 and "token" not in shown

    rotated = team.namespace_rotate_token("team-a")
    assert rotated["token"] != created["token"]
    with pytest.raises(FluxClientError) as old:
        team.publish("s", "a", "team-a/dev", {"on": False})
    assert old.value.status == 401
    team = connect(auth_server.url, token=rotated["token"])
    assert team.namespace_set_private("team-a", True)["private"] is True
    with pytest.raises(FluxClientError) as hidden:
        connect(auth_server.url).get("team-a/dev")
    assert hidden.value.status in (401, 403, 404)
    assert team.get("team-a/dev")["properties"] == {"on": True}

    admin.namespace_delete("team-a")
    with pytest.raises(FluxClientError) as gone:
        admin.namespace_show("team-a")
    assert gone.value.status == 404


def test_connectors_and_sources(auth_server: FluxServer, connect: Connect) -> None:
    created = connect(auth_server.url, admin_token=ADMIN_TOKEN).namespace_create("ops")
    ops = connect(auth_server.url, token=created["token"])
    assert ops.connector_store_token("github", "ghp-not-a-real-token") == {"success": True}
    github = ops.connector("github")
    assert github["name"] == "github"
    sign_in = ops.connector_oauth_url("github")
    assert sign_in.startswith(f"{auth_server.url.rsplit(':', 1)[0]}:") and "/authorize?" in sign_in
    assert "client_id=client-1" in sign_in
    assert ops.connector_delete_token("github") == {"success": True}

    upstream = JsonServer().start()
    try:
        upstream.routes["/weather"] = Reply({"temperature": 3})
        added = ops.source_add(
            {
                "name": "weather",
                "url": upstream.url("/weather"),
                "poll_interval_secs": 60,
                "entity_key": "oslo",
                "namespace": "ops",
            }
        )
        source_id = added["source_id"]
        assert [s["source_id"] for s in ops.sources()] == [source_id]
        assert ops.source_show(source_id)["name"] == "weather"
        assert ops.source_remove(source_id) is None
        assert ops.sources() == []
    finally:
        upstream.stop()
