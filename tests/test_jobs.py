"""Single-runner jobs on real `flux serve --nats` nodes sharing one nats-server: each job runs on
one node at a time and moves when that node is killed (expiries, the directory, the presence
janitor); only one node writes snapshots, into the object store, and retention prunes the
stream only up to them, so a new node with an empty data dir starts from the newest one plus
the stream's tail; a killed node's presences are removed while another node's stay."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import websockets

from conftest import FluxServer, wait_for
from coordination.test_concurrency import event
from flux.cluster import Cluster
from flux.jobs import Jobs
from jsonserver import JsonServer
from liveclient import Client, ws_client
from natsserver import NatsServer

TTL = 1.5  # FLUX_CLUSTER_JOB_TTL_SECONDS: a dead node's jobs move within about 2 s

_streams = itertools.count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture
def env(nats_url: str) -> dict[str, str]:
    """Settings of one test's nodes: a stream (and so buckets) of its own, short job TTLs."""
    n = next(_streams)
    return {
        "FLUX_NATS_URL": nats_url,
        "FLUX_NATS_STREAM": f"JOBS{n}",
        "FLUX_NATS_SUBJECT": f"jobs{n}",
        "FLUX_CLUSTER_JOB_TTL_SECONDS": str(TTL),
        "FLUX_SNAPSHOT_EVERY_EVENTS": "1000000",
    }


def node(
    factory: type[FluxServer], tmp_path: Path, name: str, env: dict[str, str], **more: str
) -> FluxServer:
    """A node named `name` (FLUX_NODE_ID) with its own data dir."""
    return factory(tmp_path / name / "data", {**env, "FLUX_NODE_ID": name, **more})


def took(srv: FluxServer, job: str) -> bool:
    return f"node {srv.data_dir.parent.name} took job {job}" in srv.logs()


async def until(check: Any, what: str, timeout: float = 15.0) -> Any:
    """Poll the async `check` until it returns something truthy."""
    async with asyncio.timeout(timeout):
        while True:
            found = await check()
            if found:
                return found
            await asyncio.sleep(0.05)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


async def history(http: httpx.AsyncClient, url: str, entity_id: str) -> list[dict[str, Any]]:
    answer = await http.get(f"{url}/api/events", params={"entity": entity_id, "limit": 1000})
    assert answer.status_code == 200, answer.text
    found: list[dict[str, Any]] = answer.json()
    return found


