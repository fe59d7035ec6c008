"""POST /api/events/batch: both body forms, per-event results, partial success."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from flux.events import MAX_PAYLOAD_DEPTH

from .cases import CASES
from .helpers import UUID7, assert_error, encode_id, nested_payload, new_event


def post_batch(client: TestClient, body: Any) -> Any:
    return client.post("/api/events/batch", content=orjson.dumps(body))


def entity(client: TestClient, entity_id: str) -> Any:
    return client.get(f"/api/state/entities/{encode_id(entity_id)}")


@pytest.mark.parametrize("wrapped", [True, False], ids=["events-object", "bare-array"])
def test_all_valid(client: TestClient, wrapped: bool) -> None:
    events = [new_event(f"ns/e{n}", {"n": n}) for n in range(5)]
    response = post_batch(client, {"events": events} if wrapped else events)
    assert response.status_code == 200
    body = response.json()
    assert body["successful"] == 5 and body["failed"] == 0
    sequences = []
    for index, result in enumerate(body["results"]):
        assert set(result) == {"index", "eventId", "stream", "error", "sequence"}
        assert result["index"] == index
        assert UUID7.match(result["eventId"])
        assert result["stream"] == "sensors"
        assert result["error"] is None
        sequences.append(result["sequence"])
    assert sequences == [1, 2, 3, 4, 5]
    for n in range(5):
        assert entity(client, f"ns/e{n}").json()["properties"] == {"n": n}


def test_invalid_events_are_reported_at_their_index_and_the_rest_applied(
    client: TestClient,
) -> None:
    events: list[Any] = [
        new_event("ns/ok1", {"v": 1}),
        new_event("ns/bad1", stream="Bad"),
        {"stream": "sensors", "source": "x", "timestamp": None, "payload": {}},
        new_event("ns/ok2", {"v": 2}, eventId="given-id"),
        42,
        None,
        new_event("ns/bad2", payload=nested_payload(MAX_PAYLOAD_DEPTH + 1)),
        new_event("ns/ok3", {"v": 3}),
    ]
    response = post_batch(client, {"events": events})
    assert response.status_code == 200
    body = response.json()
    assert body["successful"] == 3
    assert body["failed"] == 5
    results = body["results"]
    assert [r["index"] for r in results] == list(range(len(events)))
    assert [r["error"] is None for r in results] == [
        True,
        False,
        False,
        True,
        False,
        False,
        False,
        True,
    ]
    assert results[1] == {
        "index": 1,
        "eventId": None,
        "stream": "Bad",
        "error": "validation failed: invalid stream format 'Bad': must be lowercase with "
        "optional dots",
    }
    assert results[2] == {
        "index": 2,
        "eventId": None,
        "stream": "sensors",
        "error": "validation failed: invalid type: null, expected i64",
    }
    assert results[3]["eventId"] == "given-id"
    assert results[4] == {
        "index": 4,
        "eventId": None,
        "stream": None,
        "error": "validation failed: invalid type: integer `42`, expected struct Event",
    }
    assert results[5]["error"] == "validation failed: invalid type: null, expected struct Event"
    assert results[6]["error"] == (
        "validation failed: recursion limit exceeded: payload nests deeper than "
        f"{MAX_PAYLOAD_DEPTH} levels"
    )
    assert [r["sequence"] for r in results if r["error"] is None] == [1, 2, 3]
    assert all("sequence" not in r for r in results if r["error"] is not None)
    ids = sorted(e["id"] for e in client.get("/api/state/entities").json())
    assert ids == ["ns/ok1", "ns/ok2", "ns/ok3"]
    assert client.get("/api/health").json()["lastSequence"] == 3


def test_item_errors_match_single_event_errors(client: TestClient) -> None:
    """Every case of cases.CASES in one batch, each followed by a valid event."""
    items: list[Any] = []
    for n, (_, raw, _) in enumerate(CASES):
        items += [raw, new_event(f"ns/ok{n}")]
    body = post_batch(client, items).json()
    assert body["successful"] == len(CASES) and body["failed"] == len(CASES)
    for n, (name, _, message) in enumerate(CASES):
        bad, good = body["results"][2 * n], body["results"][2 * n + 1]
        assert bad["error"] == f"validation failed: {message}", name
        assert bad["eventId"] is None
        assert good["error"] is None
    assert len(client.get("/api/state/entities").json()) == len(CASES)


def test_a_non_string_stream_is_reported_as_null(client: TestClient) -> None:
    body = post_batch(client, [new_event(stream=5)]).json()
    assert body["results"][0]["stream"] is None


def test_all_invalid_is_still_200(client: TestClient) -> None:
    body = post_batch(client, {"events": [1, 2]}).json()
    assert body["successful"] == 0 and body["failed"] == 2
    assert client.get("/api/health").json()["lastSequence"] == 0


def test_events_apply_in_order(client: TestClient) -> None:
    events = [new_event("ns/seq", {"n": n, f"p{n}": True}) for n in range(50)]
    assert post_batch(client, events).status_code == 200
    props = entity(client, "ns/seq").json()["properties"]
    assert props["n"] == 49
    assert all(props[f"p{n}"] for n in range(50))
    history = client.get("/api/events", params={"entity": "ns/seq", "limit": 500}).json()
    assert [e["payload"]["properties"]["n"] for e in history] == list(range(49, -1, -1))


def test_delete_then_recreate_in_one_batch(client: TestClient) -> None:
    events = [
        new_event("ns/x", {"a": 1}),
        new_event("ns/x", {"__deleted__": True}),
        new_event("ns/x", {"b": 2}),
    ]
    assert post_batch(client, events).json()["successful"] == 3
    assert entity(client, "ns/x").json()["properties"] == {"b": 2}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "Batch request must contain at least one event"),
        ({"events": []}, "Batch request must contain at least one event"),
        ({}, "missing field `events`"),
        ({"event": [new_event()]}, "missing field `events`"),
        ({"events": None}, "invalid type: null, expected a sequence"),
        ({"events": {"a": 1}}, "invalid type: map, expected a sequence"),
        ({"events": "x"}, 'invalid type: string "x", expected a sequence'),
        (None, 'invalid type: null, expected {"events": [...]} or an array of events'),
        (7, 'invalid type: integer `7`, expected {"events": [...]} or an array of events'),
        ("x", 'invalid type: string "x", expected {"events": [...]} or an array of events'),
    ],
)
def test_not_a_batch(client: TestClient, body: Any, message: str) -> None:
    assert_error(post_batch(client, body), 400, message)


def test_empty_and_invalid_json_bodies(client: TestClient) -> None:
    assert_error(
        client.post("/api/events/batch", content=b""),
        400,
        "EOF while parsing a value at line 1 column 0",
    )
    # one malformed event in the JSON text itself fails the parse of the whole body
    body = b'{"events": [' + orjson.dumps(new_event()) + b", {oops}]}"
    assert assert_error(client.post("/api/events/batch", content=body), 400).startswith(
        "invalid JSON:"
    )
    assert client.get("/api/health").json()["lastSequence"] == 0


def test_the_wrapper_may_carry_other_keys(client: TestClient) -> None:
    body = post_batch(client, {"events": [new_event()], "note": "ignored"}).json()
    assert body["successful"] == 1


def test_duplicate_ids_in_one_batch(client: TestClient) -> None:
    events = [
        new_event("ns/d", {"v": 1}, eventId="same"),
        new_event("ns/d", {"v": 2}, eventId="same"),
    ]
    body = post_batch(client, events).json()
    assert body["successful"] == 2
    first, second = body["results"]
    assert first["sequence"] == second["sequence"]
    assert entity(client, "ns/d").json()["properties"] == {"v": 1}


def test_large_batch(client: TestClient) -> None:
    """Over the original's effective 2 MiB cap, under the 10 MB batch limit."""
    events = [new_event(f"big/{n}", {"blob": "x" * 500}) for n in range(5000)]
    body = orjson.dumps({"events": events})
    assert 2 * 1024 * 1024 < len(body) < 10_485_760
    response = client.post("/api/events/batch", content=body)
    assert response.status_code == 200
    assert response.json()["successful"] == 5000
    assert len(client.get("/api/state/entities", params={"namespace": "big"}).json()) == 5000


