"""CORS with origins allowed (`FLUX_CORS_ORIGINS=*`, as the original was, or auth on): any
origin, authorization and content-type headers, plus PUT; the admin config only for origins
named; refused preflights answer in the usual JSON error shape. The defaults (no cross-origin
access with auth off) are in tests/abuse/test_cross_site.py."""

from __future__ import annotations

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from .conftest import ClientFactory
from .helpers import assert_error, new_event

ORIGIN = "https://dashboard.example"


@pytest.fixture
def client(make_client: ClientFactory) -> TestClient:
    """A server open to every origin."""
    return make_client(cors_origins=("*",))


def preflight(
    client: TestClient, path: str, method: str, headers: str | None = None
) -> httpx.Response:
    request_headers = {"Origin": ORIGIN, "Access-Control-Request-Method": method}
    if headers is not None:
        request_headers["Access-Control-Request-Headers"] = headers
    return client.options(path, headers=request_headers)


@pytest.mark.parametrize(
    ("path", "method"),
    [
        ("/api/events", "POST"),
        ("/api/events", "GET"),
        ("/api/events/batch", "POST"),
        ("/api/state/entities", "GET"),
        ("/api/state/entities/ns%2Fa", "DELETE"),
        ("/api/state/entities/delete", "POST"),
        ("/api/health", "GET"),
        ("/no/such/route", "GET"),  # the layer answers preflights for any path
    ],
)
def test_preflight_is_allowed(client: TestClient, path: str, method: str) -> None:
    response = preflight(client, path, method, "authorization, content-type")
    assert response.status_code == 200
    headers = response.headers
    assert headers["access-control-allow-origin"] == "*"
    methods = {m.strip() for m in headers["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PUT", "DELETE", "OPTIONS"} <= methods
    allowed = {h.strip().lower() for h in headers["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type"} <= allowed


@pytest.mark.parametrize(
    ("method", "headers", "message"),
    [
        ("PATCH", None, "Disallowed CORS method"),
        ("POST", "x-custom-header", "Disallowed CORS headers"),
        ("TRACE", "x-custom-header", "Disallowed CORS method, headers"),
    ],
)
def test_refused_preflight_is_a_json_error(
    client: TestClient, method: str, headers: str | None, message: str
) -> None:
    response = preflight(client, "/api/events", method, headers)
    assert_error(response, 400, message)
    # the browser still learns what is allowed
    assert response.headers["access-control-allow-origin"] == "*"
    assert "PUT" in response.headers["access-control-allow-methods"]


def test_simple_requests_carry_the_origin_header(client: TestClient) -> None:
    headers = {"Origin": ORIGIN}
    ok = client.post("/api/events", content=orjson.dumps(new_event()), headers=headers)
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "*"
    for response in (
        client.get("/api/state/entities/nope", headers=headers),  # 404 from a handler
        client.get("/api/nope", headers=headers),  # 404 from the router
        client.post("/api/events", content=b"{", headers=headers),  # 400
        client.put("/api/events", headers=headers),  # 405
        client.get("/api/state/entities", headers=headers),
    ):
        assert response.headers["access-control-allow-origin"] == "*", response.request.url
    admin = client.put("/api/admin/config", json={}, headers=headers)
    assert "access-control-allow-origin" not in admin.headers


def test_the_admin_config_is_open_only_to_named_origins(make_client: ClientFactory) -> None:
    client = make_client(cors_origins=("*", ORIGIN))
    assert (
        preflight(client, "/api/admin/config", "PUT").headers["access-control-allow-origin"]
        == ORIGIN
    )
    other = client.options(
        "/api/admin/config",
        headers={"Origin": "https://other.example", "Access-Control-Request-Method": "PUT"},
    )
    assert_error(other, 400, "Disallowed CORS origin")
    assert preflight(client, "/api/events", "POST").headers["access-control-allow-origin"] == "*"


def test_no_cors_headers_without_an_origin(client: TestClient) -> None:
    response = client.get("/api/state/entities")
    assert "access-control-allow-origin" not in response.headers


def test_options_without_preflight_headers_is_a_405(client: TestClient) -> None:
    assert_error(client.options("/api/events"), 405, "Method Not Allowed")
