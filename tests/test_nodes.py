"""Several `flux serve` nodes on one JetStream stream (one real nats-server): they converge to
the same state and versions, a node that starts while the others take writes applies each of
them once, in order, live subscribers (WebSocket, SSE, a resume by version) see writes made
through other nodes, and conditional writes hold across nodes."""

from __future__ import annotations

import asyncio
import itertools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer
from coordination.test_concurrency import K, R, event, increment
from liveclient import Stream, ws_client
from natsserver import NatsServer

_streams = itertools.count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture
def env(nats_url: str) -> dict[str, str]:
    """Settings of one test's nodes: a stream of its own."""
    n = next(_streams)
    return {
        "FLUX_NATS_URL": nats_url,
        "FLUX_NATS_STREAM": f"NODES{n}",
        "FLUX_NATS_SUBJECT": f"nodes{n}",
        "FLUX_SNAPSHOT_EVERY_EVENTS": "1000000",
    }


def node(factory: type[FluxServer], tmp_path: Path, name: str, env: dict[str, str]) -> FluxServer:
    return factory(tmp_path / name / "data", env)


async def last_seq(http: httpx.AsyncClient, url: str) -> int:
    seq: int = (await http.get(f"{url}/api/health")).json()["lastSequence"]
    return seq


async def converged(http: httpx.AsyncClient, urls: list[str]) -> list[list[dict[str, Any]]]:
    """Every node's entities once all are at the same sequence, and still are once the entities
    are read: a node may append meanwhile (each node's directory timer writes
    `flux-core/directory` when the counts it sees changed), and the nodes' states, read one
    after the other, would then differ by that event."""
    async with asyncio.timeout(20):
        while True:
            seqs = [await last_seq(http, url) for url in urls]
            if len(set(seqs)) == 1:
                states = [(await http.get(f"{url}/api/state/entities")).json() for url in urls]
                if [await last_seq(http, url) for url in urls] == seqs:
                    return states
            await asyncio.sleep(0.05)


