"""Generic sources over HTTP, in-process: create, list, show, delete; entities from a local
JSON server; upstream failures in the status, with back-off; the SSRF guard; bad input; and
who may see and change a source (auth on)."""

from __future__ import annotations

import base64
import ipaddress
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from starlette.testclient import TestClient

from conftest import wait_for
from flux.api.openapi import DOCUMENT
from jsonserver import JsonServer

from .authkit import ADMIN, bearer, open_client, register, run, server_of
from .conftest import ClientFactory

KEY = base64.b64encode(bytes(range(32))).decode()
TOKEN = "upstream-secret-4f1c9e"
NO_STORE = "Credential storage not available (FLUX_ENCRYPTION_KEY not set)"
FAST = {"directory_interval_seconds": 0, "connector_retry_seconds": 0.2}
# With auth on: the local JSON server is on loopback (the operator allows it), and tests poll
# every second.
LOCAL = {
    "encryption_key": KEY,
    "connector_retry_seconds": 0.2,
    "sources_allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),),
    "sources_min_poll_interval_seconds": 1,
}

T = TypeVar("T")


def conforms(name: str, value: Any) -> None:
    schema = {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
    validator = OAS30Validator(schema, format_checker=oas30_format_checker)
    assert [e.message for e in validator.iter_errors(value)] == []


@pytest.fixture
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    yield server
    server.stop()


def body(upstream: JsonServer, path: str = "/weather", **changes: Any) -> dict[str, Any]:
    doc = {
        "name": "weather",
        "url": upstream.url(path),
        "poll_interval_secs": 1,
        "entity_key": "oslo",
        "namespace": "demo",
        **changes,
    }
    return {k: v for k, v in doc.items() if v is not None}


def create(client: TestClient, doc: dict[str, Any], token: str | None = None) -> str:
    response = client.post("/api/connectors/generic", json=doc, headers=bearer(token))
    assert response.status_code == 201, response.text
    conforms("SourceCreated", response.json())
    source_id: str = response.json()["source_id"]
    return source_id


def entity(client: TestClient, entity_id: str) -> dict[str, Any] | None:
    response = client.get(f"/api/state/entities/{entity_id.replace('/', '%2F')}")
    return response.json()["properties"] if response.status_code == 200 else None  # type: ignore[no-any-return]


def status(client: TestClient, source_id: str, token: str | None = None) -> dict[str, Any]:
    response = client.get(f"/api/connectors/generic/{source_id}", headers=bearer(token))
    assert response.status_code == 200, response.text
    conforms("Source", response.json())
    result: dict[str, Any] = response.json()
    return result


# -- the basics (auth off) -----------------------------------------------------------------------


def test_create_poll_list_show_delete(make_client: ClientFactory, upstream: JsonServer) -> None:
    upstream.set("/weather", {"temp": 21.5, "sky": "clear"})
    client = make_client(**FAST)
    source_id = create(client, body(upstream))
    assert wait_for(lambda: entity(client, "demo/oslo")) == {"temp": 21.5, "sky": "clear"}
    shown = wait_for(lambda: (s := status(client, source_id))["events"] == 1 and s)
    assert shown["source_id"] == source_id
    assert shown["status"] == "running"
    assert shown["has_token"] is False
    assert shown["last_error"] is None and shown["last_poll"] is not None
    assert {k: shown[k] for k in ("name", "url", "poll_interval_secs", "auth_type")} == {
        "name": "weather",
        "url": upstream.url("/weather"),
        "poll_interval_secs": 1,
        "auth_type": "none",
    }
    listed = client.get("/api/connectors/generic").json()
    conforms("Sources", listed)
    assert [s["source_id"] for s in listed["sources"]] == [source_id]
    history = client.get("/api/events", params={"entity": "demo/oslo"}).json()
    assert history[0]["stream"] == "generic"
    assert history[0]["source"] == f"generic.{source_id}"
    assert history[0]["key"] == "oslo"
    # A changed upstream value updates the entity at the next poll.
    upstream.set("/weather", {"temp": 19.0, "sky": "clear"})
    assert wait_for(lambda: (entity(client, "demo/oslo") or {}).get("temp") == 19.0)
    # Unchanged polls add nothing to the log.
    polls = status(client, source_id)["polls"]
    wait_for(lambda: status(client, source_id)["polls"] >= polls + 2)
    assert len(client.get("/api/events", params={"entity": "demo/oslo"}).json()) == 2
    # Delete: 204, gone from the list, no more polls.
    assert client.delete(f"/api/connectors/generic/{source_id}").status_code == 204
    assert client.get("/api/connectors/generic").json() == {"sources": []}
    missing = client.get(f"/api/connectors/generic/{source_id}")
    assert missing.status_code == 404
    assert missing.json() == {"error": f"Source '{source_id}' not found"}
    assert client.delete(f"/api/connectors/generic/{source_id}").status_code == 404
    server = server_of(client)
    assert f"source:{source_id}" not in server.connectors.scheduler.runners


def test_json_path_key_fan_out_and_mapping(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    upstream.set("/station", {"station": {"id": "blindern"}, "temp": 3})
    upstream.set(
        "/issues",
        {"total": 2, "items": [{"id": 7, "title": "Bug", "x": 1}, {"id": "b8", "title": "Idea"}]},
    )
    client = make_client(**FAST)
    create(client, body(upstream, "/station", entity_key="$.station.id"))
    create(
        client,
        body(
            upstream,
            "/issues",
            namespace="tracker",
            items="$.items",
            entity_key="$.id",
            mapping={"name": "$.title", "x": "$.x"},
        ),
    )
    assert wait_for(lambda: entity(client, "demo/blindern")) == {
        "station": {"id": "blindern"},
        "temp": 3,
    }
    assert wait_for(lambda: entity(client, "tracker/7")) == {"name": "Bug", "x": 1}
    assert wait_for(lambda: entity(client, "tracker/b8")) == {"name": "Idea", "x": None}


def test_a_response_of_the_wrong_shape_shows_in_the_status(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    upstream.set("/list", [1, 2, 3])
    client = make_client(**FAST)
    source_id = create(client, body(upstream, "/list"))
    shown = wait_for(lambda: (s := status(client, source_id))["last_error"] and s)
    assert shown["status"] == "error"
    assert shown["last_error"].startswith("the response is a list, not a JSON object")
    upstream.set("/list", {"now": "an object"})
    assert wait_for(lambda: entity(client, "demo/oslo")) == {"now": "an object"}
    assert wait_for(lambda: status(client, source_id)["status"] == "running")


@pytest.mark.parametrize(
    ("status_code", "headers", "message"),
    [
        (401, {}, "upstream refused the credentials (HTTP 401): check the source's token"),
        (403, {}, "upstream denied access (HTTP 403)"),
        (500, {}, "upstream error: HTTP 500"),
        (503, {}, "upstream error: HTTP 503"),
    ],
)
def test_upstream_errors_show_and_back_off(
    make_client: ClientFactory,
    upstream: JsonServer,
    status_code: int,
    headers: dict[str, str],
    message: str,
) -> None:
    upstream.set("/weather", {"error": "no"}, status=status_code, headers=headers)
    client = make_client(**FAST)  # retries after 0.2 s, then 0.4 s
    source_id = create(client, body(upstream))
    shown = wait_for(lambda: (s := status(client, source_id))["failures"] >= 3 and s)
    assert shown["status"] == "error"
    assert shown["last_error"] == message
    calls = upstream.calls("/weather")
    assert calls[1].at - calls[0].at >= 0.2  # the retries wait, doubling
    assert calls[2].at - calls[1].at >= 0.4
    # Recovery clears the error.
    upstream.set("/weather", {"temp": 1})
    assert wait_for(lambda: entity(client, "demo/oslo")) == {"temp": 1}
    assert wait_for(lambda: status(client, source_id)["last_error"] is None)


def test_rate_limit_waits_as_long_as_upstream_asks(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    upstream.set("/weather", {}, status=429, headers={"Retry-After": "2"})
    client = make_client(**FAST)
    source_id = create(client, body(upstream))
    shown = wait_for(lambda: (s := status(client, source_id))["last_error"] and s)
    assert shown["last_error"] == "upstream rate limit (HTTP 429), asks to wait 2s"
    wait_for(lambda: len(upstream.calls("/weather")) >= 2)
    calls = upstream.calls("/weather")
    # Not the 0.2 s retry nor the 1 s interval: the 2 s upstream asked for.
    assert calls[1].at - calls[0].at >= 1.9


def test_timeout_shows_in_the_status(make_client: ClientFactory, upstream: JsonServer) -> None:
    upstream.set("/slow", {"late": True}, delay=3)
    client = make_client(connector_timeout_seconds=0.3, **FAST)
    source_id = create(client, body(upstream, "/slow"))
    shown = wait_for(lambda: (s := status(client, source_id))["last_error"] and s)
    assert "timed out" in shown["last_error"]
    assert shown["status"] == "error"


def test_response_size_cap(make_client: ClientFactory, upstream: JsonServer) -> None:
    upstream.set("/big", {"blob": "x" * 3000}, chunked=True)
    client = make_client(source_max_response_bytes=1000, **FAST)
    source_id = create(client, body(upstream, "/big"))
    shown = wait_for(lambda: (s := status(client, source_id))["last_error"] and s)
    assert shown["last_error"] == "upstream response is over the 1000-byte limit"
    assert entity(client, "demo/oslo") is None


# -- the SSRF guard -----------------------------------------------------------------------------


REFUSED_URLS = [
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
    "http://169.254.1.1:8080/",
    "http://[fe80::1]/",
    "http://[fd00:ec2::254]/",
    "http://100.100.100.200/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://metadata.google.internal/computeMetadata/v1/",
    "http://metadata/",
    "http://2852039166/",  # 169.254.169.254 as one number: refused once resolved
]


def test_ssrf_refused_at_creation(make_client: ClientFactory, upstream: JsonServer) -> None:
    client = make_client(**FAST)
    for url in REFUSED_URLS:
        response = client.post("/api/connectors/generic", json=body(upstream, url=url))
        assert response.status_code == 400, url
        error = response.json()["error"]
        assert error.startswith("`url`: refusing to fetch from"), error
        assert "FLUX_SOURCES_ALLOW_LINK_LOCAL" in error
    for url, message in [
        ("http://0.0.0.0:8080/", "is not a host address"),
        ("http://224.0.0.251/", "multicast"),
        ("file:///etc/passwd", "must start with http:// or https://"),
    ]:
        response = client.post("/api/connectors/generic", json=body(upstream, url=url))
        assert response.status_code == 400
        assert message in response.json()["error"]
    assert client.get("/api/connectors/generic").json() == {"sources": []}


def test_ssrf_allowed_when_the_admin_says_so(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    """With FLUX_SOURCES_ALLOW_LINK_LOCAL the source is created and its poll connects (here to
    fe80::1 with no interface, which fails at once on this machine: no packet leaves it)."""
    client = make_client(sources_allow_link_local=True, connector_timeout_seconds=2, **FAST)
    source_id = create(client, body(upstream, url="http://[fe80::1]:9/latest"))
    shown = wait_for(lambda: (s := status(client, source_id))["last_error"] and s)
    assert shown["last_error"].startswith("cannot reach fe80::1"), shown["last_error"]
    # 0.0.0.0 and multicast stay refused.
    for url in ("http://0.0.0.0/", "http://[ff02::1]/"):
        response = client.post("/api/connectors/generic", json=body(upstream, url=url))
        assert response.status_code == 400


def test_ssrf_checked_again_at_every_poll(make_client: ClientFactory, upstream: JsonServer) -> None:
    """A redirect to the metadata address fails the poll, with the guard's reason."""
    upstream.set("/weather", status=302, headers={"Location": "http://169.254.169.254/latest"})
    client = make_client(**FAST)
    source_id = create(client, body(upstream))
    shown = wait_for(lambda: (s := status(client, source_id))["last_error"] and s)
    assert shown["last_error"].startswith("refusing to fetch from 169.254.169.254")


# -- bad input ----------------------------------------------------------------------------------


def test_bad_bodies_are_400_with_a_clear_error(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    client = make_client(encryption_key=KEY, **FAST)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"name": None}, "missing field `name`"),
        ({"url": None}, "missing field `url`"),
        ({"url": 5}, "`url`: invalid type: integer `5`, expected a string"),
        ({"url": "ftp://example.com/"}, "must start with http:// or https://"),
        ({"poll_interval_secs": 0}, "`poll_interval_secs` must be between 1 and"),
        ({"poll_interval_secs": "5"}, "expected an integer"),
        ({"entity_key": "$.a["}, "`entity_key`: JSON path"),
        ({"namespace": "NO"}, "Namespace name too short"),
        ({"namespace": "bad name"}, "Invalid character ' '"),
        ({"items": "$.x"}, "with `items`, `entity_key` must be a JSON path"),
        ({"mapping": {"a": "b"}}, "`mapping.a`: JSON path 'b' must start with $"),
        ({"auth_type": "digest"}, '`auth_type` must be "none", "bearer"'),
        ({"auth_type": "bearer"}, "`auth_type` 'bearer' needs a `token`"),
        ({"token": "x"}, '`token` given but `auth_type` is "none"'),
        ({"flux_namespace_token": 5}, "`flux_namespace_token`: invalid type"),
    ]
    for changes, message in cases:
        doc = {k: v for k, v in {**body(upstream), **changes}.items() if v is not None}
        response = client.post("/api/connectors/generic", json=doc)
        assert response.status_code == 400, (changes, response.text)
        assert message in response.json()["error"], (changes, response.json())
    for raw in (b"{", b"[]", b"null"):
        response = client.post(
            "/api/connectors/generic", content=raw, headers={"content-type": "application/json"}
        )
        assert response.status_code == 400
        assert "error" in response.json()
    response = client.post(
        "/api/connectors/generic", content=b"{}", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 415
    assert client.get("/api/connectors/generic").json() == {"sources": []}


def test_generic_is_not_taken_for_a_connector_name(make_client: ClientFactory) -> None:
    client = make_client()
    assert client.get("/api/connectors/generic").json() == {"sources": []}
    assert client.get("/api/connectors/generic/nope").status_code == 404
    assert client.get("/api/connectors/github").json()["name"] == "github"


# -- secrets ------------------------------------------------------------------------------------


def test_a_token_needs_the_credential_store(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    upstream.set("/weather", {"temp": 1})
    client = make_client(**FAST)
    doc = body(upstream, auth_type="bearer", token=TOKEN)
    response = client.post("/api/connectors/generic", json=doc)
    assert response.status_code == 500
    assert response.json() == {"error": NO_STORE}
    create(client, body(upstream))  # without a token: no key needed
    assert wait_for(lambda: entity(client, "demo/oslo")) == {"temp": 1}


def test_the_token_is_sent_upstream_and_never_shown_or_stored_in_the_clear(
    make_client: ClientFactory, upstream: JsonServer, data_dir: Path
) -> None:
    upstream.set("/weather", {"temp": 1})
    client = make_client(encryption_key=KEY, **FAST)
    doc = body(upstream, auth_type={"api_key_header": "X-Api-Key"}, token=TOKEN)
    response = client.post("/api/connectors/generic", json=doc)
    assert TOKEN not in response.text
    source_id = response.json()["source_id"]
    assert wait_for(lambda: entity(client, "demo/oslo")) == {"temp": 1}
    assert upstream.calls("/weather")[0].headers["x-api-key"] == TOKEN
    shown = status(client, source_id)
    assert shown["has_token"] is True
    assert shown["auth_type"] == {"api_key_header": "X-Api-Key"}
    for path in ("/api/connectors/generic", f"/api/connectors/generic/{source_id}"):
        assert TOKEN not in client.get(path).text
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert any(p.name == "sources.db" for p in files)
    for path in files:
        assert TOKEN.encode() not in path.read_bytes(), path
    # Deleting the source deletes its secret.
    server = server_of(client)
    assert server.credentials is not None
    assert server.credentials.get("generic", source_id) == TOKEN
    assert client.delete(f"/api/connectors/generic/{source_id}").status_code == 204
    assert server.credentials.get("generic", source_id) is None


def test_sources_restart_with_the_app(make_client: ClientFactory, upstream: JsonServer) -> None:
    upstream.set("/weather", {"temp": 1})
    client = make_client(encryption_key=KEY, **FAST)
    source_id = create(client, body(upstream, auth_type="bearer", token=TOKEN))
    wait_for(lambda: entity(client, "demo/oslo"))
    client.__exit__(None, None, None)
    upstream.set("/weather", {"temp": 2})
    again = make_client(encryption_key=KEY, **FAST)
    assert wait_for(lambda: (entity(again, "demo/oslo") or {}).get("temp") == 2)
    shown = status(again, source_id)
    assert shown["has_token"] is True
    assert upstream.calls("/weather")[-1].headers["authorization"] == f"Bearer {TOKEN}"


def test_a_stored_token_without_the_key_shows_in_the_status(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    upstream.set("/weather", {"temp": 1})
    client = make_client(encryption_key=KEY, **FAST)
    source_id = create(client, body(upstream, auth_type="bearer", token=TOKEN))
    client.__exit__(None, None, None)
    again = make_client(**FAST)  # restarted without FLUX_ENCRYPTION_KEY
    shown = wait_for(lambda: (s := status(again, source_id))["last_error"] and s)
    assert "FLUX_ENCRYPTION_KEY" in shown["last_error"]


# -- ownership (auth on) -------------------------------------------------------------------------


@pytest.fixture
def auth_client(data_dir: Path) -> Iterator[TestClient]:
    client = open_client(data_dir, **LOCAL)
    yield client
    client.__exit__(None, None, None)


def test_a_source_belongs_to_its_namespace(auth_client: TestClient, upstream: JsonServer) -> None:
    client = auth_client
    upstream.set("/weather", {"temp": 5})
    alpha, beta = register(client, "alpha"), register(client, "beta")
    doc = body(upstream, namespace="alpha")
    # No token, a junk one, the admin's: refused.
    assert client.post("/api/connectors/generic", json=doc).status_code == 401
    assert client.get("/api/connectors/generic").status_code == 401
    junk = client.post("/api/connectors/generic", json=doc, headers=bearer("junk"))
    assert junk.status_code == 401
    admin = client.post("/api/connectors/generic", json=doc, headers=bearer(ADMIN))
    assert admin.status_code == 403
    # Another namespace's name in the body: 403.
    wrong = client.post("/api/connectors/generic", json=doc, headers=bearer(beta))
    assert wrong.status_code == 403
    assert wrong.json() == {"error": "Token does not have permission to write to namespace 'alpha'"}
    # flux_namespace_token, when given, must be the namespace's own.
    mismatch = client.post(
        "/api/connectors/generic",
        json={**doc, "flux_namespace_token": beta},
        headers=bearer(alpha),
    )
    assert mismatch.status_code == 403
    source_id = create(client, {**doc, "flux_namespace_token": alpha}, alpha)
    assert wait_for(lambda: entity(client, "alpha/oslo")) == {"temp": 5}
    # The owner sees it; beta does not, and cannot delete it.
    assert [
        s["source_id"]
        for s in client.get("/api/connectors/generic", headers=bearer(alpha)).json()["sources"]
    ] == [source_id]
    assert status(client, source_id, alpha)["namespace"] == "alpha"
    assert client.get("/api/connectors/generic", headers=bearer(beta)).json() == {"sources": []}
    path = f"/api/connectors/generic/{source_id}"
    assert client.get(path, headers=bearer(beta)).status_code == 404
    # The admin oversees every source (it could not create one: see above).
    listed = client.get("/api/connectors/generic", headers=bearer(ADMIN)).json()["sources"]
    assert [s["source_id"] for s in listed] == [source_id]
    assert client.get(path, headers=bearer(ADMIN)).json()["namespace"] == "alpha"
    assert (
        client.delete(f"/api/connectors/generic/{source_id}", headers=bearer(beta)).status_code
        == 404
    )
    assert client.delete(f"/api/connectors/generic/{source_id}").status_code == 401
    assert status(client, source_id, alpha)["status"] == "running"
    assert (
        client.delete(f"/api/connectors/generic/{source_id}", headers=bearer(alpha)).status_code
        == 204
    )


def test_the_admin_removes_a_source_made_while_auth_was_off(
    make_client: ClientFactory, data_dir: Path, upstream: JsonServer
) -> None:
    """Made with auth off, a source belongs to `default`, which no namespace holds: with auth
    on it cannot write (its status says why) and only the admin can see and delete it."""
    upstream.set("/weather", {"temp": 1})
    client = make_client(encryption_key=KEY, **FAST)
    source_id = create(client, body(upstream, namespace="alpha"))
    wait_for(lambda: entity(client, "alpha/oslo"))
    client.__exit__(None, None, None)
    upstream.set("/weather", {"temp": 2})  # a change it would publish
    again = open_client(data_dir, **LOCAL)
    try:
        alpha = register(again, "alpha")
        path = f"/api/connectors/generic/{source_id}"
        assert again.get(path, headers=bearer(alpha)).status_code == 404
        shown = wait_for(
            lambda: (s := again.get(path, headers=bearer(ADMIN)).json())["last_error"] and s
        )
        assert "permission" in shown["last_error"]
        assert entity(again, "alpha/oslo") == {"temp": 1}
        assert again.delete(path, headers=bearer(alpha)).status_code == 404
        assert again.delete(path, headers=bearer(ADMIN)).status_code == 204
        assert again.get("/api/connectors/generic", headers=bearer(ADMIN)).json() == {"sources": []}
    finally:
        again.__exit__(None, None, None)


def test_a_source_writes_only_under_its_namespace(
    auth_client: TestClient, upstream: JsonServer
) -> None:
    """A JSON path key cannot climb out: `<namespace>/` is always the prefix."""
    client = auth_client
    upstream.set("/evil", {"id": "../beta/x", "v": 1})
    alpha = register(client, "alpha")
    register(client, "beta")
    create(client, body(upstream, "/evil", namespace="alpha", entity_key="$.id"), alpha)
    assert wait_for(lambda: entity(client, "alpha/../beta/x")) == {"id": "../beta/x", "v": 1}
    assert client.get("/api/state/entities", params={"namespace": "beta"}).json() == []


def test_deleting_a_namespace_deletes_its_sources(
    auth_client: TestClient, upstream: JsonServer
) -> None:
    client = auth_client
    upstream.set("/weather", {"temp": 5})
    alpha = register(client, "alpha")
    beta = register(client, "beta")
    source_id = create(
        client, body(upstream, namespace="alpha", auth_type="bearer", token=TOKEN), alpha
    )
    kept = create(client, body(upstream, namespace="beta"), beta)
    server = server_of(client)
    assert client.delete("/api/namespaces/alpha", headers=bearer(ADMIN)).status_code in (200, 204)
    assert f"source:{source_id}" not in server.connectors.scheduler.runners
    assert f"source:{kept}" in server.connectors.scheduler.runners
    assert server.credentials is not None
    assert server.credentials.get("generic", source_id) is None
    stored = run(client, _stored_ids, server)
    assert stored == [kept]


async def _stored_ids(server: Any) -> list[str]:
    store = server.connectors.sources.store
    return [s.id for s in store.all()]


# -- limits (auth on) ----------------------------------------------------------------------------


def test_quota_and_minimum_interval_with_auth_on(data_dir: Path, upstream: JsonServer) -> None:
    upstream.set("/weather", {"temp": 1})
    settings = {**LOCAL, "sources_max_per_namespace": 2, "sources_min_poll_interval_seconds": 30}
    client = open_client(data_dir, **settings)
    try:
        alpha = register(client, "alpha")
        doc = body(upstream, namespace="alpha", poll_interval_secs=30)
        fast = client.post(
            "/api/connectors/generic", json={**doc, "poll_interval_secs": 29}, headers=bearer(alpha)
        )
        assert fast.status_code == 400
        assert fast.json() == {
            "error": "`poll_interval_secs` must be at least 30 "
            "(FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS)"
        }
        create(client, doc, alpha)
        create(client, doc, alpha)
        over = client.post("/api/connectors/generic", json=doc, headers=bearer(alpha))
        assert over.status_code == 429
        assert over.headers["content-type"] == "application/json"
        assert over.json() == {
            "error": "namespace 'alpha' has 2 sources, the most it may have "
            "(FLUX_SOURCES_MAX_PER_NAMESPACE)"
        }
        assert "retry-after" not in over.headers
    finally:
        client.__exit__(None, None, None)


def test_auth_off_has_no_quota_and_the_original_minimum(
    make_client: ClientFactory, upstream: JsonServer
) -> None:
    client = make_client(sources_max_per_namespace=1, sources_min_poll_interval_seconds=60, **FAST)
    for _ in range(3):
        create(client, body(upstream, poll_interval_secs=1))
    assert len(client.get("/api/connectors/generic").json()["sources"]) == 3


def test_sources_over_a_lowered_limit_are_kept_but_not_polled(
    data_dir: Path, upstream: JsonServer
) -> None:
    """Sources made before the limits (or under higher ones): at restart the oldest up to the
    quota run, with their interval raised to the minimum; the others are listed (`stopped`)
    and may be deleted, which frees their places."""
    upstream.set("/weather", {"temp": 1})
    client = open_client(data_dir, **{**LOCAL, "sources_max_per_namespace": 0})
    alpha = register(client, "alpha")
    ids = [create(client, body(upstream, namespace="alpha"), alpha) for _ in range(3)]
    client.__exit__(None, None, None)
    limits = {"sources_max_per_namespace": 1, "sources_min_poll_interval_seconds": 10}
    again = open_client(data_dir, **{**LOCAL, **limits})
    try:
        server = server_of(again)
        runners = server.connectors.scheduler.runners
        assert [k for k in runners if k.startswith("source:")] == [f"source:{ids[0]}"]
        assert runners[f"source:{ids[0]}"].connector.poll_interval_seconds == 10.0
        shown = [status(again, i, alpha) for i in ids]
        assert [s["status"] for s in shown[1:]] == ["stopped", "stopped"]
        assert shown[0]["poll_interval_secs"] == 1  # as configured; polled every 10 s
        over = again.post(
            "/api/connectors/generic",
            json=body(upstream, namespace="alpha", poll_interval_secs=10),
            headers=bearer(alpha),
        )
        assert over.status_code == 429
        for source_id in ids[1:]:
            path = f"/api/connectors/generic/{source_id}"
            assert again.delete(path, headers=bearer(alpha)).status_code == 204
        over = again.post(
            "/api/connectors/generic",
            json=body(upstream, namespace="alpha", poll_interval_secs=10),
            headers=bearer(alpha),
        )
        assert over.status_code == 429  # the running one still counts
        path = f"/api/connectors/generic/{ids[0]}"
        assert again.delete(path, headers=bearer(alpha)).status_code == 204
        create(again, body(upstream, namespace="alpha", poll_interval_secs=10), alpha)
    finally:
        again.__exit__(None, None, None)


def test_with_auth_on_a_loopback_source_is_refused_unless_allowed(
    data_dir: Path, upstream: JsonServer
) -> None:
    upstream.set("/weather", {"temp": 1})
    for allowed, expected in (((), 400), ((ipaddress.ip_network("127.0.0.1/32"),), 201)):
        client = open_client(
            data_dir / str(expected),
            sources_allowed_networks=allowed,
            sources_min_poll_interval_seconds=1,
        )
        try:
            alpha = register(client, "alpha")
            doc = body(upstream, namespace="alpha")
            answer = client.post("/api/connectors/generic", json=doc, headers=bearer(alpha))
            assert answer.status_code == expected, answer.text
        finally:
            client.__exit__(None, None, None)
    assert len(upstream.calls("/weather")) >= 1  # the allowed one polled
