"""Writing to a real server the way any client does: HTTP."""

from __future__ import annotations

import time
from typing import Any

import httpx


def event(entity_id: str, source: str = "tests", **properties: Any) -> dict[str, Any]:
    return {
        "stream": "console",
        "source": source,
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": properties},
    }


def publish(url: str, entity_id: str, token: str | None = None, **properties: Any) -> None:
    headers = {"authorization": f"Bearer {token}"} if token else {}
    answer = httpx.post(f"{url}/api/events", json=event(entity_id, **properties), headers=headers)
    assert answer.status_code == 200, answer.text


def publish_batch(url: str, events: list[dict[str, Any]]) -> None:
    answer = httpx.post(f"{url}/api/events/batch", json={"events": events}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.json()["failed"] == 0, answer.text


def delete(url: str, entity_id: str) -> None:
    answer = httpx.delete(f"{url}/api/state/entities/{entity_id.replace('/', '%2F')}")
    assert answer.status_code == 200, answer.text
