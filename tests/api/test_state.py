"""State endpoints: list, get, delete, batch delete; id encodings; merge, delete and re-create
semantics; `version` and `lastUpdated`."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from conftest import untyped

from .authkit import bearer, open_client, register
from .conftest import ClientFactory
from .helpers import REST_TIME, UUID7, assert_error, encode_id, new_event

if TYPE_CHECKING:
    from conftest import FluxServer


def publish(client: TestClient, entity_id: str, properties: dict[str, Any]) -> int:
    response = client.post("/api/events", content=orjson.dumps(new_event(entity_id, properties)))
    assert response.status_code == 200, response.text
    seq: int = response.json()["sequence"]
    return seq


def get(client: TestClient, entity_id: str) -> Any:
    return client.get(f"/api/state/entities/{encode_id(entity_id)}")


def ids(client: TestClient, **params: str) -> list[str]:
    response = client.get("/api/state/entities", params=params)
    assert response.status_code == 200
    return sorted(e["id"] for e in response.json())


# -- reading -----------------------------------------------------------------------------------


def test_empty_state(client: TestClient) -> None:
    response = client.get("/api/state/entities")
    assert response.status_code == 200
    assert response.json() == []
    assert_error(get(client, "ns/none"), 404, "Entity not found")


def test_entity_shape(client: TestClient) -> None:
    before = time.time()
    seq = publish(client, "ns/shape", {"t": 1})
    body = get(client, "ns/shape").json()
    assert set(body) == {"id", "properties", "lastUpdated", "version"}
    assert body["id"] == "ns/shape"
    assert body["properties"] == {"t": 1}
    assert body["version"] == seq
    assert REST_TIME.match(body["lastUpdated"]), body["lastUpdated"]
    logged = datetime.fromisoformat(body["lastUpdated"]).timestamp()
    assert before - 1 <= logged <= time.time() + 1
    assert client.get("/api/state/entities").json() == [body]


def test_version_and_last_updated_follow_the_last_change(client: TestClient) -> None:
    first = publish(client, "ns/v", {"a": 1})
    publish(client, "ns/other", {"a": 1})
    one = get(client, "ns/v").json()
    time.sleep(0.002)
    second = publish(client, "ns/v", {"b": 2})
    two = get(client, "ns/v").json()
    assert (one["version"], two["version"]) == (first, second)
    assert second > first
    assert datetime.fromisoformat(two["lastUpdated"]) > datetime.fromisoformat(one["lastUpdated"])


ODD_IDS = [
    "ns/sensor-01",
    "plain",
    "a/b/c/d",
    "ns/with space",
    "ns/q?x=1#frag",
    "ns/emoji😀",
    "ns/\u05e9\u05dc\u05d5\u05dd",  # RTL (Hebrew)
    "ns/\u202eoverride",
    "ns/trailing/",
    "ns//double",
    "delete",
    "ns/a+b",
    "ns/ü",
]


def test_ids_round_trip_percent_encoded(client: TestClient) -> None:
    """(An id with a literal `%` is tested against the real server only: Starlette's TestClient
    percent-decodes the path twice.)"""
    for entity_id in ODD_IDS:
        publish(client, entity_id, {"x": 1})
        body = get(client, entity_id).json()
        assert body["id"] == entity_id
        assert ids(client) == [entity_id]
        deleted = client.delete(f"/api/state/entities/{encode_id(entity_id)}")
        assert deleted.status_code == 200
        assert deleted.json()["entity_id"] == entity_id
        assert_error(get(client, entity_id), 404, "Entity not found")


@pytest.mark.parametrize("suffix", ["\n", "\r\n", "\nx", "\n\n"])
def test_a_newline_in_the_id_is_part_of_it(client: TestClient, suffix: str) -> None:
    """Regression: the route pattern used to stop at a newline, so `ns%2Fa%0A` addressed (and
    DELETE deleted) entity `ns/a`."""
    publish(client, "ns/a", {"v": 1})
    assert_error(get(client, "ns/a" + suffix), 404, "Entity not found")
    response = client.delete(f"/api/state/entities/{encode_id('ns/a' + suffix)}")
    assert response.json()["entity_id"] == "ns/a" + suffix
    assert get(client, "ns/a").status_code == 200
    publish(client, "ns/a" + suffix, {"v": 2})
    assert get(client, "ns/a" + suffix).json()["id"] == "ns/a" + suffix
    assert get(client, "ns/a").json()["properties"] == {"v": 1}


def test_slash_may_be_raw_or_encoded(client: TestClient) -> None:
    publish(client, "dawn-coral/sensor-01", {"t": 20})
    raw = client.get("/api/state/entities/dawn-coral/sensor-01")
    encoded = client.get("/api/state/entities/dawn-coral%2Fsensor-01")
    lower = client.get("/api/state/entities/dawn-coral%2fsensor-01")
    assert raw.status_code == encoded.status_code == lower.status_code == 200
    assert raw.json() == encoded.json() == lower.json()
    assert raw.json()["id"] == "dawn-coral/sensor-01"
    assert client.delete("/api/state/entities/dawn-coral/sensor-01").status_code == 200
    assert_error(get(client, "dawn-coral/sensor-01"), 404)


def test_id_encodings_against_the_real_server(server: FluxServer) -> None:
    """uvicorn decodes %2F before routing; both forms must still reach the entity, and odd ids
    (a literal `%`, `?`, `#`, emoji, RTL) survive the trip; a NUL is refused."""
    odd = ["ns/percent%20literal", "ns/100%", "ns/q?x=1#frag", "ns/😀\u05e9"]
    with httpx.Client(base_url=server.url, headers={"content-type": "application/json"}) as http:
        for entity_id in ["ns/deep/id", *odd]:
            event = new_event(entity_id, {"ok": True})
            assert http.post("/api/events", content=orjson.dumps(event)).status_code == 200
        for path in ("ns/deep/id", "ns%2Fdeep%2Fid", "ns%2Fdeep/id", "ns%2fdeep%2fid"):
            response = http.get(f"/api/state/entities/{path}")
            assert response.status_code == 200, path
            assert response.json()["id"] == "ns/deep/id"
        for entity_id in odd:
            response = http.get(f"/api/state/entities/{encode_id(entity_id)}")
            assert response.status_code == 200, entity_id
            assert response.json()["id"] == entity_id
            deleted = http.delete(f"/api/state/entities/{encode_id(entity_id)}")
            assert deleted.json()["entity_id"] == entity_id
        assert http.delete("/api/state/entities/ns%2Fnul%00x").status_code == 400
        assert http.delete("/api/state/entities/ns%2Fdeep%2Fid").status_code == 200
        assert http.get("/api/state/entities/ns/deep/id").status_code == 404
        assert http.get("/api/state/entities").json() == []


# -- filters -----------------------------------------------------------------------------------

FILTER_IDS = ["matt/a", "matt/b/c", "matt", "matthew/x", "mat/y", "other/matt/z", "/lead"]


FILTERS: list[tuple[dict[str, str], list[str]]] = [
    ({}, FILTER_IDS),
    ({"namespace": "matt"}, ["matt/a", "matt/b/c"]),
    ({"namespace": "mat"}, ["mat/y"]),
    ({"namespace": "nobody"}, []),
    ({"namespace": ""}, ["/lead"]),
    ({"prefix": "matt"}, ["matt", "matt/a", "matt/b/c", "matthew/x"]),
    ({"prefix": "matt/"}, ["matt/a", "matt/b/c"]),
    ({"prefix": "matt/b"}, ["matt/b/c"]),
    ({"prefix": "ma"}, ["mat/y", "matt", "matt/a", "matt/b/c", "matthew/x"]),
    ({"prefix": ""}, FILTER_IDS),
    ({"prefix": "zzz"}, []),
    ({"prefix": "/"}, ["/lead"]),
    ({"namespace": "matt", "prefix": "matt/b"}, ["matt/b/c"]),
    ({"namespace": "matt", "prefix": "mat/"}, []),
    ({"unknown": "x"}, FILTER_IDS),
]


def test_list_filters(client: TestClient) -> None:
    for entity_id in FILTER_IDS:
        publish(client, entity_id, {"v": 1})
    for params, expected in FILTERS:
        assert ids(client, **params) == sorted(expected), params


def test_filter_values_are_url_decoded(client: TestClient) -> None:
    publish(client, "ns 1/a&b", {"v": 1})
    assert ids(client, prefix="ns 1/a&") == ["ns 1/a&b"]
    assert ids(client, namespace="ns 1") == ["ns 1/a&b"]


# -- merge semantics ---------------------------------------------------------------------------


def test_properties_merge_shallowly(client: TestClient) -> None:
    publish(client, "ns/m", {"a": 1, "nested": {"x": 1, "y": 2}, "keep": "yes"})
    publish(client, "ns/m", {"a": 2, "nested": {"z": 3}, "gone": None})
    assert get(client, "ns/m").json()["properties"] == {
        "a": 2,
        "nested": {"z": 3},  # replaced wholesale
        "keep": "yes",
        "gone": None,  # null is a value
    }


def test_empty_properties_create_nothing(client: TestClient) -> None:
    publish(client, "ns/empty", {})
    assert_error(get(client, "ns/empty"), 404, "Entity not found")


@pytest.mark.parametrize("marker", [False, "true", 1, None, {}])
def test_only_boolean_true_deletes(client: TestClient, marker: Any) -> None:
    publish(client, "ns/keep", {"a": 1})
    publish(client, "ns/keep", {"__deleted__": marker})
    assert get(client, "ns/keep").json()["properties"] == {"a": 1, "__deleted__": marker}


def test_published_tombstone_deletes_and_ignores_its_other_properties(client: TestClient) -> None:
    publish(client, "ns/t", {"a": 1})
    publish(client, "ns/t", {"__deleted__": True, "b": 2})
    assert_error(get(client, "ns/t"), 404)
    assert ids(client) == []


def test_recreated_entity_starts_empty(client: TestClient) -> None:
    publish(client, "ns/r", {"a": 1, "b": 2})
    assert client.delete("/api/state/entities/ns%2Fr").status_code == 200
    seq = publish(client, "ns/r", {"c": 3})
    body = get(client, "ns/r").json()
    assert body["properties"] == {"c": 3}
    assert body["version"] == seq


# -- DELETE ------------------------------------------------------------------------------------


def test_delete_response_and_tombstone(client: TestClient) -> None:
    publish(client, "ns/del", {"a": 1})
    before_ms = time.time_ns() // 1_000_000
    response = client.delete("/api/state/entities/ns%2Fdel")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"entity_id", "eventId", "deleted"}
    assert body["entity_id"] == "ns/del" and body["deleted"] is True
    assert UUID7.match(body["eventId"])
    assert_error(get(client, "ns/del"), 404, "Entity not found")
    newest = client.get("/api/events", params={"entity": "ns/del"}).json()[0]
    assert newest["eventId"] == body["eventId"]
    assert newest["stream"] == "flux.events.deletions"
    assert newest["source"] == "api"
    assert newest["key"] == "ns/del"
    assert newest["timestamp"] >= before_ms
    assert newest["payload"] == {
        "entity_id": "ns/del",
        "properties": {"__deleted__": True, "__deleted_at__": newest["timestamp"]},
    }


def test_delete_of_a_missing_entity_logs_nothing(client: TestClient) -> None:
    """The original logged a tombstone even for an entity that never existed (issue 11,
    defect 6: 100,000 of them in 0.8 s); now the answer says nothing was deleted."""
    response = client.delete("/api/state/entities/ns%2Fnever")
    assert response.status_code == 200
    assert response.json() == {"entity_id": "ns/never", "deleted": False}
    assert client.get("/api/health").json()["lastSequence"] == 0
    assert client.get("/api/events", params={"entity": "ns/never"}).json() == []
    publish(client, "ns/once", {"a": 1})
    assert client.delete("/api/state/entities/ns%2Fonce").json()["deleted"] is True
    assert client.delete("/api/state/entities/ns%2Fonce").json() == {
        "entity_id": "ns/once",
        "deleted": False,
    }
    assert client.get("/api/health").json()["lastSequence"] == 2


def test_deletion_survives_restart(make_client: ClientFactory, data_dir: Path) -> None:
    first = make_client()
    publish(first, "ns/stay", {"a": 1})
    publish(first, "ns/go", {"a": 1})
    assert first.delete("/api/state/entities/ns%2Fgo").status_code == 200
    kept = get(first, "ns/stay").json()
    first.__exit__(None, None, None)

    second = make_client()
    assert ids(second) == ["ns/stay"]
    assert get(second, "ns/stay").json() == kept  # version and lastUpdated too
    assert_error(get(second, "ns/go"), 404)


def test_state_rebuilt_from_the_log_alone(make_client: ClientFactory, data_dir: Path) -> None:
    """With the snapshots gone, replaying the log gives the same state, odd text included."""
    first = make_client()
    for text in ("plain", "nul\x00x", "😀", "\u202eabc", "\ufffe", "a\nb", '"quoted"\\'):
        entity = "ns/" + text.replace("\x00", "-")  # a NUL is refused in ids, fine in values
        publish(first, entity, {text: text, "list": [text, None, 1.5]})
    publish(first, "ns/plain", {"more": True})
    first.delete("/api/state/entities/ns%2F%F0%9F%98%80")
    before = sorted(first.get("/api/state/entities").json(), key=lambda e: e["id"])
    first.__exit__(None, None, None)
    snapshots = list((data_dir / "snapshots").glob("*"))
    assert snapshots  # the final one written at shutdown
    for snapshot in snapshots:
        snapshot.unlink()
    second = make_client()
    after = sorted(second.get("/api/state/entities").json(), key=lambda e: e["id"])
    assert after == before
    assert len(after) == 6


# -- batch delete ------------------------------------------------------------------------------


def batch_delete(client: TestClient, body: Any, **kwargs: Any) -> Any:
    return client.post("/api/state/entities/delete", content=orjson.dumps(body), **kwargs)


JSON = {"content-type": "application/json"}


@pytest.fixture
def populated(client: TestClient) -> TestClient:
    for entity_id in ("matt/a", "matt/b", "matt", "matthew/c", "other/d"):
        publish(client, entity_id, {"v": 1})
    return client


ALL = ["matt", "matt/a", "matt/b", "matthew/c", "other/d"]


@pytest.mark.parametrize(
    ("body", "deleted", "not_found", "left"),
    [
        ({"namespace": "matt"}, ["matt/a", "matt/b"], [], ["matt", "matthew/c", "other/d"]),
        ({"prefix": "matt"}, ["matt/a", "matt/b", "matt", "matthew/c"], [], ["other/d"]),
        ({"prefix": "matt/"}, ["matt/a", "matt/b"], [], ["matt", "matthew/c", "other/d"]),
        (
            {"entity_ids": ["other/d", "nope/y", "matt/a"]},
            ["other/d", "matt/a"],
            ["nope/y"],
            ["matt", "matt/b", "matthew/c"],
        ),
        ({"entity_ids": ["nope/x"]}, [], ["nope/x"], ALL),
        (
            {"entity_ids": ["matt/a", "matt/a"]},
            ["matt/a"],
            [],
            ["matt", "matt/b", "matthew/c", "other/d"],
        ),
        ({"entity_ids": []}, [], [], ALL),
        ({"namespace": "nobody"}, [], [], ALL),
        # the first filter present wins
        ({"namespace": "other", "prefix": "matt"}, ["other/d"], [], ALL[:-1]),
        ({"prefix": "other", "entity_ids": ["matt"]}, ["other/d"], [], ALL[:-1]),
        # a null filter counts as absent
        ({"namespace": None, "prefix": "other"}, ["other/d"], [], ALL[:-1]),
    ],
)
def test_batch_delete(
    populated: TestClient,
    body: dict[str, Any],
    deleted: list[str],
    not_found: list[str],
    left: list[str],
) -> None:
    """`deleted_ids` and `not_found` (nothing logged for those) follow the request's order."""
    before = populated.get("/api/health").json()["lastSequence"]
    response = batch_delete(populated, body, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "deleted": len(deleted),
        "deleted_ids": deleted,
        "not_found": not_found,
        "failed": 0,
        "errors": [],
    }
    assert ids(populated) == left
    assert populated.get("/api/health").json()["lastSequence"] == before + len(deleted)


