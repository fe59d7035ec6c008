"""What a new user meets first, against a real `flux serve` (issue 16, first contact): each
rough edge found by trying Flux as a newcomer would, pinned so it stays smooth."""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer, module_server, wait_for

from .helpers import assert_error, new_event

JSON = {"content-type": "application/json"}
OPENAPI = Path(__file__).resolve().parents[2] / "src" / "flux" / "api" / "openapi.json"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    yield from module_server(tmp_path_factory, "first-contact")


NOT_OBJECTS: list[tuple[Any, str]] = [
    (None, "null"),
    ([1, 2], "sequence"),
    ("warm", 'string "warm"'),
    (3, "integer `3`"),
    (True, "boolean `true`"),
]


@pytest.mark.parametrize(("value", "named"), NOT_OBJECTS)
def test_properties_that_are_not_an_object_are_a_400_everywhere(
    srv: FluxServer, value: Any, named: str
) -> None:
    """The OpenAPI says `payload.properties` is an object: anything else present is refused
    with the same message on a single publish, in an atomic batch (400), and in a batch as that
    event's error; nothing is stored."""
    message = f"`payload.properties` must be a JSON object, got {named}"
    bad = new_event("fc/props")
    bad["payload"]["properties"] = value
    before = httpx.get(f"{srv.url}/api/events", params={"entity": "fc/props"}).json()

    assert_error(httpx.post(f"{srv.url}/api/events", json=bad), 400, message)
    atomic = httpx.post(f"{srv.url}/api/events/batch", json={"events": [bad], "atomic": True})
    assert "must be a JSON object" in assert_error(atomic, 400)
    batch = httpx.post(f"{srv.url}/api/events/batch", json=[new_event("fc/ok"), bad])
    assert batch.status_code == 200, batch.text
    assert batch.json()["successful"] == 1
    assert batch.json()["results"][1]["error"] == f"validation failed: {message}"

    after = httpx.get(f"{srv.url}/api/events", params={"entity": "fc/props"}).json()
    assert after == before


def test_an_event_without_timestamp_takes_the_servers_time(srv: FluxServer) -> None:
    """The seed's examples leave `timestamp` out: the event is stored with the server's time
    (epoch milliseconds) on a single publish and in a batch, conditions included."""
    bare = new_event("fc/when")
    del bare["timestamp"]
    before = time.time_ns() // 1_000_000
    response = httpx.post(f"{srv.url}/api/events", json=bare)
    assert response.status_code == 200, response.text
    conditional = {**bare, "payload": {"entity_id": "fc/when2", "properties": {"a": 1}}}
    conditional["expected_version"] = 0
    batch = httpx.post(f"{srv.url}/api/events/batch", json=[conditional, conditional])
    assert [r["error"] for r in batch.json()["results"]][0] is None, batch.text
    assert batch.json()["results"][1]["error"].startswith("condition failed"), batch.text
    after = time.time_ns() // 1_000_000
    for entity in ("fc/when", "fc/when2"):
        (stored,) = httpx.get(f"{srv.url}/api/events", params={"entity": entity}).json()
        assert before <= stored["timestamp"] <= after, stored


def json_body_operations() -> list[tuple[str, str]]:
    """Every operation the OpenAPI document gives a JSON request body, path parameters filled
    in: a new endpoint is covered as soon as it is documented (test_openapi.py checks that
    every route is)."""
    doc = json.loads(OPENAPI.read_text())
    found = []
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), re.sub(r"\{[^}]+\}", "fc-x", path)))
    return found


@pytest.fixture(scope="module")
def auth_srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    env = {"FLUX_AUTH_ENABLED": "true", "FLUX_ADMIN_TOKEN": "first-contact-admin"}
    yield from module_server(tmp_path_factory, "first-contact-auth", env)


@pytest.mark.parametrize(("method", "path"), json_body_operations())
def test_every_json_endpoint_treats_content_type_alike(
    srv: FluxServer, auth_srv: FluxServer, method: str, path: str
) -> None:
    """One rule (docs/auth.md): a JSON body must be typed `application/json` (parameters and
    `+json` types allowed); another type or none is a 415 with the same message, before
    anything else is looked at (an unknown name's 404, auth on: a missing token's 401)."""
    body = b'{"name": "fc-x"}'
    message = "Expected request with `Content-Type: application/json`"
    for url in (srv.url, auth_srv.url):
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"content-type": content_type} if content_type else {}
            answer = httpx.request(method, url + path, content=body, headers=headers)
            assert_error(answer, 415, message)
    typed = {"content-type": "Application/JSON; charset=utf-8"}
    assert httpx.request(method, srv.url + path, content=body, headers=typed).status_code != 415


def chunks(body: bytes) -> Iterator[bytes]:
    """`body` streamed with no Content-Length (chunked), so the limit is met while reading."""
    for start in range(0, len(body), 65536):
        yield body[start : start + 65536]


