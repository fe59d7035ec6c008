"""The OpenAPI document at /openapi.json is valid OpenAPI 3.0, matches the routes both ways,
describes the real responses, and /docs serves Swagger UI with its assets."""

from __future__ import annotations

import json
import re
import string
from importlib import resources
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

import flux
from flux.api.app import routes
from flux.api.coordination import LEASE_BODY_LIMIT
from flux.api.http import HISTORY_DEFAULT_LIMIT, HISTORY_MAX_LIMIT, HISTORY_WINDOW_US
from flux.api.openapi import DATA_FILE, DOCUMENT, FACTS, PLACEHOLDER, char_class, fill, template
from flux.auth import NAME_CHARS, NAME_MAX, NAME_MIN
from flux.config import SETTINGS, Settings
from flux.connectors.base import KNOWN
from flux.connectors.oauth import STATE_TTL_SECONDS
from flux.connectors.source_config import MAX_NAME_LENGTH, MAX_POLL_INTERVAL
from flux.errors import ValidationError
from flux.events import MAX_PAYLOAD_DEPTH, MAX_TTL_MS, STREAM_RE, validate_event

from .conftest import ClientFactory
from .helpers import dumps, encode_id, new_event
from .strategies import event_like

UNDOCUMENTED = {
    ("/openapi.json", "get"),
    ("/docs", "get"),
    ("/", "get"),  # the web console's page and files (flux.api.console), not API
    ("/console/{name}", "get"),
}
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