def test_nodes_started_during_writes_converge_to_the_same_state(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    """The first node takes the stream by `--nats`, the others by FLUX_NATS_URL; the third
    starts (replaying 20,000 events) while the first two take writes."""
    flag_env = {k: v for k, v in env.items() if k != "FLUX_NATS_URL"}
    a = server_factory(tmp_path / "a" / "data", flag_env, args=["--nats", nats_url]).start()
    b = node(server_factory, tmp_path, "b", env).start()
    c = node(server_factory, tmp_path, "c", env)
    acked: dict[str, int] = {}  # entity -> the value its newest acknowledged write set

    async def main() -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(timeout=30) as http:
            for start in range(0, 20_000, 1_000):
                events = [event(f"load/{i % 500}", {"v": i}) for i in range(start, start + 1000)]
                url = (a, b)[start // 1_000 % 2].url
                answer = await http.post(f"{url}/api/events/batch", json={"events": events})
                assert answer.status_code == 200, answer.text
            stop = asyncio.Event()

            async def writer(url: str, name: str) -> int:
                """Batches of 20 events, as fast as they are acknowledged."""
                i = 0
                while not stop.is_set() or i < 200:
                    ids = [f"live/{name}/{j % 7}" for j in range(i, i + 20)]
                    events = [event(id_, {"v": j}) for j, id_ in enumerate(ids, i)]
                    answer = await http.post(f"{url}/api/events/batch", json={"events": events})
                    assert answer.status_code == 200, answer.text
                    acked.update((id_, j) for j, id_ in enumerate(ids, i))
                    i += 20
                return i

            writers = [
                asyncio.create_task(writer(n.url, name))
                for n, name in ((a, "a"), (b, "b"), (a, "a2"), (b, "b2"), (a, "a3"), (b, "b3"))
            ]
            await asyncio.to_thread(c.start)
            writers.append(asyncio.create_task(writer(c.url, "c")))
            await asyncio.sleep(0.3)
            stop.set()
            counts = await asyncio.gather(*writers)
            assert all(count >= 200 for count in counts)
            return await converged(http, [a.url, b.url, c.url])

    states = asyncio.run(main())
    # The flag and the variable name the same log (the start-up line says which).
    logged = [re.findall(r"event log (nats://\S+)", n.logs()) for n in (a, b, c)]
    assert logged[0] == logged[1] == logged[2] != []
    assert states[0] == states[1] == states[2]
    by_id = {entity["id"]: entity for entity in states[0]}
    assert sum(1 for id_ in by_id if id_.startswith(("load/", "live/"))) == 500 + 7 * 7
    for entity_id, value in acked.items():
        assert by_id[entity_id]["properties"]["v"] == value
    assert {by_id[f"load/{i}"]["properties"]["v"] for i in range(500)} == set(range(19_500, 20_000))


def test_a_subscriber_sees_writes_made_on_another_node_in_order_once_each(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    a = node(server_factory, tmp_path, "a", env).start()
    b = node(server_factory, tmp_path, "b", env).start()

    async def main() -> None:
        async with ws_client(a.url) as ws, httpx.AsyncClient(base_url=b.url, timeout=30) as http:
            await ws.subscribe(prefix="ws/")
            sequences = []
            for i in range(30):
                answer = await http.post("/api/events", json=event(f"ws/{i % 3}", {"v": i}))
                assert answer.status_code == 200, answer.text
                sequences.append(answer.json()["sequence"])
            changes = await ws.changes(30)
            assert [m["version"] for m in changes] == sequences
            assert [m["entity_id"] for m in changes] == [f"ws/{i % 3}" for i in range(30)]
            assert [(m["property"], m["value"]) for m in changes] == [("v", i) for i in range(30)]
            async with asyncio.timeout(10):
                while await last_seq(http, a.url) < sequences[-1]:
                    await asyncio.sleep(0.05)
            await ws.nothing()  # no change twice

    asyncio.run(main())


def test_conditional_counter_over_two_nodes_loses_no_update(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    nodes = [node(server_factory, tmp_path, name, env).start() for name in ("a", "b")]

    async def main() -> int:
        clients = [httpx.AsyncClient(base_url=n.url, timeout=30) for n in nodes]
        try:
            first = await clients[0].post("/api/events", json=event("counter/c", {"n": 0}))
            assert first.status_code == 200, first.text
            conflicts: list[int] = []
            sequences: list[int] = []

            async def client(index: int) -> None:
                for _ in range(R):
                    sequences.append(await increment(clients[index % 2], "counter/c", conflicts))

            await asyncio.gather(*(client(i) for i in range(K)))
            assert len(set(sequences)) == K * R
            finals = []
            for http in clients:  # once each node has applied the last increment
                async with asyncio.timeout(10):
                    while True:
                        body = (await http.get("/api/state/entities/counter/c")).json()
                        if body["version"] >= max(sequences):
                            break
                        await asyncio.sleep(0.05)
                finals.append(body["properties"]["n"])
            assert finals == [K * R, K * R], f"lost updates: {finals} != {K * R}"
            return len(conflicts)
        finally:
            for http in clients:
                await http.aclose()

    assert asyncio.run(main()) > 0  # the nodes did contend


def test_sse_and_a_resume_on_other_nodes_see_every_write_by_version(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str]
) -> None:
    """Writes through a: an event stream on b hears each change live with its version as the
    event id; a WebSocket on c that resumes from a version seen on a gets every later change
    once (the replay from the shared stream, then live ones, no gap at the hand-over)."""
    a, b, c = (node(server_factory, tmp_path, name, env).start() for name in "abc")

    async def main() -> None:
        async with (
            httpx.AsyncClient(base_url=a.url, timeout=30) as http,
            httpx.AsyncClient(timeout=None) as streaming,
            streaming.stream("GET", f"{b.url}/api/events/stream", params={"prefix": "sse/"}) as sse,
        ):
            assert sse.status_code == 200
            events = Stream(sse)
            await events.until_subscribed()
            written = []
            for i in range(20):
                answer = await http.post("/api/events", json=event(f"sse/{i % 4}", {"v": i}))
                assert answer.status_code == 200, answer.text
                written.append(answer.json()["sequence"])
            heard = [await events.next() for _ in range(20)]
            assert [m["event"] for m in heard] == ["state_update"] * 20
            assert [int(m["id"]) for m in heard] == written
            assert [m["data"]["value"] for m in heard] == list(range(20))

            since = written[9]
            async with ws_client(c.url) as ws:
                await wait_for_seq(http, c.url, written[-1])
                replayed = await ws.subscribe(prefix="sse/", since=since)  # replay, subscribed
                assert [m["version"] for m in replayed[:-1]] == written[10:]
                more = []
                for i in range(20, 25):
                    answer = await http.post("/api/events", json=event(f"sse/{i % 4}", {"v": i}))
                    more.append(answer.json()["sequence"])
                live = await ws.changes(5)
                assert [m["version"] for m in live] == more
                await ws.nothing()

    asyncio.run(main())


async def wait_for_seq(http: httpx.AsyncClient, url: str, seq: int) -> None:
    async with asyncio.timeout(10):
        while await last_seq(http, url) < seq:
            await asyncio.sleep(0.05)
