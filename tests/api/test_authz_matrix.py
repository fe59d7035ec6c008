"""The authorization matrix: every endpoint x {no token, unknown token, another namespace's
token, the namespace's own token, the admin token} x {auth off, auth off with an admin token,
auth on, auth on without an admin token, auth on with the namespace private}.

The subject is entity `alpha/e1` of namespace `alpha`; `beta` is the other namespace. Each cell
is one request on a server put back into the same state before it (alpha and beta registered,
alpha/e1 present, alpha private or not), and its outcome is the status code, or for a batch the
status its item error stands for, or for a listing whether alpha/e1 is in it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from flux.events import now_us, validate_event

from .authkit import ADMIN, JSON, bearer, open_client, run, server_of
from .helpers import encode_id, new_event

TOKENS = ("none", "unknown", "other", "own", "admin")
MODES = {
    "off": {"auth_enabled": False, "admin_token": None},
    "off+admin": {"auth_enabled": False},
    "on": {},
    "on-no-admin": {"admin_token": None},
    "private": {},
}
SUBJECT = "alpha/e1"


class World:
    def __init__(self, client: TestClient, mode: str) -> None:
        self.client = client
        self.mode = mode
        self.server = server_of(client)
        self.auth = self.server.settings.auth_enabled
        self.private = mode == "private"
        self.tokens: dict[str, str | None] = {
            "none": None,
            "unknown": "tok-unknown",
            "other": "tok-beta",
            "own": "tok-alpha",
            "admin": ADMIN,
        }

    def headers(self, token: str) -> dict[str, str]:
        return bearer(self.tokens[token])

    def reset(self) -> None:
        """Back to the starting state, touching only what a request changed."""
        server = self.server
        if self.auth:
            for name, key in (("alpha", "own"), ("beta", "other")):
                if server.access.get(name) is None:
                    _, token = run(self.client, server.registry.register, name, False, now_us())
                    self.tokens[key] = token
            if (server.access.get("alpha").private) != self.private:  # type: ignore[union-attr]
                run(self.client, server.registry.set_private, "alpha", self.private)
            if server.access.get("gamma") is not None:
                run(self.client, self._drop, "gamma")
        if server.engine.get(SUBJECT) is None:
            event = validate_event(new_event(SUBJECT, {"x": 1}))
            run(self.client, server.service.publish, [event])

    async def _drop(self, name: str) -> None:
        async with self.server.registry.lock:
            await self.server.registry.delete(name, await self.server.log.sync())


Outcome = Callable[[World, str], str]


def status(response: Any) -> str:
    return str(response.status_code)


def batch_item(response: Any) -> str:
    assert response.status_code == 200, response.text
    error = response.json()["results"][0]["error"]
    if error is None:
        return "200"
    for kind, code in (
        ("authorization failed: Invalid token: ", "401"),
        ("authorization failed: Namespace not found: ", "401"),
        ("authorization failed: Forbidden: ", "403"),
        ("authorization failed: Invalid entity ID: ", "400"),
    ):
        if error.startswith(kind):
            return code
    raise AssertionError(error)


def deleted(response: Any) -> str:
    if response.status_code != 200:
        return status(response)
    return "200" if response.json()["deleted"] >= 1 else "200-none"


def listed(response: Any) -> str:
    assert response.status_code == 200
    return "200" if SUBJECT in {e["id"] for e in response.json()} else "200-hidden"


def rotated(world: World, token: str) -> str:
    response = world.client.post("/api/namespaces/alpha/token", headers=world.headers(token))
    if response.status_code == 200:
        world.tokens["own"] = response.json()["token"]
    return status(response)


def batch_delete(body: dict[str, Any], outcome: Callable[[Any], str] = status) -> Outcome:
    return lambda w, t: outcome(
        w.client.post("/api/state/entities/delete", json=body, headers={**JSON, **w.headers(t)})
    )


EVENT = orjson.dumps(new_event(SUBJECT, {"x": 2}))
PATH = f"/api/state/entities/{encode_id(SUBJECT)}"

OPERATIONS: dict[str, Outcome] = {
    "POST /api/events": lambda w, t: status(
        w.client.post("/api/events", content=EVENT, headers=w.headers(t))
    ),
    "POST /api/events/batch": lambda w, t: batch_item(
        w.client.post(
            "/api/events/batch", content=b'{"events":[' + EVENT + b"]}", headers=w.headers(t)
        )
    ),
    "DELETE entity": lambda w, t: status(w.client.delete(PATH, headers=w.headers(t))),
    "batch delete ids": batch_delete({"entity_ids": [SUBJECT]}),
    "batch delete namespace": batch_delete({"namespace": "alpha"}),
    "batch delete prefix": batch_delete({"prefix": "alpha/"}, deleted),
    "GET entity": lambda w, t: status(w.client.get(PATH, headers=w.headers(t))),
    "GET entities": lambda w, t: listed(w.client.get("/api/state/entities", headers=w.headers(t))),
    "GET history": lambda w, t: status(
        w.client.get("/api/events", params={"entity": SUBJECT}, headers=w.headers(t))
    ),
    "live read": lambda w, t: (
        "yes" if w.server.permissions.can_read(w.tokens[t], SUBJECT) else "no"
    ),
    "GET namespace": lambda w, t: status(
        w.client.get("/api/namespaces/alpha", headers=w.headers(t))
    ),
    "PUT namespace": lambda w, t: status(
        w.client.put("/api/namespaces/alpha", json={"private": w.private}, headers=w.headers(t))
    ),
    "rotate token": rotated,
    "DELETE namespace": lambda w, t: status(
        w.client.delete("/api/namespaces/alpha", headers=w.headers(t))
    ),
    "POST namespace": lambda w, t: status(
        w.client.post("/api/namespaces", json={"name": "gamma"}, headers=w.headers(t))
    ),
    "GET admin config": lambda w, t: status(
        w.client.get("/api/admin/config", headers=w.headers(t))
    ),
    "PUT admin config": lambda w, t: status(
        w.client.put("/api/admin/config", json={}, headers=w.headers(t))
    ),
    "GET health": lambda w, t: status(w.client.get("/api/health", headers=w.headers(t))),
}

#          no token   unknown    other      own    admin
WRITE_ON = ("401", "401", "403", "200", "403")
WRITE_NO_ADMIN = ("401", "401", "403", "200", "401")  # "admin" is just an unknown token there
OPEN = ("200",) * 5
PRIVATE_READ = ("401", "401", "403", "200", "200")
NOT_AVAILABLE = ("404",) * 5
MANAGE = ("401", "401", "403", "200", "200")
MANAGE_NO_ADMIN = ("401", "401", "403", "200", "401")
ADMIN_ONLY = ("401", "401", "403", "403", "200")
ADMIN_OFF = ("401", "401", "401", "401", "200")  # auth off: no namespace tokens to know
REFUSED = ("403",) * 5


MODE_KEYWORDS = {
    "off": "off",
    "off_admin": "off+admin",
    "on": "on",
    "on_no_admin": "on-no-admin",
    "private": "private",
}


def row(on: tuple[str, ...], **modes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Expected outcomes per mode: `on` for auth on (private too), OPEN with auth off, unless
    given (keyword names use `_` for `-`/`+`)."""
    table = {"off": OPEN, "off+admin": OPEN, "on": on, "on-no-admin": on, "private": on}
    table.update({MODE_KEYWORDS[name]: cells for name, cells in modes.items()})
    return table


