"""A tenant's generic source must not reach what only the server can reach, nor be a port
scanner or a traffic amplifier (issue 11, defect 7).

On real `flux serve` processes with auth on:

- a source URL on loopback, a private network, CGNAT or unique-local addresses (Flux's own
  admin config among them) is refused with a 400 at creation, by its literal address or by
  what its name resolves to, and nothing is fetched from it;
- an operator's FLUX_SOURCES_ALLOWED_NETWORKS lets sources reach a network, and only that
  network: a redirect from an allowed server to another loopback address is refused at poll;
- `last_error` says only "could not fetch the URL", whether the port is closed, the upstream
  answers 404, 401 or 500, is too slow, or redirects to a refused address;
- each namespace holds at most FLUX_SOURCES_MAX_PER_NAMESPACE sources (429 past it, even for
  concurrent creations) and polls no faster than FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS.

With auth off, local use is kept: a source polls a loopback service every second, and
`last_error` keeps its detail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer, free_port, wait_for
from jsonserver import JsonServer

ADMIN = "ssrf-admin-token"
GENERIC = "could not fetch the URL"
AUTH_ON = {
    "FLUX_AUTH_ENABLED": "true",
    "FLUX_ADMIN_TOKEN": ADMIN,
    "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
    "FLUX_CONNECTOR_RETRY_SECONDS": "0.2",
}


def _server(factory: pytest.TempPathFactory, name: str, env: dict[str, str]) -> FluxServer:
    data_dir: Path = factory.mktemp(name) / "data"
    return FluxServer(data_dir, env).start()


@pytest.fixture(scope="module")
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    server.set("/weather", {"temp": 21})
    server.set("/unauthorized", {"error": "who are you"}, status=401)
    server.set("/broken", {"error": "boom"}, status=500)
    server.set("/slow", {"temp": 1}, delay=3.0)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def strict(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """Auth on, every other setting at its default."""
    server = _server(tmp_path_factory, "strict", AUTH_ON)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def allowing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    """Auth on; the operator allows 127.0.0.1 only; 3 sources per namespace; 1 s timeouts."""
    env = {
        **AUTH_ON,
        "FLUX_SOURCES_ALLOWED_NETWORKS": "127.0.0.1/32",
        "FLUX_SOURCES_MAX_PER_NAMESPACE": "3",
        "FLUX_CONNECTOR_TIMEOUT_SECONDS": "1",
    }
    server = _server(tmp_path_factory, "allowing", env)
    yield server
    server.stop()


def register(server: FluxServer, name: str) -> dict[str, str]:
    made = httpx.post(
        f"{server.url}/api/namespaces",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN}"},
        timeout=10,
    )
    assert made.status_code == 200, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def doc(url: str, namespace: str, **changes: Any) -> dict[str, Any]:
    return {
        "name": "probe",
        "url": url,
        "poll_interval_secs": 10,
        "entity_key": "probe",
        "namespace": namespace,
        **changes,
    }


def post(server: FluxServer, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/connectors/generic", json=body, headers=headers, timeout=15
    )


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    message: str = response.json()["error"]
    return message


def source(server: FluxServer, source_id: str, headers: dict[str, str]) -> dict[str, Any]:
    shown = httpx.get(f"{server.url}/api/connectors/generic/{source_id}", headers=headers)
    assert shown.status_code == 200, shown.text
    result: dict[str, Any] = shown.json()
    return result


def failed(server: FluxServer, source_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """The source once its status shows a failure."""
    return wait_for(lambda: (s := source(server, source_id, headers))["last_error"] and s)


def entity(server: FluxServer, entity_id: str) -> dict[str, Any] | None:
    got = httpx.get(f"{server.url}/api/state/entities/{entity_id.replace('/', '%2F')}")
    return got.json()["properties"] if got.status_code == 200 else None  # type: ignore[no-any-return]


# -- auth on: internal addresses are refused ------------------------------------------------------


def test_auth_on_refuses_loopback_private_and_flux_itself(
    strict: FluxServer, upstream: JsonServer
) -> None:
    headers = register(strict, "tenant")
    port = upstream.base.rsplit(":", 1)[1]
    before = len(upstream.requests)
    urls = [
        upstream.url("/weather"),  # a loopback-only service
        f"{strict.url}/api/admin/config",  # Flux's own admin config
        f"http://localhost:{port}/weather",  # a name that resolves to loopback
        f"http://2130706433:{port}/weather",  # 127.0.0.1 as one number
        f"http://127.1:{port}/weather",
        f"http://[::1]:{port}/",
        f"http://[::ffff:127.0.0.1]:{port}/",
        "http://10.1.2.3/",
        "http://172.16.0.1/",
        "http://172.31.255.254/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",  # CGNAT
        "http://100.127.255.254/",
        "http://[fd00::1]/",  # unique-local
        "http://[fc00::1]/",
        "http://[::ffff:10.0.0.1]/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://240.0.0.1/",  # reserved
        "http://198.18.0.1/",  # benchmarking
    ]
    for url in urls:
        message = error(post(strict, doc(url, "tenant"), headers), 400)
        assert message.startswith("`url`: refusing to fetch from"), (url, message)
        assert "FLUX_SOURCES_ALLOWED_NETWORKS" in message, (url, message)
    assert len(upstream.requests) == before
    listed = httpx.get(f"{strict.url}/api/connectors/generic", headers=headers)
    assert listed.json() == {"sources": []}


def test_the_minimum_interval_holds_with_auth_on(strict: FluxServer, upstream: JsonServer) -> None:
    headers = register(strict, "eager")
    body = doc("https://example.com/x.json", "eager", poll_interval_secs=1)
    message = error(post(strict, body, headers), 400)
    assert message == (
        "`poll_interval_secs` must be at least 10 (FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS)"
    )


# -- auth on, an allowed network ------------------------------------------------------------------


def test_an_allowed_network_is_reached_and_only_it(
    allowing: FluxServer, upstream: JsonServer
) -> None:
    headers = register(allowing, "allowed")
    created = post(allowing, doc(upstream.url("/weather"), "allowed"), headers)
    assert created.status_code == 201, created.text
    assert wait_for(lambda: entity(allowing, "allowed/probe")) == {"temp": 21}
    # 127.0.0.2 is loopback too, but not in 127.0.0.1/32: refused at creation...
    other = JsonServer("127.0.0.2").start()
    try:
        other.set("/secret", {"secret": "only the server sees this"})
        message = error(post(allowing, doc(other.url("/secret"), "allowed"), headers), 400)
        assert message.startswith("`url`: refusing to fetch from 127.0.0.2")
        # ...and when an allowed server redirects there, at the poll.
        upstream.set("/hop", status=302, headers={"Location": other.url("/secret")})
        body = doc(upstream.url("/hop"), "allowed", entity_key="hop")
        hop = post(allowing, body, headers).json()["source_id"]
        shown = failed(allowing, hop, headers)
        assert shown["last_error"] == GENERIC
        assert other.requests == []
        assert entity(allowing, "allowed/hop") is None
    finally:
        other.stop()


def test_last_error_does_not_tell_a_closed_port_from_an_http_error(
    allowing: FluxServer, upstream: JsonServer
) -> None:
    """Were the reasons shown, a tenant would learn which ports are open and what answers
    there (a port scanner): every way of failing reads the same."""
    closed = f"http://127.0.0.1:{free_port()}/"
    urls = [closed, upstream.url("/missing"), upstream.url("/unauthorized")]
    for group, batch in enumerate([urls, [upstream.url("/broken"), upstream.url("/slow")]]):
        namespace = f"scan{group}"  # (3 sources per namespace on this server)
        headers = register(allowing, namespace)
        ids = []
        for url in batch:
            created = post(allowing, doc(url, namespace), headers)
            assert created.status_code == 201, created.text
            ids.append(created.json()["source_id"])
        for source_id in ids:
            shown = failed(allowing, source_id, headers)
            assert shown["last_error"] == GENERIC, shown
            assert shown["status"] == "error"


def test_sources_per_namespace_are_limited_even_when_created_at_once(
    allowing: FluxServer, upstream: JsonServer
) -> None:
    alpha, beta = register(allowing, "alpha"), register(allowing, "beta")
    answers: list[httpx.Response] = []

    def create(index: int) -> None:
        body = doc(upstream.url("/weather"), "alpha", entity_key=f"k{index}")
        answers.append(post(allowing, body, alpha))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [201] * 3 + [429] * 5
    for answer in answers:
        if answer.status_code == 429:
            assert error(answer, 429) == (
                "namespace 'alpha' has 3 sources, the most it may have "
                "(FLUX_SOURCES_MAX_PER_NAMESPACE)"
            )
    listed = httpx.get(f"{allowing.url}/api/connectors/generic", headers=alpha).json()["sources"]
    assert len(listed) == 3
    # The limit is per namespace: beta still may.
    assert post(allowing, doc(upstream.url("/weather"), "beta"), beta).status_code == 201
    # A deleted source frees its place.
    path = f"{allowing.url}/api/connectors/generic/{listed[0]['source_id']}"
    assert httpx.delete(path, headers=alpha).status_code == 204
    assert post(allowing, doc(upstream.url("/weather"), "alpha"), alpha).status_code == 201
    assert error(post(allowing, doc(upstream.url("/weather"), "alpha"), alpha), 429)


# -- auth off: local use is kept ------------------------------------------------------------------


def test_auth_off_keeps_loopback_fast_polls_and_detailed_errors(
    tmp_path_factory: pytest.TempPathFactory, upstream: JsonServer
) -> None:
    env = {"FLUX_DIRECTORY_INTERVAL_SECONDS": "0", "FLUX_CONNECTOR_RETRY_SECONDS": "0.2"}
    server = _server(tmp_path_factory, "open", env)
    try:
        created = post(server, doc(upstream.url("/weather"), "local", poll_interval_secs=1), {})
        assert created.status_code == 201, created.text
        assert wait_for(lambda: entity(server, "local/probe")) == {"temp": 21}
        missing = post(server, doc(upstream.url("/missing"), "local", entity_key="m"), {})
        source_id = missing.json()["source_id"]
        shown = failed(server, source_id, {})
        assert shown["last_error"] == "upstream error: HTTP 404"
    finally:
        server.stop()
