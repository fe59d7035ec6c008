"""Namespaces over HTTP (register, show, private, rotate, delete), the write checks and their
exact messages, batch items, batch delete scopes, and the admin rules."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from conftest import untyped

from .authkit import ADMIN, JSON, bearer, open_client, publish, register, server_of
from .conftest import ClientFactory
from .helpers import REST_TIME, assert_error, encode_id, new_event

NOT_AVAILABLE = "Namespace registration not available (auth disabled)"


@pytest.fixture
def auth(data_dir: Path) -> Iterator[TestClient]:
    """Auth on, admin token `ADMIN`, directory off."""
    client = open_client(data_dir)
    yield client
    client.__exit__(None, None, None)


@pytest.fixture
def self_service(data_dir: Path) -> Iterator[TestClient]:
    """Auth on and no admin token."""
    client = open_client(data_dir, admin_token=None)
    yield client
    client.__exit__(None, None, None)


def ids(client: TestClient, token: str | None = None) -> set[str]:
    return {e["id"] for e in client.get("/api/state/entities", headers=bearer(token)).json()}


# -- registration -------------------------------------------------------------------------------


def test_register_returns_the_token_once(auth: TestClient) -> None:
    response = auth.post("/api/namespaces", json={"name": "matt"}, headers=bearer(ADMIN))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"namespaceId", "name", "token", "private"}
    assert re.fullmatch(r"ns_[0-9a-z]{8}", body["namespaceId"])
    assert body["name"] == "matt" and body["private"] is False
    assert len(body["token"]) >= 43
    shown = auth.get("/api/namespaces/matt").json()
    assert shown == {
        "namespaceId": body["namespaceId"],
        "name": "matt",
        "createdAt": shown["createdAt"],
        "entityCount": 0,
        "private": False,
    }
    assert REST_TIME.match(shown["createdAt"])
    assert body["token"] not in auth.get("/api/namespaces/matt").text


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "ab"}, "Namespace name too short (minimum 3 characters)"),
        ({"name": "a" * 33}, "Namespace name too long (maximum 32 characters)"),
        ({"name": "Matt"}, "Invalid character 'M' (must be [a-z0-9-_])"),
        ({"name": "a/b/c"}, "Invalid character '/' (must be [a-z0-9-_])"),
        ({}, "missing field `name`"),
        ({"name": 5}, "invalid type: integer `5`, expected a string"),
        ({"name": "okay", "private": "yes"}, 'invalid type: string "yes", expected a boolean'),
    ],
)
def test_bad_names_are_400(auth: TestClient, body: dict[str, object], message: str) -> None:
    response = auth.post("/api/namespaces", json=body, headers=bearer(ADMIN))
    assert_error(response, 400, message)


def test_taken_and_reserved_names_are_409(auth: TestClient) -> None:
    register(auth, "matt")
    taken = auth.post("/api/namespaces", json={"name": "matt"}, headers=bearer(ADMIN))
    assert_error(taken, 409, "Namespace name already exists")
    reserved = auth.post("/api/namespaces", json={"name": "flux-core"}, headers=bearer(ADMIN))
    assert_error(reserved, 409, "Namespace 'flux-core' is reserved for Flux")


def test_registration_needs_json(auth: TestClient) -> None:
    with untyped(auth):
        response = auth.post("/api/namespaces", content=b'{"name":"matt"}', headers=bearer(ADMIN))
    assert_error(response, 415)


def test_registration_is_admin_only_when_an_admin_token_is_set(auth: TestClient) -> None:
    assert_error(auth.post("/api/namespaces", json={"name": "matt"}), 401, "Admin token required")
    other = register(auth, "other")
    response = auth.post("/api/namespaces", json={"name": "matt"}, headers=bearer(other))
    assert_error(response, 403, "Admin token required")


def test_registration_is_self_service_without_an_admin_token(self_service: TestClient) -> None:
    token = register(self_service, "matt", admin=None)
    assert publish(self_service, token, "matt/a").status_code == 200
    # ... but the admin operations are refused, not open
    refused = "admin operations are disabled: this server has auth on and no FLUX_ADMIN_TOKEN"
    assert_error(self_service.delete("/api/namespaces/matt", headers=bearer(token)), 403, refused)
    config = self_service.put("/api/admin/config", json={"max_batch_delete": 1})
    assert_error(config, 403, refused)


def test_everything_is_404_with_auth_off(client: TestClient) -> None:
    for response in (
        client.post("/api/namespaces", json={"name": "matt"}),
        client.get("/api/namespaces/matt"),
        client.put("/api/namespaces/matt", json={"private": True}),
        client.post("/api/namespaces/matt/token"),
        client.delete("/api/namespaces/matt"),
    ):
        assert_error(response, 404, NOT_AVAILABLE)


def test_unknown_namespaces_are_404(auth: TestClient) -> None:
    admin = bearer(ADMIN)
    for response in (
        auth.get("/api/namespaces/nobody"),
        auth.put("/api/namespaces/nobody", json={"private": True}, headers=admin),
        auth.post("/api/namespaces/nobody/token", headers=admin),
        auth.delete("/api/namespaces/nobody", headers=admin),
    ):
        assert_error(response, 404, "Namespace not found")


def test_entity_count(auth: TestClient) -> None:
    token = register(auth, "matt")
    for n in range(3):
        assert publish(auth, token, f"matt/e{n}/deep").status_code == 200
    auth.delete(f"/api/state/entities/{encode_id('matt/e0/deep')}", headers=bearer(token))
    assert auth.get("/api/namespaces/matt").json()["entityCount"] == 2


# -- writes -------------------------------------------------------------------------------------


def test_write_checks_and_their_messages(auth: TestClient) -> None:
    matt = register(auth, "matt")
    other = register(auth, "other")
    cases = [
        (None, "matt/a", 401, "Authorization token not provided"),
        ("Basic abc", "matt/a", 401, "Invalid authorization token format"),
        ("Bearer   ", "matt/a", 401, "Authorization token is empty"),
        (f"Bearer {matt}", "solo", 400, None),
        (f"Bearer {matt}", "/a", 400, None),
        (
            f"Bearer {matt}",
            "nobody/a",
            401,
            "Namespace 'nobody' not found. Register it with POST /api/namespaces",
        ),
        ("Bearer nope", "matt/a", 401, "Invalid token: it belongs to no namespace"),
        (
            f"Bearer {other}",
            "matt/a",
            403,
            "Token does not have permission to write to namespace 'matt'",
        ),
        (
            f"Bearer {ADMIN}",
            "matt/a",
            403,
            "Token does not have permission to write to namespace 'matt'",
        ),
        (
            f"Bearer {matt}",
            "flux-core/directory",
            403,
            "Namespace 'flux-core' is reserved for Flux",
        ),
    ]
    for header, entity_id, code, message in cases:
        headers = {"authorization": header} if header else {}
        response = auth.post(
            "/api/events", content=orjson.dumps(new_event(entity_id)), headers=headers
        )
        text = assert_error(response, code, message)
        if code == 400:
            assert text == (
                f"Entity ID '{entity_id}' missing namespace prefix "
                "(expected 'namespace/entity' format)"
            )
        if code == 401:
            assert response.headers["www-authenticate"].startswith("Bearer")
    no_entity = new_event(None)
    response = auth.post("/api/events", content=orjson.dumps(no_entity), headers=bearer(matt))
    assert_error(response, 400, "Missing 'entity_id' field in payload")
    assert ids(auth) == set()
    # an id may hold more slashes after the namespace
    assert publish(auth, matt, "matt/a/b/c").status_code == 200
    assert ids(auth) == {"matt/a/b/c"}


def test_validation_comes_before_auth(auth: TestClient) -> None:
    bad = new_event("matt/a", stream="Bad")
    assert_error(auth.post("/api/events", content=orjson.dumps(bad)), 400)


def test_batch_items_are_authorized_one_by_one(auth: TestClient) -> None:
    matt = register(auth, "matt")
    register(auth, "other")
    events = [
        new_event("matt/a"),
        new_event("other/b"),
        new_event("solo"),
        new_event("nobody/c"),
        new_event("matt/d", stream="Bad"),
        new_event("flux-core/directory"),
        new_event("matt/e"),
    ]
    response = auth.post(
        "/api/events/batch", content=orjson.dumps({"events": events}), headers=bearer(matt)
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["successful"], body["failed"]) == (2, 5)
    errors = [r["error"] for r in body["results"]]
    assert errors == [
        None,
        "authorization failed: Forbidden: "
        "Token does not have permission to write to namespace 'other'",
        "authorization failed: Invalid entity ID: "
        "Entity ID 'solo' missing namespace prefix (expected 'namespace/entity' format)",
        "authorization failed: Namespace not found: "
        "Namespace 'nobody' not found. Register it with POST /api/namespaces",
        "validation failed: invalid stream format 'Bad': must be lowercase with optional dots",
        "authorization failed: Forbidden: Namespace 'flux-core' is reserved for Flux",
        None,
    ]
    assert [r["index"] for r in body["results"]] == list(range(7))
    assert body["results"][1]["eventId"] is not None  # only a validation failure has none
    assert body["results"][4]["eventId"] is None
    assert ids(auth) == {"matt/a", "matt/e"}
    anonymous = auth.post("/api/events/batch", content=orjson.dumps({"events": events[:1]}))
    assert anonymous.json()["results"][0]["error"] == (
        "authorization failed: Invalid token: Authorization token not provided"
    )


def test_deletes_are_authorized(auth: TestClient) -> None:
    matt = register(auth, "matt")
    other = register(auth, "other")
    publish(auth, matt, "matt/a")
    path = f"/api/state/entities/{encode_id('matt/a')}"
    assert_error(auth.delete(path), 401, "Authorization token not provided")
    assert_error(
        auth.delete(path, headers=bearer(other)),
        403,
        "Token does not have permission to write to namespace 'matt'",
    )
    assert_error(auth.delete("/api/state/entities/solo", headers=bearer(matt)), 400)
    assert ids(auth) == {"matt/a"}
    assert auth.delete(path, headers=bearer(matt)).status_code == 200
    assert ids(auth) == set()


def test_batch_delete_only_touches_the_callers_namespace(auth: TestClient) -> None:
    alpha = register(auth, "alpha")
    another = register(auth, "another")
    for token, entity_id in [
        (alpha, "alpha/1"),
        (alpha, "alpha/2"),
        (another, "another/1"),
    ]:
        assert publish(auth, token, entity_id).status_code == 200

    def batch_delete(token: str | None, body: dict[str, object]) -> object:
        return auth.post("/api/state/entities/delete", json=body, headers={**JSON, **bearer(token)})

    # a prefix that covers both namespaces reaches only the caller's
    response = batch_delete(another, {"prefix": "a"})
    assert response.json() == {  # type: ignore[attr-defined]
        "deleted": 1,
        "deleted_ids": ["another/1"],
        "not_found": [],
        "failed": 0,
        "errors": [],
    }
    assert ids(auth) == {"alpha/1", "alpha/2"}
    assert batch_delete(another, {"prefix": "alpha/"}).json()["deleted"] == 0  # type: ignore[attr-defined]
    assert_error(
        batch_delete(another, {"namespace": "alpha"}),
        403,
        "Token does not have permission to write to namespace 'alpha'",
    )
    assert_error(batch_delete(None, {"namespace": "alpha"}), 401)
    # one foreign id refuses the whole list
    assert_error(batch_delete(another, {"entity_ids": ["another/x", "alpha/1"]}), 403)
    assert ids(auth) == {"alpha/1", "alpha/2"}
    assert batch_delete(alpha, {"namespace": "alpha"}).json()["deleted"] == 2  # type: ignore[attr-defined]
    assert ids(auth) == set()


def test_the_reserved_namespace_is_refused_with_auth_off_too(client: TestClient) -> None:
    response = client.post("/api/events", content=orjson.dumps(new_event("flux-core/x")))
    assert_error(response, 403, "Namespace 'flux-core' is reserved for Flux")
    assert_error(client.delete("/api/state/entities/flux-core%2Fdirectory"), 403)
    deleted = client.post(
        "/api/state/entities/delete", json={"entity_ids": ["flux-core/directory"]}, headers=JSON
    )
    assert_error(deleted, 403)
    # anything else goes, as before
    assert client.post("/api/events", content=orjson.dumps(new_event("solo"))).status_code == 200


# -- private namespaces -------------------------------------------------------------------------


def test_private_namespaces_hide_their_entities(auth: TestClient) -> None:
    secret = register(auth, "secret", private=True)
    public = register(auth, "public")
    publish(auth, secret, "secret/a")
    publish(auth, public, "public/a")
    path = f"/api/state/entities/{encode_id('secret/a')}"
    assert ids(auth) == {"public/a"}
    assert ids(auth, public) == {"public/a"}
    assert ids(auth, secret) == {"secret/a", "public/a"}
    assert ids(auth, ADMIN) == {"secret/a", "public/a"}
    assert auth.get("/api/state/entities", params={"namespace": "secret"}).json() == []
    assert auth.get("/api/state/entities", params={"prefix": "secret/"}).json() == []
    assert_error(auth.get(path), 401, "Authorization token not provided")
    assert_error(
        auth.get(path, headers=bearer(public)),
        403,
        "Token does not have permission to read namespace 'secret'",
    )
    assert auth.get(path, headers=bearer(secret)).status_code == 200
    # existence is not revealed: a missing private entity is refused the same way
    assert_error(auth.get("/api/state/entities/secret%2Fnone"), 401)
    history = "/api/events"
    assert_error(auth.get(history, params={"entity": "secret/a"}), 401)
    assert len(auth.get(history, params={"entity": "secret/a"}, headers=bearer(secret)).json()) == 1
    assert_error(auth.get("/api/namespaces/secret"), 401)
    assert auth.get("/api/namespaces/secret", headers=bearer(secret)).json()["private"] is True


def test_switching_visibility(auth: TestClient) -> None:
    token = register(auth, "matt")
    publish(auth, token, "matt/a")
    response = auth.put("/api/namespaces/matt", json={"private": True}, headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["private"] is True and response.json()["entityCount"] == 1
    assert ids(auth) == set()
    assert not server_of(auth).permissions.can_read(None, "matt/a")
    assert server_of(auth).permissions.can_read(token, "matt/a")
    back = auth.put("/api/namespaces/matt", json={"private": False}, headers=bearer(ADMIN))
    assert back.json()["private"] is False
    assert ids(auth) == {"matt/a"}
    assert_error(auth.put("/api/namespaces/matt", json={}, headers=bearer(token)), 400)


# -- rotation and deletion ----------------------------------------------------------------------


def test_rotation_revokes_the_old_token_at_once(auth: TestClient) -> None:
    old = register(auth, "matt")
    response = auth.post("/api/namespaces/matt/token", headers=bearer(old))
    assert response.status_code == 200
    new = response.json()["token"]
    assert new != old and response.json()["name"] == "matt"
    assert_error(publish(auth, old, "matt/a"), 401, "Invalid token: it belongs to no namespace")
    assert_error(auth.post("/api/namespaces/matt/token", headers=bearer(old)), 401)
    assert publish(auth, new, "matt/a").status_code == 200
    by_admin = auth.post("/api/namespaces/matt/token", headers=bearer(ADMIN))
    assert by_admin.status_code == 200
    assert_error(publish(auth, new, "matt/b"), 401)
    assert publish(auth, by_admin.json()["token"], "matt/b").status_code == 200


def test_delete_removes_the_namespace_its_token_and_its_entities(auth: TestClient) -> None:
    old = register(auth, "matt")
    other = register(auth, "other")
    for n in range(3):
        publish(auth, old, f"matt/{n}")
    publish(auth, other, "other/x")
    response = auth.delete("/api/namespaces/matt", headers=bearer(ADMIN))
    assert response.status_code == 204 and response.content == b""
    assert ids(auth) == {"other/x"}
    assert_error(auth.get("/api/namespaces/matt"), 404, "Namespace not found")
    # the name is free again, and the new owner inherits nothing
    new = register(auth, "matt")
    assert_error(publish(auth, old, "matt/0"), 401)
    assert auth.get("/api/namespaces/matt").json()["entityCount"] == 0
    assert publish(auth, new, "matt/9").status_code == 200
    # nor its history: the old namespace's events (and their tombstones) are served to nobody
    for reader in ({}, bearer(new), bearer(ADMIN)):
        assert auth.get("/api/events", params={"entity": "matt/0"}, headers=reader).json() == []
    assert publish(auth, new, "matt/0").status_code == 200
    history = auth.get("/api/events", params={"entity": "matt/0"}).json()
    assert [e["payload"]["properties"].get("__deleted__") for e in history] == [None]


def test_tokens_never_reach_the_log(auth: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = register(auth, "matt")
    rotated = auth.post("/api/namespaces/matt/token", headers=bearer(token)).json()["token"]
    publish(auth, token, "matt/a")
    publish(auth, rotated, "matt/a")
    publish(auth, "guess", "matt/a")
    auth.put("/api/admin/config", json={"max_batch_delete": 5}, headers=bearer("wrong"))
    auth.delete("/api/namespaces/matt", headers=bearer(ADMIN))
    assert "matt" in caplog.text  # the registry does log what happens
    for secret in (token, rotated, ADMIN, "guess"):
        assert secret not in caplog.text


def test_admin_config_rules_with_auth_on(auth: TestClient) -> None:
    token = register(auth, "matt")
    change = {"max_batch_delete": 7}
    assert_error(auth.put("/api/admin/config", json=change), 401, "Unauthorized")
    assert_error(auth.put("/api/admin/config", json=change, headers=bearer(token)), 403)
    ok = auth.put("/api/admin/config", json=change, headers=bearer(ADMIN))
    assert ok.status_code == 200 and ok.json()["max_batch_delete"] == 7
    for nonsense in (
        {"max_batch_delete": 0},
        {"rate_limit_per_namespace_per_minute": -5},
        {"rate_limit_enabled": "yes"},
        {"body_size_limit_batch_bytes": 1.5},
    ):
        assert_error(auth.put("/api/admin/config", json=nonsense, headers=bearer(ADMIN)), 400)
    assert auth.get("/api/admin/config").json()["max_batch_delete"] == 7


def test_admin_token_with_auth_off(make_client: ClientFactory) -> None:
    client = make_client(admin_token=ADMIN)
    assert_error(client.put("/api/admin/config", json={}), 401, "Unauthorized")
    assert client.put("/api/admin/config", json={}, headers=bearer(ADMIN)).status_code == 200
    assert_error(client.delete("/api/namespaces/x", headers=bearer(ADMIN)), 404, NOT_AVAILABLE)


def test_answers_match_the_openapi_schemas(auth: TestClient) -> None:
    from openapi_schema_validator import OAS30Validator, oas30_format_checker

    from flux.api.openapi import DOCUMENT

    def conforms(name: str, value: object) -> list[str]:
        schema = {"$ref": f"#/components/schemas/{name}", "components": DOCUMENT["components"]}
        validator = OAS30Validator(schema, format_checker=oas30_format_checker)
        return [error.message for error in validator.iter_errors(value)]

    created = auth.post("/api/namespaces", json={"name": "matt"}, headers=bearer(ADMIN)).json()
    assert conforms("NamespaceToken", created) == []
    assert conforms("Namespace", auth.get("/api/namespaces/matt").json()) == []
    changed = auth.put("/api/namespaces/matt", json={"private": True}, headers=bearer(ADMIN))
    assert conforms("Namespace", changed.json()) == []
    rotated = auth.post("/api/namespaces/matt/token", headers=bearer(ADMIN))
    assert conforms("NamespaceToken", rotated.json()) == []
    assert conforms("Error", auth.get("/api/namespaces/nobody").json()) == []
