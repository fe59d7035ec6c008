"""A real `flux serve` under concurrent load is killed (SIGKILL) or stopped (SIGTERM) in the
middle of it, then restarted. Every event that got a 200 must be there, in the state and in the
history; none that got an error response may be. Requests that got no answer may go either way,
but the state and the log must agree about them."""

from __future__ import annotations

import asyncio
import os
import random
import re
import signal
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

if TYPE_CHECKING:
    from conftest import FluxServer

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

WORKERS = 32
EVENTS_PER_ENTITY = 100  # stays under the history endpoint's limit of 500
ENV = {
    "FLUX_RATE_LIMIT_ENABLED": "false",
    "FLUX_SNAPSHOT_EVERY_EVENTS": "1500",  # snapshots during the load: restart = snapshot + tail
    "FLUX_SNAPSHOT_INTERVAL_SECONDS": "1",
    "FLUX_LOG_LEVEL": "info",
}


@dataclass(frozen=True)
class Sent:
    event_id: str
    entity: str
    key: str
    value: int


@dataclass
class Outcome:
    acked: dict[str, tuple[Sent, int]] = field(default_factory=dict)  # id -> (event, sequence)
    rejected: dict[str, Sent] = field(default_factory=dict)
    unanswered: dict[str, Sent] = field(default_factory=dict)
    requests: int = 0
    server_errors: list[str] = field(default_factory=list)
    raw: dict[str, dict[str, Any]] = field(default_factory=dict)  # acked singles, as sent
    failures: Counter[str] = field(default_factory=Counter)  # why requests got no answer


def make(worker: int, n: int, valid: bool = True) -> tuple[Sent, dict[str, Any]]:
    sent = Sent(str(uuid.uuid4()), f"crash/w{worker:02d}-{n // EVENTS_PER_ENTITY}", f"k{n}", n)
    body = {
        "eventId": sent.event_id,
        "stream": "crash.test" if valid else "Not A Valid Stream",
        "source": f"worker-{worker}",
        "timestamp": 1_700_000_000_000 + n,
        "payload": {"entity_id": sent.entity, "properties": {sent.key: sent.value}},
    }
    return sent, body


async def worker(w: int, client: httpx.AsyncClient, stop: asyncio.Event, out: Outcome) -> None:
    rng = random.Random(w)
    n = 0
    async with client:
        while not stop.is_set():
            roll = rng.random()
            if roll < 0.6 or roll >= 0.92:  # a single event; 8% of all requests are invalid
                sent, body = make(w, n, valid=roll < 0.6)
                n += 1
                batch = [(sent, body)]
                request = client.post("/api/events", json=body)
            else:  # a small batch, one in four with an invalid item in it
                batch = []
                for _ in range(rng.randint(2, 5)):
                    batch.append(make(w, n, valid=rng.random() > 0.06))
                    n += 1
                request = client.post("/api/events/batch", json={"events": [b for _, b in batch]})
            out.requests += 1
            try:
                response = await request
            except httpx.HTTPError as exc:
                out.failures[type(exc).__name__] += 1
                for sent, _ in batch:
                    out.unanswered[sent.event_id] = sent
                return  # the server is gone
            if response.status_code != 200:
                if response.status_code == 503 and "restarting" in response.text:
                    # A new writer is starting: refused, not stored.
                    for sent, _ in batch:
                        out.rejected[sent.event_id] = sent
                    out.failures["writer restarting"] += 1
                    continue
                if response.status_code == 503 and "were not stored" in response.text:
                    # The log's writer ended before storing them (the log looked them up).
                    for sent, _ in batch:
                        out.rejected[sent.event_id] = sent
                    out.failures["writer ended, not stored"] += 1
                    continue
                if response.status_code == 503 and "may or may not be stored" in response.text:
                    # The log's writer ended before answering: the outcome is unknown.
                    for sent, _ in batch:
                        out.unanswered[sent.event_id] = sent
                    out.failures["writer ended"] += 1
                    continue
                if response.status_code >= 500:
                    out.server_errors.append(f"{response.status_code} {response.text}")
                for sent, _ in batch:
                    out.rejected[sent.event_id] = sent
                continue
            doc = response.json()
            if "results" not in doc:
                (sent, body) = batch[0]
                assert doc["eventId"] == sent.event_id
                out.acked[sent.event_id] = (sent, doc["sequence"])
                out.raw[sent.event_id] = body
                continue
            for (sent, _), result in zip(batch, doc["results"], strict=True):
                if result["error"] is None:
                    assert result["eventId"] == sent.event_id
                    out.acked[sent.event_id] = (sent, result["sequence"])
                else:
                    out.rejected[sent.event_id] = sent


