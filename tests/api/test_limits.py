"""Body limits: 413 `payload too large: …`, enforced while the body streams in."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from .helpers import assert_error, new_event

if TYPE_CHECKING:
    from conftest import FluxServer

SINGLE = 1_048_576
BATCH = 10_485_760
TOO_LARGE = "payload too large: "  # then the sizes and the setting (test_first_contact.py)


def too_large(response: Any) -> None:
    assert assert_error(response, 413).startswith(TOO_LARGE)


def padded(body: bytes, size: int) -> bytes:
    """`body` followed by JSON whitespace up to exactly `size` bytes."""
    assert len(body) <= size
    return body + b" " * (size - len(body))


def entity_count(client: TestClient) -> int:
    return len(client.get("/api/state/entities").json())


# -- declared lengths --------------------------------------------------------------------------


def test_single_event_limit_is_inclusive(client: TestClient) -> None:
    body = orjson.dumps(new_event("ns/at-limit"))
    assert client.post("/api/events", content=padded(body, SINGLE)).status_code == 200
    response = client.post("/api/events", content=padded(body, SINGLE + 1))
    too_large(response)
    assert entity_count(client) == 1


def test_a_big_property_over_the_limit(client: TestClient) -> None:
    event = new_event("ns/huge", {"blob": "x" * SINGLE})
    too_large(client.post("/api/events", content=orjson.dumps(event)))
    assert entity_count(client) == 0


def test_batch_limit_is_inclusive(client: TestClient) -> None:
    body = orjson.dumps([new_event("ns/b1", {"blob": "x" * (3 * SINGLE)})])
    assert client.post("/api/events/batch", content=padded(body, BATCH)).status_code == 200
    response = client.post("/api/events/batch", content=padded(body, BATCH + 1))
    too_large(response)
    assert entity_count(client) == 1


def test_one_event_in_a_batch_may_exceed_the_single_limit(client: TestClient) -> None:
    """The batch endpoint checks the batch limit only (the body is one request)."""
    event = new_event("ns/big-in-batch", {"blob": "x" * (2 * SINGLE)})
    response = client.post("/api/events/batch", content=orjson.dumps({"events": [event]}))
    assert response.status_code == 200
    assert response.json()["successful"] == 1


def test_limits_follow_the_runtime_config(client: TestClient) -> None:
    body = orjson.dumps(new_event())
    changed = client.put(
        "/api/admin/config",
        json={"body_size_limit_single_bytes": len(body), "body_size_limit_batch_bytes": 10},
    )
    assert changed.status_code == 200
    assert client.post("/api/events", content=body).status_code == 200
    too_large(client.post("/api/events", content=body + b" "))
    too_large(client.post("/api/events/batch", content=b"[" + body + b"]"))


def test_other_json_endpoints_use_the_single_limit(client: TestClient) -> None:
    headers = {"content-type": "application/json"}
    big_ids = orjson.dumps({"entity_ids": ["x" * 1000] * 1100})
    assert len(big_ids) > SINGLE
    response = client.post("/api/state/entities/delete", content=big_ids, headers=headers)
    too_large(response)
    big_config = padded(b'{"max_batch_delete": 5}', SINGLE + 1)
    assert_error(client.put("/api/admin/config", content=big_config, headers=headers), 413)
    assert client.get("/api/admin/config").json()["max_batch_delete"] == 10_000


def test_a_chunked_body_without_content_length(client: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"stream":"sensors","source":"t","timestamp":1,"payload":{"pad":"'
        for _ in range(20):
            yield b"x" * 65536
        yield b'"}}'

    response = client.post("/api/events", content=chunks())
    too_large(response)


def test_a_small_chunked_body_is_fine(client: TestClient) -> None:
    body = orjson.dumps(new_event("ns/chunked"))

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 7):
            yield body[i : i + 7]

    assert client.post("/api/events", content=chunks()).status_code == 200
    assert client.get("/api/state/entities/ns%2Fchunked").status_code == 200


# -- at the ASGI level: how much of the body is read -------------------------------------------


def asgi_post(
    client: TestClient, path: str, chunks: Iterable[bytes], headers: list[tuple[bytes, bytes]]
) -> tuple[int, bytes, int]:
    """POST straight to the app on its own event loop, feeding `chunks` one `receive()` at a
    time; returns (status, body, bytes the app pulled)."""
    source = iter(chunks)
    pulled = 0
    status = 0
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        chunk = next(source, None)
        if chunk is None:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += len(chunk)
        return {"type": "http.request", "body": chunk, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))

    async def call() -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"localhost"), (b"content-type", b"application/json"), *headers],
            "client": ("127.0.0.1", 1234),
            "server": ("testserver", 80),
            "state": {},
        }
        await client.app(scope, receive, send)

    assert client.portal is not None
    client.portal.call(call)
    return status, b"".join(parts), pulled


def endless(chunk: int = 65536) -> Iterator[bytes]:
    return itertools.repeat(b"x" * chunk)


@pytest.mark.parametrize(("path", "limit"), [("/api/events", SINGLE), ("/api/events/batch", BATCH)])
def test_an_endless_body_is_cut_off_at_the_limit(client: TestClient, path: str, limit: int) -> None:
    status, body, pulled = asgi_post(client, path, endless(), [])
    assert status == 413
    assert orjson.loads(body)["error"].startswith(TOO_LARGE)
    assert limit < pulled <= limit + 65536


def test_a_declared_length_over_the_limit_is_refused_unread(client: TestClient) -> None:
    headers = [(b"content-length", str(SINGLE + 1).encode())]
    status, body, pulled = asgi_post(client, "/api/events", endless(), headers)
    assert (status, orjson.loads(body)["error"][:19], pulled) == (413, TOO_LARGE, 0)


@pytest.mark.parametrize("declared", [b"9" * 5000, b"99999999999999999999"])
def test_an_absurd_declared_length_is_a_413(client: TestClient, declared: bytes) -> None:
    status, body, pulled = asgi_post(
        client, "/api/events", endless(), [(b"content-length", declared)]
    )
    assert (status, orjson.loads(body)["error"][:19], pulled) == (413, TOO_LARGE, 0)


@pytest.mark.parametrize("declared", [b"\xc2\xb2", b"-1", b"abc", b" 12"])
def test_a_malformed_declared_length_falls_back_to_counting(
    client: TestClient, declared: bytes
) -> None:
    """(A real server refuses these first; the app must not crash on them either.)"""
    status, body, _ = asgi_post(client, "/api/events", endless(), [(b"content-length", declared)])
    assert (status, orjson.loads(body)["error"][:19]) == (413, TOO_LARGE)
    event = orjson.dumps(new_event("ns/declared"))
    status, body, _ = asgi_post(client, "/api/events", [event], [(b"content-length", declared)])
    assert status == 200, body


# -- against the real server -------------------------------------------------------------------


def peak_rss_kb(pid: int) -> int | None:
    status = Path(f"/proc/{pid}/status")
    if not status.exists():
        return None
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return None


def test_streamed_bodies_against_the_real_server(server: FluxServer) -> None:
    """A chunked body with no Content-Length, far over the limit, gets a 413 without the server
    holding it in memory, and the server goes on serving."""
    assert server.proc is not None
    before = peak_rss_kb(server.proc.pid)

    def stream(total: int) -> Iterator[bytes]:
        chunk = b"x" * (1 << 20)
        for _ in range(total // len(chunk)):
            yield chunk

    with httpx.Client(
        base_url=server.url, headers={"content-type": "application/json"}, timeout=60
    ) as http:
        for path in ("/api/events", "/api/events/batch"):
            started = time.monotonic()
            response = http.post(path, content=stream(256 << 20))
            assert response.status_code == 413, response.text
            assert response.json()["error"].startswith(TOO_LARGE)
            assert time.monotonic() - started < 30
        declared = http.post("/api/events", content=b"x" * (SINGLE + 1))
        assert declared.status_code == 413
        assert declared.json()["error"].startswith(TOO_LARGE)
        assert http.get("/api/health").status_code == 200
        ok = http.post("/api/events", content=orjson.dumps(new_event("ns/after")))
        assert ok.status_code == 200
        assert [e["id"] for e in http.get("/api/state/entities").json()] == ["ns/after"]
    after = peak_rss_kb(server.proc.pid)
    if before is not None and after is not None:
        # 512 MiB went through; the peak grew by far less than one body
        assert after - before < 64 * 1024, (before, after)