@pytest.mark.parametrize(
    ("path", "limit", "raise_with"),
    [
        (
            "/api/events",
            1_048_576,
            "FLUX_BODY_SIZE_LIMIT_SINGLE_BYTES, or `body_size_limit_single_bytes` in "
            "PUT /api/admin/config",
        ),
        (
            "/api/events/batch",
            10_485_760,
            "FLUX_BODY_SIZE_LIMIT_BATCH_BYTES, or `body_size_limit_batch_bytes` in "
            "PUT /api/admin/config",
        ),
        ("/api/namespaces", 1_048_576, "FLUX_BODY_SIZE_LIMIT_SINGLE_BYTES"),
        ("/api/leases/acquire", 16_384, None),
    ],
)
def test_a_413_says_the_limit_and_the_setting_that_raises_it(
    srv: FluxServer, path: str, limit: int, raise_with: str | None
) -> None:
    """The message keeps the original's `payload too large` first, then says how large the body
    is (when declared) and the limit, and the setting that raises it (the leases' is fixed)."""
    body = b" " * (limit + 10)
    declared = assert_error(httpx.post(srv.url + path, content=body, headers=JSON), 413)
    streamed = assert_error(httpx.post(srv.url + path, content=chunks(body), headers=JSON), 413)
    assert declared.startswith(
        f"payload too large: a body of {limit + 10} bytes is over the limit of {limit} bytes"
    ), declared
    assert streamed.startswith(f"payload too large: the body is over the limit of {limit} bytes"), (
        streamed
    )
    for message in (declared, streamed):
        if raise_with is None:
            assert message.endswith("(a fixed limit)"), message
        else:
            assert f"(raise it with {raise_with}" in message, message


ACCESS_LINE = re.compile(
    r'flux\.access: 127\.0\.0\.1:\d+ "GET /api/state/entities/fc%2Faccess" 404 \d+\.\d+ms$',
    re.MULTILINE,
)


def test_an_access_log_by_setting(server_factory: type[FluxServer], tmp_path: Path) -> None:
    """FLUX_ACCESS_LOG=true: one line per HTTP request (client, method, path, status,
    duration) on the `flux.access` logger, even at FLUX_LOG_LEVEL=warning; off by default."""
    quiet = server_factory(tmp_path / "off").start()
    on = server_factory(
        tmp_path / "on", env={"FLUX_ACCESS_LOG": "true", "FLUX_LOG_LEVEL": "warning"}
    ).start()
    for srv in (quiet, on):
        assert httpx.get(f"{srv.url}/api/state/entities/fc%2Faccess").status_code == 404
    # The line is written once the response has gone: wait for it.
    wait_for(lambda: ACCESS_LINE.search(on.logs()), "the access line")
    lines = [line for line in on.logs().splitlines() if "flux.access" in line]
    assert len([line for line in lines if ACCESS_LINE.search(line)]) == 1, on.logs()
    assert any('"GET /api/health" 200' in line for line in lines), lines
    assert "flux.access" not in quiet.logs()


def test_flux_core_directory_is_named_as_flux_own_and_left_out_of_the_count(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """A fresh server holds one entity nobody published, `flux-core/directory`: health counts
    it apart (`systemEntities`), not in `entities`, and listings mark it `"system": true`."""
    srv = server_factory(tmp_path / "data", env={"FLUX_DIRECTORY_INTERVAL_SECONDS": "0.05"}).start()

    def directory_written() -> bool:
        answer = httpx.get(f"{srv.url}/api/state/entities/flux-core%2Fdirectory")
        return answer.status_code == 200

    wait_for(directory_written, "the directory")
    assert httpx.post(f"{srv.url}/api/events", json=new_event("fc/mine")).status_code == 200
    health = httpx.get(f"{srv.url}/api/health").json()
    assert (health["entities"], health["systemEntities"]) == (1, 1), health
    listed = {e["id"]: e for e in httpx.get(f"{srv.url}/api/state/entities").json()}
    assert listed["flux-core/directory"]["system"] is True
    assert "system" not in listed["fc/mine"]
    one = httpx.get(f"{srv.url}/api/state/entities/flux-core%2Fdirectory").json()
    assert one["system"] is True


def test_a_connector_nothing_polls_is_not_enabled(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """`enabled` says whether this server polls the connector for the caller: not without a
    credential, never for a listed connector Flux does not implement (gmail, even with a
    token), and yes for GitHub once its token is stored, until it is deleted."""
    key = base64.b64encode(bytes(range(32))).decode()
    env = {"FLUX_ENCRYPTION_KEY": key, "FLUX_GITHUB_API_URL": "http://127.0.0.1:9"}
    srv = server_factory(tmp_path / "data", env=env).start()

    def enabled() -> dict[str, bool]:
        listed = httpx.get(f"{srv.url}/api/connectors").json()["connectors"]
        each = {c["name"]: c["enabled"] for c in listed}
        for name, flag in each.items():
            assert httpx.get(f"{srv.url}/api/connectors/{name}").json()["enabled"] is flag
        return each

    none = {"github": False, "gmail": False, "linkedin": False, "calendar": False}
    assert enabled() == none
    for name in ("github", "gmail"):
        stored = httpx.post(f"{srv.url}/api/connectors/{name}/token", json={"token": "t"})
        assert stored.status_code == 200, stored.text
    assert enabled() == {**none, "github": True}
    assert httpx.delete(f"{srv.url}/api/connectors/github/token").status_code == 200
    assert enabled() == none
