"""The OpenAPI document at /openapi.json is valid OpenAPI 3.0, matches the routes both ways,
describes the real responses, and /docs serves Swagger UI with its assets."""

from __future__ import annotations

import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_schema_validator import OAS30Validator, oas30_format_checker
from openapi_spec_validator import validate
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient

from flux.api.app import routes
from flux.api.openapi import DOCUMENT
from flux.errors import ValidationError
from flux.events import validate_event

from .helpers import dumps, encode_id, new_event
from .strategies import event_like

UNDOCUMENTED = {("/openapi.json", "get"), ("/docs", "get")}
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
