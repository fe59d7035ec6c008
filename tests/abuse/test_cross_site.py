"""A web page must not drive a Flux server through its visitor's browser.

A page can send, without a CORS preflight, a POST whose body is `text/plain` (or a Blob with no
type at all), and a WebSocket handshake with no CORS at all; a page on a rebinding DNS name
reaches a server on localhost with its own name in `Host`. Flux refuses each of them: JSON bodies
must say `application/json` (which forces a preflight), preflights from foreign origins are
refused by default with auth off (and for the admin config always, unless the origin is named),
`Host` is checked on a loopback-bound server, and a WebSocket from a foreign `Origin` is refused.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from api.helpers import new_event
from conftest import FluxServer, LocalTestClient
from flux.api.app import create_app
from flux.config import Settings

EVIL = "https://evil.example"
TYPE_ERROR = "Expected request with `Content-Type: application/json`"


@pytest.fixture
def bare(data_dir: Path) -> Iterator[TestClient]:
    """A client that sends no content type unless told (a browser's typeless Blob)."""
    with LocalTestClient(create_app(Settings(data_dir=str(data_dir))), headers={}) as client:
        yield client


def _client(data_dir: Path, **overrides: Any) -> LocalTestClient:
    return LocalTestClient(create_app(Settings(data_dir=str(data_dir), **overrides)))


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    message: str = response.json()["error"]
    return message


# -- bodies must say they are JSON --------------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/events", "/api/events/batch"])
@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded"],
)
def test_a_body_not_typed_as_json_is_refused_and_nothing_is_stored(
    bare: TestClient, path: str, content_type: str | None
) -> None:
    event = new_event("ns/csrf", {"pwned": True})
    body = orjson.dumps(event if path == "/api/events" else [event])
    headers = {"content-type": content_type} if content_type else {}
    response = bare.post(path, content=body, headers=headers)
    assert _error(response, 415) == TYPE_ERROR
    assert bare.get("/api/state/entities/ns%2Fcsrf").status_code == 404
    assert bare.get("/api/health").json()["lastSequence"] == 0


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "application/json; charset=utf-8",
        "Application/JSON",
        "application/x+json",
    ],
)
def test_json_types_are_accepted(bare: TestClient, content_type: str) -> None:
    response = bare.post(
        "/api/events",
        content=orjson.dumps(new_event("ns/ok")),
        headers={"content-type": content_type},
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize("content_type", ["text/x+json", "application/jsonp", "json"])
def test_near_json_types_are_refused(bare: TestClient, content_type: str) -> None:
    response = bare.post(
        "/api/events",
        content=orjson.dumps(new_event("ns/ok")),
        headers={"content-type": content_type},
    )
    assert _error(response, 415) == TYPE_ERROR


# -- CORS ---------------------------------------------------------------------------------------


def _preflight(client: TestClient, path: str, method: str, origin: str = EVIL) -> httpx.Response:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "content-type",
        },
    )


@pytest.mark.parametrize(
    ("path", "method"),
    [("/api/admin/config", "PUT"), ("/api/events", "POST"), ("/api/connectors/generic", "POST")],
)
def test_auth_off_refuses_foreign_preflights(client: TestClient, path: str, method: str) -> None:
    response = _preflight(client, path, method)
    assert "access-control-allow-origin" not in response.headers
    assert _error(response, 400) == "Disallowed CORS origin"


def test_auth_off_sends_no_allow_origin_to_a_foreign_page(client: TestClient) -> None:
    response = client.get("/api/state/entities", headers={"Origin": EVIL})
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers


def test_auth_on_keeps_reads_open_but_never_the_admin_config(data_dir: Path) -> None:
    with _client(data_dir, auth_enabled=True, admin_token="secret-admin") as client:
        assert (
            _preflight(client, "/api/events", "POST").headers["access-control-allow-origin"] == "*"
        )
        response = _preflight(client, "/api/admin/config", "PUT")
        assert "access-control-allow-origin" not in response.headers
        assert _error(response, 400) == "Disallowed CORS origin"


def test_named_origins_are_allowed(data_dir: Path) -> None:
    origin = "https://dashboard.example"
    with _client(data_dir, cors_origins=(origin,)) as client:
        for path, method in (("/api/events", "POST"), ("/api/admin/config", "PUT")):
            allowed = _preflight(client, path, method, origin)
            assert allowed.status_code == 200
            assert allowed.headers["access-control-allow-origin"] == origin
            refused = _preflight(client, path, method)
            assert "access-control-allow-origin" not in refused.headers
        got = client.get("/api/state/entities", headers={"Origin": origin})
        assert got.headers["access-control-allow-origin"] == origin


