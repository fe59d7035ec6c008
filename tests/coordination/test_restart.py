"""Coordination state survives restarts of a real `flux serve` (a clean stop and a SIGKILL):
leases, TTLs, the results of conditional writes and the deletions changes-since reports; and
what fell due while the server was down is logged when it starts."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer, wait_for


def event(entity_id: str, props: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "stream": "s",
        "source": "restart",
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": props},
        **fields,
    }


def observe(url: str) -> dict[str, Any]:
    with httpx.Client(base_url=url, timeout=10) as http:
        return {
            "entities": sorted(
                http.get("/api/state/entities", params={"prefix": "r/"}).json(),
                key=lambda e: e["id"],
            ),
            "changes": http.get("/api/state/changes", params={"since": 0}).json(),
        }


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_state_after_a_restart_equals_state_before(
    server_factory: type[FluxServer], data_dir: Path, sig: signal.Signals
) -> None:
    srv = server_factory(data_dir).start()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        lease = http.post(
            "/api/leases/acquire", json={"entity_id": "r/lock", "owner": "w1", "ttl_ms": 600_000}
        ).json()
        v = http.post("/api/events", json=event("r/task", {"s": "open"}, expected_version=0))
        http.post(
            "/api/events",
            json=event("r/task", {"s": "taken"}, expected_version=v.json()["sequence"]),
        )
        http.post("/api/events", json=event("r/beat", {"n": 1}, ttl_ms=600_000))
        http.post("/api/events", json=event("r/gone", {"n": 1}))
        http.delete("/api/state/entities/r/gone")
    before = observe(srv.url)
    srv.stop(sig)
    srv = server_factory(data_dir).start()
    after = observe(srv.url)
    assert after == before
    assert [d["id"] for d in after["changes"]["deleted"]] == ["r/gone"]
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        # the lease still excludes others and its token still fences
        other = http.post(
            "/api/leases/acquire", json={"entity_id": "r/lock", "owner": "w2", "ttl_ms": 1000}
        )
        assert other.status_code == 409
        fenced = event("r/lock", {"step": 1}, fencing_token=lease["token"])
        assert http.post("/api/events", json=fenced).status_code == 200
        stale = http.post(
            "/api/events", json=event("r/task", {"s": "x"}, expected_version=v.json()["sequence"])
        )
        assert stale.status_code == 409
    srv.stop()


def test_what_fell_due_while_the_server_was_down_is_logged_at_start(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    srv = server_factory(data_dir).start()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        http.post("/api/events", json=event("r/beat", {"n": 1}, ttl_ms=1500))
        http.post(
            "/api/leases/acquire", json={"entity_id": "r/lock", "owner": "w1", "ttl_ms": 1500}
        )
        http.post("/api/events", json=event("r/keep", {"n": 1}))
    srv.kill()
    time.sleep(1.6)
    srv = server_factory(data_dir).start()
    with httpx.Client(base_url=srv.url, timeout=10) as http:
        wait_for(
            lambda: http.get("/api/state/entities/r/beat").status_code == 404,
            "the TTL that fell due while down to be logged",
        )
        wait_for(
            lambda: (
                http.get("/api/state/entities/r/lock").json()["properties"]["__lease__"] is None
            ),
            "the lease that fell due while down to expire",
        )
        assert http.get("/api/state/entities/r/keep").status_code == 200
        beat = http.get("/api/events", params={"entity": "r/beat"}).json()
        assert beat[0]["payload"]["properties"]["__expired__"] == "ttl"
        lock = http.get("/api/events", params={"entity": "r/lock"}).json()
        assert lock[0]["stream"] == "flux.leases.expired"
    srv.stop()