def writer_pid(server: FluxServer) -> int:
    """The pid of the server's log writer process."""
    assert server.proc is not None
    for task in Path(f"/proc/{server.proc.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            if b"writer.py" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return int(pid)
    raise AssertionError("the server has no log writer process")


def gone(pid: int) -> bool:
    """Whether process `pid` has ended (a zombie nobody reaped counts as ended)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def load_then(
    server: FluxServer, seconds: float, sig: int | None, *, kill_writer_at: float | None = None
) -> Outcome:
    """Run the load for `seconds`, then send `sig` to the server while requests are in flight
    (None: stop the load and leave the server running); returns what every request got. With
    `kill_writer_at`, the server's log writer is killed (SIGKILL) that many seconds in."""
    out = Outcome()
    stop = asyncio.Event()
    # Plain HTTP: verify=False only spares each client loading the CA bundle (~50 ms each).
    clients = [
        httpx.AsyncClient(
            base_url=server.url,
            headers={"content-type": "application/json"},
            timeout=15,
            verify=False,
        )
        for _ in range(WORKERS)
    ]
    tasks = [asyncio.create_task(worker(w, c, stop, out)) for w, c in enumerate(clients)]
    if kill_writer_at is not None:
        await asyncio.sleep(kill_writer_at)
        os.kill(writer_pid(server), signal.SIGKILL)
        seconds -= kill_writer_at
    await asyncio.sleep(seconds)
    assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
    if sig is not None:
        await asyncio.to_thread(server.stop, sig)
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=30)
    return out


async def verify(server: FluxServer, out: Outcome) -> dict[str, int]:
    """Check the restarted server against what the clients were told; returns figures."""
    async with httpx.AsyncClient(
        base_url=server.url, headers={"content-type": "application/json"}, timeout=30, verify=False
    ) as client:
        listing = (await client.get("/api/state/entities", params={"prefix": "crash/"})).json()
        state = {e["id"]: e for e in listing}

        entities = {s.entity for s, _ in out.acked.values()} | {
            s.entity for s in [*out.rejected.values(), *out.unanswered.values()]
        }
        limit = asyncio.Semaphore(8)

        async def history(entity: str) -> tuple[str, set[str]]:
            async with limit:
                response = await client.get(
                    "/api/events",
                    params={"entity": entity, "since": "2000-01-01T00:00:00Z", "limit": "500"},
                )
                assert response.status_code == 200, response.text
                return entity, {e["eventId"] for e in response.json()}

        histories = dict(await asyncio.gather(*(history(e) for e in sorted(entities))))

        def in_state(sent: Sent) -> bool:
            entity = state.get(sent.entity)
            return entity is not None and entity["properties"].get(sent.key) == sent.value

        missing = [s for s, _ in out.acked.values() if not in_state(s)]
        assert not missing, f"{len(missing)} acknowledged events lost from the state: {missing[:3]}"
        missing = [s for s, _ in out.acked.values() if s.event_id not in histories[s.entity]]
        assert not missing, f"{len(missing)} acknowledged events lost from history: {missing[:3]}"
        for sent, seq in out.acked.values():
            assert state[sent.entity]["version"] >= seq
        seqs = [seq for _, seq in out.acked.values()]
        assert len(set(seqs)) == len(seqs), "two events acknowledged with one sequence"

        present = [s for s in out.rejected.values() if in_state(s)]
        assert not present, f"rejected events in the state: {present[:3]}"
        present = [s for s in out.rejected.values() if s.event_id in histories[s.entity]]
        assert not present, f"rejected events in history: {present[:3]}"

        survived = 0
        for sent in out.unanswered.values():
            logged = sent.event_id in histories[sent.entity]
            assert in_state(sent) == logged, f"state and log disagree about {sent}"
            survived += logged

        health = (await client.get("/api/health")).json()
        assert health["lastSequence"] >= max(seqs)

        # Retrying an acknowledged event after the restart is recognised as a duplicate.
        retried = list(out.raw.items())[:50]
        for event_id, body in retried:
            response = await client.post("/api/events", json=body)
            assert response.status_code == 200
            assert response.json()["sequence"] == out.acked[event_id][1]
        assert (await client.get("/api/health")).json()["lastSequence"] == health["lastSequence"]

    return {
        "requests": out.requests,
        "acknowledged": len(out.acked),
        "rejected": len(out.rejected),
        "unanswered": len(out.unanswered),
        "unanswered but stored": survived,
        "no answer because": dict(out.failures),
        "entities": len(state),
        "last sequence": health["lastSequence"],
    }


