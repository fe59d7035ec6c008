"""Deletes must count against the rate limit and write nothing for nothing (issue 11, defect 6).

A namespace over its 600/minute limit sent batch deletes of 10,000 never-existing ids ten
times: 100,000 tombstones and 51 MB of log in 0.8 s. Now every id a delete names takes one event
of the namespace's rate limit (ids over it are refused: `429` for a single delete, `failed` with
`Retry-After` in a batch), and deleting an entity that does not exist writes nothing: the single
delete answers `"deleted": false`, the batch lists it under `not_found`. Whether an entity exists
is decided where the log orders writes, so concurrent deletes of one entity log one tombstone.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from conftest import FluxServer, start_server

ADMIN = "delete-flood-admin"
LIMIT = 600


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_RATE_LIMIT_PER_NAMESPACE_PER_MINUTE": str(LIMIT),
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
    }
    srv = start_server(tmp_path_factory.mktemp("delete-flood") / "data", env)
    yield srv
    srv.stop()
    assert "Traceback" not in srv.logs(), srv.logs()[-3000:]


def _namespace(server: FluxServer, name: str) -> dict[str, str]:
    made = httpx.post(
        f"{server.url}/api/namespaces",
        json={"name": name},
        headers={"Authorization": f"Bearer {ADMIN}"},
    )
    assert made.status_code == 200, made.text
    return {"Authorization": f"Bearer {made.json()['token']}"}


def _event(entity_id: str, n: int = 0) -> dict[str, Any]:
    return {
        "stream": "flood",
        "source": "delete-flood",
        "timestamp": 1,
        "payload": {"entity_id": entity_id, "properties": {"n": n}},
    }


def _last_seq(http: httpx.Client) -> int:
    seq: int = http.get("/api/health").json()["lastSequence"]
    return seq


def test_a_namespace_over_its_limit_cannot_flood_the_log_with_deletes(server: FluxServer) -> None:
    auth = _namespace(server, "flood")
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        events = [_event(f"flood/e{n}", n) for n in range(LIMIT)]
        stored = http.post("/api/events/batch", json={"events": events})
        assert stored.json()["successful"] == LIMIT  # the whole minute's allowance
        before = _last_seq(http)
        ghosts = [f"flood/never-{n:05d}" for n in range(10_000)]
        began = time.monotonic()
        admitted = 0
        for _ in range(10):
            answer = http.post("/api/state/entities/delete", json={"entity_ids": ghosts})
            assert answer.status_code == 200, answer.text[:300]
            body = answer.json()
            assert body["deleted"] == 0 and body["deleted_ids"] == [], str(body)[:300]
            # the bucket refills at 10 ids a second: those few are checked, and not found
            admitted += len(body["not_found"])
            assert body["not_found"] == ghosts[: len(body["not_found"])]
            assert body["failed"] == 10_000 - len(body["not_found"]), str(body)[:300]
            assert body["errors"][-1] == "flood/never-09999: rate limit exceeded"
            assert int(answer.headers["retry-after"]) >= 1
        elapsed = time.monotonic() - began
        assert elapsed < 30
        assert admitted <= (elapsed + 1) * LIMIT / 60, (admitted, elapsed)
        assert _last_seq(http) == before, "the refused deletes were logged"
        refusals = []
        for n in range(5):  # the drained bucket refuses a single delete (unless it just refilled)
            http.post("/api/state/entities/delete", json={"entity_ids": ghosts})
            single = http.delete(f"/api/state/entities/flood%2Fe{n}")
            if single.status_code == 429:
                refusals.append(single)
                assert http.get(f"/api/state/entities/flood%2Fe{n}").status_code == 200
        assert refusals, "a single delete over the limit was not refused"
        assert refusals[0].json() == {"error": "rate limit exceeded"}
        assert int(refusals[0].headers["retry-after"]) >= 1
        assert _last_seq(http) <= before + 5 - len(refusals)


def test_deleting_what_does_not_exist_writes_nothing(server: FluxServer) -> None:
    auth = _namespace(server, "gone")
    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        for name in ("a", "b"):
            assert http.post("/api/events", json=_event(f"gone/{name}")).status_code == 200
        before = _last_seq(http)
        missing = http.delete("/api/state/entities/gone%2Fnever")
        assert missing.status_code == 200, missing.text
        assert missing.json() == {"entity_id": "gone/never", "deleted": False}
        assert _last_seq(http) == before
        answer = http.post(
            "/api/state/entities/delete",
            json={"entity_ids": ["gone/a", "gone/x", "gone/b", "gone/y"]},
        )
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "deleted": 2,
            "deleted_ids": ["gone/a", "gone/b"],
            "not_found": ["gone/x", "gone/y"],
            "failed": 0,
            "errors": [],
        }
        assert _last_seq(http) == before + 2
        again = http.delete("/api/state/entities/gone%2Fa")
        assert again.json() == {"entity_id": "gone/a", "deleted": False}
        history = http.get("/api/events", params={"entity": "gone/never"}).json()
        assert history == []
        assert _last_seq(http) == before + 2


def test_concurrent_deletes_of_one_entity_log_one_tombstone(server: FluxServer) -> None:
    auth = _namespace(server, "race")

    async def run() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=60) as http:
            answers = []
            for round_ in range(5):
                stored = await http.post("/api/events", json=_event("race/one", round_))
                assert stored.status_code == 200, stored.text
                replies = await asyncio.gather(
                    *(http.delete("/api/state/entities/race%2Fone") for _ in range(8))
                )
                assert all(r.status_code == 200 for r in replies), [r.text for r in replies]
                answers += [r.json() for r in replies]
            return answers

    with httpx.Client(base_url=server.url, headers=auth, timeout=60) as http:
        before = _last_seq(http)
        answers = asyncio.run(run())
        deleted = [a for a in answers if a["deleted"]]
        assert len(deleted) == 5, answers  # one per round
        assert all("eventId" in a for a in deleted)
        assert _last_seq(http) == before + 10  # 5 writes, 5 tombstones
        history = http.get("/api/events", params={"entity": "race/one", "limit": 100}).json()
        assert len(history) == 10
