"""Helpers shared by the HTTP API tests (imported relatively; fixtures live in conftest.py)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from typing import Any

import orjson

from flux.client import path_segment

Event = dict[str, Any]
EventFactory = Callable[..., Event]

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
REST_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?\+00:00$")


def new_event(entity_id: str | None = "ns/e1", properties: Any = None, **fields: Any) -> Event:
    """A valid event (stream `sensors`, source `test`, timestamp now) setting `properties` on
    `entity_id`; keyword fields override or add top-level fields."""
    payload: dict[str, Any] = {}
    if entity_id is not None:
        payload["entity_id"] = entity_id
    payload["properties"] = {"temperature": 21.5} if properties is None else properties
    event: Event = {
        "stream": "sensors",
        "source": "test",
        "timestamp": time.time_ns() // 1_000_000,
        "payload": payload,
    }
    event.update(fields)
    return event


def nested_payload(depth: int) -> dict[str, Any]:
    """A payload `depth` levels deep (the payload object is level 1) for entity `deep/x`, its
    `properties` an object of alternating objects and arrays."""
    value: Any = 1
    for level in range(depth - 1):
        value = {"a": value} if (depth - 1 - level) % 2 == 1 else [value]
    return {"entity_id": "deep/x", "properties": value}


def assert_error(response: Any, status: int, message: str | None = None) -> str:
    """The response is `status` with a JSON `{"error": "<str>"}` body (exactly that key);
    returns the message, checked against `message` when given."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"error"}, body
    assert isinstance(body["error"], str)
    assert "Traceback" not in body["error"]
    if message is not None:
        assert body["error"] == message
    return str(body["error"])


def encode_id(entity_id: str) -> str:
    """An entity id as one URL path segment (every reserved character percent-encoded, and
    `.`/`..` too, which URL normalization would otherwise resolve away): the client's rule."""
    return path_segment(entity_id)


def dumps(value: Any) -> bytes:
    """JSON bytes; integers beyond 64 bits (which orjson refuses) via the standard encoder."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:
        return json.dumps(value).encode()
