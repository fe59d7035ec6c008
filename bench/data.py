"""Request bodies and paths the scenarios send, written once to files that wrk's Lua script
(bench/cycle.lua) and the Python client read.

Entities are `bench/e<N>` for N in [0, entities); each event sets 5 small properties.
"""

from __future__ import annotations

import random
from pathlib import Path

import orjson

NAMESPACE = "bench"
TIMESTAMP_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z; the event's own time


def entity_id(n: int) -> str:
    return f"{NAMESPACE}/e{n}"


def event(n: int, k: int) -> dict[str, object]:
    """The k-th event about entity n: 5 small properties."""
    return {
        "stream": "bench.readings",
        "source": "bench",
        "timestamp": TIMESTAMP_MS + k,
        "payload": {
            "entity_id": entity_id(n),
            "properties": {
                "temperature": 20.0 + (k % 100) / 10,
                "humidity": 40 + k % 30,
                "status": "ok" if k % 7 else "warn",
                "online": True,
                "count": k,
            },
        },
    }


def batch_bodies(entities: int, batch_size: int) -> list[bytes]:
    """`{"events": [...]}` bodies that together touch every entity once (entities are shuffled
    so consecutive events hit unrelated entities); len = ceil(entities / batch_size)."""
    order = list(range(entities))
    random.Random(1).shuffle(order)
    bodies = []
    for start in range(0, entities, batch_size):
        chunk = order[start : start + batch_size]
        events = [event(n, start + i) for i, n in enumerate(chunk)]
        bodies.append(orjson.dumps({"events": events}))
    return bodies


def single_bodies(entities: int, count: int) -> list[bytes]:
    """`count` single-event bodies over random entities."""
    rng = random.Random(2)
    return [orjson.dumps(event(rng.randrange(entities), k)) for k in range(count)]


def conditional_bodies(entities: int, count: int) -> list[bytes]:
    """`single_bodies`, each event with a condition that holds (`expected_properties`: a
    property no event sets is absent): every request takes the conditional path, decided by
    the log's writer, and is stored."""
    rng = random.Random(2)
    return [
        orjson.dumps({**event(rng.randrange(entities), k), "expected_properties": {"claim": None}})
        for k in range(count)
    ]


def get_paths(entities: int, count: int) -> list[bytes]:
    """`count` GET paths of random existing entities (the `/` in the id sent as %2F)."""
    rng = random.Random(3)
    return [
        f"/api/state/entities/{NAMESPACE}%2Fe{rng.randrange(entities)}".encode()
        for _ in range(count)
    ]


def write_lines(path: Path, lines: list[bytes]) -> Path:
    """One item per line (orjson output never contains a newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for line in lines:
            f.write(line)
            f.write(b"\n")
    return path


def list_entity_id(n: int, groups: int) -> str:
    """Entity n of the list and memory scenarios: `bench/l<g>/e<n>`, g = n % groups, so the
    prefix `bench/l<g>/` selects exactly entities / groups of them."""
    return f"{NAMESPACE}/l{n % groups}/e{n}"


def list_prefix(group: int) -> str:
    return f"{NAMESPACE}/l{group}/"


def list_entities(entities: int, groups: int) -> list[tuple[str, dict[str, object]]]:
    """(id, properties) of every entity of the list and memory scenarios: 5 small properties
    each, the same as `event` sets."""
    out = []
    for n in range(entities):
        props = event(n, n)["payload"]
        assert isinstance(props, dict)
        out.append((list_entity_id(n, groups), props["properties"]))
    return out


def list_batch_bodies(entities: int, groups: int, batch_size: int) -> list[bytes]:
    """Batch bodies that create every entity of `list_entities` once."""
    rows = list_entities(entities, groups)
    bodies = []
    for start in range(0, entities, batch_size):
        events = []
        for i, (entity, props) in enumerate(rows[start : start + batch_size]):
            e = event(0, start + i)
            e["payload"] = {"entity_id": entity, "properties": props}
            events.append(e)
        bodies.append(orjson.dumps({"events": events}))
    return bodies
