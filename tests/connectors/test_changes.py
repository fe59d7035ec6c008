"""What a connector publishes: only the properties that change (`only_changes`), and GitHub's
rate-limit waits and conditional requests against the local fake."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fakegithub import TOKEN, FakeGitHub, issue, notification, repo
from flux.connectors.base import owner_key, owner_namespace
from flux.connectors.github import GitHub, github_error
from flux.connectors.manager import only_changes


def event(properties: dict[str, Any]) -> dict[str, Any]:
    return {"stream": "s", "source": "t", "payload": {"entity_id": "a/b", "properties": properties}}


def test_only_changes() -> None:
    new = event({"a": 1, "b": "x", "c": [1, {"d": None}]})
    assert only_changes(new, None) is new  # a new entity takes everything
    assert only_changes(new, {"a": 1, "b": "x", "c": [1, {"d": None}]}) is None
    assert only_changes(new, {"a": 1, "b": "y", "c": [1, {"d": None}]}) == event({"b": "x"})
    assert only_changes(new, {"a": True, "b": "x", "c": [1, {"d": None}]}) == event({"a": 1})
    assert only_changes(new, {"a": 1.0, "b": "x", "c": [1, {"d": None}]}) == event({"a": 1})
    assert only_changes(new, {"a": 1, "b": "x", "c": [1, {"d": 0}]}) == event(
        {"c": [1, {"d": None}]}
    )
    assert only_changes(new, {"b": "x", "c": [1, {"d": None}]}) == event({"a": 1})
    odd = {"stream": "s", "payload": "not an object"}
    assert only_changes(odd, {"a": 1}) is odd  # left for validation to refuse


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@given(
    st.dictionaries(st.text(max_size=3), json_values, min_size=1, max_size=5),
    st.dictionaries(st.text(max_size=3), json_values, max_size=5),
)
def test_only_changes_then_merge_equals_merge(new: dict[str, Any], current: dict[str, Any]) -> None:
    """Applying the reduced event gives the same state as applying the whole one."""
    reduced = only_changes(event(new), current)
    merged = {**current, **(reduced["payload"]["properties"] if reduced else {})}
    assert repr(merged) == repr({**current, **new})  # repr: 1 vs True vs 1.0 differ


def test_owner_keys() -> None:
    assert owner_key(None) == "default" and owner_namespace("default") is None
    assert owner_key("team") == "namespace:team"
    assert owner_namespace("namespace:team") == "team"


def test_rate_limit_waits() -> None:
    reset = httpx.Headers({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1000"})
    error = github_error(403, reset, now=400.0)
    assert error.message == "GitHub rate limit exceeded (X-RateLimit-Remaining: 0)"
    assert error.retry_after == 600.0
    assert github_error(429, httpx.Headers({"Retry-After": "7"}), now=0).retry_after == 7.0
    # A 403 with requests left is no rate limit to wait for (a permission problem).
    assert github_error(403, httpx.Headers({"X-RateLimit-Remaining": "12"})).retry_after is None
    assert github_error(500, httpx.Headers()).retry_after is None
    assert github_error(401, reset).retry_after is None


@pytest.fixture
def fake() -> Iterator[FakeGitHub]:
    github = FakeGitHub().start()
    github.repos = [repo("octo", "a")]
    github.issues[("octo", "a")] = [issue(1)]
    github.notifications = [notification("5")]
    yield github
    github.stop()


def test_conditional_requests(fake: FakeGitHub) -> None:
    connector = GitHub(None, fake.url)

    async def poll() -> list[str]:
        async with httpx.AsyncClient() as client:
            events = await connector.fetch(client, TOKEN)
        return [e["payload"]["entity_id"] for e in events]

    assert asyncio.run(poll()) == [
        "github/repo/octo/a",
        "github/issue/octo/a/1",
        "github/notification/5",
    ]
    assert fake.not_modified == 0
    assert asyncio.run(poll()) == []  # every resource answered 304
    assert fake.not_modified == 3
    sent = [headers.get("if-none-match") for _, headers in fake.requests[3:]]
    assert all(tag and tag.startswith('"') for tag in sent)
    fake.issues[("octo", "a")] = [issue(1, "Renamed")]
    assert asyncio.run(poll()) == ["github/issue/octo/a/1"]  # only what changed
