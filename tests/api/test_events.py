"""POST /api/events: the envelope, every validation rule and error string, and what is stored."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from flux.events import MAX_PAYLOAD_DEPTH

from .cases import CASES, ORDER
from .helpers import UUID7, EventFactory, assert_error, encode_id, nested_payload, new_event


def post(client: TestClient, body: Any) -> Any:
    return client.post("/api/events", content=orjson.dumps(body))


def history(client: TestClient, entity_id: str) -> list[dict[str, Any]]:
    response = client.get("/api/events", params={"entity": entity_id})
    assert response.status_code == 200
    events: list[dict[str, Any]] = response.json()
    return events


def last_sequence(client: TestClient) -> int:
    seq: int = client.get("/api/health").json()["lastSequence"]
    return seq


def test_accepted_event_response(client: TestClient) -> None:
    response = post(client, new_event())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"eventId", "stream", "sequence"}
    assert UUID7.match(body["eventId"])
    assert body["stream"] == "sensors"
    assert body["sequence"] == last_sequence(client) == 1


def test_read_your_writes(client: TestClient) -> None:
    for n in range(20):
        assert post(client, new_event("ns/ryw", {"n": n})).status_code == 200
        entity = client.get(f"/api/state/entities/{encode_id('ns/ryw')}").json()
        assert entity["properties"] == {"n": n}


def test_given_event_id_is_kept(client: TestClient) -> None:
    response = post(client, new_event("ns/kept", eventId="my-own-id"))
    assert response.json()["eventId"] == "my-own-id"
    assert history(client, "ns/kept")[0]["eventId"] == "my-own-id"


def test_ids_with_a_nul_are_refused(client: TestClient) -> None:
    """A NUL in an event id or entity id is refused (ids are keys in the log's indexes, where a
    NUL would cut them short); inside property values it is ordinary text."""
    response = post(client, new_event("ns/nul-ids", eventId="a\x00b"))
    assert_error(response, 400, "eventId must not contain the NUL character (U+0000)")
    response = post(client, new_event("ns/nul\x00id"))
    assert_error(response, 400, "entity_id must not contain the NUL character (U+0000)")
    response = post(client, new_event("ns/nul-value", {"text": "a\x00b"}))
    assert response.status_code == 200
    assert history(client, "ns/nul-value")[0]["payload"]["properties"] == {"text": "a\x00b"}
    assert client.get("/api/health").json()["lastSequence"] == 1


@pytest.mark.parametrize("given_id", [None, ""])
def test_null_or_empty_event_id_is_generated(client: TestClient, given_id: str | None) -> None:
    body = post(client, new_event(eventId=given_id)).json()
    assert UUID7.match(body["eventId"])


def test_stored_form_is_canonical(client: TestClient) -> None:
    sent = new_event("ns/stored", {"a": 1}, key="k1", schema="s.v1", unknown={"x": 1})
    event_id = post(client, sent).json()["eventId"]
    (stored,) = history(client, "ns/stored")
    assert stored == {
        "eventId": event_id,
        "stream": "sensors",
        "source": "test",
        "timestamp": sent["timestamp"],
        "key": "k1",
        "schema": "s.v1",
        "payload": sent["payload"],
    }


def test_key_and_schema_omitted_when_absent_or_null(client: TestClient) -> None:
    post(client, new_event("ns/nokey", key=None, schema=None))
    (stored,) = history(client, "ns/nokey")
    assert "key" not in stored and "schema" not in stored


def test_validation_errors(client: TestClient) -> None:
    """Every case of cases.CASES and cases.ORDER, each its own request (one client: the cases
    are checked one by one in test_unit_events)."""
    for name, raw, message in CASES + ORDER:
        response = post(client, raw)
        assert response.status_code == 400, name
        assert_error(response, 400, message)
    assert last_sequence(client) == 0  # nothing stored
    assert client.get("/api/state/entities").json() == []


def test_empty_body_is_serdes_eof_message(client: TestClient) -> None:
    for body in (b"", b"  \n"):
        response = client.post("/api/events", content=body)
        assert_error(response, 400, "EOF while parsing a value at line 1 column 0")


@pytest.mark.parametrize(
    "body", [b"{", b"nope", b"{'a': 1}", b'{"stream": "a",}', b"[1 2]", b"{}{}", b"\x00"]
)
def test_invalid_json(client: TestClient, body: bytes) -> None:
    assert assert_error(client.post("/api/events", content=body), 400).startswith("invalid JSON:")


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "application/x+json"]
)
def test_json_content_types_are_read(client: TestClient, content_type: str) -> None:
    headers = {"content-type": content_type}
    response = client.post("/api/events", content=orjson.dumps(new_event()), headers=headers)
    assert response.status_code == 200


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded"])
def test_other_content_types_are_refused(client: TestClient, content_type: str) -> None:
    """Unlike the original, which read raw bytes whatever the type: a browser sends these
    cross-site without a CORS preflight (see tests/abuse/test_cross_site.py)."""
    headers = {"content-type": content_type}
    response = client.post("/api/events", content=orjson.dumps(new_event()), headers=headers)
    assert_error(response, 415, "Expected request with `Content-Type: application/json`")


def test_form_body_is_a_json_error(client: TestClient) -> None:
    form = {"stream": "sensors", "source": "x"}
    typed = client.post("/api/events", data=form, headers={"content-type": "application/json"})
    assert assert_error(typed, 400).startswith("invalid JSON:")
    as_form = {"content-type": "application/x-www-form-urlencoded"}
    assert_error(client.post("/api/events", data=form, headers=as_form), 415)


def test_payload_outside_the_state_convention_is_stored_but_changes_nothing(
    client: TestClient,
) -> None:
    payloads: list[dict[str, Any]] = [
        {},
        {"entity_id": "ns/a"},
        {"properties": {"a": 1}},
        {"entity_id": 5, "properties": {"a": 1}},
        {"entity_id": "ns/a", "properties": {}},
    ]
    for n, payload in enumerate(payloads, start=1):
        response = post(client, new_event(payload=payload))
        assert response.status_code == 200
        assert response.json()["sequence"] == n
    assert client.get("/api/state/entities").json() == []
    assert len(history(client, "ns/a")) == 2
    # `properties` present but not an object is refused (test_first_contact.py).


def test_payload_depth_limit(client: TestClient) -> None:
    assert post(client, new_event(payload=nested_payload(MAX_PAYLOAD_DEPTH))).status_code == 200
    assert client.get(f"/api/state/entities/{encode_id('deep/x')}").status_code == 200
    response = post(client, new_event(payload=nested_payload(MAX_PAYLOAD_DEPTH + 1)))
    assert_error(
        response,
        400,
        f"recursion limit exceeded: payload nests deeper than {MAX_PAYLOAD_DEPTH} levels",
    )


def test_snapshot_of_deepest_payload_works(client: TestClient) -> None:
    """The deepest accepted payload still fits orjson's encoder inside a snapshot."""
    assert post(client, new_event(payload=nested_payload(MAX_PAYLOAD_DEPTH))).status_code == 200
    service = client.app.state.service  # type: ignore[attr-defined]
    assert service.engine.snapshot()


def test_repeated_event_id_is_acknowledged_but_applied_once(client: TestClient) -> None:
    first = post(client, new_event("ns/dup", {"v": 1}, eventId="dup-1")).json()
    again = post(client, new_event("ns/dup", {"v": 2}, eventId="dup-1")).json()
    assert again["eventId"] == first["eventId"] == "dup-1"
    assert again["sequence"] == first["sequence"]
    assert client.get(f"/api/state/entities/{encode_id('ns/dup')}").json()["properties"] == {"v": 1}
    assert len(history(client, "ns/dup")) == 1


def test_events_are_applied_in_arrival_order_not_timestamp(
    client: TestClient, event: EventFactory
) -> None:
    post(client, event("ns/order", {"v": "new"}, timestamp=2_000_000_000_000))
    post(client, event("ns/order", {"v": "late but old"}, timestamp=1))
    entity = client.get(f"/api/state/entities/{encode_id('ns/order')}").json()
    assert entity["properties"] == {"v": "late but old"}
