"""`Permissions.admits_all`, the batch's admission without a step per event: it may say yes
only when `admit` would let every event through, and it says yes in the common case."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from flux.auth import ANONYMOUS, Access
from flux.config import RuntimeConfig, Settings
from flux.engine import StateEngine
from flux.errors import FluxError, ValidationError
from flux.permissions import Permissions

IDS = st.sampled_from(
    [
        "ns/a",
        "flux-core/directory",  # the reserved namespace
        "flux-corex/a",
        "a/flux-core/b",
        "flux-core",
        "flux-core\x00/a",
        "x\x00flux-core/a",
        "",
        None,
        7,
    ]
)


def permissions(tmp_path: Path, auth: bool = False) -> Permissions:
    config = Settings(data_dir=str(tmp_path), auth_enabled=auth)
    runtime = RuntimeConfig.from_settings(config)
    return Permissions(config, Access(), runtime, StateEngine())


def event(entity_id: Any) -> dict[str, Any]:
    payload = {} if entity_id == "absent" else {"entity_id": entity_id}
    return {"eventId": "e", "stream": "s", "source": "t", "timestamp": 1, "payload": payload}


def admitted_one_by_one(perms: Permissions, events: list[Any]) -> bool:
    for item in events:
        if isinstance(item, ValidationError):
            return False
        try:
            perms.admit(ANONYMOUS, item)
        except FluxError:
            return False
    return True


@settings(max_examples=300, deadline=None)
@given(st.lists(IDS | st.just("absent"), min_size=1, max_size=6), st.booleans())
def test_admits_all_only_what_admit_admits(
    tmp_path_factory: Any, ids: list[Any], bad: bool
) -> None:
    perms = permissions(tmp_path_factory.mktemp("p"))
    events: list[Any] = [event(i) for i in ids]
    if bad:
        events.append(ValidationError("invalid"))
    if perms.admits_all(events):
        assert admitted_one_by_one(perms, events)
    elif not bad and all(type(i) is str and "\x00" not in i and i != "absent" for i in ids):
        # Every event with a string id without a NUL (as validation leaves them): exact.
        assert not admitted_one_by_one(perms, events)


def test_the_common_batch_is_admitted_at_once(tmp_path: Path) -> None:
    perms = permissions(tmp_path)
    events: list[Any] = [event(f"bench/e{n}") for n in range(1000)]
    assert perms.admits_all(events)
    events[500] = event("flux-core/directory")
    assert not perms.admits_all(events)


def test_with_auth_on_every_event_is_asked(tmp_path: Path) -> None:
    """Auth on, each event needs its namespace's token and a place under its rate limit."""
    assert not permissions(tmp_path, auth=True).admits_all([event("ns/a")])
