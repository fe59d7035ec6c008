"""Flux's batch path, stage by stage, in one process and without a server: the functions
`POST /api/events/batch` runs for each 1,000-event body, and next to them the least the same
stage could do with the C libraries alone (its floor). bench/instructions.py runs this under
callgrind and counts each stage's instructions per event; run alone it times them.

It is driven over stdin: after `ready` it reads one stage name per line, runs that stage over
every body and answers `done` (bench/instructions.py zeroes callgrind's counters before each
stage and dumps them after, so start-up and the set-up between stages are not counted).

Stages, in the order the server runs them (the batch's answer, the log and the event loop
are not here: bench/instructions.py counts the whole server as well):

    decode    flux.events.decode_json(body)          floor: orjson.loads(body)
    validate  flux.events.validate_many(events)      floor: none (the floor is no check)
    encode    flux.service.encode_events(events)     floor: orjson.dumps(events), one call
    apply     StateEngine.apply_all(records)         floor: a dict.update per event

`python -m bench.pipeline [--entities N] [--stages a,b,...]` times each stage instead.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from bench import data
from flux.api.app import GC_YOUNG_THRESHOLD
from flux.engine import StateEngine
from flux.errors import ValidationError
from flux.events import Event, decode_json, validate_many
from flux.service import encode_events

STAGES = ("decode", "validate", "encode", "apply")
FLOORS = ("decode floor", "encode floor", "apply floor")


class Pipeline:
    """The bodies and each stage's inputs, made once; each stage a method over all of them."""

    def __init__(self, entities: int, batch_size: int = 1000) -> None:
        self.bodies = data.batch_bodies(entities, batch_size)
        self.events = sum(len(orjson.loads(b)["events"]) for b in self.bodies)
        self.docs: list[Any] = [orjson.loads(b) for b in self.bodies]
        self.validated: list[list[Event]] = []
        for doc in self.docs:
            events = validate_many(doc["events"])
            self.validated.append([e for e in events if not isinstance(e, ValidationError)])
            if len(self.validated[-1]) != len(events):
                raise RuntimeError("bench.data made an event Flux refuses")
        # The state holds every entity already (the server's case after its warm-up), and
        # the records carry the sequences the log would give.
        self.engine = StateEngine()
        self.records: list[list[tuple[int, int, Event]]] = []
        seq = 0
        for batch in self.validated:
            rows = []
            for event in batch:
                seq += 1
                rows.append((seq, data.TIMESTAMP_MS * 1000 + seq, event))
            self.records.append(rows)
        for rows in self.records:
            self.engine.apply_all(rows)
        self.plain: dict[str, dict[str, Any]] = {
            entity: dict(e.properties) for entity, e in self.engine.entities.items()
        }

    def run(self, stage: str) -> None:
        self.stages()[stage]()

    def stages(self) -> dict[str, Callable[[], None]]:
        return {
            "decode": self.decode,
            "validate": self.validate,
            "encode": self.encode,
            "apply": self.apply,
            "decode floor": self.decode_floor,
            "encode floor": self.encode_floor,
            "apply floor": self.apply_floor,
        }

    def decode(self) -> None:
        for body in self.bodies:
            decode_json(body)

    def validate(self) -> None:
        for doc in self.docs:
            validate_many(doc["events"])

    def encode(self) -> None:
        for batch in self.validated:
            encode_events(batch)

    def apply(self) -> None:
        for rows in self.records:
            self.engine.apply_all(rows)

    def decode_floor(self) -> None:
        for body in self.bodies:
            orjson.loads(body)

    def encode_floor(self) -> None:
        for batch in self.validated:
            orjson.dumps(batch)

    def apply_floor(self) -> None:
        state = self.plain
        for batch in self.validated:
            for event in batch:
                payload = event["payload"]
                state[payload["entity_id"]].update(payload["properties"])


def serve(pipeline: Pipeline) -> None:
    """The stdin protocol bench/instructions.py speaks."""
    print("ready", pipeline.events, flush=True)
    for line in sys.stdin:
        pipeline.run(line.strip())
        print("done", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__)
    parser.add_argument("--entities", type=int, default=20_000)
    parser.add_argument("--stages", default=",".join((*STAGES, *FLOORS)))
    parser.add_argument(
        "--serve", action="store_true", help="read stage names on stdin (bench/instructions.py)"
    )
    args = parser.parse_args(argv)
    # As the server has it (flux.api.app): rare young collections, the built state frozen.
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 10)
    pipeline = Pipeline(args.entities)
    gc.collect()
    gc.freeze()
    if args.serve:
        serve(pipeline)
        return 0
    for stage in args.stages.split(","):
        t0 = time.perf_counter()
        pipeline.run(stage)
        elapsed = time.perf_counter() - t0
        print(f"{stage:>14}: {elapsed / pipeline.events * 1e9:8.0f} ns/event")
    return 0


if __name__ == "__main__":
    sys.exit(main())
