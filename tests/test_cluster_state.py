"""What the nodes of a cluster share besides the log (namespaces and tokens, the admin's runtime
config, connector credentials and generic sources), tested on real `flux serve --nats` nodes
over one real nats-server: a change made through one node holds on the others, a name two
nodes register at once goes to exactly one, and a node started with an empty data dir finds
everything in the buckets."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from api.authkit import open_client, server_of
from conftest import FluxServer, wait_for
from fakegithub import TOKEN as GITHUB_TOKEN
from fakegithub import FakeGitHub, repo
from flux.mirror import BucketMirror
from jsonserver import JsonServer
from natsserver import NatsServer

ADMIN = "cluster-admin-token"
KEY = base64.b64encode(bytes(range(32))).decode()
SOURCE_TOKEN = "upstream-secret-77a0"


def bearer(token: str | None) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"} if token is not None else {}


ADMIN_HEADERS = bearer(ADMIN)


def event(entity_id: str, **properties: Any) -> dict[str, Any]:
    return {
        "stream": "test",
        "source": "test",
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": properties or {"x": 1}},
    }


class Cluster:
    """The nodes of one stream, and what every node of it is started with."""

    def __init__(self, root: Path, env: dict[str, str]) -> None:
        self.root = root
        self.env = env
        self.nodes: list[FluxServer] = []
        self.http = httpx.Client(timeout=30)

    def start(self, name: str) -> FluxServer:
        node = FluxServer(self.root / name / "data", self.env)
        self.nodes.append(node)
        return node.start()

    def stop(self) -> None:
        self.http.close()
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                node.stop()

    # -- calls ----------------------------------------------------------------------------------

    def register(self, node: FluxServer, name: str, private: bool = False) -> str:
        response = self.http.post(
            f"{node.url}/api/namespaces",
            json={"name": name, "private": private},
            headers=ADMIN_HEADERS,
        )
        assert response.status_code == 200, response.text
        token: str = response.json()["token"]
        return token

    def publish(self, node: FluxServer, token: str | None, entity_id: str) -> httpx.Response:
        return self.http.post(
            f"{node.url}/api/events", json=event(entity_id), headers=bearer(token)
        )

    def get(self, node: FluxServer, path: str, token: str | None = ADMIN) -> httpx.Response:
        return self.http.get(f"{node.url}{path}", headers=bearer(token))


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    fake.repos = [repo("octo", "shared")]
    yield fake
    fake.stop()


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, github: FakeGitHub
) -> Iterator[Cluster]:
    """Two nodes, `a` and `b`, with auth on, an admin token and the credential key."""
    env = {
        "FLUX_NATS_URL": nats_url,
        "FLUX_NATS_STREAM": "SHARED",
        "FLUX_NATS_SUBJECT": "shared",
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_ENCRYPTION_KEY": KEY,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        "FLUX_SOURCES_ALLOWED_NETWORKS": "127.0.0.0/8",
        "FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS": "1",
        "FLUX_CONNECTOR_RETRY_SECONDS": "0.2",
        "FLUX_GITHUB_API_URL": github.url,
        "FLUX_GITHUB_POLL_INTERVAL_SECONDS": "1",
    }
    shared = Cluster(tmp_path_factory.mktemp("cluster"), env)
    try:
        shared.start("a")
        shared.start("b")
        yield shared
    finally:
        shared.stop()


def a_and_b(cluster: Cluster) -> tuple[FluxServer, FluxServer]:
    return cluster.nodes[0], cluster.nodes[1]


def holds_connectors(node: FluxServer) -> bool:
    """Whether `node` runs the connectors now (the cluster's `connectors` job, flux.jobs)."""
    logs = node.logs()
    return logs.rfind("took job connectors") > logs.rfind("stopped job connectors")


def poller_and_other(cluster: Cluster) -> tuple[FluxServer, FluxServer]:
    """The node that polls connectors and sources, and another running node."""
    a, b = a_and_b(cluster)
    wait_for(lambda: holds_connectors(a) or holds_connectors(b), "a node to take the connectors")
    return (a, b) if holds_connectors(a) else (b, a)


# -- namespaces and tokens -------------------------------------------------------------------


def test_a_namespace_registered_on_one_node_works_on_the_other_at_once(cluster: Cluster) -> None:
    a, b = a_and_b(cluster)
    for i in range(5):  # each one at once: no sleep, no retry
        token = cluster.register(a, f"reg-{i}")
        response = cluster.publish(b, token, f"reg-{i}/x")
        assert response.status_code == 200, response.text
    shown = cluster.get(b, "/api/namespaces/reg-0").json()
    assert shown["name"] == "reg-0"


def test_an_unknown_token_waits_for_a_node_whose_watcher_lags(
    nats_url: str, tmp_path: Path, upstream: JsonServer
) -> None:
    """In process, two nodes on one stream; b applies each change to the registry, the config
    and the sources half a second late (the delay injected into its watchers). A token registered
    through a is still accepted by b at once: b catches up before judging a token it does not
    know; b's admin config shows a change made through a at once, and b lists and shows a
    source added through a at once."""
    cluster = {
        "nats_url": nats_url,
        "nats_stream": "LAG",
        "nats_subject": "lag",
        "sources_allowed_networks": (ipaddress.ip_network("127.0.0.0/8"),),
        "sources_min_poll_interval_seconds": 1,
    }
    a = open_client(tmp_path / "a", **cluster, admin_token=ADMIN)
    b = open_client(tmp_path / "b", **cluster, admin_token=ADMIN)
    try:
        lag(server_of(b).registry.mirror)
        lag(server_of(b).shared_runtime.mirror)
        lag(server_of(b).shared_sources.mirror)
        tokens = []
        for i in range(3):
            response = a.post("/api/namespaces", json={"name": f"lag-{i}"}, headers=ADMIN_HEADERS)
            token = response.json()["token"]
            tokens.append(token)
            assert server_of(b).access.get(f"lag-{i}") is None  # not applied on b yet
            published = b.post("/api/events", json=event(f"lag-{i}/x"), headers=bearer(token))
            assert published.status_code == 200, published.text
        token0 = tokens[0]
        # Likewise the admin's config: b shows a change made through a at once.
        doc = {"max_batch_delete": 55}
        assert a.put("/api/admin/config", json=doc, headers=ADMIN_HEADERS).status_code == 200
        assert server_of(b).runtime.current.max_batch_delete != 55  # not applied on b yet
        shown = b.get("/api/admin/config", headers=ADMIN_HEADERS).json()
        assert shown["max_batch_delete"] == 55
        # And the generic sources: listed, and found by id, at once.
        upstream.set("/lag", {"v": 1})
        doc = {
            "name": "lag",
            "url": upstream.url("/lag"),
            "poll_interval_secs": 60,
            "entity_key": "k",
            "namespace": "lag-0",
        }
        response = a.post("/api/connectors/generic", json=doc, headers=bearer(token0))
        assert response.status_code == 201, response.text
        source_id = response.json()["source_id"]
        assert server_of(b).connectors.sources.list("namespace:lag-0") == []  # not applied yet
        shown = b.get(f"/api/connectors/generic/{source_id}", headers=bearer(token0))
        assert shown.status_code == 200, shown.text
        listed = b.get("/api/connectors/generic", headers=bearer(token0)).json()["sources"]
        assert [s["source_id"] for s in listed] == [source_id]
    finally:
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)