def test_batch_delete_logs_tombstones(populated: TestClient) -> None:
    batch_delete(populated, {"namespace": "matt"}, headers=JSON)
    for entity_id in ("matt/a", "matt/b"):
        newest = populated.get("/api/events", params={"entity": entity_id}).json()[0]
        assert newest["stream"] == "flux.events.deletions"
        assert newest["payload"]["properties"]["__deleted__"] is True


NO_FILTER = "a filter is required: one of `namespace`, `prefix` or `entity_ids`"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, NO_FILTER),
        ({"ids": ["matt/a"]}, NO_FILTER),
        ({"namespace": None}, NO_FILTER),
        ({"namespace": ""}, "`namespace` must be a non-empty string"),
        ({"namespace": 5}, "`namespace` must be a non-empty string"),
        ({"prefix": ""}, "`prefix` must be a non-empty string"),
        ({"prefix": ["matt"]}, "`prefix` must be a non-empty string"),
        ({"entity_ids": "matt/a"}, "`entity_ids` must be an array of strings"),
        ({"entity_ids": ["matt/a", 5]}, "`entity_ids` must be an array of strings"),
        ([], "invalid type: sequence, expected a JSON object"),
        ("matt", 'invalid type: string "matt", expected a JSON object'),
    ],
)
def test_batch_delete_bad_filters(populated: TestClient, body: Any, message: str) -> None:
    assert_error(batch_delete(populated, body, headers=JSON), 400, message)
    assert len(ids(populated)) == 5


