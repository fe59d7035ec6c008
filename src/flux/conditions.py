"""Conditions on writes, decided where the log orders events (docs/coordination.md).

An entry handed to the log may carry a `Check`: conditions on its entity's state just before
the event (`expected_version`, `expected_properties`, a lease's fencing token) or a lease
operation (acquire, renew, release, expire), whose result is written into the event. The log
asks `evaluate` about a group of such entries at the point it gives them their sequences, with
the state holding every event sequenced before them (`StateEngine`), so two concurrent writes
can never both pass against the same version. Pure: no I/O; the clock is an argument.

Within one call the entries are taken in order and each one sees the effect of the entries
before it that passed (`_View`): a batch may create an entity and then update it on condition.
An atomic group passes whole or not at all: when one of its entries fails, the others are
refused too and leave no effect for the groups after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from flux.engine import StateEngine
from flux.events import DELETED, DELETION_STREAM, EXPIRED, LEASE, Event


class LeaseOp(NamedTuple):
    """A lease operation on an entity (docs/coordination.md, "Leases")."""

    op: str  # "acquire", "renew", "release" or "expire"
    owner: str | None
    token: int | None  # renew, release and expire: the lease's token
    ttl_ms: int | None  # acquire and renew: how long the lease lasts from now
    presence: bool = False  # acquire: the entity is deleted when the lease ends


class Check(NamedTuple):
    """What must hold for an entry to be stored (None fields are not checked)."""

    expected_version: int | None = None
    expected_properties: dict[str, Any] | None = None
    fencing_token: int | None = None
    lease: LeaseOp | None = None
    must_exist: bool = False  # a deletion that only applies to an existing entity


class Failure(NamedTuple):
    """Why an entry was refused, with what an agent needs to act in one step: the entity, what
    was expected, and its version and properties just before the entry (version 0 and None
    properties: the entity did not exist)."""

    entity_id: str
    reason: str
    expected: dict[str, Any]
    current_version: int
    current_properties: dict[str, Any] | None


class Passed(NamedTuple):
    """An entry that passed; `event` is the event to store when the check rewrote it (a lease
    operation fills in the lease), else None."""

    event: Event | None


Verdict = Passed | Failure
KEEP = Passed(None)
SIBLING = "not stored: another event of the atomic batch failed its condition"


def check_of(event: Event) -> Check | None:
    """The conditions a validated event carries (`flux.events.conditions_of` says whether it
    carries any), or None."""
    version = event.get("expected_version")
    expected = event.get("expected_properties")
    token = event.get("fencing_token")
    if version is None and expected is None and token is None:
        return None
    return Check(version, expected, token)


def expectation(check: Check) -> dict[str, Any]:
    """What a check expected, as the 409 answer shows it."""
    out: dict[str, Any] = {}
    if check.expected_version is not None:
        out["version"] = check.expected_version
    if check.expected_properties is not None:
        out["properties"] = check.expected_properties
    if check.fencing_token is not None:
        out["fencing_token"] = check.fencing_token
    if check.lease is not None:
        out["lease"] = {
            k: v
            for k, v in check.lease._asdict().items()
            if v is not None and v is not False and k != "ttl_ms"
        }
    if check.must_exist:
        out["exists"] = True
    return out


Layer = dict[str, tuple[int, dict[str, Any] | None]]


class _View:
    """The state as the entries of one `evaluate` call see it: the engine's, with the effect
    of the entries that passed so far laid over it (per entity: version and properties, None
    for deleted)."""

    def __init__(self, engine: StateEngine) -> None:
        self.engine = engine
        self.overlay: Layer = {}

    def get(self, entity_id: str) -> tuple[int, dict[str, Any] | None]:
        """(version, properties) just now; (0, None) for an entity that does not exist."""
        over = self.overlay.get(entity_id)
        if over is not None:
            return over
        entity = self.engine.entities.get(entity_id)
        if entity is None:
            return 0, None
        return entity.version, entity.properties

    def apply(self, event: Event, seq: int, layer: Layer) -> None:
        """Record in `layer` what storing `event` at `seq` does (the engine's merge rules)."""
        payload = event["payload"]
        entity_id = payload.get("entity_id")
        props = payload.get("properties")
        if type(entity_id) is not str or type(props) is not dict:
            return
        over = layer.get(entity_id)
        version, current = over if over is not None else self.get(entity_id)
        if props.get(DELETED) is True:
            if current is not None:
                layer[entity_id] = (seq, None)
            return
        if not props:
            return
        layer[entity_id] = (seq, {**(current or {}), **props})


def evaluate(
    engine: StateEngine,
    groups: Sequence[tuple[Sequence[tuple[Event, Check | None]], bool]],
    first_seq: int,
    now_ms: int,
    unapplied: Sequence[tuple[int, int, Event]] = (),
) -> list[list[Verdict]]:
    """Decide each entry of each group, in order: `groups` holds (entries, atomic) with each
    entry an (event, check) pair; the entries that pass will be stored in this order from
    `first_seq` on (a lease acquired gets its own sequence as its fencing token: greater
    than every token issued before, for any entity).

    `unapplied` are records (seq, at, event) sequenced before `first_seq` that the engine may
    not have applied yet: they are laid over it first. Both logs call this on the event loop;
    a caller on another thread may do so while the loop applies exactly those records (between
    two `apply_all` calls: the engine's `lock`, held here, keeps them out while the state is
    read). Some of them may be applied already: laying a record over a state that has it (and
    what follows it, laid over in order) gives the same result, since the merge is
    last-writer-wins per property and a deletion resets the entity."""
    with engine.lock:
        return _evaluate(engine, groups, first_seq, now_ms, unapplied)


def _evaluate(
    engine: StateEngine,
    groups: Sequence[tuple[Sequence[tuple[Event, Check | None]], bool]],
    first_seq: int,
    now_ms: int,
    unapplied: Sequence[tuple[int, int, Event]],
) -> list[list[Verdict]]:
    view = _View(engine)
    for seq, _, event in unapplied:
        view.apply(event, seq, view.overlay)
    seq = first_seq
    verdicts: list[list[Verdict]] = []
    for entries, atomic in groups:
        layer: Layer = {}
        results: list[Verdict] = []
        group_seq = seq
        failed = False
        for event, check in entries:
            verdict: Verdict = KEEP
            if check is not None:
                verdict = _decide(view, layer, event, check, group_seq, now_ms)
            results.append(verdict)
            if isinstance(verdict, Failure):
                failed = True
                if atomic:
                    break
                continue
            view.apply(verdict.event or event, group_seq, layer)
            group_seq += 1
        if atomic and failed:
            failure = next(v for v in results if isinstance(v, Failure))
            results = [
                v if isinstance(v, Failure) else _sibling(failure, event)
                for v, (event, _) in zip(results, entries, strict=False)
            ]
            results += [_sibling(failure, event) for event, _ in entries[len(results) :]]
            verdicts.append(results)
            continue
        view.overlay.update(layer)
        seq = group_seq
        verdicts.append(results)
    return verdicts


def _sibling(failure: Failure, event: Event) -> Failure:
    entity_id = event["payload"].get("entity_id")
    return Failure(
        entity_id if type(entity_id) is str else failure.entity_id,
        f"{SIBLING} ({failure.reason})",
        {},
        0,
        None,
    )


def _decide(
    view: _View,
    layer: Layer,
    event: Event,
    check: Check,
    seq: int,
    now_ms: int,
) -> Verdict:
    entity_id: str = event["payload"]["entity_id"]
    over = layer.get(entity_id)
    version, props = over if over is not None else view.get(entity_id)

    def fail(reason: str) -> Failure:
        return Failure(
            entity_id,
            reason,
            expectation(check),
            version,
            dict(props) if props is not None else None,
        )

    if check.must_exist and props is None:
        return fail("the entity does not exist")
    if check.expected_version is not None and version != check.expected_version:
        if check.expected_version == 0:
            return fail(f"the entity exists (version {version}); expected it not to")
        if props is None:
            return fail(f"expected version {check.expected_version}, but the entity does not exist")
        return fail(f"expected version {check.expected_version}, current version is {version}")
    if check.expected_properties is not None:
        current = props or {}
        for name, value in check.expected_properties.items():
            if not same_json(current.get(name), value):
                return fail(
                    f"expected property {name!r} to be {_show(value)}, "
                    f"it is {_show(current.get(name))}"
                )
    lease = (props or {}).get(LEASE)
    held = _held(lease, now_ms)
    if check.fencing_token is not None:
        token = check.fencing_token
        if lease is None or type(lease) is not dict:
            return fail(f"fencing token {token} names no lease on this entity")
        newest = lease.get("token")
        if type(newest) is int and token < newest:
            return fail(
                f"fencing token {token} is stale: a newer lease (token {newest}) was issued"
            )
        if token != newest or not held:
            return fail(f"fencing token {token} names a lease that has expired or was released")
    op = check.lease
    if op is None:
        return KEEP
    return _lease(op, lease if held else None, lease, event, seq, now_ms, fail)


def same_json(a: Any, b: Any) -> bool:
    """JSON equality: Python's `==` takes `true` for `1` and `1` for `1.0`; JSON does not."""
    kind = type(a)
    if kind is not type(b):
        return False
    if kind is dict:
        return a.keys() == b.keys() and all(same_json(v, b[k]) for k, v in a.items())
    if kind is list:
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _held(lease: Any, now_ms: int) -> bool:
    """Whether a `__lease__` value is a lease someone holds now."""
    if type(lease) is not dict or lease.get("owner") is None:
        return False
    expires = lease.get("expires_at")
    return type(expires) is int and expires > now_ms


def _lease(
    op: LeaseOp,
    held: dict[str, Any] | None,
    lease: Any,
    event: Event,
    seq: int,
    now_ms: int,
    fail: Callable[[str], Failure],
) -> Verdict:
    """A lease operation against the entity's lease (`held`: None when nobody holds it now)."""
    if op.op == "acquire":
        if held is not None and held.get("owner") != op.owner:
            return fail(
                f"the lease is held by {held.get('owner')!r} until {held.get('expires_at')}"
            )
        assert op.ttl_ms is not None
        if held is not None:  # its holder again: the same lease, for longer
            new = {**held, "expires_at": now_ms + op.ttl_ms}
        else:
            new = {
                "owner": op.owner,
                "token": seq,
                "acquired_at": now_ms,
                "expires_at": now_ms + op.ttl_ms,
            }
            if op.presence:
                new["presence"] = True
        return Passed(_with_lease(event, new))
    if op.op == "renew":
        if held is None or held.get("owner") != op.owner or held.get("token") != op.token:
            return fail("the lease was lost: it expired, was released or is held by another")
        assert op.ttl_ms is not None
        return Passed(_with_lease(event, {**held, "expires_at": now_ms + op.ttl_ms}))
    if op.op == "release":
        if type(lease) is not dict or lease.get("owner") is None:
            return fail("no lease is held on this entity")
        if lease.get("owner") != op.owner or lease.get("token") != op.token:
            return fail("the lease is not this owner's (or its token is not this one)")
        return Passed(_ended(event, lease))
    # expire: only the lease that fell due, and only once
    if type(lease) is not dict or lease.get("token") != op.token or held is not None:
        return fail("the lease is no longer due to expire")
    if lease.get("owner") is None:
        return fail("the lease was released")
    return Passed(_ended(event, lease))


def _ended(event: Event, lease: dict[str, Any]) -> Event:
    """The event that ends a lease: the lease cleared, or for a presence lease the entity
    deleted (its holder is gone)."""
    if not lease.get("presence"):
        return _with_lease(event, None)
    payload = event["payload"]
    return {
        **event,
        "stream": DELETION_STREAM,
        "payload": {
            **payload,
            "properties": {
                DELETED: True,
                "__deleted_at__": event["timestamp"],
                EXPIRED: "presence",
            },
        },
    }


def _with_lease(event: Event, lease: dict[str, Any] | None) -> Event:
    payload = event["payload"]
    return {**event, "payload": {**payload, "properties": {**payload["properties"], LEASE: lease}}}


def _show(value: Any) -> str:
    if value is None:
        return "absent"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