def test_expiries_move_to_another_node_when_their_holder_is_killed(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    a = node(server_factory, tmp_path, "a", env).start()
    b = node(server_factory, tmp_path, "b", env).start()
    assert took(a, "expiries") and not took(b, "expiries")

    async def main() -> tuple[list[dict[str, Any]], int]:
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
            lease = await http.post(
                "/api/leases/acquire",
                json={"entity_id": "work/schedule", "owner": "w1", "ttl_ms": 2500},
            )
            assert lease.status_code == 200, lease.text
            answer = await http.post("/api/events", json=event("tmp/t", {"x": 1}, ttl_ms=2500))
            assert answer.status_code == 200, answer.text
            await asyncio.to_thread(a.kill)  # holds the expiries job; nothing is due yet

            async def lease_ended() -> bool:
                body = (await http.get("/api/state/entities/work/schedule")).json()
                return body["properties"].get("__lease__") is None

            await until(lease_ended, "the lease to expire")
            await until(
                lambda: _gone(http, "/api/state/entities/tmp/t"), "the TTL entity to expire"
            )
            await asyncio.sleep(TTL)  # room for a second expiry, if any node logged one
            return await history(http, b.url, "work/schedule"), len(
                [
                    e
                    for e in await history(http, b.url, "tmp/t")
                    if e["payload"]["properties"].get("__expired__") == "ttl"
                ]
            )

    events, ttl_expiries = asyncio.run(main())
    expired = [e for e in events if e["stream"] == "flux.leases.expired"]
    assert len(expired) == 1, events
    assert ttl_expiries == 1
    assert took(b, "expiries")


async def _gone(http: httpx.AsyncClient, path: str) -> bool:
    return (await http.get(path)).status_code == 404


def test_one_node_writes_snapshots_and_a_new_empty_node_starts_from_them(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    more = {
        "FLUX_SNAPSHOT_EVERY_EVENTS": "100",
        "FLUX_SNAPSHOT_KEEP": "2",
        "FLUX_RETENTION_MAX_EVENTS": "50",
    }
    a = node(server_factory, tmp_path, "a", env, **more).start()
    b = node(server_factory, tmp_path, "b", env, **more).start()
    stream = env["FLUX_NATS_STREAM"]

    async def write_and_converge(urls: list[str]) -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=30) as http:
            for i in range(20):
                events = [event(f"snap/{j % 200}", {"v": j}) for j in range(i * 50, i * 50 + 50)]
                answer = await http.post(f"{urls[i % 2]}/api/events/batch", json={"events": events})
                assert answer.status_code == 200, answer.text
            return await converged(http, urls)

    asyncio.run(write_and_converge([a.url, b.url]))

    async def shared() -> tuple[int, list[str]]:
        nc = await nats.connect(nats_url)
        try:
            js = nc.jetstream()
            first = 0
            async with asyncio.timeout(15):  # retention follows the snapshot it waits for
                while first <= 1:
                    first = (await js.stream_info(stream)).state.first_seq
                    await asyncio.sleep(0.05)
            store = await js.object_store(f"{stream}_snapshots")
            names = [o.name for o in await store.list(ignore_deletes=True)]
            return first, names
        finally:
            await nc.close()

    first, names = asyncio.run(shared())
    assert first > 100  # the stream's prefix is gone...
    assert 1 <= len(names) <= 2  # ...covered by the newest FLUX_SNAPSHOT_KEEP snapshots
    assert all(re.fullmatch(r"snapshot-\d{20}\.json\.gz", n) for n in names)
    writers = [len(re.findall(r"snapshot \S+ written", n.logs())) for n in (a, b)]
    assert writers[0] > 0 and writers[1] == 0, writers  # a took the job first
    assert took(a, "snapshots") and not took(b, "snapshots")

    c = node(server_factory, tmp_path, "c", env, **more).start()  # an empty data dir
    states = asyncio.run(_converged([a.url, b.url, c.url]))
    assert states[0] == states[1] == states[2]
    assert len([e for e in states[2] if e["id"].startswith("snap/")]) == 200
    assert re.search(r"loaded snapshot snapshot-\d{20}\.json\.gz", c.logs())
    assert not (c.data_dir / "snapshots").exists() or not any((c.data_dir / "snapshots").iterdir())


async def converged(http: httpx.AsyncClient, urls: list[str]) -> list[list[dict[str, Any]]]:
    """Every node's entities once all are at the same (highest) sequence."""
    async with asyncio.timeout(20):
        while True:
            seqs = [(await http.get(f"{url}/api/health")).json()["lastSequence"] for url in urls]
            if len(set(seqs)) == 1:
                break
            await asyncio.sleep(0.05)
    return [(await http.get(f"{url}/api/state/entities")).json() for url in urls]


async def _converged(urls: list[str]) -> list[list[dict[str, Any]]]:
    async with httpx.AsyncClient(timeout=30) as http:
        return await converged(http, urls)


async def declare(client: Client, entity_id: str) -> dict[str, Any]:
    await client.send(type="presence", entity_id=entity_id, properties={"online": True})
    while True:
        message = await client.recv()
        if message["type"] == "presence":
            return message


def test_a_killed_nodes_presences_are_removed_and_another_nodes_stay(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    a = node(server_factory, tmp_path, "a", env).start()
    b = node(server_factory, tmp_path, "b", env).start()

    async def main() -> list[dict[str, Any]]:
        async with (
            httpx.AsyncClient(base_url=b.url, timeout=30) as http,
            ws_client(b.url) as on_b,
        ):
            connecting = ws_client(a.url)  # not closed: its server is killed under it
            on_a = await connecting.__aenter__()
            await declare(on_a, "agents/a")
            await declare(on_b, "agents/b")
            marker = await until(lambda: _marker(http, "agents/a"), "agents/a to reach node b")
            assert marker["node"] == "a"
            assert (await _marker(http, "agents/b"))["node"] == "b"
            await asyncio.to_thread(a.kill)
            await until(lambda: _gone(http, "/api/state/entities/agents/a"), "agents/a removed")
            await asyncio.sleep(TTL)  # the janitor sweeps again: agents/b is alive
            assert (await _marker(http, "agents/b"))["node"] == "b"
            with contextlib.suppress(websockets.ConnectionClosed):
                await connecting.__aexit__(None, None, None)
            return await history(http, b.url, "agents/a")

    removal = asyncio.run(main())[0]
    assert removal["payload"]["properties"]["__expired__"] == "presence"
    assert re.search(r"node b removed 1 presences of nodes no longer alive \(a\)", b.logs())


async def _marker(http: httpx.AsyncClient, entity_id: str) -> dict[str, Any] | None:
    answer = await http.get(f"/api/state/entities/{entity_id}")
    if answer.status_code != 200:
        return None
    marker: dict[str, Any] = answer.json()["properties"]["__presence__"]
    return marker


def test_one_node_writes_the_directory_until_it_dies(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    fast = {"FLUX_DIRECTORY_INTERVAL_SECONDS": "0.05"}
    a = node(server_factory, tmp_path, "a", env, **fast).start()
    b = node(server_factory, tmp_path, "b", env, **fast).start()
    assert took(a, "directory") and not took(b, "directory")

    async def listed(http: httpx.AsyncClient, name: str) -> bool:
        answer = await http.get("/api/state/entities/flux-core/directory")
        names = [n["name"] for n in answer.json()["properties"]["namespaces"]]
        return answer.status_code == 200 and name in names

    async def main() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(base_url=b.url, timeout=30) as http:
            for i in range(10):
                answer = await http.post("/api/events", json=event(f"ns{i}/x", {"v": i}))
                assert answer.status_code == 200, answer.text
                await until(lambda i=i: listed(http, f"ns{i}"), f"ns{i} in the directory")
            await asyncio.to_thread(a.kill)
            answer = await http.post("/api/events", json=event("after/x", {"v": 1}))
            assert answer.status_code == 200, answer.text
            await until(lambda: listed(http, "after"), "the directory written by b")
            return await history(http, b.url, "flux-core/directory")

    events = asyncio.run(main())
    assert took(b, "directory")
    # One writer at a time: no event repeats the one before it (two writers both write each
    # change they see at their tick).
    properties = [e["payload"]["properties"] for e in reversed(events)]
    assert all(p != q for p, q in itertools.pairwise(properties)), properties
    assert len(properties) == 12  # the first, empty directory, then one per change


# -- the primitive, in process ----------------------------------------------------------------


async def _until_true(check: Any, what: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)


@pytest.mark.anyio
async def test_a_job_has_one_holder_and_moves_when_it_is_cut_off_or_frees_it(
    nats_url: str, tmp_path: Path
) -> None:
    stream = f"UNIT{next(_streams)}"
    ttl = 0.9
    clusters = {
        name: Cluster([nats_url], stream=stream, replicas=1, node=name, data_dir=tmp_path / name)
        for name in ("a", "b", "c")
    }
    told: dict[str, list[bool]] = {name: [] for name in clusters}
    jobs: dict[str, Jobs] = {}
    for name, cluster in clusters.items():
        await cluster.start()
        jobs[name] = Jobs(cluster, ttl)

        async def handler(held: bool, name: str = name) -> None:
            told[name].append(held)

        jobs[name].job("work").on_change(handler)
    try:
        for name in ("a", "b", "c"):
            await jobs[name].start()
        held = [name for name in jobs if jobs[name].job("work").held]
        assert held == ["a"] and told == {"a": [True], "b": [], "c": []}
        assert await jobs["b"].alive() == {"a", "b", "c"}

        # Cut off from NATS, a stops acting within one TTL, before its key ages out.
        await clusters["a"].close()
        began = time.monotonic()
        await _until_true(lambda: not jobs["a"].job("work").held, "a to stop")
        assert time.monotonic() - began <= ttl + 0.2
        await _until_true(lambda: told["a"] == [True, False], "a to be told")
        await _until_true(
            lambda: any(jobs[n].job("work").held for n in ("b", "c")), "b or c to take over"
        )
        holder, other = ("b", "c") if jobs["b"].job("work").held else ("c", "b")
        # Its handler runs just after `held` is set (under load, after this check's wake-up).
        await _until_true(lambda: told[holder] == [True], "the new holder to be told")
        assert told[other] == []
        assert "a" not in await _alive_after(jobs[holder], ttl)

        # A holder that stops frees the job: the other takes it at its next round (a third
        # of the TTL), without waiting for the key to age out.
        await jobs[holder].stop()
        began = time.monotonic()
        await _until_true(lambda: jobs[other].job("work").held, "the other to take over")
        assert time.monotonic() - began < ttl
        assert await jobs[other].alive() == {other}
    finally:
        for name in jobs:
            await jobs[name].stop()
            await clusters[name].close()


async def _alive_after(jobs: Jobs, ttl: float) -> set[str]:
    await asyncio.sleep(ttl + 0.5)  # a's liveness key ages out
    return await jobs.alive()


@pytest.mark.anyio
async def test_embedded_jobs_all_run_here() -> None:
    jobs = Jobs(None, 1.0)
    told: list[bool] = []

    async def handler(held: bool) -> None:
        told.append(held)

    jobs.job("work").on_change(handler)
    assert not jobs.job("work").held
    await jobs.start()
    assert jobs.job("work").held and told == [True]
    assert jobs.node is None and await jobs.alive() == {""}
    await jobs.stop()
    assert not jobs.job("work").held


def test_only_the_connectors_holder_polls_and_the_job_moves(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    """A source made through node b, which does not hold the `connectors` job, reaches a
    through the shared `sources` bucket and is polled there, not on b; once a is killed, b
    takes the job and polls it."""
    more = {
        "FLUX_ENCRYPTION_KEY": base64.b64encode(bytes(range(32))).decode(),
        "FLUX_CONNECTOR_RETRY_SECONDS": "0.2",
    }
    upstream = JsonServer().start()

    def polls(server: FluxServer, source_id: str) -> int:
        answer = httpx.get(f"{server.url}/api/connectors/generic/{source_id}", timeout=10)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["polls"])

    try:
        upstream.set("/weather", {"temp": 10})
        a = node(server_factory, tmp_path, "a", env, **more).start()
        b = node(server_factory, tmp_path, "b", env, **more).start()
        assert took(a, "connectors") and not took(b, "connectors")
        source = {
            "name": "weather",
            "url": upstream.url("/weather"),
            "poll_interval_secs": 1,
            "entity_key": "oslo",
            "namespace": "demo",
        }
        created = httpx.post(f"{b.url}/api/connectors/generic", json=source, timeout=10)
        assert created.status_code == 201, created.text
        source_id = created.json()["source_id"]
        wait_for(lambda: polls(a, source_id) >= 2 or None, "a to poll b's source")
        assert polls(b, source_id) == 0
        assert httpx.get(f"{b.url}/api/state/entities/demo%2Foslo").json()["properties"] == {
            "temp": 10
        }
        a.kill()
        upstream.set("/weather", {"temp": 11})
        wait_for(lambda: polls(b, source_id) >= 1 or None, "b to take the job and poll")
        assert took(b, "connectors")
        wait_for(
            lambda: (
                httpx.get(f"{b.url}/api/state/entities/demo%2Foslo").json()["properties"]
                == {"temp": 11}
                or None
            ),
            "b's poll to publish the change",
        )
    finally:
        upstream.stop()


def test_a_restarted_node_removes_only_its_own_leftover_presences(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    """Node a is killed and restarted (same data dir, so same node id) well within the job TTL,
    before any janitor could act: its start removes the presence its killed run left, not the
    one b's live connection holds."""
    slow = {**env, "FLUX_CLUSTER_JOB_TTL_SECONDS": "30"}
    a = node(server_factory, tmp_path, "a", slow).start()
    b = node(server_factory, tmp_path, "b", slow).start()

    async def main() -> None:
        async with (
            httpx.AsyncClient(base_url=b.url, timeout=30) as http,
            ws_client(b.url) as on_b,
        ):
            connecting = ws_client(a.url)  # not closed: its server is killed under it
            on_a = await connecting.__aenter__()
            await declare(on_a, "agents/a")
            await declare(on_b, "agents/b")
            await until(lambda: _marker(http, "agents/a"), "agents/a to reach node b")
            await asyncio.to_thread(a.kill)
            again = node(server_factory, tmp_path, "a", slow)
            await asyncio.to_thread(again.start)
            assert "removed 1 presences left by connections of the previous run" in again.logs()
            await until(lambda: _gone(http, "/api/state/entities/agents/a"), "agents/a removed")
            assert (await _marker(http, "agents/b"))["node"] == "b"
            assert "presences of nodes no longer alive" not in again.logs() + b.logs()
            with contextlib.suppress(websockets.ConnectionClosed):
                await connecting.__aexit__(None, None, None)

    asyncio.run(main())


def test_health_names_the_node_and_the_jobs_it_holds(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    """`/api/health` in a cluster says which node answered and which jobs it runs; the jobs
    of a killed node show up on the node that took them."""
    everything = ["connectors", "directory", "expiries", "presence", "snapshots"]
    a = node(server_factory, tmp_path, "a", env).start()
    wait_for(lambda: all(took(a, job) for job in everything) or None, "a to take every job")
    b = node(server_factory, tmp_path, "b", env).start()

    def health(srv: FluxServer) -> dict[str, Any]:
        body: dict[str, Any] = httpx.get(f"{srv.url}/api/health", timeout=10).json()
        return body

    assert health(a)["node"] == "a" and health(a)["jobs"] == everything
    assert health(b)["node"] == "b" and health(b)["jobs"] == []
    assert health(b)["status"] == "ok"
    a.kill()
    wait_for(lambda: health(b)["jobs"] == everything or None, "b to take a's jobs")