def test_batch_delete_needs_json(populated: TestClient) -> None:
    message = "Expected request with `Content-Type: application/json`"
    for headers in ({"content-type": "text/plain"}, {"content-type": "application/jsonx"}):
        assert_error(batch_delete(populated, {"namespace": "matt"}, headers=headers), 415, message)
    with untyped(populated):
        assert_error(batch_delete(populated, {"namespace": "matt"}), 415, message)
    ok = batch_delete(
        populated,
        {"namespace": "matt"},
        headers={"content-type": "application/json; charset=utf-8"},
    )
    assert ok.status_code == 200
    assert_error(populated.post("/api/state/entities/delete", content=b"{", headers=JSON), 400)
    assert_error(
        populated.post("/api/state/entities/delete", content=b"", headers=JSON),
        400,
        "EOF while parsing a value at line 1 column 0",
    )


def test_batch_delete_is_bounded(populated: TestClient) -> None:
    response = populated.put("/api/admin/config", json={"max_batch_delete": 2})
    assert response.status_code == 200
    assert_error(
        batch_delete(populated, {"prefix": "matt"}, headers=JSON),
        400,
        "Batch too large: 4 entities requested, max is 2",
    )
    assert_error(
        batch_delete(populated, {"entity_ids": ["a", "b", "c"]}, headers=JSON),
        400,
        "Batch too large: 3 entities requested, max is 2",
    )
    assert len(ids(populated)) == 5  # nothing deleted
    ok = batch_delete(populated, {"namespace": "matt"}, headers=JSON)
    assert ok.json()["deleted_ids"] == ["matt/a", "matt/b"]


