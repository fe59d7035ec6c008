"""`POST /api/events` answered before the router (flux.api.writes): the same answers as the full
handler, which still answers everything but the success path, with the body replayed to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient
from starlette.types import Message, Receive, Scope, Send

from flux.api.writes import EventWrites

from .authkit import ADMIN, bearer, open_client, register, run, server_of, service_of
from .helpers import nested_payload, new_event

LIMIT = 4096


def event(entity_id: str | None, n: int, **fields: Any) -> bytes:
    """A fixed event (fixed id and time, so both paths store the same bytes)."""
    body = new_event(entity_id, {"n": n}, eventId=f"018f0000-0000-7000-8000-{n:012d}")
    body["timestamp"] = 1_767_225_600_000 + n
    body.update(fields)
    return orjson.dumps(body)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def conversation(client: TestClient) -> list[tuple[Any, ...]]:
    """Every kind of answer `POST /api/events` gives, as (status, body, headers)."""
    alpha = register(client, "alpha")
    register(client, "beta")
    requests: list[tuple[bytes, str | None]] = [
        (event("alpha/a", 1), alpha),
        (event("alpha/a", 1), alpha),  # the same eventId again: a duplicate, same sequence
        (event("alpha/b", 2), None),  # no token
        (event("alpha/b", 3), "not-a-token"),
        (event("beta/b", 4), alpha),  # another namespace
        (event("gamma/b", 5), alpha),  # nobody's namespace
        (event("flux-core/b", 6), ADMIN),  # the reserved one
        (event("nons", 7), alpha),  # no namespace in the id
        (b"{not json", alpha),
        (b"", alpha),
        (b"[]", alpha),
        (event("alpha/c", 8, stream="Bad Stream"), alpha),
        (event("alpha/c", 9, timestamp=-1), alpha),
        (event("alpha/c", 10, payload=None), alpha),
        (orjson.dumps({**orjson.loads(event("x", 11)), "payload": nested_payload(130)}), alpha),
        (event("alpha/big", 12, blob="x" * LIMIT), alpha),  # over the body limit
        (event("alpha/d", 13), alpha),
        (event("alpha/e", 14), alpha),  # over the rate limit (3 a minute)
    ]
    answers = []
    for body, token in requests:
        response = client.post("/api/events", content=body, headers=bearer(token))
        answers.append(
            (
                response.status_code,
                response.content,
                response.headers.get("content-type"),
                response.headers.get("retry-after"),
                response.headers.get("www-authenticate"),
            )
        )
    return answers


def test_fast_and_full_paths_answer_alike(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def answers(data_dir: Path) -> list[tuple[Any, ...]]:
        client = open_client(
            data_dir,
            clock=Clock(),
            rate_limit_per_namespace_per_minute=3,
            body_size_limit_single_bytes=LIMIT,
        )
        try:
            return conversation(client)
        finally:
            client.__exit__(None, None, None)

    fast = answers(tmp_path / "fast")

    async def router_only(self: EventWrites, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)

    monkeypatch.setattr(EventWrites, "__call__", router_only)
    full = answers(tmp_path / "full")
    assert fast == full
    statuses = [answer[0] for answer in fast]
    assert statuses == [200, 200, 401, 401, 403, 401, 403, 400, 400, 400, 400, 400, 400] + [
        400,
        400,
        413,
        200,
        429,
    ]
    assert orjson.loads(fast[0][1])["sequence"] == orjson.loads(fast[1][1])["sequence"]


class Recorder:
    """The router stand-in: records what reached it and the body it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.ends: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                self.ends.append(message["type"])
                break
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                self.ends.append("complete")
                break
        self.bodies.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 299, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def test_fast_path_stores_alone_and_replays_the_body_to_the_router(data_dir: Path) -> None:
    """Would fail if every publish fell through to the router (the test above would not), or
    if the router got less of the body than the client sent."""
    client = open_client(data_dir, auth_enabled=False, body_size_limit_single_bytes=LIMIT)
    try:
        service = service_of(client)
        router = Recorder()
        writes = EventWrites(router, server_of(client))

        def post(messages: list[Message], headers: list[tuple[bytes, bytes]] | None = None) -> int:
            scope: Scope = {
                "type": "http",
                "method": "POST",
                "path": "/api/events",
                "headers": [(b"content-type", b"application/json"), *(headers or [])],
            }
            queue = list(reversed(messages))
            sent: list[Message] = []

            async def receive() -> Message:
                return queue.pop() if queue else {"type": "http.disconnect"}

            async def send(message: Message) -> None:
                sent.append(message)

            run(client, writes, scope, receive, send)
            assert not queue, "every message was read"
            status: int = sent[0]["status"]
            return status

        one = event("ns/one", 1)
        assert post([{"type": "http.request", "body": one}]) == 200
        two = event("ns/two", 2)
        chunks = [{"type": "http.request", "body": two[:9], "more_body": True}]
        chunks.append({"type": "http.request", "body": two[9:]})
        assert post(chunks) == 200
        assert router.bodies == []
        assert service.engine.get("ns/one") is not None
        assert service.engine.get("ns/two") is not None

        bad = b'{"stream": 1}'
        assert post([{"type": "http.request", "body": bad}]) == 299
        big = event("ns/big", 3, blob="x" * LIMIT)
        parts = [big[i : i + 1000] for i in range(0, len(big), 1000)]
        messages: list[Message] = [
            {"type": "http.request", "body": part, "more_body": True} for part in parts[:-1]
        ]
        messages.append({"type": "http.request", "body": parts[-1]})
        assert post(messages) == 299
        cut: list[Message] = [{"type": "http.request", "body": one[:5], "more_body": True}]
        cut.append({"type": "http.disconnect"})
        assert post(cut) == 299
        declared = [(b"content-length", b"%d" % len(big))]
        assert post([{"type": "http.request", "body": big}], declared) == 299
        untyped = [(b"content-type", b"text/plain")]
        assert post([{"type": "http.request", "body": one}], untyped) == 299  # not read here
        assert router.bodies == [bad, big, one[:5], big, one]
        assert router.ends == ["complete", "complete", "http.disconnect", "complete", "complete"]
        assert service.engine.get("ns/big") is None
    finally:
        client.__exit__(None, None, None)


def test_fast_path_is_timed_under_its_route(data_dir: Path) -> None:
    client = open_client(data_dir, auth_enabled=False)
    try:
        for n in range(3):
            assert client.post("/api/events", content=event("ns/timed", n)).status_code == 200
        metrics = client.get("/metrics").text
    finally:
        client.__exit__(None, None, None)
    label = 'method="POST",route="/api/events",status="2xx"'
    count = [line for line in metrics.splitlines() if line.startswith("flux_http_request")]
    assert any(label in line and "_count" in line and line.endswith(" 3") for line in count), count
