"""One worker of the multi-agent simulation (tests/coordination/test_simulation.py), a separate
process that speaks only HTTP to `flux serve`, as an agent would.

Until every task under the prefix is done it picks one of the first unfinished tasks (held by
another worker or not: the server refuses the lease then), takes its lease, claims it
(`status: working`, on condition that the status is still the one it read), works a few steps
(each a write with the fencing token, then a renewal), marks it done and gives the lease back.
Whatever the server refuses (409) ends the attempt: another worker won the race, or this one
lost its lease. It prints one line per lease taken and per 409, for the test's summary only:
the test checks the log, never these lines.

    python agent_worker.py URL NAME [--seed N] [--prefix P] [--ttl-ms T] [--steps S]
        [--step-ms MS]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

import httpx

RACE = 4  # a worker picks one of this many unfinished tasks (the first ones, by id)


class Worker:
    def __init__(self, http: httpx.Client, args: argparse.Namespace) -> None:
        self.http = http
        self.name: str = args.name
        self.prefix: str = args.prefix
        self.ttl_ms: int = args.ttl_ms
        self.steps: int = args.steps
        self.step_s: float = args.step_ms / 1000
        self.rng = random.Random(args.seed)

    def say(self, *words: object) -> None:
        print(*words, flush=True)  # flushed: a SIGKILL must not lose what was said

    def run(self) -> None:
        self.say("start", self.name)
        while True:
            tasks = self.http.get("/api/state/entities", params={"prefix": self.prefix})
            tasks.raise_for_status()
            pending = [t for t in tasks.json() if t["properties"].get("status") != "done"]
            if not pending:
                self.say("finished")
                return
            # One of the first unfinished tasks, held or not: the server decides who gets it.
            self.attempt(self.rng.choice(sorted(t["id"] for t in pending)[:RACE]))

    def attempt(self, task: str) -> None:
        taken = self.http.post(
            "/api/leases/acquire",
            json={"entity_id": task, "owner": self.name, "ttl_ms": self.ttl_ms},
        )
        if taken.status_code == 409:
            self.say("409 acquire", task)
            time.sleep(self.rng.uniform(0.01, 0.05))
            return
        taken.raise_for_status()
        token: int = taken.json()["token"]
        self.say("acquired", task, token)
        if self.work(task, token):
            self.say("done", task)
        released = self.http.post(
            "/api/leases/release", json={"entity_id": task, "owner": self.name, "token": token}
        )
        if released.status_code == 409:
            self.say("409 release", task)
        else:
            released.raise_for_status()

    def work(self, task: str, token: int) -> bool:
        """Claim the task, work on it and mark it done, all under the lease; False when it was
        done already or the lease was lost on the way."""
        current = self.http.get(f"/api/state/entities/{task}")
        current.raise_for_status()
        status = current.json()["properties"].get("status")
        if status == "done":  # finished by a holder before this one
            return False
        mine = {"status": "working", "by": self.name}
        if not self.write("claim", task, token, mine, {"status": status}):
            return False
        for step in range(1, self.steps + 1):
            time.sleep(self.step_s * self.rng.uniform(0.5, 1.5))
            # The step's result first, then the renewal: a worker paused longer than its lease
            # writes with a stale token, which the server must refuse.
            if not self.write("step", task, token, {"step": step, "by": self.name}):
                return False
            renewed = self.http.post(
                "/api/leases/renew",
                json={"entity_id": task, "owner": self.name, "token": token, "ttl_ms": self.ttl_ms},
            )
            if renewed.status_code == 409:
                self.say("409 renew", task)
                return False
            renewed.raise_for_status()
        return self.write("done", task, token, {"status": "done", "by": self.name}, mine)

    def write(
        self,
        what: str,
        task: str,
        token: int,
        properties: dict[str, Any],
        expected: dict[str, Any] | None = None,
    ) -> bool:
        event: dict[str, Any] = {
            "stream": "sim",
            "source": self.name,
            "timestamp": int(time.time() * 1000),
            "payload": {"entity_id": task, "properties": properties},
            "fencing_token": token,
        }
        if expected is not None:
            event["expected_properties"] = expected
        answer = self.http.post("/api/events", json=event)
        if answer.status_code == 409:
            self.say(f"409 {what}", task)
            return False
        answer.raise_for_status()
        return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("name")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prefix", default="sim/task-")
    parser.add_argument("--ttl-ms", type=int, default=800)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-ms", type=int, default=100)
    args = parser.parse_args(argv)
    with httpx.Client(base_url=args.url, timeout=15) as http:
        Worker(http, args).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