def test_a_reserved_id_is_refused_alone_with_auth_off(client: TestClient) -> None:
    """Auth off, a batch of valid events is admitted at once (`Permissions.admits_all`); one in
    Flux's reserved namespace sends the whole batch through `admit` one by one, which refuses
    it alone."""
    events = [new_event("ns/r1"), new_event("flux-core/directory"), new_event("ns/r2")]
    body = post_batch(client, {"events": events}).json()
    assert body["successful"] == 2 and body["failed"] == 1
    refused = body["results"][1]
    assert "sequence" not in refused
    assert refused["error"] == (
        "authorization failed: Forbidden: Namespace 'flux-core' is reserved for Flux"
    )
    assert [r["error"] for r in body["results"][::2]] == [None, None]
    assert entity(client, "ns/r2").status_code == 200


def test_an_atomic_batch_with_a_reserved_id_stores_nothing(client: TestClient) -> None:
    """The atomic form asks `admits_all` too; a reserved id fails the whole batch, by index."""
    events = [new_event("ns/a1"), new_event("flux-core/directory")]
    response = post_batch(client, {"events": events, "atomic": True})
    assert_error(
        response,
        403,
        "event 1: Namespace 'flux-core' is reserved for Flux; nothing was stored (atomic batch)",
    )
    assert entity(client, "ns/a1").status_code == 404
    stored = post_batch(client, {"events": events[:1], "atomic": True}).json()
    assert stored["successful"] == 1 and stored["results"][0]["sequence"] == 1
