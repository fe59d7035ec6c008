"""What auth keeps across a restart: namespaces, tokens (a rotated-out token stays revoked),
private flags, deletions, and the admin config; in-process, and once through `flux serve`."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson

from api.authkit import ADMIN, bearer, open_client, publish, register
from api.helpers import assert_error, new_event
from conftest import FluxServer


def test_everything_survives_an_in_process_restart(data_dir: Path) -> None:
    first = open_client(data_dir)
    alpha = register(first, "alpha")
    beta_old = register(first, "beta")
    register(first, "gone")
    beta = first.post("/api/namespaces/beta/token", headers=bearer(beta_old)).json()["token"]
    assert first.put("/api/namespaces/alpha", json={"private": True}, headers=bearer(alpha))
    assert first.delete("/api/namespaces/gone", headers=bearer(ADMIN)).status_code == 204
    changes = {"rate_limit_per_namespace_per_minute": 77, "max_batch_delete": 9}
    assert first.put("/api/admin/config", json=changes, headers=bearer(ADMIN)).status_code == 200
    assert publish(first, alpha, "alpha/a").status_code == 200
    before = first.get("/api/namespaces/alpha", headers=bearer(alpha)).json()
    first.__exit__(None, None, None)

    second = open_client(data_dir)
    try:
        # namespaces and their ids and creation times
        assert second.get("/api/namespaces/alpha", headers=bearer(alpha)).json() == before
        assert second.get("/api/namespaces/beta").status_code == 200
        assert_error(second.get("/api/namespaces/gone"), 404)
        # tokens: the current ones work, the rotated-out one stays revoked
        assert publish(second, beta, "beta/b").status_code == 200
        assert_error(publish(second, beta_old, "beta/b"), 401)
        assert publish(second, alpha, "alpha/b").status_code == 200
        # the private flag
        assert_error(second.get("/api/state/entities/alpha%2Fa"), 401)
        assert second.get("/api/state/entities/alpha%2Fa", headers=bearer(alpha)).status_code == 200
        assert {e["id"] for e in second.get("/api/state/entities").json()} == {"beta/b"}
        # the admin config
        config = second.get("/api/admin/config").json()
        assert config["rate_limit_per_namespace_per_minute"] == 77
        assert config["max_batch_delete"] == 9
        # the name of a deleted namespace is free, and the new one starts empty
        register(second, "gone")
        assert second.get("/api/namespaces/gone").json()["entityCount"] == 0
    finally:
        second.__exit__(None, None, None)


def test_a_real_server_keeps_namespaces_and_revocations(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
    }
    server = server_factory(data_dir, env=env).start()
    admin = bearer(ADMIN)
    with httpx.Client(base_url=server.url, headers={"content-type": "application/json"}) as http:
        old = http.post("/api/namespaces", json={"name": "matt"}, headers=admin).json()["token"]
        new = http.post("/api/namespaces/matt/token", headers=admin).json()["token"]
        http.put("/api/namespaces/matt", json={"private": True}, headers=bearer(new))
        event = orjson.dumps(new_event("matt/a"))
        assert http.post("/api/events", content=event, headers=bearer(new)).status_code == 200
    server.stop()
    logs = server.logs()
    for token in (old, new, ADMIN):
        assert token not in logs

    again = server_factory(data_dir, env=env).start()
    with httpx.Client(base_url=again.url, headers={"content-type": "application/json"}) as http:
        event = orjson.dumps(new_event("matt/b"))
        assert http.post("/api/events", content=event, headers=bearer(old)).status_code == 401
        assert http.post("/api/events", content=event, headers=bearer(new)).status_code == 200
        assert http.get("/api/state/entities").json() == []
        listed = http.get("/api/state/entities", headers=bearer(new)).json()
        assert {e["id"] for e in listed} == {"matt/a", "matt/b"}
    again.stop()
    for token in (old, new, ADMIN):
        assert token not in again.logs()
