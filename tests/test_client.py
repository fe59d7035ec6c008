"""FluxClient against a real `flux serve` process, plus error mapping with canned replies."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from conftest import FluxServer, free_port, module_server
from flux.client import (
    FluxClient,
    FluxClientError,
    FluxConnectionError,
    FluxTimeoutError,
    entity_path,
)

ADMIN_TOKEN = "admin-secret"


@pytest.fixture(scope="module")
def flux_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """One server for the module; it has an admin token (which only admin writes need)."""
    yield from module_server(tmp_path_factory, "client", {"FLUX_ADMIN_TOKEN": ADMIN_TOKEN})


@pytest.fixture
def flux(flux_server: FluxServer) -> Iterator[FluxClient]:
    with FluxClient(flux_server.url) as client:
        yield client


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


def test_admin_config_update_needs_the_admin_token(flux_server: FluxServer) -> None:
    with FluxClient(flux_server.url, admin_token=ADMIN_TOKEN) as flux:
        updated = flux.admin_config({"rate_limit_per_namespace_per_minute": 5000})
        assert updated["rate_limit_per_namespace_per_minute"] == 5000
        assert flux.admin_config()["rate_limit_per_namespace_per_minute"] == 5000
    for client in (
        FluxClient(flux_server.url),
        FluxClient(flux_server.url, admin_token="wrong"),
        FluxClient(flux_server.url, token="namespace-token"),
    ):
        with client, pytest.raises(FluxClientError) as caught:
            client.admin_config({"rate_limit_per_namespace_per_minute": 1})
        assert (caught.value.status, caught.value.message) == (401, "Unauthorized")


def test_unreachable_server_is_a_connection_error() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with FluxClient(url) as flux, pytest.raises(FluxConnectionError) as caught:
        flux.get("x")
    assert caught.value.status is None
    assert caught.value.message.startswith(f"cannot reach Flux at {url}: ")
    assert isinstance(caught.value, FluxClientError)


# -- with canned replies ---------------------------------------------------------------------


def mock_client(handler: Callable[[httpx.Request], httpx.Response], **kwargs: str) -> FluxClient:
    return FluxClient("http://flux.test/", transport=httpx.MockTransport(handler), **kwargs)


def test_token_is_sent_on_every_call_and_admin_token_on_admin_writes() -> None:
    seen: list[tuple[str, str, str | None]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((request.method, request.url.path, request.headers.get("authorization")))
        return httpx.Response(200, json={})

    with mock_client(handler, token="ns-token", admin_token="admin-token") as flux:
        flux.get("a/b")
        flux.list()
        flux.publish("s", "src", "a/b", {})
        flux.delete("a/b")
        flux.admin_config()
        flux.admin_config({"max_batch_delete": 3})
    assert [auth for _, _, auth in seen] == ["Bearer ns-token"] * 5 + ["Bearer admin-token"]
    assert seen[0][1] == "/api/state/entities/a/b"  # httpx shows the decoded path


def test_no_authorization_header_without_a_token() -> None:
    headers: list[httpx.Headers] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers)
        return httpx.Response(200, json=[])

    with mock_client(handler) as flux:
        flux.list()
    assert "authorization" not in headers[0]


def test_request_bodies_are_json() -> None:
    bodies: list[object] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["content-type"] == "application/json"
        bodies.append(json.loads(request.content))
        return httpx.Response(200, json={})

    with mock_client(handler) as flux:
        flux.publish("sensors", "agent-01", "ns/ü", {"t": 1.5}, timestamp=42)
        flux.batch([{"stream": "s"}])
    assert bodies == [
        {
            "stream": "sensors",
            "source": "agent-01",
            "timestamp": 42,
            "payload": {"entity_id": "ns/ü", "properties": {"t": 1.5}},
        },
        {"events": [{"stream": "s"}]},
    ]


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
def test_error_mapping(response: httpx.Response, message: str) -> None:
    with mock_client(lambda request: response) as flux, pytest.raises(FluxClientError) as caught:
        flux.health()
    assert caught.value.status == response.status_code
    assert caught.value.message.startswith(message)


def test_success_without_json_is_an_error() -> None:
    with (
        mock_client(lambda request: httpx.Response(200, text="<html>")) as flux,
        pytest.raises(FluxClientError) as caught,
    ):
        flux.get("x")
    assert caught.value.status == 200
    assert "did not answer with JSON" in caught.value.message


def test_timeout_is_a_timeout_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    with mock_client(handler) as flux, pytest.raises(FluxTimeoutError) as caught:
        flux.get("x")
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, FluxConnectionError)
    assert (
        caught.value.message == "cannot reach Flux at http://flux.test: timed out (read timed out)"
    )
