"""GET /api/events: an entity's newest stored events, newest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from .helpers import assert_error, new_event


def publish_many(client: TestClient, entity_id: str, count: int, start: int = 0) -> None:
    events = [new_event(entity_id, {"n": n}) for n in range(start, start + count)]
    response = client.post("/api/events/batch", content=orjson.dumps(events))
    assert response.json()["successful"] == count


def history(client: TestClient, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/events", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    events: list[dict[str, Any]] = response.json()
    return events


def numbers(events: list[dict[str, Any]]) -> list[int]:
    return [e["payload"]["properties"]["n"] for e in events]


def test_entity_is_required(client: TestClient) -> None:
    assert_error(client.get("/api/events"), 400, "entity parameter is required")
    assert_error(client.get("/api/events?entity="), 400, "entity parameter is required")
    assert_error(client.get("/api/events?since=2026-01-01"), 400, "entity parameter is required")


def test_unknown_entity_is_empty(client: TestClient) -> None:
    assert history(client, entity="ns/nobody") == []


def test_newest_first_exact_entity_only(client: TestClient) -> None:
    publish_many(client, "ns/a", 5)
    publish_many(client, "ns/ab", 3)
    publish_many(client, "ns/a/b", 2)
    assert numbers(history(client, entity="ns/a")) == [4, 3, 2, 1, 0]
    assert numbers(history(client, entity="ns/ab")) == [2, 1, 0]


def test_stored_envelopes_and_tombstones_included(client: TestClient) -> None:
    publish_many(client, "ns/h", 1)
    client.delete("/api/state/entities/ns%2Fh")
    tombstone, first = history(client, entity="ns/h")
    assert tombstone["stream"] == "flux.events.deletions"
    assert tombstone["payload"]["properties"]["__deleted__"] is True
    assert set(first) == {"eventId", "stream", "source", "timestamp", "payload"}


def test_limit_returns_the_newest(client: TestClient) -> None:
    publish_many(client, "ns/l", 10)
    assert numbers(history(client, entity="ns/l", limit=3)) == [9, 8, 7]
    assert numbers(history(client, entity="ns/l", limit=1)) == [9]


def test_default_limit_is_100_and_max_500(client: TestClient) -> None:
    publish_many(client, "ns/many", 600)
    assert numbers(history(client, entity="ns/many")) == list(range(599, 499, -1))
    assert len(history(client, entity="ns/many", limit=500)) == 500
    assert len(history(client, entity="ns/many", limit=501)) == 500
    assert len(history(client, entity="ns/many", limit=10**30)) == 500


@pytest.mark.parametrize("limit", ["0", "-5", "-99999999999999999999"])
def test_limit_is_clamped_to_one(client: TestClient, limit: str) -> None:
    publish_many(client, "ns/c", 3)
    assert numbers(history(client, entity="ns/c", limit=limit)) == [2]


@pytest.mark.parametrize("limit", ["x", "1.5", "", "1e3", "9" * 5000])
def test_bad_limit(client: TestClient, limit: str) -> None:
    response = client.get("/api/events", params={"entity": "ns/x", "limit": limit})
    assert_error(response, 400, "invalid `limit`: expected an integer")


PLUS_TWO = timezone(timedelta(hours=2))


def iso(moment: datetime) -> str:
    return moment.isoformat()


def test_since_filters_by_storage_time(client: TestClient) -> None:
    publish_many(client, "ns/s", 3)
    now = datetime.now(UTC)
    assert len(history(client, entity="ns/s", since=iso(now - timedelta(minutes=1)))) == 3
    assert history(client, entity="ns/s", since=iso(now + timedelta(minutes=1))) == []
    # other spellings of the same instant
    past = now - timedelta(minutes=1)
    for text in (
        past.strftime("%Y-%m-%dT%H:%M:%SZ"),
        past.strftime("%Y-%m-%dT%H:%M:%S.%f+00:00"),
        past.astimezone(PLUS_TWO).isoformat(),
        past.strftime("%Y-%m-%dT%H:%M:%S"),  # no offset: UTC
        past.strftime("%Y-%m-%dT%H:%M:%S.%f123Z"),  # nine fraction digits
    ):
        assert len(history(client, entity="ns/s", since=text)) == 3, text


def test_unencoded_plus_in_since_is_understood(client: TestClient) -> None:
    """`?since=...+02:00` sent without encoding the `+` arrives as a space."""
    publish_many(client, "ns/p", 2)
    past = (datetime.now(UTC) - timedelta(minutes=5)).astimezone(PLUS_TWO)
    text = past.strftime("%Y-%m-%dT%H:%M:%S+02:00")
    response = client.get(f"/api/events?entity=ns/p&since={text}")
    assert response.status_code == 200
    assert len(response.json()) == 2
    future = (datetime.now(UTC) + timedelta(minutes=5)).astimezone(PLUS_TWO)
    text = future.strftime("%Y-%m-%dT%H:%M:%S+02:00")
    assert client.get(f"/api/events?entity=ns/p&since={text}").json() == []


def test_default_window_is_the_last_24_hours(client: TestClient) -> None:
    publish_many(client, "ns/w", 2)
    assert len(history(client, entity="ns/w")) == 2
    long_ago = iso(datetime.now(UTC) - timedelta(days=30))
    assert len(history(client, entity="ns/w", since=long_ago)) == 2


@pytest.mark.parametrize(
    "since",
    ["yesterday", "1700000000", "2026-13-01", "2026-01-01T00:00:00 0200x", "\x00", "😀"],
)
def test_bad_since(client: TestClient, since: str) -> None:
    response = client.get("/api/events", params={"entity": "ns/x", "since": since})
    assert_error(response, 400, "invalid `since` timestamp (expected ISO 8601)")


@pytest.mark.parametrize("since", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_extreme_since(client: TestClient, since: str) -> None:
    publish_many(client, "ns/e", 1)
    expected = 1 if since.startswith("0001") else 0
    assert len(history(client, entity="ns/e", since=since)) == expected


def test_ids_are_matched_exactly(client: TestClient) -> None:
    publish_many(client, "ns/a-b", 1)
    publish_many(client, "ns/a", 2, start=10)
    assert numbers(history(client, entity="ns/a-b")) == [0]
    assert numbers(history(client, entity="ns/a")) == [11, 10]
    assert history(client, entity="ns/a\x00b") == []
