"""Helpers for the live-state tests against a real server: a WebSocket client with bounded
receives (the `websockets` package), a Server-Sent Events parser over an httpx stream, and an
HTTP publisher. Tests run them with `asyncio.run` inside plain test functions (no async test
plugin)."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import ClientConnection, connect

TIMEOUT = 10.0  # the longest any single receive may wait (a loaded 2-core CI machine)
ZULU = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z$")
CHANGES = ("state_update", "entity_deleted")

Message = dict[str, Any]


def ws_url(base_url: str) -> str:
    return base_url.replace("http://", "ws://", 1) + "/api/ws"


def event(entity_id: str, properties: dict[str, Any], source: str = "test") -> dict[str, Any]:
    return {
        "stream": "sensors",
        "source": source,
        "timestamp": time.time_ns() // 1_000_000,
        "payload": {"entity_id": entity_id, "properties": properties},
    }


class Publisher:
    """POSTs events to a server; every call returns the assigned sequences."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT)

    async def __aenter__(self) -> Publisher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def one(self, entity_id: str, source: str = "test", **properties: Any) -> int:
        response = await self.http.post("/api/events", json=event(entity_id, properties, source))
        assert response.status_code == 200, response.text
        seq: int = response.json()["sequence"]
        return seq

    async def batch(self, events: list[dict[str, Any]]) -> list[int]:
        response = await self.http.post("/api/events/batch", json={"events": events})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["failed"] == 0, body
        return [result["sequence"] for result in body["results"]]

    async def delete(self, entity_id: str) -> None:
        response = await self.http.delete(f"/api/state/entities/{entity_id}")
        assert response.status_code == 200, response.text

    async def last_seq(self) -> int:
        response = await self.http.get("/api/health")
        seq: int = response.json()["lastSequence"]
        return seq


class Client:
    """A WebSocket connection whose every receive is bounded by a timeout."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.metrics: list[Message] = []  # metrics_update messages skipped by recv()

    async def send(self, **message: Any) -> None:
        await self.ws.send(orjson.dumps(message).decode())

    async def recv_raw(self, timeout: float = TIMEOUT) -> Message:
        frame = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(frame, str), frame
        message: Message = orjson.loads(frame)
        return message

    async def recv(self, timeout: float = TIMEOUT) -> Message:
        """The next message that is not a metrics_update (those are kept in `metrics`)."""
        deadline = time.monotonic() + timeout
        while True:
            message = await self.recv_raw(max(deadline - time.monotonic(), 0.001))
            if message["type"] != "metrics_update":
                return message
            self.metrics.append(message)

    async def expect(self, kind: str, timeout: float = TIMEOUT) -> Message:
        message = await self.recv(timeout)
        assert message["type"] == kind, message
        return message

    async def subscribe(self, **fields: Any) -> list[Message]:
        """Subscribe and return everything up to and including `subscribed`."""
        await self.send(type="subscribe", **fields)
        received = []
        while True:
            message = await self.recv()
            received.append(message)
            if message["type"] == "subscribed":
                return received
            assert message["type"] in ("snapshot", "resync", *CHANGES), message

    async def changes(self, count: int, timeout: float = TIMEOUT) -> list[Message]:
        """The next `count` messages, each a state_update or entity_deleted."""
        received = []
        for _ in range(count):
            message = await self.recv(timeout)
            assert message["type"] in CHANGES, (message, received)
            received.append(message)
        return received

    async def nothing(self) -> None:
        """Assert that nothing but metrics is queued for this connection: a publish answers
        after the server queued its messages, so they would all come before this pong."""
        await self.send(type="ping")
        await self.expect("pong")


@asynccontextmanager
async def ws_client(base_url: str, **options: Any) -> AsyncIterator[Client]:
    async with connect(ws_url(base_url), open_timeout=TIMEOUT, close_timeout=2, **options) as ws:
        yield Client(ws)


def versions(messages: list[Message]) -> list[int]:
    """The distinct versions of a list of change messages, in order of arrival."""
    seen: list[int] = []
    for message in messages:
        if not seen or seen[-1] != message["version"]:
            seen.append(message["version"])
    return seen


class Stream:
    """Parses an event stream (the WHATWG rules Flux uses: `id`, `event`, `data`, `retry`,
    comments) with every read bounded."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.aiter_lines()
        self.retry: int | None = None
        self.last_id: str | None = None  # what a browser would send back as Last-Event-ID

    async def next(self, skip_metrics: bool = True) -> dict[str, Any]:
        """The next event: {"id": str | None, "event": str, "data": parsed JSON}."""
        while True:
            fields: dict[str, str] = {}
            while True:
                line = await asyncio.wait_for(anext(self.lines), TIMEOUT)
                if not line:
                    if fields:
                        break
                    continue
                if line.startswith(":"):
                    continue
                name, _, value = line.partition(": ")
                if name == "retry":
                    self.retry = int(value)
                    continue
                assert name in ("id", "event", "data") and name not in fields, line
                fields[name] = value
            if "id" in fields:
                self.last_id = fields["id"]
            if skip_metrics and fields.get("event") == "metrics_update":
                continue
            return {
                "id": fields.get("id"),
                "event": fields["event"],
                "data": orjson.loads(fields["data"]),
            }

    async def until_subscribed(self) -> list[dict[str, Any]]:
        got = []
        while True:
            message = await self.next()
            got.append(message)
            if message["event"] == "subscribed":
                return got
