"""A real `flux serve` stopped (SIGTERM, SIGINT) or killed (SIGKILL) and started again on the
same data dir: the state is identical to the last bit (properties, lastUpdated, version),
deletions stay deleted, history is unchanged, and sequences go on where they stopped."""

from __future__ import annotations

import re
import signal
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import FluxServer

pytestmark = pytest.mark.slow

ENV = {"FLUX_RATE_LIMIT_ENABLED": "false", "FLUX_SNAPSHOT_INTERVAL_SECONDS": "3600"}
SINCE = {"since": "2000-01-01T00:00:00Z", "limit": "500"}


def event(entity_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "eventId": str(uuid.uuid4()),
        "stream": "restart.test",
        "source": "tests",
        "timestamp": 1_700_000_000_000,
        "payload": {"entity_id": entity_id, "properties": properties},
    }


def post(client: httpx.Client, body: dict[str, Any]) -> int:
    response = client.post("/api/events", json=body)
    assert response.status_code == 200, response.text
    sequence: int = response.json()["sequence"]
    return sequence


def write_some(client: httpx.Client) -> None:
    """Updates, a batch, a deleted entity, a deleted-then-recreated one, a batch delete."""
    for i in range(6):
        post(client, event(f"r/e{i % 3}", n=i, **{f"p{i}": [i, {"deep": i}]}))
    response = client.post(
        "/api/events/batch", json=[event("r/batch1", a=1), event("r/batch2", b=2.5)]
    )
    assert response.status_code == 200 and response.json()["failed"] == 0
    post(client, event("r/gone", x=1))
    assert client.delete("/api/state/entities/r/gone").status_code == 200
    post(client, event("r/again", old=1))
    assert client.delete("/api/state/entities/r/again").status_code == 200
    post(client, event("r/again", new=2))
    post(client, event("other/1", x=1))
    post(client, event("other/2", x=2))
    response = client.post("/api/state/entities/delete", json={"namespace": "other"})
    assert response.status_code == 200 and response.json()["deleted"] == 2


def observe(client: httpx.Client) -> dict[str, Any]:
    """Everything a client can see of the state and the history of the test's entities."""
    listing = client.get("/api/state/entities").json()
    entities = {e["id"]: e for e in listing}
    ids = sorted({*entities, "r/gone", "r/again", "other/1", "other/2"})
    histories = {i: client.get("/api/events", params={"entity": i, **SINCE}).json() for i in ids}
    return {
        "entities": entities,
        "histories": histories,
        "lastSequence": client.get("/api/health").json()["lastSequence"],
    }


def replayed(server: FluxServer) -> int:
    counts = re.findall(r"\((\d+) events replayed\)", server.logs())
    assert counts, server.logs()
    return int(counts[-1])


def check_after_restart(client: httpx.Client, before: dict[str, Any]) -> None:
    after = observe(client)
    assert after == before
    entities = after["entities"]
    assert "r/gone" not in entities and "other/1" not in entities
    assert client.get("/api/state/entities/r/gone").status_code == 404
    assert entities["r/again"]["properties"] == {"new": 2}
    assert after["histories"]["r/gone"], "a deleted entity keeps its history"
    # writing goes on: the next sequence, and a re-created entity starts empty
    assert post(client, event("r/gone", fresh=True)) == before["lastSequence"] + 1
    assert client.get("/api/state/entities/r/gone").json()["properties"] == {"fresh": True}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_clean_stop_writes_a_final_snapshot_and_restarts_identically(
    server_factory: type[FluxServer], data_dir: Path, sig: signal.Signals
) -> None:
    server = server_factory(data_dir, env=ENV).start()
    with httpx.Client(
        base_url=server.url, headers={"content-type": "application/json"}, timeout=10
    ) as client:
        write_some(client)
        before = observe(client)
    code = server.stop(sig)
    # uvicorn re-raises the signal once it has shut down; click turns a re-raised SIGINT
    # (KeyboardInterrupt) into "Aborted!" and exit status 1.
    assert code in ((0, -sig, 1) if sig == signal.SIGINT else (0, -sig)), server.logs()
    logs = server.logs()
    assert "Application shutdown complete" in logs
    seq = before["lastSequence"]
    assert f"snapshot snapshot-{seq:020d}.json.gz written" in logs
    assert (data_dir / "snapshots" / f"snapshot-{seq:020d}.json.gz").exists()

    restarted = server_factory(data_dir, env=ENV).start()
    assert replayed(restarted) == 0
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        check_after_restart(client, before)
    restarted.stop()


def test_after_sigkill_the_log_replay_gives_the_same_state(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    server = server_factory(data_dir, env=ENV).start()
    with httpx.Client(
        base_url=server.url, headers={"content-type": "application/json"}, timeout=10
    ) as client:
        write_some(client)
        before = observe(client)
    server.kill()
    assert not (data_dir / "snapshots").exists() or not any((data_dir / "snapshots").iterdir())

    restarted = server_factory(data_dir, env=ENV).start()
    assert replayed(restarted) == before["lastSequence"]
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        check_after_restart(client, before)
        again = observe(client)
    restarted.kill()

    # once more, now from the snapshot-less log that has the post-restart write too
    third = server_factory(data_dir, env=ENV).start()
    with httpx.Client(base_url=third.url, timeout=10) as client:
        assert observe(client) == again
    third.stop()


def test_a_corrupt_snapshot_is_reported_and_the_log_fills_in(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    server = server_factory(data_dir, env=ENV).start()
    with httpx.Client(
        base_url=server.url, headers={"content-type": "application/json"}, timeout=10
    ) as client:
        write_some(client)
        before = observe(client)
    server.stop()
    (snapshot,) = (data_dir / "snapshots").glob("snapshot-*.json.gz")
    snapshot.write_bytes(snapshot.read_bytes()[:-10])

    restarted = server_factory(data_dir, env=ENV).start()
    logs = restarted.logs()
    assert f"snapshot {snapshot.name} is unusable" in logs
    assert "no usable snapshot; rebuilding state from the whole log" in logs
    assert replayed(restarted) == before["lastSequence"]
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        check_after_restart(client, before)
    restarted.stop()
