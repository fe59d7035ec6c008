"""Faults under load, on real processes: NATS stopped and restarted under running nodes, a Flux
node killed with SIGKILL and restarted, one server of a 3-server NATS cluster killed (a follower,
then the stream leader). Writers keep every answer; each test then reads the stream itself and
prints how many events were acknowledged, refused, uncertain and stored, and checks:

- every acknowledged event is stored, once;
- no event refused with a definitive error (`outcome: not_stored`, or no connection made) is
  stored;
- an event stored without an acknowledgement is among the uncertain ones (`outcome: unknown`
  or `stored`, or an answer that never came), and sending those again with the same eventId
  answers each with the sequence it is stored at (a duplicate), never storing one twice;
- the nodes end with the same state and versions.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import orjson
import pytest
from nats.js import api

from conftest import FluxServer
from liveclient import ws_client
from natsserver import NatsCluster, NatsServer
from test_nodes import converged

_streams = itertools.count()


def settings(url: str, replicas: int = 1) -> dict[str, str]:
    n = next(_streams)
    return {
        "FLUX_NATS_URL": url,
        "FLUX_NATS_STREAM": f"FAULTS{n}",
        "FLUX_NATS_SUBJECT": f"faults{n}",
        "FLUX_NATS_REPLICAS": str(replicas),
        "FLUX_SNAPSHOT_EVERY_EVENTS": "1000000",
    }


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer(tmp_path / "nats")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats")
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@dataclass
class Ledger:
    """Every write's outcome as its writer saw it, by eventId."""

    acked: dict[str, int] = field(default_factory=dict)  # eventId -> sequence answered
    refused: set[str] = field(default_factory=set)  # definitively not stored
    uncertain: dict[str, dict[str, Any]] = field(default_factory=dict)  # eventId -> event
    outcomes: dict[str, int] = field(default_factory=dict)  # how each failure was answered

    def note(self, events: list[dict[str, Any]], answer: httpx.Response | Exception) -> None:
        if isinstance(answer, httpx.ConnectError):  # no connection: nothing was sent
            self._failed(events, "not_stored", "no connection")
            return
        if isinstance(answer, Exception):  # sent, answer lost: the node may have stored it
            self._failed(events, "unknown", type(answer).__name__)
            return
        if answer.status_code == 200:
            body = answer.json()
            if "results" in body:
                for item, result in zip(events, body["results"], strict=True):
                    assert result["error"] is None, result
                    self.acked[item["eventId"]] = result["sequence"]
            else:
                self.acked[events[0]["eventId"]] = body["sequence"]
            return
        assert answer.status_code == 503, answer.text
        body = answer.json()
        assert body["error"].startswith("event log unavailable"), body
        assert "outcome" in body, body
        self._failed(events, body["outcome"], body["outcome"])

    def _failed(self, events: list[dict[str, Any]], outcome: str, how: str) -> None:
        self.outcomes[how] = self.outcomes.get(how, 0) + len(events)
        for item in events:
            if outcome == "not_stored":
                self.refused.add(item["eventId"])
            else:
                assert outcome in ("unknown", "stored"), outcome
                self.uncertain[item["eventId"]] = item


def make_event(event_id: str, entity_id: str, value: int) -> dict[str, Any]:
    return {
        "eventId": event_id,
        "stream": "faults",
        "source": "test",
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": entity_id, "properties": {"v": value}},
    }


async def writer(
    http: httpx.AsyncClient, url: str, name: str, ledger: Ledger, stop: asyncio.Event, batch: int
) -> None:
    """Writes until `stop`: single events (`batch` 0) or non-atomic batches of `batch`, each
    event with its own eventId, over 20 entities; a failure is noted, not retried here."""
    for i in itertools.count():
        if stop.is_set():
            return
        size = max(batch, 1)
        events = [
            make_event(f"{name}-{i}-{j}", f"w/{name}/{(i * size + j) % 20}", i * size + j)
            for j in range(size)
        ]
        try:
            if batch:
                answer = await http.post(f"{url}/api/events/batch", json={"events": events})
            else:
                answer = await http.post(f"{url}/api/events", json=events[0])
        except httpx.HTTPError as exc:
            ledger.note(events, exc)
        else:
            ledger.note(events, answer)
            if answer.status_code == 200:
                continue
        await asyncio.sleep(0.05)  # a failure: do not spin


