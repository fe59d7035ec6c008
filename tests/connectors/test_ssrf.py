"""The SSRF guard of generic sources: which URLs and addresses are refused, name resolution,
and the guarded transport (it checks every connection, so redirects and changed DNS answers are
checked too)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import httpx
import pytest

from flux.connectors.ssrf import (
    GuardedTransport,
    Refused,
    check_url,
    refusal,
    resolve_checked,
    system_resolve,
)
from jsonserver import JsonServer

LINK_LOCAL_OR_METADATA = [
    "169.254.169.254",
    "169.254.0.1",
    "169.254.255.255",
    "100.100.100.200",
    "fe80::1",
    "febf:ffff::1",
    "fd00:ec2::254",
    "::ffff:169.254.169.254",  # IPv4-mapped
    "::169.254.169.254",  # IPv4-compatible
    "::ffff:100.100.100.200",
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
]
NEVER = ["0.0.0.0", "0.1.2.3", "::", "224.0.0.1", "239.255.255.250", "ff02::1", "255.255.255.255"]
NEVER += ["::ffff:0.0.0.0", "::ffff:224.0.0.1"]
ALLOWED = ["127.0.0.1", "127.8.9.10", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "8.8.8.8"]
ALLOWED += ["2606:4700::1111", "fd12:3456::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1"]


@pytest.mark.parametrize("address", LINK_LOCAL_OR_METADATA)
def test_link_local_and_metadata_are_refused_unless_allowed(address: str) -> None:
    reason = refusal(ipaddress.ip_address(address))
    assert reason is not None
    assert "FLUX_SOURCES_ALLOW_LINK_LOCAL" in reason
    assert refusal(ipaddress.ip_address(address), allow_link_local=True) is None


@pytest.mark.parametrize("address", NEVER)
def test_unspecified_and_multicast_are_always_refused(address: str) -> None:
    for allow in (False, True):
        reason = refusal(ipaddress.ip_address(address), allow)
        assert reason is not None
        assert "FLUX_SOURCES_ALLOW_LINK_LOCAL" not in reason


@pytest.mark.parametrize("address", ALLOWED)
def test_loopback_private_and_public_are_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address)) is None


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/latest/meta-data/",
        "http://[fe80::1]/",
        "http://[fe80::1%25eth0]:8080/",
        "http://[::ffff:169.254.169.254]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[fd00:ec2::254]/",
        "http://100.100.100.200/",
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./",
        "http://metadata/",
        "https://metadata.goog/",
    ],
)
def test_check_url_refuses_link_local_and_metadata(url: str) -> None:
    with pytest.raises(Refused, match="FLUX_SOURCES_ALLOW_LINK_LOCAL"):
        check_url(url)
    check_url(url, allow_link_local=True)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com/x", "must start with http:// or https://"),
        ("file:///etc/passwd", "must start with http:// or https://"),
        ("gopher://127.0.0.1:6379/", "must start with http:// or https://"),
        ("example.com/x", "must start with http:// or https://"),
        ("http:///nohost", "no host"),
        ("http://user:pw@example.com/", "must not hold credentials"),
        ("http://0.0.0.0:3000/", "not a host address"),
        ("http://[::]/", "not a host address"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[::ffff:0.0.0.0]/", "not a host address"),
    ],
)
def test_check_url_refusals(url: str, message: str) -> None:
    for allow in (False, True):
        with pytest.raises(Refused, match=message):
            check_url(url, allow)


def test_check_url_keeps_loopback_and_private() -> None:
    for url in [
        "http://127.0.0.1:8080/a?b=1",
        "https://localhost/",
        "http://[::1]:9/",
        "http://10.0.0.5/",
    ]:
        assert str(check_url(url)) == url


def fake_resolver(table: dict[str, list[str]]):  # type: ignore[no-untyped-def]
    async def resolve(host: str, port: int) -> list[str]:
        if host not in table:
            raise Refused(f"cannot resolve {host}: unknown")
        return table[host]

    return resolve


TABLE = {
    "rebind.test": ["169.254.169.254"],
    "mixed.test": ["127.0.0.1", "fe80::2"],
    "mapped.test": ["::ffff:169.254.169.254"],
    "good.test": ["127.0.0.1"],
}


def test_resolve_checked_refuses_names_that_resolve_to_refused_addresses() -> None:
    resolve = fake_resolver(TABLE)
    for host in ("rebind.test", "mixed.test", "mapped.test"):
        with pytest.raises(Refused, match=f"refusing to fetch from {host}: it resolves to"):
            asyncio.run(resolve_checked(host, 80, resolve=resolve))
        assert asyncio.run(resolve_checked(host, 80, True, resolve=resolve)) == TABLE[host]
    assert asyncio.run(resolve_checked("good.test", 80, resolve=resolve)) == ["127.0.0.1"]
    with pytest.raises(Refused, match="cannot resolve nope.test"):
        asyncio.run(resolve_checked("nope.test", 80, resolve=resolve))


def test_system_resolver_sees_numeric_forms_of_the_metadata_address() -> None:
    """`getaddrinfo` reads 2852039166 and 0xa9fea9fe as 169.254.169.254 (no DNS involved)."""
    for host in ("2852039166", "0xa9fea9fe", "169.254.43518"):
        assert asyncio.run(system_resolve(host, 80)) == ["169.254.169.254"]
        with pytest.raises(Refused, match="it resolves to 169.254.169.254"):
            asyncio.run(resolve_checked(host, 80))
    assert "127.0.0.1" in asyncio.run(resolve_checked("localhost", 80))


@pytest.fixture
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    server.set("/x", {"ok": True})
    yield server
    server.stop()


async def _get(transport: GuardedTransport, url: str) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport) as client:
        return await client.get(url)


def test_guarded_transport_connects_to_the_checked_address(upstream: JsonServer) -> None:
    port = upstream.base.rsplit(":", 1)[1]
    resolve = fake_resolver(TABLE)
    response = asyncio.run(_get(GuardedTransport(resolve=resolve), f"http://good.test:{port}/x"))
    assert response.json() == {"ok": True}
    assert upstream.requests[-1].headers["host"] == f"good.test:{port}"
    # The real resolver and a real loopback server.
    assert asyncio.run(_get(GuardedTransport(), upstream.url("/x"))).json() == {"ok": True}


def test_guarded_transport_refuses_before_connecting(upstream: JsonServer) -> None:
    resolve = fake_resolver(TABLE)
    for url in ("http://rebind.test/x", "http://mapped.test/x", "http://169.254.169.254/x"):
        with pytest.raises(Refused, match="refusing to fetch from"):
            asyncio.run(_get(GuardedTransport(resolve=resolve), url))
    assert upstream.requests == []


def test_guarded_transport_ignores_proxy_variables(
    upstream: JsonServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proxy would be what the guard sees; sources never use one from the environment."""
    monkeypatch.setenv("HTTP_PROXY", "http://169.254.169.254:3128")
    monkeypatch.setenv("ALL_PROXY", "http://169.254.169.254:3128")
    assert asyncio.run(_get(GuardedTransport(), upstream.url("/x"))).json() == {"ok": True}


def test_unresolvable_and_malformed_names_are_refused_not_raised() -> None:
    for host in ("a\x00b", "x" * 300, "ü" * 70 + ".com"):  # refused locally, no DNS query
        with pytest.raises(Refused, match="cannot resolve"):
            asyncio.run(resolve_checked(host, 80))


def test_the_setting_lifts_the_guard_for_names_and_addresses(upstream: JsonServer) -> None:
    """A metadata name (resolved here to the local server by a stand-in resolver) passes only
    with allow_link_local; the URL check refuses the name itself otherwise."""
    port = upstream.base.rsplit(":", 1)[1]
    resolve = fake_resolver({"metadata.google.internal": ["127.0.0.1"], **TABLE})
    url = f"http://metadata.google.internal:{port}/x"
    with pytest.raises(Refused, match="cloud metadata host name"):
        check_url(url)
    check_url(url, allow_link_local=True)
    answer = asyncio.run(_get(GuardedTransport(True, resolve=resolve), url))
    assert answer.json() == {"ok": True}
    rebind = f"http://rebind.test:{port}/x"  # 169.254.169.254: allowed, but nothing is there
    with pytest.raises(Refused):
        asyncio.run(_get(GuardedTransport(False, resolve=resolve), rebind))