def test_a_delete_begun_on_one_node_hides_the_namespace_on_the_others(
    nats_url: str, tmp_path: Path
) -> None:
    """The first step of a delete through a (its `deleting` mark) revokes the token and hides
    the past on b too; if a stops there (as if it crashed), the admin finishes the delete
    through b, and a node started afterwards does not know the namespace either."""
    cluster = {"nats_url": nats_url, "nats_stream": "HALF", "nats_subject": "half"}
    a = open_client(tmp_path / "a", **cluster, admin_token=ADMIN)
    b = open_client(tmp_path / "b", **cluster, admin_token=ADMIN)
    try:
        response = a.post("/api/namespaces", json={"name": "half"}, headers=ADMIN_HEADERS)
        token = response.json()["token"]
        assert b.post("/api/events", json=event("half/x"), headers=bearer(token)).is_success
        assert b.get("/api/events?entity=half%2Fx", headers=bearer(token)).json() != []
        registry = server_of(a).registry
        a.portal.call(registry.hide, "half")

        def refused_on_b() -> bool:
            response = b.post("/api/events", json=event("half/y"), headers=bearer(token))
            return response.status_code == 401

        wait_for(refused_on_b, "the token refused on b")
        assert b.get("/api/events?entity=half%2Fx", headers=ADMIN_HEADERS).json() == []
        assert b.get("/api/namespaces/half", headers=ADMIN_HEADERS).status_code == 200
        a.__exit__(None, None, None)
        assert b.delete("/api/namespaces/half", headers=ADMIN_HEADERS).status_code == 204
        assert b.get("/api/state/entities/half%2Fx", headers=ADMIN_HEADERS).status_code == 404
        a = open_client(tmp_path / "a2", **cluster, admin_token=ADMIN)
        assert a.get("/api/namespaces/half", headers=ADMIN_HEADERS).status_code == 404
        assert server_of(a).access.history_floor("half/x") > 0
    finally:
        b.__exit__(None, None, None)
        a.__exit__(None, None, None)