def start_writers(
    http: httpx.AsyncClient, urls: list[str], ledger: Ledger, stop: asyncio.Event
) -> list[asyncio.Task[None]]:
    """Two writers per node: one of single events, one of batches of 10."""
    return [
        asyncio.create_task(writer(http, url, f"{kind}{n}", ledger, stop, batch))
        for n, url in enumerate(urls)
        for kind, batch in (("s", 0), ("b", 10))
    ]


async def until(what: str, check: Any, timeout: float = 20.0) -> None:
    """Poll the coroutine function `check` until it returns true; fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def grown(ledger: Ledger, by: int, timeout: float = 20.0) -> None:
    target = len(ledger.acked) + by

    async def check() -> bool:
        return len(ledger.acked) >= target

    await until(f"{by} more acknowledged events", check, timeout)


async def stored_events(servers: str, stream: str) -> list[tuple[int, dict[str, Any]]]:
    """Every event stored in `stream`, with its sequence, in order (read by a consumer of the
    test's own, not through Flux)."""
    nc = await nats.connect(servers.split(","), connect_timeout=2)
    try:
        js = nc.jetstream(timeout=10)
        last = (await js.stream_info(stream)).state.last_seq
        found: list[tuple[int, dict[str, Any]]] = []
        done = asyncio.Event()

        async def take(msg: Any) -> None:
            seq = msg.metadata.sequence.stream
            if msg.data:  # not a skipped number
                found.append((seq, orjson.loads(msg.data)))
            if seq >= last:
                done.set()

        if last:
            sub = await js.subscribe(
                ">",
                stream=stream,
                cb=take,
                ordered_consumer=True,
                config=api.ConsumerConfig(deliver_policy=api.DeliverPolicy.ALL),
            )
            await asyncio.wait_for(done.wait(), 30)
            await sub.unsubscribe()
        return found
    finally:
        await nc.close()


async def stored_ids(servers: str, stream: str) -> dict[str, list[int]]:
    """Every stored eventId the test wrote (not Flux's own, e.g. the directory's) and the
    sequences holding it."""
    found: dict[str, list[int]] = {}
    for seq, event in await stored_events(servers, stream):
        if event["source"] == "test":
            found.setdefault(event["eventId"], []).append(seq)
    return found


async def retry_uncertain(http: httpx.AsyncClient, url: str, ledger: Ledger) -> dict[str, int]:
    """Send every uncertain event again through `url` with its eventId until it is answered
    200; returns the sequence each got."""
    answered: dict[str, int] = {}
    for event_id, item in ledger.uncertain.items():
        deadline = time.monotonic() + 20
        while True:
            answer = await http.post(f"{url}/api/events", json=item)
            if answer.status_code == 200:
                answered[event_id] = answer.json()["sequence"]
                break
            assert answer.status_code == 503, answer.text
            assert time.monotonic() < deadline, answer.text
            await asyncio.sleep(0.1)
    return answered


async def check_counts(
    http: httpx.AsyncClient, url: str, ledger: Ledger, servers: str, stream: str, label: str
) -> None:
    """The checks of the module docstring, with the counts printed."""
    before = await stored_ids(servers, stream)
    stored_unacked = {i for i in before if i not in ledger.acked}
    retried = await retry_uncertain(http, url, ledger)
    after = await stored_ids(servers, stream)
    print(
        f"\n{label}: acknowledged {len(ledger.acked)}, refused (not stored) "
        f"{len(ledger.refused)}, uncertain {len(ledger.uncertain)} "
        f"(of which stored before the retry {len(stored_unacked)}), stored {len(before)} "
        f"before the retry and {len(after)} after; failures by answer {ledger.outcomes}"
    )
    assert all(len(seqs) == 1 for seqs in after.values()), "an event stored twice"
    missing = [i for i in ledger.acked if i not in before]
    assert missing == [], f"{len(missing)} acknowledged events are not stored"
    assert all(before[i] == [seq] for i, seq in ledger.acked.items())
    assert [i for i in ledger.refused if i in after] == []
    assert stored_unacked <= set(ledger.uncertain)
    for event_id in stored_unacked:  # answered as the duplicate it is
        assert before[event_id] == [retried[event_id]]


async def health(http: httpx.AsyncClient, url: str) -> dict[str, Any]:
    body: dict[str, Any] = (await http.get(f"{url}/api/health")).json()
    return body


def test_nats_stopped_and_restarted_under_running_nodes(
    server_factory: type[FluxServer], tmp_path: Path, nats_server: NatsServer
) -> None:
    env = settings(nats_server.url)
    a = server_factory(tmp_path / "a" / "data", env).start()
    b = server_factory(tmp_path / "b" / "data", env).start()

    async def main() -> None:
        ledger = Ledger()
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as http:
            writers = start_writers(http, [a.url, b.url], ledger, stop)
            await grown(ledger, 300)
            await asyncio.to_thread(nats_server.kill)

            async def degraded() -> bool:
                return (await health(http, a.url))["status"] == "degraded"

            await until("health to say degraded", degraded, 10)
            answer = await http.get(f"{a.url}/api/health")
            assert answer.status_code == 503
            assert "not connected to NATS" in answer.json()["error"]
            began = time.monotonic()
            one_event = [make_event("x-1", "x/1", 1)]
            single = await http.post(f"{a.url}/api/events", json=one_event[0])
            events = [make_event(f"x-{i}", "x/2", i) for i in range(2, 5)]
            batch = await http.post(f"{a.url}/api/events/batch", json={"events": events})
            elapsed = time.monotonic() - began
            ledger.note(one_event, single)
            ledger.note(events, batch)
            assert elapsed < 1.0, f"refusals took {elapsed:.2f}s"
            for refused in (single, batch):
                assert refused.status_code == 503, refused.text
                assert refused.json() == {
                    "error": "event log unavailable: not connected to NATS (reconnecting)",
                    "outcome": "not_stored",
                }
            # Reads serve the last state: the list, one entity, a WebSocket snapshot.
            entities = (await http.get(f"{a.url}/api/state/entities")).json()
            by_id = {entity["id"]: entity for entity in entities}
            assert len(by_id) >= 20
            one = await http.get(f"{a.url}/api/state/entities/w/s0/0")
            assert one.status_code == 200 and one.json() == by_id["w/s0/0"]
            async with ws_client(a.url) as ws:
                received = await ws.subscribe(prefix="w/", snapshot=True)
            snapshot = {m["entity_id"]: m["version"] for m in received if m["type"] == "snapshot"}
            assert snapshot == {e["id"]: e["version"] for e in entities if e["id"].startswith("w/")}
            await asyncio.sleep(1)  # the writers keep being refused meanwhile
            await asyncio.to_thread(nats_server.start)

            async def back() -> bool:
                return all([(await health(http, n.url))["status"] == "ok" for n in (a, b)])

            await until("health to be ok again", back)
            # Written through the other node after the restart: node a catches up.
            later = [make_event("y-1", "y/1", 7)]
            after = await http.post(f"{b.url}/api/events", json=later[0])
            assert after.status_code == 200, after.text
            ledger.note(later, after)

            async def caught_up() -> bool:
                found = await http.get(f"{a.url}/api/state/entities/y/1")
                return found.status_code == 200

            await until("node a to get the write made through b", caught_up)
            await grown(ledger, 100)
            stop.set()
            await asyncio.gather(*writers)
            await check_counts(
                http, a.url, ledger, nats_server.url, env["FLUX_NATS_STREAM"], "NATS restart"
            )
            states = await converged(http, [a.url, b.url])
            assert states[0] == states[1]

    asyncio.run(main())


def test_a_node_killed_mid_load_and_restarted_catches_up(
    server_factory: type[FluxServer], tmp_path: Path, nats_server: NatsServer
) -> None:
    env = settings(nats_server.url)
    nodes = [server_factory(tmp_path / name / "data", env).start() for name in ("a", "b", "c")]
    a, b, c = nodes

    async def main() -> None:
        ledger = Ledger()
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as http:
            writers = start_writers(http, [n.url for n in nodes], ledger, stop)
            await grown(ledger, 400)
            await asyncio.to_thread(c.kill)
            await grown(ledger, 200)  # the other nodes go on
            await asyncio.to_thread(c.start)
            await grown(ledger, 200)
            stop.set()
            await asyncio.gather(*writers)
            stream = env["FLUX_NATS_STREAM"]
            await check_counts(http, a.url, ledger, nats_server.url, stream, "Flux node killed")
            states = await converged(http, [n.url for n in nodes])
            assert states[0] == states[1] == states[2]
            # Each entity's version is the sequence of its newest stored event.
            newest = {
                event["payload"]["entity_id"]: seq
                for seq, event in await stored_events(nats_server.url, stream)
            }
            assert {entity["id"]: entity["version"] for entity in states[0]} == newest

    asyncio.run(main())


async def stream_cluster(servers: str, stream: str) -> api.ClusterInfo:
    """The stream's leader and replicas, as JetStream reports them."""
    nc = await nats.connect(servers.split(","), connect_timeout=2)
    try:
        info = await nc.jetstream(timeout=5).stream_info(stream)
        assert info.cluster is not None
        return info.cluster
    finally:
        await nc.close()


async def replicas_current(servers: str, stream: str) -> bool:
    """Whether every replica of the stream is online and caught up with its leader."""
    try:
        cluster = await stream_cluster(servers, stream)
    except Exception:  # no leader yet
        return False
    peers = cluster.replicas or []
    return (
        cluster.leader is not None
        and len(peers) == 2
        and all(p.current and not p.offline and not p.lag for p in peers)
    )


def test_one_nats_server_of_three_killed_mid_load(
    server_factory: type[FluxServer], tmp_path: Path, nats_cluster: NatsCluster
) -> None:
    """A follower of the stream killed, brought back; then its leader: writes go on (after an
    election for the leader), nothing acknowledged is lost, and the restarted server catches
    up."""
    env = settings(nats_cluster.url, replicas=3)
    nodes = [server_factory(tmp_path / name / "data", env).start() for name in ("a", "b")]
    stream = env["FLUX_NATS_STREAM"]
    by_name = {f"n{i}": server for i, server in enumerate(nats_cluster.servers)}

    async def main() -> None:
        ledger = Ledger()
        stop = asyncio.Event()
        async with httpx.AsyncClient(timeout=30) as http:
            writers = start_writers(http, [n.url for n in nodes], ledger, stop)
            await grown(ledger, 300)
            for role in ("follower", "leader"):
                cluster = await stream_cluster(nats_cluster.url, stream)
                assert cluster.leader is not None
                if role == "leader":
                    victim = by_name[cluster.leader]
                else:
                    victim = by_name[(cluster.replicas or [])[0].name]
                began = time.monotonic()
                await asyncio.to_thread(victim.kill)
                await grown(ledger, 200, timeout=30)  # writes go on
                print(
                    f"\n{role} killed: 200 more writes acknowledged in "
                    f"{time.monotonic() - began:.2f}s"
                )
                await asyncio.to_thread(victim.start)

                async def caught_up() -> bool:
                    return await replicas_current(nats_cluster.url, stream)

                await until(f"the restarted {role} to catch up", caught_up, 30)
            await grown(ledger, 100)
            stop.set()
            await asyncio.gather(*writers)
            await check_counts(
                http, nodes[0].url, ledger, nats_cluster.url, stream, "NATS server killed"
            )
            states = await converged(http, [n.url for n in nodes])
            assert states[0] == states[1]

    asyncio.run(main())