def test_batch_delete_bound_from_settings(make_client: ClientFactory) -> None:
    client = make_client(max_batch_delete=1)
    publish(client, "a/1", {"v": 1})
    publish(client, "a/2", {"v": 1})
    assert_error(
        batch_delete(client, {"namespace": "a"}, headers=JSON),
        400,
        "Batch too large: 2 entities requested, max is 1",
    )


def test_has_lists_only_the_entities_carrying_a_property(make_client: ClientFactory) -> None:
    """`?has=__lease__` and `?has=__presence__`: the leases and presences the console shows."""
    client = make_client()
    publish(client, "work/plain", {"status": "open"})
    acquired = client.post(
        "/api/leases/acquire", json={"entity_id": "work/led", "owner": "a", "ttl_ms": 60000}
    )
    assert acquired.status_code == 200, acquired.text
    token = acquired.json()["token"]
    leases = client.get("/api/state/entities", params={"has": "__lease__"}).json()
    assert [(e["id"], e["properties"]["__lease__"]["owner"]) for e in leases] == [("work/led", "a")]
    assert client.get("/api/state/entities", params={"has": "__presence__"}).json() == []
    with client.websocket_connect("/api/ws") as ws:
        ws.send_json({"type": "presence", "entity_id": "agents/w7", "properties": {"on": True}})
        while ws.receive_json()["type"] != "presence":
            pass  # the connection's own live messages before the answer
        present = client.get("/api/state/entities", params={"has": "__presence__"}).json()
        assert [e["id"] for e in present] == ["agents/w7"]
    # A released lease is `null`: not listed.
    released = client.post(
        "/api/leases/release", json={"entity_id": "work/led", "owner": "a", "token": token}
    )
    assert released.status_code == 200, released.text
    assert client.get("/api/state/entities", params={"has": "__lease__"}).json() == []
    assert [
        e["id"] for e in client.get("/api/state/entities", params={"has": "status"}).json()
    ] == ["work/plain"]
    message = assert_error(client.get("/api/state/entities", params={"has": "x" * 2000}), 400)
    assert message.startswith("has is too long")


def test_has_leaves_out_private_namespaces_the_caller_may_not_read(data_dir: Path) -> None:
    client = open_client(data_dir)
    try:
        secret = register(client, "secret", private=True)
        public = register(client, "public")
        for token, entity_id in ((secret, "secret/leader"), (public, "public/leader")):
            acquired = client.post(
                "/api/leases/acquire",
                json={"entity_id": entity_id, "owner": "a", "ttl_ms": 60000},
                headers=bearer(token),
            )
            assert acquired.status_code == 200, acquired.text

        def leased(token: str | None) -> list[str]:
            answer = client.get(
                "/api/state/entities", params={"has": "__lease__"}, headers=bearer(token)
            )
            assert answer.status_code == 200, answer.text
            return sorted(e["id"] for e in answer.json())

        assert leased(None) == ["public/leader"]
        assert leased(secret) == ["public/leader", "secret/leader"]
    finally:
        client.__exit__(None, None, None)