def lag(mirror: BucketMirror, seconds: float = 0.5) -> None:
    """Make a node apply each change of this bucket `seconds` late, as a slow watcher would."""
    apply = mirror._apply

    async def lagging(key: str, value: bytes | None) -> None:
        await asyncio.sleep(seconds)
        await apply(key, value)

    mirror._apply = lagging


def test_a_rotated_token_stops_working_on_the_other_node(cluster: Cluster) -> None:
    a, b = a_and_b(cluster)
    old = cluster.register(a, "rotating")
    assert cluster.publish(b, old, "rotating/x").status_code == 200
    response = cluster.http.post(f"{a.url}/api/namespaces/rotating/token", headers=bearer(old))
    assert response.status_code == 200, response.text
    new = response.json()["token"]
    assert cluster.publish(b, new, "rotating/x").status_code == 200  # the new one at once
    wait_for(lambda: cluster.publish(b, old, "rotating/x").status_code == 401, "old token refused")


def test_the_private_flag_and_a_delete_reach_the_other_node(cluster: Cluster) -> None:
    a, b = a_and_b(cluster)
    token = cluster.register(a, "flagged")
    assert cluster.publish(a, token, "flagged/x").status_code == 200
    path = "/api/state/entities/flagged%2Fx"
    assert wait_for(lambda: cluster.get(b, path, None).status_code == 200, "public read on b")
    response = cluster.http.put(
        f"{a.url}/api/namespaces/flagged", json={"private": True}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    wait_for(lambda: cluster.get(b, path, None).status_code in (401, 403), "private on b")
    assert cluster.get(b, path, token).status_code == 200  # its own token still reads it

    response = cluster.http.delete(f"{a.url}/api/namespaces/flagged", headers=ADMIN_HEADERS)
    assert response.status_code == 204, response.text
    wait_for(lambda: cluster.get(b, "/api/namespaces/flagged").status_code == 404, "gone on b")
    assert cluster.publish(b, token, "flagged/x").status_code == 401
    # The name may be registered again, on the other node, and starts with no past.
    again = cluster.register(b, "flagged")
    assert cluster.publish(a, again, "flagged/y").status_code == 200
    # b learnt the floor from the bucket: the deleted namespace's past stays hidden there too.
    history = cluster.get(b, "/api/events?entity=flagged%2Fx", again)
    assert history.status_code == 200 and history.json() == [], history.text


def test_two_nodes_registering_one_name_at_once_exactly_one_wins(cluster: Cluster) -> None:
    a, b = a_and_b(cluster)

    def race(name: str) -> list[int]:
        """Both nodes register `name` at the same moment; their statuses, sorted."""
        statuses: list[int] = []
        go = threading.Barrier(2)

        def attempt(node: FluxServer) -> None:
            go.wait()
            response = httpx.post(
                f"{node.url}/api/namespaces", json={"name": name}, headers=ADMIN_HEADERS
            )
            statuses.append(response.status_code)

        threads = [threading.Thread(target=attempt, args=(node,)) for node in (a, b)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return sorted(statuses)

    for i in range(10):
        assert race(f"race-{i}") == [200, 409], i


# -- the admin's runtime config ----------------------------------------------------------------


def test_a_config_change_on_one_node_applies_on_the_other(cluster: Cluster) -> None:
    a, b = a_and_b(cluster)
    response = cluster.http.put(
        f"{a.url}/api/admin/config",
        json={"rate_limit_per_namespace_per_minute": 3},
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 200, response.text
    shown = cluster.get(b, "/api/admin/config").json()  # at once
    assert shown["rate_limit_per_namespace_per_minute"] == 3
    token = cluster.register(a, "limited")
    statuses = [cluster.publish(b, token, f"limited/{i}").status_code for i in range(4)]
    assert statuses == [200, 200, 200, 429]
    # Two admins changing different settings through different nodes lose neither change.
    changes = [
        (a, {"max_batch_delete": 777}),
        (b, {"body_size_limit_single_bytes": 123_456}),
    ]
    go = threading.Barrier(2)

    def change(node: FluxServer, doc: dict[str, Any]) -> None:
        go.wait()
        assert httpx.put(f"{node.url}/api/admin/config", json=doc, headers=ADMIN_HEADERS).is_success

    threads = [threading.Thread(target=change, args=pair) for pair in changes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in (a, b):
        shown = cluster.get(node, "/api/admin/config").json()
        assert shown["max_batch_delete"] == 777
        assert shown["body_size_limit_single_bytes"] == 123_456
    # Back to a generous limit for the other tests.
    response = cluster.http.put(
        f"{b.url}/api/admin/config",
        json={
            "rate_limit_per_namespace_per_minute": 10_000,
            "body_size_limit_single_bytes": 1_048_576,
        },
        headers=ADMIN_HEADERS,
    )
    assert response.status_code == 200


# -- connector credentials and generic sources -------------------------------------------------


def test_a_source_added_on_one_node_is_listed_polled_and_deleted_on_the_other(
    cluster: Cluster, upstream: JsonServer
) -> None:
    """Added through the node that does not poll (a), it is listed on b and polled there."""
    b, a = poller_and_other(cluster)
    token = cluster.register(a, "weather")
    upstream.set("/oslo", {"temp": 4})
    doc = {
        "name": "oslo",
        "url": upstream.url("/oslo"),
        "poll_interval_secs": 1,
        "entity_key": "oslo",
        "namespace": "weather",
        "auth_type": "bearer",
        "token": SOURCE_TOKEN,
    }
    response = cluster.http.post(f"{a.url}/api/connectors/generic", json=doc, headers=bearer(token))
    assert response.status_code == 201, response.text
    source_id = response.json()["source_id"]

    def listed_on_b() -> list[str]:
        sources = cluster.get(b, "/api/connectors/generic", token).json()["sources"]
        return [s["source_id"] for s in sources]

    assert wait_for(listed_on_b, "the source listed on b") == [source_id]
    # b runs it, with the token from the shared (sealed) credential store; a does not.
    path = f"/api/connectors/generic/{source_id}"
    shown = wait_for(lambda: (s := cluster.get(b, path, token).json())["polls"] >= 1 and s)
    assert shown["has_token"] is True and shown["last_error"] is None, shown
    assert upstream.calls("/oslo")[-1].headers["authorization"] == f"Bearer {SOURCE_TOKEN}"
    assert cluster.get(a, path, token).json()["polls"] == 0

    assert cluster.http.delete(f"{a.url}{path}", headers=bearer(token)).status_code == 204
    wait_for(lambda: listed_on_b() == [], "the source gone on b")
    assert cluster.get(b, path, token).status_code == 404


def test_a_credential_stored_on_one_node_is_used_by_the_connector_on_the_other(
    cluster: Cluster,
) -> None:
    """Stored through the node that does not poll (a), it is used by b's connector."""
    b, a = poller_and_other(cluster)
    token = cluster.register(a, "octo")
    response = cluster.http.post(
        f"{a.url}/api/connectors/github/token", json={"token": GITHUB_TOKEN}, headers=bearer(token)
    )
    assert response.status_code == 200, response.text
    shown = cluster.get(b, "/api/connectors/github", token).json()
    assert shown["status"] in ("configured", "error"), shown  # at once: it is stored
    # b's runner polls the fake GitHub with the token stored through a (a wrong or missing
    # token would be a 401 there, shown as `last_error`).
    polled = wait_for(
        lambda: (s := cluster.get(b, "/api/connectors/github", token).json())["polls"] >= 1 and s
    )
    assert polled["last_error"] is None and polled["status"] == "configured", polled

    response = cluster.http.delete(f"{a.url}/api/connectors/github/token", headers=bearer(token))
    assert response.status_code == 200
    wait_for(
        lambda: (
            cluster.get(b, "/api/connectors/github", token).json()["status"] == "not_configured"
        ),
        "the credential gone on b",
    )


# -- a node that starts with an empty data dir --------------------------------------------------


def test_a_node_with_an_empty_data_dir_finds_everything_in_the_buckets(
    cluster: Cluster, upstream: JsonServer
) -> None:
    a, b = a_and_b(cluster)
    token = cluster.register(a, "kept", private=True)
    assert cluster.publish(a, token, "kept/x").status_code == 200
    response = cluster.http.put(
        f"{a.url}/api/admin/config", json={"max_batch_delete": 4321}, headers=ADMIN_HEADERS
    )
    assert response.status_code == 200
    upstream.set("/kept", {"v": 1})
    doc = {
        "name": "kept",
        "url": upstream.url("/kept"),
        "poll_interval_secs": 1,
        "entity_key": "k",
        "namespace": "kept",
    }
    response = cluster.http.post(f"{a.url}/api/connectors/generic", json=doc, headers=bearer(token))
    assert response.status_code == 201, response.text
    source_id = response.json()["source_id"]
    response = cluster.http.post(
        f"{a.url}/api/connectors/github/token", json={"token": GITHUB_TOKEN}, headers=bearer(token)
    )
    assert response.status_code == 200

    b.stop()
    fresh = cluster.start("c")  # a new, empty data dir
    assert not (fresh.data_dir / "namespaces.db").exists()
    assert cluster.publish(fresh, token, "kept/y").status_code == 200
    assert cluster.get(fresh, "/api/state/entities/kept%2Fx", None).status_code in (401, 403)
    assert cluster.get(fresh, "/api/state/entities/kept%2Fx", token).status_code == 200
    assert cluster.get(fresh, "/api/admin/config").json()["max_batch_delete"] == 4321
    sources = cluster.get(fresh, "/api/connectors/generic", token).json()["sources"]
    assert [s["source_id"] for s in sources] == [source_id]
    assert cluster.get(fresh, "/api/connectors/github", token).json()["status"] == "configured"
    # Nothing of it came from the data dir: the stores there were never made.
    for name in ("namespaces.db", "credentials.db", "sources.db", "runtime-config.json"):
        assert not (fresh.data_dir / name).exists(), name


def test_the_buckets_hold_token_hashes_and_sealed_secrets_only(
    cluster: Cluster, nats_url: str
) -> None:
    """Every value in the shared buckets, read straight from NATS: no namespace token, no
    connector or source secret in the clear (the earlier tests stored all three)."""
    a = cluster.nodes[0]
    token = cluster.register(a, "sealed")
    response = cluster.http.post(
        f"{a.url}/api/connectors/github/token", json={"token": GITHUB_TOKEN}, headers=bearer(token)
    )
    assert response.status_code == 200

    async def values() -> dict[str, list[bytes]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            found: dict[str, list[bytes]] = {}
            for kind in ("namespaces", "credentials", "sources", "config"):
                kv = await js.key_value(f"SHARED_{kind}")
                found[kind] = [(await kv.get(key)).value or b"" for key in await kv.keys()]
            return found
        finally:
            await nc.close()

    found = asyncio.run(values())
    assert len(found["namespaces"]) > 10 and found["credentials"] and found["sources"]
    held = b"".join(value for kind in found.values() for value in kind)
    for secret in (token, GITHUB_TOKEN, SOURCE_TOKEN):
        assert secret.encode() not in held, secret
    assert hashlib.sha256(token.encode()).hexdigest().encode() in held
