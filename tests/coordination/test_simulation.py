"""The multi-agent simulation: worker processes (agent_worker.py, HTTP only) race for tasks
with leases and fenced claims against a real `flux serve`, while the test disrupts them at
seeded random moments: SIGKILLs (some of a worker holding the lease of an unfinished task, some
of any worker), each followed by a replacement, and one SIGSTOP of a holder for longer than
its lease. Once every task is done the server is stopped and the log alone, not what the
workers said, must show:

- every task ends done, marked done exactly once, by the holder of its lease;
- per task, the leases' holding intervals never overlap: a lease is taken only once the one
  before it was released or had expired (`expires_at` <= the new `acquired_at`);
- every write with a fencing token was made while that lease was held: its token is the
  current lease's, its writer the holder, its log time before the lease's `expires_at` (the
  paused worker, resumed, and the test itself with a killed worker's token both try writes
  that would break this);
- the lease a killed worker held on an unfinished task was taken over by another worker after
  it expired, and the paused worker's lease expired.

The checker is tested on its own too, with histories that break each rule.
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import httpx
import pytest

from conftest import FluxServer, wait_for
from flux.events import LEASE
from flux.log import Record
from flux.service import LEASE_EXPIRED_STREAM, LEASE_STREAM

from .test_concurrency import read_log

SEED = 13
WORKERS = 4  # running at once
TASKS = 30
PREFIX = "sim/task-"
TTL_MS = 800  # a lease lasts this long unless renewed; workers renew at every step
STEPS = 4  # per task, each a fenced write and a renewal
STEP_MS = 100
SCHEDULE = ("holder", "pause", "holder", "random", "random", "random")  # see `disrupt`
SETTLE = 0.1  # after a signal, for a request the worker sent just before to be answered
WORKER = Path(__file__).with_name("agent_worker.py")


class Fleet:
    """The worker processes, each one's output in its own file."""

    def __init__(self, url: str, out_dir: Path) -> None:
        self.url = url
        self.out_dir = out_dir
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.killed: list[str] = []

    def start(self) -> str:
        name = f"worker-{len(self.procs) + 1}"
        with open(self.out_dir / f"{name}.out", "wb") as out:
            self.procs[name] = subprocess.Popen(
                [
                    sys.executable,
                    str(WORKER),
                    self.url,
                    name,
                    f"--seed={SEED * 1000 + len(self.procs)}",
                    f"--prefix={PREFIX}",
                    f"--ttl-ms={TTL_MS}",
                    f"--steps={STEPS}",
                    f"--step-ms={STEP_MS}",
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        return name

    def live(self) -> list[str]:
        return sorted(name for name, proc in self.procs.items() if proc.poll() is None)

    def kill(self, name: str) -> None:
        """SIGKILL a worker and wait until it is gone."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        self.killed.append(name)

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)

    def output(self, name: str) -> str:
        return (self.out_dir / f"{name}.out").read_text(errors="replace")

    def said(self) -> Counter[str]:
        """What the workers said, counted by first two words ("409 acquire", "acquired ...")."""
        lines = (line.split() for name in self.procs for line in self.output(name).splitlines())
        return Counter(
            " ".join(words[:2]) if words[0] == "409" else words[0] for words in lines if words
        )


def tasks_now(http: httpx.Client) -> dict[str, dict[str, Any]]:
    answer = http.get("/api/state/entities", params={"prefix": PREFIX})
    answer.raise_for_status()
    return {entity["id"]: entity["properties"] for entity in answer.json()}


def all_done(http: httpx.Client) -> bool:
    return all(props.get("status") == "done" for props in tasks_now(http).values())


@dataclass
class Disruptions:
    """What the test did to the workers; the leases are (task, worker, token), each confirmed
    from the server's state: the worker still held it and the task was not done, so only a
    takeover after the lease expired can finish the task."""

    killed_holding: list[tuple[str, str, int]] = field(default_factory=list)
    paused: list[tuple[str, str, int]] = field(default_factory=list)


def holding(state: dict[str, dict[str, Any]], live: list[str]) -> list[tuple[str, str, int]]:
    """(task, worker, token) of the unfinished tasks a live worker holds the lease of."""
    return sorted(
        (task, lease["owner"], lease["token"])
        for task, props in state.items()
        if props.get("status") != "done"
        and isinstance(lease := props.get(LEASE), dict)
        and lease.get("owner") in live
    )


def still_holding(http: httpx.Client, held: tuple[str, str, int]) -> bool:
    task, worker, token = held
    props = tasks_now(http)[task]
    lease = props.get(LEASE)
    return (
        props.get("status") != "done"
        and isinstance(lease, dict)
        and (lease.get("owner"), lease.get("token")) == (worker, token)
    )


def disrupt(http: httpx.Client, fleet: Fleet, rng: random.Random) -> Disruptions:
    """Every 0.1-0.3 s (seeded) one disruption, until SCHEDULE is through: "holder" SIGKILLs a
    worker holding the lease of an unfinished task, "pause" SIGSTOPs one for one and a half
    times its lease's TTL (the lease expires meanwhile; resumed, the worker writes with a token
    that is no longer good), "random" SIGKILLs any live worker, whatever it is doing. A holder
    kill or a pause that the state does not confirm is tried again. Each kill is followed by a
    replacement."""
    done = Disruptions()
    schedule = list(SCHEDULE)
    deadline = time.monotonic() + 30
    while schedule:
        assert time.monotonic() < deadline, f"the disruptions took too long ({schedule} left)"
        time.sleep(rng.uniform(0.1, 0.3))
        state = tasks_now(http)
        assert not all(props.get("status") == "done" for props in state.values()), (
            f"every task was done before the disruptions {schedule}"
        )
        live = fleet.live()
        action = schedule[0]
        if action == "random":
            fleet.kill(rng.choice(live))
            fleet.start()
        else:
            held = holding(state, live)
            if not held:
                continue
            target = rng.choice(held)
            if action == "holder":
                fleet.kill(target[1])
                fleet.start()
                time.sleep(SETTLE)
                if not still_holding(http, target):
                    continue  # it let go just before: another holder kill instead
                done.killed_holding.append(target)
            else:
                proc = fleet.procs[target[1]]
                proc.send_signal(signal.SIGSTOP)
                time.sleep(SETTLE)
                if still_holding(http, target):
                    time.sleep(1.5 * TTL_MS / 1000)
                    if not still_holding(http, target):
                        done.paused.append(target)
                proc.send_signal(signal.SIGCONT)
                if not done.paused:
                    continue
        schedule.pop(0)
    return done


# -- the history, from the log alone --------------------------------------------------------


@dataclass
class Lease:
    """One lease of a task, as the log tells it (times in ms since the epoch)."""

    owner: str
    token: int
    start: int  # acquired_at
    end: int  # expires_at of its last renewal, or when it was released if before that
    ended: str | None = None  # "released", "expired" (logged or overtaken), or still held


@dataclass
class Task:
    properties: dict[str, Any] = field(default_factory=dict)  # as the log leaves them
    leases: list[Lease] = field(default_factory=list)  # in log order
    done: int = 0  # writes that marked it done


@dataclass
class History:
    tasks: dict[str, Task]
    fenced: int = 0  # fenced writes checked
    margin_us: float = float("inf")  # the least time left on a lease at a fenced write
    lag_us: int = 0  # the most a lease's `acquired_at` preceded its record's log time

    def takeovers(self) -> set[tuple[str, str, int]]:
        """(task, owner, token) of every lease that expired and was then taken by another."""
        return {
            (task_id, before.owner, before.token)
            for task_id, task in self.tasks.items()
            for before, after in zip(task.leases, task.leases[1:], strict=False)
            if before.ended == "expired" and after.owner != before.owner
        }


def check_history(records: list[Record], task_ids: list[str]) -> History:
    """Replay the tasks' events from the log and assert, event by event, that leases and
    fenced writes follow the rules; then that no two leases of a task overlap in time."""
    history = History({task_id: Task() for task_id in task_ids})
    for record in records:
        event = record.event
        payload = event["payload"]
        task = history.tasks.get(payload["entity_id"])
        if task is None:
            continue
        props = payload["properties"]
        where = f"{payload['entity_id']} at {record.seq} ({event['source']})"
        if event["stream"] in (LEASE_STREAM, LEASE_EXPIRED_STREAM):
            _lease_event(history, task, record, where)
        elif "fencing_token" in event:
            _fenced_write(history, task, record, where)
        else:
            assert not task.properties and event["source"] == "planner", f"unfenced write: {where}"
        task.properties.update(props)
    for task_id, task in history.tasks.items():
        for before, after in zip(task.leases, task.leases[1:], strict=False):
            assert before.end <= after.start, (
                f"{task_id}: {after.owner} took the lease (token {after.token}) at {after.start} "
                f"while {before.owner} held it (token {before.token}) until {before.end}"
            )
    return history


def _held(lease: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a `__lease__` value names a holder (the log has not ended it)."""
    return isinstance(lease, dict) and lease.get("owner") is not None


def _lease_event(history: History, task: Task, record: Record, where: str) -> None:
    event = record.event
    props = event["payload"]["properties"]
    before = task.properties.get(LEASE)
    new = props[LEASE]
    if new is not None and new["token"] == record.seq:  # a new lease
        assert event["source"] == new["owner"], f"acquired for another owner: {where}"
        if _held(before):  # never ended by a logged event: it must have expired by now
            previous = task.leases[-1]
            assert previous.end <= new["acquired_at"], (
                f"{new['owner']} acquired at {new['acquired_at']} while {previous.owner} held "
                f"the lease until {previous.end}: {where}"
            )
            previous.ended = "expired"
        task.leases.append(Lease(new["owner"], new["token"], new["acquired_at"], new["expires_at"]))
        history.lag_us = max(history.lag_us, record.at - new["acquired_at"] * 1000)
    elif new is not None:  # renewed (or acquired again by its holder): the same lease, longer
        assert _held(before), f"a lease extended that nobody held: {where}"
        same = ("owner", "token", "acquired_at")
        assert {k: new[k] for k in same} == {k: before[k] for k in same}, f"changed: {where}"
        assert event["source"] == new["owner"], f"extended by another: {where}"
        decided = new["expires_at"] - TTL_MS  # the server's clock when it renewed the lease
        assert decided < before["expires_at"], f"extended after it expired: {where}"
        task.leases[-1].end = new["expires_at"]
    else:  # ended
        assert _held(before), f"a lease ended that nobody held: {where}"
        lease = task.leases[-1]
        if event["stream"] == LEASE_EXPIRED_STREAM:
            assert event["source"] == "flux", f"an expiry not made by the server: {where}"
            assert record.at >= lease.end * 1000, f"expired before its time: {where}"
            lease.ended = "expired"
        else:
            assert event["source"] == lease.owner, f"released by another: {where}"
            lease.end = min(lease.end, record.at // 1000)
            lease.ended = "released"


def _fenced_write(history: History, task: Task, record: Record, where: str) -> None:
    event = record.event
    props = event["payload"]["properties"]
    lease = task.properties.get(LEASE)
    assert _held(lease), f"a fenced write with no lease held: {where}"
    assert event["fencing_token"] == lease["token"], (
        f"fencing token {event['fencing_token']} while the lease's is {lease['token']}: {where}"
    )
    assert event["source"] == lease["owner"], f"written by another than the holder: {where}"
    margin = lease["expires_at"] * 1000 - record.at
    assert margin > 0, f"logged {-margin} µs after its lease expired: {where}"
    history.margin_us = min(history.margin_us, margin)
    history.fenced += 1
    if "status" in props:
        assert props["by"] == event["source"], f"claimed for another: {where}"
    if props.get("status") == "done":
        task.done += 1


# -- the test ---------------------------------------------------------------------------------


def sim_event(task: str, source: str, props: dict[str, Any], **conditions: Any) -> dict[str, Any]:
    return {
        "stream": "sim",
        "source": source,
        "timestamp": int(time.time() * 1000),
        "payload": {"entity_id": task, "properties": props},
        **conditions,
    }


@pytest.mark.slow
def test_workers_killed_at_random_finish_every_task_without_sharing_a_lease(
    server: FluxServer, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    task_ids = [f"{PREFIX}{i:02d}" for i in range(TASKS)]
    fleet = Fleet(server.url, tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=15) as http:
            for task_id in task_ids:
                created = http.post(
                    "/api/events",
                    json=sim_event(task_id, "planner", {"status": "open"}, expected_version=0),
                )
                assert created.status_code == 200, created.text
            for _ in range(WORKERS):
                fleet.start()
            disrupted = disrupt(http, fleet, rng)
            wait_for(lambda: all_done(http), "every task done", timeout=30)
            # A killed holder's token, used after the takeover, is refused (and, below, the
            # log must not have it either).
            for task_id, worker, token in disrupted.killed_holding:
                late = http.post(
                    "/api/events",
                    json=sim_event(task_id, worker, {"step": 0, "by": worker}, fencing_token=token),
                )
                assert late.status_code == 409, late.text
        for name in fleet.live():
            assert fleet.procs[name].wait(20) == 0, fleet.output(name)
        for name, proc in fleet.procs.items():
            assert proc.returncode in (0, -signal.SIGKILL), fleet.output(name)
    finally:
        fleet.kill_all()
    assert server.stop() in (0, -signal.SIGTERM), server.logs()  # uvicorn re-raises it

    history = check_history(asyncio.run(read_log(server.data_dir / "events.db")), task_ids)

    for task_id, task in history.tasks.items():
        assert task.properties.get("status") == "done", f"{task_id} was never finished"
        assert task.done == 1, f"{task_id} was marked done {task.done} times"
        held_at_end = _held(task.properties.get(LEASE))
        assert not held_at_end or task.leases[-1].owner in fleet.killed, f"{task_id} kept"
    takeovers = history.takeovers()
    for held in disrupted.killed_holding:
        assert held in takeovers, f"a killed worker's lease was not taken over: {held}"
    ended = {
        (t, lease.owner, lease.token): lease.ended
        for t, k in history.tasks.items()
        for lease in k.leases
    }
    for held in disrupted.paused:
        assert ended[held] == "expired", f"a paused worker's lease did not expire: {held}"
    of_killed = {t for t in takeovers if t[1] in fleet.killed}
    said = fleet.said()
    conflicts = {k.split()[1]: n for k, n in sorted(said.items()) if k.startswith("409")}
    print(
        f"\nsimulation: {TASKS} tasks done; {len(fleet.procs)} workers started, "
        f"{len(fleet.killed)} killed ({len(disrupted.killed_holding)} holding a lease), "
        f"{len(disrupted.paused)} paused past its lease; "
        f"{sum(len(t.leases) for t in history.tasks.values())} leases, {len(takeovers)} "
        f"taken over after expiry ({len(of_killed)} from killed workers); "
        f"{history.fenced} fenced writes checked (least margin {history.margin_us / 1000:.0f} "
        f"ms); 409s: {sum(conflicts.values())} {conflicts}; "
        f"most acquired_at before log time: {history.lag_us} µs"
    )


# -- the checker itself: it must catch what it looks for ------------------------------------


def record(seq: int, at_ms: int, source: str, props: dict[str, Any], **fields: Any) -> Record:
    stream = "sim"
    if LEASE in props:
        stream = LEASE_EXPIRED_STREAM if props is EXPIRY else LEASE_STREAM
    event = {"stream": stream, "source": source, "payload": {"entity_id": "t", "properties": props}}
    return Record(seq, at_ms * 1000, {**event, **fields})


def leased(owner: str, token: int, acquired_at: int, expires_at: int) -> dict[str, Any]:
    return {
        LEASE: {
            "owner": owner,
            "token": token,
            "acquired_at": acquired_at,
            "expires_at": expires_at,
        }
    }


EXPIRY = {LEASE: None}  # the event of stream flux.leases.expired
GOOD = [
    record(1, 1000, "planner", {"status": "open"}),
    record(2, 1000, "a", leased("a", 2, 1000, 1000 + TTL_MS)),
    record(3, 1100, "a", {"status": "working", "by": "a"}, fencing_token=2),
    record(4, 1200, "a", leased("a", 2, 1000, 1200 + TTL_MS)),
    record(5, 2000, "flux", EXPIRY),  # `a` died
    record(6, 2100, "b", leased("b", 6, 2100, 2100 + TTL_MS)),
    record(7, 2200, "b", {"status": "done", "by": "b"}, fencing_token=6),
    record(8, 2300, "b", {LEASE: None}),
]


def test_the_history_check_accepts_a_takeover_after_expiry() -> None:
    history = check_history(GOOD, ["t"])
    assert history.takeovers() == {("t", "a", 2)}
    assert history.tasks["t"].done == 1 and history.fenced == 2
    # Taken without a logged expiry, once the lease had expired, is a takeover too.
    overtaken = [r for r in GOOD if r.seq != 5]
    assert check_history(overtaken, ["t"]).takeovers() == {("t", "a", 2)}


@pytest.mark.parametrize(
    ("changed", "message"),
    [
        # `b` takes the lease while `a` still holds it
        ({5: record(5, 1900, "b", leased("b", 5, 1900, 1900 + TTL_MS))}, "while a held the lease"),
        # `a` writes with its token after `b` took over
        ({7: record(7, 2200, "a", {"step": 9, "by": "a"}, fencing_token=2)}, "fencing token 2"),
        # a write logged after its lease expired
        ({7: record(7, 2900, "b", {"step": 9, "by": "b"}, fencing_token=6)}, "after its lease"),
        # a renewal of a lease that had expired
        ({4: record(4, 1900, "a", leased("a", 2, 1000, 1900 + TTL_MS))}, "after it expired"),
        # an expiry before its time
        ({5: record(5, 1500, "flux", EXPIRY)}, "expired before its time"),
        # a release by another than the holder
        ({8: record(8, 2300, "c", {LEASE: None})}, "released by another"),
        # a write without the token
        ({7: record(7, 2200, "b", {"status": "done", "by": "b"})}, "unfenced write"),
    ],
)
def test_the_history_check_catches(changed: dict[int, Record], message: str) -> None:
    records = [changed.get(r.seq, r) for r in GOOD]
    with pytest.raises(AssertionError, match=message):
        check_history(records, ["t"])