# -- Host (DNS rebinding) -----------------------------------------------------------------------


@pytest.mark.parametrize("host", ["evil.example", "evil.example:3000", "127.0.0.1.evil.example"])
def test_a_loopback_server_refuses_foreign_hosts(client: TestClient, host: str) -> None:
    for response in (
        client.get("/api/state/entities", headers={"host": host}),
        client.get("/api/state/entities/ns%2Fa", headers={"host": host}),  # the hot read
        client.post("/api/events", json=new_event("ns/a"), headers={"host": host}),  # hot write
    ):
        assert _error(response, 421) == f"Host not allowed: {host}"
    assert (
        client.get("/api/state/entities/ns%2Fa", headers={"host": "localhost"}).status_code == 404
    )


@pytest.mark.parametrize(
    "host", ["localhost", "localhost:3000", "127.0.0.1:8080", "[::1]:3000", "LOCALHOST"]
)
def test_a_loopback_server_accepts_loopback_names(client: TestClient, host: str) -> None:
    assert client.get("/api/health", headers={"host": host}).status_code == 200


def test_allowed_hosts_setting(data_dir: Path) -> None:
    with _client(data_dir, allowed_hosts=("flux.internal",)) as client:
        assert client.get("/api/health", headers={"host": "flux.internal:3000"}).status_code == 200
        _error(client.get("/api/health", headers={"host": "localhost"}), 421)


def test_a_server_on_all_interfaces_accepts_any_host(data_dir: Path) -> None:
    with _client(data_dir, host="0.0.0.0") as client:
        assert client.get("/api/health", headers={"host": "flux.example"}).status_code == 200


# -- WebSocket ----------------------------------------------------------------------------------


def test_a_websocket_from_a_foreign_origin_is_refused(client: TestClient) -> None:
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect("/api/ws", headers={"origin": EVIL}),
    ):
        pass
    assert denied.value.status_code == 403
    assert denied.value.json() == {"error": f"Origin not allowed: {EVIL}"}
    for url, origin in (
        ("/api/ws", "http://localhost"),  # the server's own origin: allowed
        ("ws://localhost:3000/api/ws", "http://LOCALHOST:3000"),
    ):
        with client.websocket_connect(url, headers={"origin": origin}) as ws:
            ws.send_json({"type": "ping"})
    with (
        pytest.raises(WebSocketDenialResponse),
        client.websocket_connect("/api/ws", headers={"origin": "http://localhost:8080"}),
    ):
        pass  # another port is another origin
    with client.websocket_connect("/api/ws") as ws:  # no Origin: not a browser
        ws.send_json({"type": "ping"})


def test_a_websocket_with_a_foreign_host_is_refused(client: TestClient) -> None:
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect("ws://evil.example/api/ws"),
    ):
        pass
    assert denied.value.status_code == 421


# -- the same against a real server -------------------------------------------------------------


def _raw(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_real_server_refuses_cross_site_requests(server: FluxServer) -> None:
    url = server.url
    event = orjson.dumps(new_event("ns/csrf", {"pwned": True}))
    typed = httpx.post(f"{url}/api/events", content=event, headers={"content-type": "text/plain"})
    assert _error(typed, 415) == TYPE_ERROR
    assert _error(httpx.post(f"{url}/api/events", content=event), 415) == TYPE_ERROR
    assert httpx.get(f"{url}/api/state/entities/ns%2Fcsrf").status_code == 404

    preflight = httpx.options(
        f"{url}/api/admin/config",
        headers={"Origin": EVIL, "Access-Control-Request-Method": "PUT"},
    )
    assert "access-control-allow-origin" not in preflight.headers

    rebound = httpx.get(f"{url}/api/health", headers={"host": f"evil.example:{server.port}"})
    assert _error(rebound, 421) == f"Host not allowed: evil.example:{server.port}"

    handshake = (
        "GET /api/ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    local = f"127.0.0.1:{server.port}"
    foreign = _raw(server.port, handshake.format(host=local, extra=f"Origin: {EVIL}\r\n").encode())
    assert foreign.startswith(b"HTTP/1.1 403"), foreign
    rebinding = handshake.format(host=f"evil.example:{server.port}", extra="").encode()
    assert _raw(server.port, rebinding).startswith(b"HTTP/1.1 421")
    same = handshake.format(host=local, extra=f"Origin: http://{local}\r\n").encode()
    assert _raw(server.port, same).startswith(b"HTTP/1.1 101")

    ok = httpx.post(
        f"{url}/api/events", content=event, headers={"content-type": "application/json"}
    )
    assert ok.status_code == 200
