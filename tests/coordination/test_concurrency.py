"""Concurrent conditional writes against a real `flux serve`: no update is lost.

- The counter: K clients each do R read-modify-write increments with `expected_version`,
  retrying on 409; the final value is exactly K x R.
- The history check: after concurrent conditional single writes and atomic batches, the log
  itself (read back with the SQLite log, the server stopped) shows every accepted conditional
  write applied to exactly the version it expected.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer
from flux.engine import StateEngine
from flux.log import Record
from flux.log.sqlite import SQLiteLog

K = 8  # clients
R = 25  # increments each


def event(entity_id: str, props: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "stream": "counter",
        "source": "test",
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": props},
        **fields,
    }


async def increment(http: httpx.AsyncClient, entity_id: str, conflicts: list[int]) -> int:
    """One read-modify-write, retried until its condition holds; returns its sequence."""
    while True:
        current = (await http.get(f"/api/state/entities/{entity_id}")).json()
        value, version = current["properties"]["n"], current["version"]
        answer = await http.post(
            "/api/events", json=event(entity_id, {"n": value + 1}, expected_version=version)
        )
        if answer.status_code == 200:
            sequence: int = answer.json()["sequence"]
            return sequence
        assert answer.status_code == 409, answer.text
        body = answer.json()
        assert body["current_version"] != version  # the conflict names the newer version
        conflicts.append(1)


async def bump_pair(http: httpx.AsyncClient, conflicts: list[int]) -> None:
    """Move one unit from `pair/a` to `pair/b` in an atomic batch, both conditional."""
    while True:
        a = (await http.get("/api/state/entities/pair/a")).json()
        b = (await http.get("/api/state/entities/pair/b")).json()
        answer = await http.post(
            "/api/events/batch",
            json={
                "atomic": True,
                "events": [
                    event("pair/a", {"n": a["properties"]["n"] - 1}, expected_version=a["version"]),
                    event("pair/b", {"n": b["properties"]["n"] + 1}, expected_version=b["version"]),
                ],
            },
        )
        if answer.status_code == 200:
            return
        assert answer.status_code == 409, answer.text
        conflicts.append(1)


async def run_clients(url: str) -> tuple[int, int]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for entity_id, n in (("counter/c", 0), ("pair/a", 1000), ("pair/b", 0)):
            assert (await http.post("/api/events", json=event(entity_id, {"n": n}))).is_success
        conflicts: list[int] = []
        pair_conflicts: list[int] = []

        async def client(index: int) -> None:
            rng = random.Random(index)
            for _ in range(R):
                await increment(http, "counter/c", conflicts)
                if rng.random() < 0.4:
                    await bump_pair(http, pair_conflicts)

        await asyncio.gather(*(client(i) for i in range(K)))
        final = (await http.get("/api/state/entities/counter/c")).json()["properties"]["n"]
        a = (await http.get("/api/state/entities/pair/a")).json()["properties"]["n"]
        b = (await http.get("/api/state/entities/pair/b")).json()["properties"]["n"]
        assert a + b == 1000, "an atomic transfer was half applied or lost"
        assert final == K * R, f"lost updates: {final} != {K * R}"
        return len(conflicts), len(pair_conflicts)


def check_history(records: list[Record]) -> tuple[int, int]:
    """Replay the log; every event with `expected_version` must find its entity at exactly
    that version (0: absent) just before it. Returns (conditional events, atomic pairs)."""
    engine = StateEngine()
    checked = 0
    for record in records:
        expected = record.event.get("expected_version")
        if expected is not None:
            entity = engine.get(record.event["payload"]["entity_id"])
            found = entity.version if entity is not None else 0
            assert found == expected, (
                f"event at {record.seq} expected version {expected}, the log had {found}"
            )
            checked += 1
        engine.apply_all([record])
    pairs = sum(
        1
        for before, after in zip(records, records[1:], strict=False)
        if "expected_version" in before.event
        and before.event["payload"]["entity_id"] == "pair/a"
        and after.event["payload"]["entity_id"] == "pair/b"
        and after.seq == before.seq + 1
    )
    return checked, pairs


async def read_log(path: Path) -> list[Record]:
    log = SQLiteLog(str(path))
    await log.start(lambda records: None)
    try:
        out: list[Record] = []
        async for batch in log.read(0):
            out.extend(batch)
        return out
    finally:
        await log.close()


@pytest.mark.anyio
async def test_concurrent_increments_lose_nothing_and_the_log_proves_it(
    server: FluxServer,
) -> None:
    conflicts, pair_conflicts = await run_clients(server.url)
    print(
        f"\n{K} clients x {R} increments: {conflicts} conflicts (409) retried; "
        f"atomic transfers: {pair_conflicts} conflicts retried"
    )
    assert server.stop() in (0, -signal.SIGTERM), server.logs()  # uvicorn re-raises it
    records = await read_log(server.data_dir / "events.db")
    checked, pairs = check_history(records)
    increments = sum(1 for r in records if r.event["payload"]["entity_id"] == "counter/c")
    assert increments == K * R + 1  # the creation and every increment, nothing else
    assert checked == K * R + 2 * pairs
    assert pairs > 0
