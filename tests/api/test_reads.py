"""`GET /api/state/entities/{id}` answered before the router (flux.api.reads): the same answer,
byte for byte, as the full handler, which still serves every case the fast path leaves out."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from flux.api.reads import EntityReads

from .authkit import ADMIN, bearer, open_client, publish, register
from .conftest import ClientFactory
from .helpers import encode_id


def answer(
    client: TestClient, entity_id: str, token: str | None = None
) -> tuple[int, bytes, str, str]:
    response = client.get(f"/api/state/entities/{encode_id(entity_id)}", headers=bearer(token))
    return (
        response.status_code,
        response.content,
        response.headers["content-type"],
        response.headers["content-length"],
    )


def test_fast_and_full_paths_answer_alike(data_dir: Path) -> None:
    client = open_client(data_dir)
    try:
        alpha = register(client, "alpha")
        odd = "alpha/room 1/ünï\ncode"  # (no `%`: TestClient decodes it twice)
        assert publish(client, alpha, odd, temp=21.5, tags=["a", {"b": None}]).status_code == 200
        fast = answer(client, odd)  # a public namespace: the fast path
        assert fast[0] == 200
        assert orjson.loads(fast[1])["id"] == odd
        assert fast[2] == "application/json"
        register(client, "secret", private=True)  # another namespace private: still fast
        assert answer(client, odd) == fast
        private = client.put("/api/namespaces/alpha", json={"private": True}, headers=bearer(alpha))
        assert private.status_code == 200  # from now on: the router and the handler
        full = answer(client, odd, alpha)
        assert full == fast
        # What the fast path leaves to the handler: missing entities, private reads.
        assert answer(client, "alpha/none", alpha)[0] == 404
        assert answer(client, "open/none")[0] == 404
        secret = register(client, "hidden", private=True)
        publish(client, secret, "hidden/x", v=1)
        assert client.get("/api/state/entities/hidden%2Fx").status_code == 401
        assert client.get("/api/state/entities/hidden%2Fx", headers=bearer(ADMIN)).json()[
            "properties"
        ] == {"v": 1}
    finally:
        client.__exit__(None, None, None)


def test_fast_path_is_timed_under_its_route(make_client: ClientFactory) -> None:
    client = make_client()
    assert publish(client, None, "ns/timed", v=1).status_code == 200
    for _ in range(3):
        assert client.get("/api/state/entities/ns%2Ftimed").status_code == 200
    metrics = client.get("/metrics").text
    label = 'method="GET",route="/api/state/entities/{entity_id:fullpath}",status="2xx"'
    count = [line for line in metrics.splitlines() if line.startswith("flux_http_request")]
    assert any(label in line and "_count" in line and line.endswith(" 3") for line in count), count


def test_fast_path_answers_without_the_router(make_client: ClientFactory) -> None:
    """Would fail if every read fell through to the router (the tests above would not)."""
    client = make_client()
    assert publish(client, None, "ns/quick", v=2).status_code == 200
    server = client.app.state.server  # type: ignore[attr-defined]
    passed: list[str] = []

    async def router(scope: Scope, receive: Receive, send: Send) -> None:
        passed.append(scope["path"])

    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    reads = EntityReads(router, server)

    def get(path: str, method: str = "GET") -> None:
        scope: Scope = {"type": "http", "method": method, "path": path, "headers": []}
        asyncio.run(reads(scope, receive, send))

    get("/api/state/entities/ns/quick")
    assert passed == [] and sent[0]["status"] == 200
    assert orjson.loads(sent[1]["body"])["properties"] == {"v": 2}
    get("/api/state/entities/ns/missing")
    get("/api/state/entities/ns/quick", "HEAD")
    get("/api/state/entities/")
    assert passed == [
        "/api/state/entities/ns/missing",
        "/api/state/entities/ns/quick",
        "/api/state/entities/",
    ]


def test_fast_path_serves_what_anyone_may_read_and_nothing_private(data_dir: Path) -> None:
    """The fast read asks the one read decision (`Permissions.is_public`): with auth on it
    answers an entity of a public namespace even while another namespace is private, and hands
    every read of a private namespace to the router (which checks the token)."""
    client = open_client(data_dir)
    try:
        public, hidden = register(client, "open"), register(client, "shut", private=True)
        assert publish(client, public, "open/a", v=1).status_code == 200
        assert publish(client, hidden, "shut/a", v=2).status_code == 200
        server = client.app.state.server  # type: ignore[attr-defined]
        passed: list[str] = []

        async def router(scope: Scope, receive: Receive, send: Send) -> None:
            passed.append(scope["path"])

        sent: list[Message] = []

        async def send(message: Message) -> None:
            sent.append(message)

        async def receive() -> Message:
            return {"type": "http.request", "body": b""}

        reads = EntityReads(router, server)
        for path in ("/api/state/entities/open/a", "/api/state/entities/shut/a"):
            scope: Scope = {"type": "http", "method": "GET", "path": path, "headers": []}
            asyncio.run(reads(scope, receive, send))
        assert passed == ["/api/state/entities/shut/a"]
        assert sent[0]["status"] == 200 and orjson.loads(sent[1]["body"])["id"] == "open/a"
        assert client.get("/api/state/entities/shut%2Fa").status_code == 401
    finally:
        client.__exit__(None, None, None)