def replayed(server: FluxServer) -> int:
    """Events replayed by the server's latest start-up (from its log)."""
    counts = re.findall(r"\((\d+) events replayed\)", server.logs())
    assert counts, server.logs()
    return int(counts[-1])


async def test_sigkill_under_concurrent_load_loses_no_acknowledged_event(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    server = server_factory(data_dir, env=ENV).start()
    writer = writer_pid(server)
    out = await load_then(server, 2.5, signal.SIGKILL)
    assert server.proc is not None and server.proc.returncode == -signal.SIGKILL
    for _ in range(100):  # its input ended: the writer stops by itself
        if gone(writer):
            break
        await asyncio.sleep(0.05)
    assert gone(writer), "the killed server's log writer is still running"
    assert len(out.acked) > 50, "the load did not get going"
    assert out.server_errors == []
    assert out.rejected, "no invalid event was sent"

    restarted = server_factory(data_dir, env=ENV).start()
    figures = await verify(restarted, out)
    figures["replayed at restart"] = replayed(restarted)
    print(f"\ncrash test (SIGKILL): {figures}")
    restarted.stop()


async def test_sigterm_under_concurrent_load_finishes_requests_and_snapshots(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    server = server_factory(data_dir, env=ENV).start()
    out = await load_then(server, 1.5, signal.SIGTERM)
    assert server.proc is not None and server.proc.returncode in (0, -signal.SIGTERM)
    assert out.server_errors == []
    logs = server.logs()
    assert "Application shutdown complete" in logs
    final = re.findall(r"snapshot (snapshot-(\d{20})\.json\.gz) written", logs)[-1]
    assert (data_dir / "snapshots" / final[0]).exists()

    restarted = server_factory(data_dir, env=ENV).start()
    assert replayed(restarted) == 0, "the final snapshot covers every committed event"
    figures = await verify(restarted, out)
    assert figures["last sequence"] == int(final[1])
    print(f"\nshutdown under load (SIGTERM): {figures}")
    restarted.stop()


async def test_a_log_writer_killed_under_load_is_replaced_and_loses_nothing_acknowledged(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    """The log's writer process (not the server) is killed under load. A new writer takes
    over and the server goes on without a restart. Requests the old writer had not answered
    get their exact outcome, looked up in the log: a 200 when it stored them, a 503 saying
    they were not stored otherwise (never "may or may not"). Every acknowledged event is in
    the state and history, and no refused one is."""
    server = server_factory(data_dir, env=ENV).start()
    first = writer_pid(server)
    out = await load_then(server, 3.0, None, kill_writer_at=1.0)
    assert out.server_errors == [], out.server_errors[:3]
    assert len(out.acked) > 50 and out.rejected
    assert not out.unanswered and out.failures["writer ended"] == 0, out.failures
    figures = await verify(server, out)
    logs = server.logs()
    assert "the event log's writer process ended" in logs
    assert "the event log's writer was started again; writes resume" in logs
    assert writer_pid(server) != first
    print(f"\nlog writer killed under load: {figures}")
    server.stop()
