"""The text of a failed condition, as a model reads it (pure: the server's 409 answers as
docs/coordination.md shows them)."""

from __future__ import annotations

from typing import Any

from flux.client import FluxConflict
from flux.mcp.tools import conflict_text

LEASE = {"owner": "node-b", "token": 15, "acquired_at": 1, "expires_at": 1796519815575}


def conflict(message: str, expected: dict[str, Any], current: dict[str, Any] | None) -> str:
    details = {
        "entity_id": "work/x",
        "expected": expected,
        "current_version": current["version"] if current else 0,
        "current": current,
        "last_source": "w1" if current else None,
        "last_timestamp": 1767225602000 if current else None,
    }
    return conflict_text(FluxConflict(message, details))


def test_a_version_conflict_gives_the_state_and_the_version_to_retry_with() -> None:
    current = {"id": "work/x", "properties": {"status": "taken"}, "version": 2}
    text = conflict("condition failed: expected version 1", {"version": 1}, current)
    assert text.splitlines() == [
        "condition failed: expected version 1. Nothing was stored.",
        'work/x is now at version 2: {"id": "work/x", "properties": {"status": "taken"}, '
        '"version": 2}',
        "Last changed by 'w1' at 1767225602000 (epoch ms).",
        "To retry, decide from the state above and publish again with expected_version=2.",
    ]


def test_an_absent_entity_is_version_0() -> None:
    text = conflict("condition failed: the entity does not exist", {"version": 3}, None)
    assert "work/x does not exist now (current version 0)." in text
    assert "expected_version=0" in text


def test_a_lease_held_by_another_names_the_holder() -> None:
    current = {"id": "work/x", "properties": {"__lease__": LEASE}, "version": 15}
    text = conflict("condition failed: the lease is held", {"lease": {"op": "acquire"}}, current)
    assert "held by 'node-b' (token 15) until 1796519815575" in text
    assert "claim again once it is released or expired" in text
    assert "expected_version" not in text


def test_a_stale_fencing_token_says_the_lease_is_gone() -> None:
    current = {"id": "work/x", "properties": {"__lease__": LEASE}, "version": 15}
    text = conflict("condition failed: fencing token 9 is stale", {"fencing_token": 9}, current)
    assert "Your lease is gone" in text and "expected_version" not in text
