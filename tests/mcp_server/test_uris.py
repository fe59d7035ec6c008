"""The resource addresses (pure)."""

from __future__ import annotations

import pytest

from flux.mcp.uris import Target, entity_uri, namespace_uri, target_of


def test_an_entity_address_keeps_its_slashes_and_round_trips() -> None:
    uri = entity_uri("dawn-coral/sensor 01")
    assert uri == "flux://entities/dawn-coral/sensor%2001"
    assert target_of(uri) == Target(uri, entity_id="dawn-coral/sensor 01")


def test_a_namespace_address_follows_the_namespace_s_prefix() -> None:
    target = target_of(namespace_uri("dawn-coral"))
    assert target.prefix == "dawn-coral/"
    assert target.matches("dawn-coral/a") and not target.matches("dawn-coralx/a")


def test_an_entity_target_matches_only_its_entity() -> None:
    target = target_of("flux://entities/a/b")
    assert target.matches("a/b") and not target.matches("a/bc")


@pytest.mark.parametrize(
    "uri",
    ["flux://entities/", "flux://namespaces/", "flux://namespaces/a/b", "file:///etc/passwd"],
)
def test_other_addresses_are_refused_with_the_templates(uri: str) -> None:
    with pytest.raises(ValueError, match=r"flux://entities/\{\+entity_id\}"):
        target_of(uri)