@pytest.fixture
def document(client: TestClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc: dict[str, Any] = response.json()
    return doc


def schema_validator(name: str, document: dict[str, Any] = DOCUMENT) -> OAS30Validator:
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    return OAS30Validator(schema, format_checker=oas30_format_checker)


def conforms(name: str, value: Any) -> list[str]:
    return [error.message for error in schema_validator(name).iter_errors(value)]


def test_served_document_is_the_module_document(document: dict[str, Any]) -> None:
    assert document == orjson.loads(orjson.dumps(DOCUMENT))


def test_document_is_valid_openapi_3_0(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.0.")
    validate(document)


def route_operations() -> set[tuple[str, str]]:
    found = set()
    for route in routes():
        if isinstance(route, Mount):
            assert route.path == "/docs/static"  # Swagger UI's assets, not API
            continue
        if isinstance(route, WebSocketRoute):
            continue  # OpenAPI 3.0 has no WebSocket operations
        assert isinstance(route, Route) and route.methods is not None
        path = re.sub(r"\{(\w+):\w+\}", r"{\1}", route.path)
        for method in route.methods:
            if method != "HEAD":  # Starlette adds HEAD to every GET
                found.add((path, method.lower()))
    return found


def test_every_route_is_documented_and_vice_versa(document: dict[str, Any]) -> None:
    documented = {
        (path, method)
        for path, item in document["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert route_operations() - UNDOCUMENTED == documented


def test_operations_are_complete(document: dict[str, Any]) -> None:
    for path, item in document["paths"].items():
        params_in_path = set(re.findall(r"\{(\w+)\}", path))
        for method, operation in item.items():
            assert operation.get("summary"), (path, method)
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == params_in_path, (path, method)
            assert {"200", "201", "204", "307"} & set(operation["responses"]), (path, method)
            for status, response in operation["responses"].items():
                if status.startswith(("4", "5")) and path != "/api/health":
                    schema = response["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (path, status)


# -- the document describes what the server really answers ------------------------------------


def test_real_responses_match_the_schemas(client: TestClient) -> None:
    accepted = client.post("/api/events", content=orjson.dumps(new_event("ns/a", {"x": 1})))
    assert conforms("EventAccepted", accepted.json()) == []
    batch = client.post("/api/events/batch", content=orjson.dumps([new_event("ns/b"), 5]))
    assert conforms("BatchResult", batch.json()) == []
    entity = client.get(f"/api/state/entities/{encode_id('ns/a')}").json()
    assert conforms("Entity", entity) == []
    for item in client.get("/api/state/entities").json():
        assert conforms("Entity", item) == []
    for event in client.get("/api/events", params={"entity": "ns/a"}).json():
        assert conforms("Event", event) == []
    assert conforms("Deleted", client.delete("/api/state/entities/ns%2Fb").json()) == []
    deleted = client.post(
        "/api/state/entities/delete",
        json={"prefix": "ns/"},
        headers={"content-type": "application/json"},
    )
    assert conforms("BatchDeleteResult", deleted.json()) == []
    assert conforms("Health", client.get("/api/health").json()) == []
    assert conforms("AdminConfig", client.get("/api/admin/config").json()) == []
    assert conforms("Connectors", client.get("/api/connectors").json()) == []
    assert conforms("Error", client.get("/api/state/entities/nope").json()) == []


def test_real_coordination_responses_match_the_schemas(make_client: ClientFactory) -> None:
    """Conditional writes, batches, leases and the changes feed, each answer (the 409 and 410
    bodies included) against its schema."""
    client = make_client(tombstones_kept=1)
    created = client.post("/api/events", json=new_event("ns/t", {"s": "open"}, expected_version=0))
    assert conforms("EventAccepted", created.json()) == []
    version = created.json()["sequence"]
    refused = client.post("/api/events", json=new_event("ns/t", expected_version=0))
    assert refused.status_code == 409
    assert conforms("Error", refused.json()) == []
    assert conforms("Conflict", {k: v for k, v in refused.json().items() if k != "error"}) == []
    absent = client.post("/api/events", json=new_event("ns/none", expected_version=3))
    assert absent.status_code == 409 and absent.json()["current"] is None
    assert conforms("Error", absent.json()) == []
    header = client.post(
        "/api/events", json=new_event("ns/t"), headers={"If-Match": f'"{version}"'}
    )
    assert header.status_code == 200 and conforms("EventAccepted", header.json()) == []
    batch = client.post(
        "/api/events/batch",
        json={"events": [new_event("ns/t", expected_properties={"s": "x"}), new_event("ns/u")]},
    )
    results = batch.json()["results"]
    assert results[0]["sequence"] is None and "conflict" in results[0]
    assert conforms("BatchResult", batch.json()) == []
    atomic = client.post(
        "/api/events/batch",
        json={"atomic": True, "events": [new_event("ns/u"), new_event("ns/t", expected_version=1)]},
    )
    assert atomic.status_code == 409 and atomic.json()["index"] == 1
    assert conforms("Error", atomic.json()) == []
    stored = client.post("/api/events/batch", json={"atomic": True, "events": [new_event("ns/v")]})
    assert conforms("BatchResult", stored.json()) == []
    lease = client.post(
        "/api/leases/acquire",
        json={"entity_id": "ns/l", "owner": "a", "ttl_ms": 60_000, "presence": True},
    )
    assert lease.status_code == 200 and conforms("Lease", lease.json()) == []
    token = lease.json()["token"]
    taken = client.post(
        "/api/leases/acquire", json={"entity_id": "ns/l", "owner": "b", "ttl_ms": 9}
    )
    assert taken.status_code == 409 and conforms("Error", taken.json()) == []
    renewed = client.post(
        "/api/leases/renew", json={"entity_id": "ns/l", "owner": "a", "token": token, "ttl_ms": 9}
    )
    assert conforms("Lease", renewed.json()) == []
    released = client.post(
        "/api/leases/release", json={"entity_id": "ns/l", "owner": "a", "token": token}
    )
    assert conforms("LeaseReleased", released.json()) == []
    changes = client.get("/api/state/changes", params={"since": 0, "limit": 2})
    assert changes.json()["more"] is True and conforms("Changes", changes.json()) == []
    assert client.delete("/api/state/entities/ns%2Fu").json()["deleted"] is True
    assert client.delete("/api/state/entities/ns%2Fv").json()["deleted"] is True
    resync = client.get("/api/state/changes", params={"since": 1})
    assert resync.status_code == 410 and conforms("Error", resync.json()) == []
    everything = client.get("/api/state/changes", params={"since": resync.json()["oldest"]})
    assert everything.json()["deleted"] and conforms("Changes", everything.json()) == []


def test_the_lease_owner_length_is_what_the_server_accepts(client: TestClient) -> None:
    longest = DOCUMENT["components"]["schemas"]["LeaseAcquire"]["properties"]["owner"]["maxLength"]
    for owner, status in (("o" * longest, 200), ("o" * (longest + 1), 400)):
        answer = client.post(
            "/api/leases/acquire", json={"entity_id": "ns/o", "owner": owner, "ttl_ms": 1000}
        )
        assert answer.status_code == status, answer.text


def test_admin_config_schema_names_every_runtime_setting(client: TestClient) -> None:
    config = client.get("/api/admin/config").json()
    assert set(DOCUMENT["components"]["schemas"]["AdminConfig"]["properties"]) == set(config)


@settings(max_examples=100, deadline=None)
@given(raw=st.one_of(event_like, st.builds(new_event)))
def test_event_schema_agrees_with_validate_event(raw: Any) -> None:
    """Within the documented limits (a timestamp that fits i64), what the Event schema accepts
    is what validate_event accepts."""
    decoded = orjson.loads(dumps(raw))
    timestamp = decoded.get("timestamp")
    if type(timestamp) is int and timestamp > 2**63 - 1:
        return
    try:
        validate_event(decoded)
        valid = True
    except ValidationError:
        valid = False
    assert (conforms("Event", decoded) == []) == valid, decoded


# -- the facts the code owns -------------------------------------------------------------------


def test_every_fact_in_the_served_document_is_the_codes(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    assert document["info"]["version"] == flux.__version__
    stream = schemas["Event"]["properties"]["stream"]["pattern"]
    assert stream == f"^{STREAM_RE.pattern}$"
    name_pattern = schemas["NamespaceRequest"]["properties"]["name"]["pattern"]
    for size in range(NAME_MIN - 1, NAME_MAX + 2):
        assert bool(re.fullmatch(name_pattern, "a" * size)) == (NAME_MIN <= size <= NAME_MAX)
    assert {chr(c) for c in range(256) if re.fullmatch(name_pattern, "abc" + chr(c))} == NAME_CHARS
    name_text = f"{NAME_MIN} to {NAME_MAX} characters of"
    for path, method in [
        ("/api/namespaces/{name}", "get"),
        ("/api/namespaces/{name}", "put"),
        ("/api/namespaces/{name}", "delete"),
        ("/api/namespaces/{name}/token", "post"),
    ]:
        assert name_text in paths[path][method]["parameters"][0]["description"]
    assert schemas["SourceInput"]["properties"]["namespace"]["description"].startswith(name_text)
    connectors = f"{', '.join(list(KNOWN)[:-1])} or {list(KNOWN)[-1]}."
    for path, item in paths.items():
        for operation in item.values():
            for parameter in operation.get("parameters", []):
                if path.startswith("/api/connectors/{name}") and parameter["name"] == "name":
                    assert parameter["description"] == f"Connector name: {connectors}"
    runtime = {s.name: s for s in SETTINGS if s.runtime}
    admin = schemas["AdminConfig"]["properties"]
    assert list(admin) == list(runtime)
    for name, setting in runtime.items():
        assert admin[name]["description"] == setting.help
        assert admin[name]["type"] == ("boolean" if type(setting.default) is bool else "integer")
    entity_id = schemas["Event"]["properties"]["payload"]["properties"]["entity_id"]
    assert f"({Settings().max_entity_id_length} by default" in entity_id["description"]
    payload = schemas["Event"]["properties"]["payload"]["description"]
    assert f"At most {MAX_PAYLOAD_DEPTH} levels deep" in payload
    history = {p["name"]: p.get("description") for p in paths["/api/events"]["get"]["parameters"]}
    assert history["limit"].startswith(
        f"1 to {HISTORY_MAX_LIMIT}, default {HISTORY_DEFAULT_LIMIT};"
    )
    assert f"default {HISTORY_WINDOW_US // 3_600_000_000} hours ago" in history["since"]
    start = paths["/api/connectors/{name}/oauth/start"]["get"]["description"]
    assert f"(valid {STATE_TTL_SECONDS:g} s)" in start
    source = schemas["SourceInput"]["properties"]
    assert source["name"]["maxLength"] == MAX_NAME_LENGTH
    assert source["poll_interval_secs"]["maximum"] == MAX_POLL_INTERVAL
    assert schemas["Event"]["properties"]["ttl_ms"]["maximum"] == MAX_TTL_MS
    defaults = Settings()
    lease_ttl = schemas["LeaseAcquire"]["properties"]["ttl_ms"]["description"]
    assert f"({defaults.lease_max_ttl_ms} by default)" in lease_ttl
    for route in ("acquire", "renew", "release"):
        too_large = paths[f"/api/leases/{route}"]["post"]["responses"]["413"]["description"]
        assert too_large == f"Body over {LEASE_BODY_LIMIT} bytes"
    changes = paths["/api/state/changes"]["get"]
    assert f"({defaults.tombstones_kept} by default)" in changes["description"]
    limit = next(p for p in changes["parameters"] if p["name"] == "limit")
    assert f"({defaults.changes_page_limit} by default)" in limit["description"]


@pytest.mark.parametrize(
    "stream",
    ["a", "user.created", "a.b.c9", "", "A", "a..b", ".a", "a.", "a-b", "a b", "é", "a.B"],
)
def test_the_stream_pattern_is_what_validation_accepts(stream: str) -> None:
    pattern = DOCUMENT["components"]["schemas"]["Event"]["properties"]["stream"]["pattern"]
    assert bool(re.search(pattern, stream)) == bool(STREAM_RE.fullmatch(stream))


def test_the_data_file_names_only_known_facts_and_every_one() -> None:
    text = resources.files("flux.api").joinpath(DATA_FILE).read_text()
    assert set(PLACEHOLDER.findall(text)) == set(FACTS)
    assert "{{" not in orjson.dumps(DOCUMENT).decode()


def test_the_data_file_stays_easy_to_edit() -> None:
    """Pretty-printed with 2 spaces, non-ASCII as is, a final newline: what a hand edit and
    `json.dumps(..., indent=2, ensure_ascii=False)` both keep."""
    text = resources.files("flux.api").joinpath(DATA_FILE).read_text()
    assert text == json.dumps(template(), indent=2, ensure_ascii=False) + "\n"


def test_fill_puts_facts_in_whole_or_inside_text() -> None:
    facts = {"n": 3, "names": ["a", "b"], "word": "x"}
    value = {"k": ["{{n}}", "{{names}}", "{{word}} and {{n}} times", "{n}", "}}"], "n": "{{ n }}"}
    assert fill(value, facts) == {
        "k": [3, ["a", "b"], "x and 3 times", "{n}", "}}"],
        "n": "{{ n }}",
    }
    with pytest.raises(KeyError):
        fill("{{unknown}}", facts)


def test_char_class() -> None:
    assert char_class(NAME_CHARS) == "[a-z0-9_-]"
    assert char_class("cab") == "[abc]"
    assert char_class(string.ascii_letters + "]^\\") == "[a-zA-Z\\\\\\]\\^]"
    for chars in ["-", "ab-", "]^\\-x", string.digits + ".-"]:
        accepted = {chr(c) for c in range(128) if re.fullmatch(char_class(chars), chr(c))}
        assert accepted == set(chars), chars


# -- /docs -------------------------------------------------------------------------------------


def test_docs_page_and_its_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text
    assert '"/openapi.json"' in page.text
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 2
    kinds = {".css": "text/css", ".js": "javascript"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert len(response.content) > 1000, asset
        suffix = asset[asset.rfind(".") :]
        assert kinds[suffix] in response.headers["content-type"], asset