WRITE = row(WRITE_ON, on_no_admin=WRITE_NO_ADMIN)
NAMESPACE_ENDPOINT = {"off": NOT_AVAILABLE, "off+admin": NOT_AVAILABLE}

EXPECTED: dict[str, dict[str, tuple[str, ...]]] = {
    "POST /api/events": WRITE,
    "POST /api/events/batch": WRITE,
    "DELETE entity": WRITE,
    "batch delete ids": WRITE,
    "batch delete namespace": WRITE,
    "batch delete prefix": row(
        ("401", "401", "200-none", "200", "403"),
        on_no_admin=("401", "401", "200-none", "200", "401"),
    ),
    "GET entity": row(OPEN, private=PRIVATE_READ),
    "GET entities": row(OPEN, private=("200-hidden",) * 3 + ("200", "200")),
    "GET history": row(OPEN, private=PRIVATE_READ),
    "live read": row(
        ("yes",) * 5,
        off=("yes",) * 5,
        off_admin=("yes",) * 5,
        private=("no", "no", "no", "yes", "yes"),
    ),
    "GET namespace": {**row(OPEN, private=PRIVATE_READ), **NAMESPACE_ENDPOINT},
    "PUT namespace": {**row(MANAGE, on_no_admin=MANAGE_NO_ADMIN), **NAMESPACE_ENDPOINT},
    "rotate token": {**row(MANAGE, on_no_admin=MANAGE_NO_ADMIN), **NAMESPACE_ENDPOINT},
    "DELETE namespace": {
        **row(("401", "401", "403", "403", "204"), on_no_admin=REFUSED),
        **NAMESPACE_ENDPOINT,
    },
    "POST namespace": {**row(ADMIN_ONLY, on_no_admin=OPEN), **NAMESPACE_ENDPOINT},
    "GET admin config": row(OPEN),
    "PUT admin config": row(ADMIN_ONLY, off_admin=ADMIN_OFF, on_no_admin=REFUSED),
    "GET health": row(OPEN),
}


@pytest.fixture(params=list(MODES))
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    client = open_client(tmp_path / "data", **MODES[request.param])
    try:
        world = World(client, request.param)
        world.reset()
        yield world
    finally:
        client.__exit__(None, None, None)


def test_every_operation_has_expectations() -> None:
    assert set(EXPECTED) == set(OPERATIONS)
    for expected in EXPECTED.values():
        assert set(expected) == set(MODES)
        assert all(len(cells) == len(TOKENS) for cells in expected.values())


def test_matrix(world: World) -> None:
    wrong = []
    for name, operation in OPERATIONS.items():
        for index, token in enumerate(TOKENS):
            world.reset()
            outcome = operation(world, token)
            want = EXPECTED[name][world.mode][index]
            if outcome != want:
                wrong.append(f"{world.mode:12} {name:24} {token:8} got {outcome}, want {want}")
    assert not wrong, "\n" + "\n".join(wrong)
