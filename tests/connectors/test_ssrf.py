"""The SSRF guard of generic sources: which URLs and addresses are refused (by the policy of
auth off, of auth on, and with an operator's allowed networks), name resolution, and the
guarded transport (it checks every connection, so redirects and changed DNS answers are checked
too)."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Iterator

import httpx
import pytest

from flux.config import Settings
from flux.connectors.ssrf import (
    GuardedTransport,
    Policy,
    Refused,
    check_url,
    resolve_checked,
    system_resolve,
)
from jsonserver import JsonServer

OPEN = Policy()  # auth off: internal addresses allowed, link-local refused
LINK_LOCAL = Policy(allow_link_local=True)
STRICT = Policy(allow_private=False)  # auth on


def refusal(address: str, policy: Policy = OPEN) -> str | None:
    return policy.refusal(ipaddress.ip_address(address))


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


INTERNAL = {
    "127.0.0.1": "a loopback address",
    "127.8.9.10": "a loopback address",
    "::1": "a loopback address",
    "10.1.2.3": "a private address",
    "172.16.0.1": "a private address",
    "172.31.255.255": "a private address",
    "192.168.1.1": "a private address",
    "100.64.0.1": "a shared (CGNAT) address",
    "100.127.255.255": "a shared (CGNAT) address",
    "fd12:3456::1": "a unique-local address",
    "fc00::1": "a unique-local address",
    "fec0::1": "a site-local address",
    "192.0.2.7": "a documentation address",
    "2001:db8::1": "a documentation address",
    "198.18.0.1": "a benchmarking address",
    "240.0.0.1": "a reserved address",
    "64:ff9b:1::1": "a local NAT64 address",
    "100::1": "a discard-only address",
    "4000::1": "not a global unicast address",
    "::ffff:127.0.0.1": "a loopback address",  # IPv4-mapped
    "::10.0.0.1": "a private address",  # IPv4-compatible
    "64:ff9b::a00:1": "a private address",  # NAT64 of 10.0.0.1
    "2002:c0a8:101::1": "a private address",  # 6to4 of 192.168.1.1
    "2001:0:4136:e378:8000:63bf:80ff:fffe": "a loopback address",  # Teredo, client 127.0.0.1
}
PUBLIC = ["8.8.8.8", "1.1.1.1", "172.32.0.1", "100.128.0.1", "11.0.0.1", "2606:4700::1111"]
PUBLIC += ["::ffff:8.8.8.8", "64:ff9b::808:808", "2a00:1450:4001::1"]


@pytest.mark.parametrize("address", LINK_LOCAL_OR_METADATA)
def test_link_local_and_metadata_are_refused_unless_allowed(address: str) -> None:
    for policy in (OPEN, STRICT, Policy(False, False, (ipaddress.ip_network("0.0.0.0/0"),))):
        reason = refusal(address, policy)
        assert reason is not None
        assert "FLUX_SOURCES_ALLOW_LINK_LOCAL" in reason
    assert refusal(address, LINK_LOCAL) is None
    assert refusal(address, Policy(allow_private=False, allow_link_local=True)) is None


@pytest.mark.parametrize("address", NEVER)
def test_unspecified_and_multicast_are_always_refused(address: str) -> None:
    everything = (ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0"))
    for policy in (OPEN, LINK_LOCAL, STRICT, Policy(True, True, everything)):
        reason = refusal(address, policy)
        assert reason is not None
        assert "FLUX_SOURCES_ALLOW" not in reason


@pytest.mark.parametrize("address", ALLOWED)
def test_loopback_private_and_public_are_allowed_with_auth_off(address: str) -> None:
    assert refusal(address) is None


@pytest.mark.parametrize(("address", "what"), INTERNAL.items())
def test_internal_addresses_are_refused_with_auth_on(address: str, what: str) -> None:
    reason = refusal(address, STRICT)
    assert reason is not None and what in reason, reason
    assert reason.endswith(
        "(allowed only in FLUX_SOURCES_ALLOWED_NETWORKS or with FLUX_SOURCES_ALLOW_PRIVATE=true)"
    )
    assert refusal(address, OPEN) is None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_are_allowed_with_auth_on(address: str) -> None:
    assert refusal(address, STRICT) is None


def test_allowed_networks_lift_the_refusal_for_themselves_only() -> None:
    policy = Policy(
        allow_private=False,
        allowed_networks=(ipaddress.ip_network("10.20.0.0/16"), ipaddress.ip_network("::1/128")),
    )
    for address in ("10.20.0.1", "10.20.255.255", "::1", "::ffff:10.20.3.4", "64:ff9b::a14:1"):
        assert refusal(address, policy) is None, address
    for address in ("10.21.0.1", "127.0.0.1", "192.168.0.1", "::ffff:127.0.0.1", "fd00::1"):
        assert refusal(address, policy) is not None, address
    # Not the link-local ones (their own setting), nor the never ones.
    wide = Policy(False, False, (ipaddress.ip_network("0.0.0.0/0"),))
    assert refusal("169.254.169.254", wide) is not None
    assert refusal("0.0.0.0", wide) is not None
    assert refusal("10.0.0.1", wide) is None


@pytest.mark.parametrize(
    ("auth", "mode", "private"),
    [
        (False, "auto", True),
        (True, "auto", False),
        (True, "true", True),
        (False, "false", False),
    ],
)
def test_the_policy_follows_the_settings(auth: bool, mode: str, private: bool) -> None:
    env = {
        "FLUX_AUTH_ENABLED": str(auth).lower(),
        "FLUX_SOURCES_ALLOW_PRIVATE": mode,
        "FLUX_SOURCES_ALLOWED_NETWORKS": "10.0.0.0/8, fd00::5",
        "FLUX_SOURCES_ALLOW_LINK_LOCAL": "true",
    }
    policy = Policy.from_settings(Settings.from_env(env))
    assert policy.allow_private is private
    assert policy.allow_link_local is True
    assert policy.allowed_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("fd00::5/128"),
    )


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
    for policy in (OPEN, STRICT):
        with pytest.raises(Refused, match="FLUX_SOURCES_ALLOW_LINK_LOCAL"):
            check_url(url, policy)
    check_url(url, LINK_LOCAL)


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
    for policy in (OPEN, LINK_LOCAL, STRICT):
        with pytest.raises(Refused, match=message):
            check_url(url, policy)


def test_check_url_keeps_loopback_and_private_with_auth_off_only() -> None:
    for url in [
        "http://127.0.0.1:8080/a?b=1",
        "http://[::1]:9/",
        "http://10.0.0.5/",
        "http://100.64.1.1/",
        "http://[fd00::1]/",
    ]:
        assert str(check_url(url)) == url
        with pytest.raises(Refused, match="refusing to fetch from .* FLUX_SOURCES_ALLOWED"):
            check_url(url, STRICT)
    # A name is judged by what it resolves to (`resolve_checked`), not here.
    assert str(check_url("https://localhost/", STRICT)) == "https://localhost/"


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
        assert asyncio.run(resolve_checked(host, 80, LINK_LOCAL, resolve=resolve)) == TABLE[host]
    assert asyncio.run(resolve_checked("good.test", 80, resolve=resolve)) == ["127.0.0.1"]
    with pytest.raises(Refused, match="cannot resolve nope.test"):
        asyncio.run(resolve_checked("nope.test", 80, resolve=resolve))


def test_with_auth_on_a_refused_name_does_not_tell_its_address() -> None:
    """A tenant learns that an internal name is refused, not which address it has."""
    resolve = fake_resolver({**TABLE, "db.internal": ["10.9.8.7"], "pub.test": ["8.8.8.8"]})
    for host in ("db.internal", "good.test", "mixed.test", "rebind.test"):
        with pytest.raises(Refused) as caught:
            asyncio.run(resolve_checked(host, 80, STRICT, resolve=resolve))
        message = caught.value.message
        assert message == (
            f"refusing to fetch from {host}: it resolves to an address sources may not reach "
            "(internal or link-local; the operator may allow networks in "
            "FLUX_SOURCES_ALLOWED_NETWORKS)"
        )
    assert asyncio.run(resolve_checked("pub.test", 80, STRICT, resolve=resolve)) == ["8.8.8.8"]
    allowed = Policy(False, False, (ipaddress.ip_network("10.0.0.0/8"),))
    assert asyncio.run(resolve_checked("db.internal", 80, allowed, resolve=resolve)) == ["10.9.8.7"]


def test_system_resolver_sees_numeric_forms_of_the_metadata_address() -> None:
    """`getaddrinfo` reads 2852039166 and 0xa9fea9fe as 169.254.169.254 (no DNS involved)."""
    for host in ("2852039166", "0xa9fea9fe", "169.254.43518"):
        assert asyncio.run(system_resolve(host, 80)) == ["169.254.169.254"]
        with pytest.raises(Refused, match="it resolves to 169.254.169.254"):
            asyncio.run(resolve_checked(host, 80))
    assert "127.0.0.1" in asyncio.run(resolve_checked("localhost", 80))
    for host in ("localhost", "2130706433", "127.1", "0x7f000001"):  # all 127.0.0.1
        with pytest.raises(Refused, match="it resolves to an address sources may not reach"):
            asyncio.run(resolve_checked(host, 80, STRICT))


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
    # With auth on, the local server itself: by address, by name, by a rebinding name.
    port = upstream.base.rsplit(":", 1)[1]
    resolve = fake_resolver({**TABLE, "localhost": ["127.0.0.1"]})
    for url in (upstream.url("/x"), f"http://localhost:{port}/x", f"http://good.test:{port}/x"):
        with pytest.raises(Refused, match="refusing to fetch from"):
            asyncio.run(_get(GuardedTransport(STRICT, resolve=resolve), url))
        with pytest.raises(Refused, match="refusing to fetch from"):
            asyncio.run(_get(GuardedTransport(STRICT), url.replace("good.test", "localhost")))
    assert upstream.requests == []
    allowed = Policy(False, False, (ipaddress.ip_network("127.0.0.1/32"),))
    answer = asyncio.run(_get(GuardedTransport(allowed, resolve=resolve), upstream.url("/x")))
    assert answer.json() == {"ok": True}


def test_a_name_that_rebinds_after_the_check_connects_to_the_checked_address(
    upstream: JsonServer,
) -> None:
    """DNS rebinding: the first answer (checked) is public, a later one would be internal. The
    backend resolves once per connection and connects to the address it checked, so the second
    answer is never used without its own check."""
    port = int(upstream.base.rsplit(":", 1)[1])
    answers = [["127.0.0.1"], ["169.254.169.254"]]
    seen: list[str] = []

    async def flipping(host: str, port: int) -> list[str]:
        seen.append(host)
        return answers[min(len(seen), len(answers)) - 1]

    async def twice() -> list[str]:
        async with httpx.AsyncClient(transport=GuardedTransport(resolve=flipping)) as client:
            first = await client.get(f"http://flip.test:{port}/x")
            results = [first.json()["ok"]]
            # A new connection (the old one closed): resolved and checked again.
            await client.aclose()
        async with httpx.AsyncClient(transport=GuardedTransport(resolve=flipping)) as client:
            try:
                await client.get(f"http://flip.test:{port}/x")
            except Refused as exc:
                results.append(exc.message)
        return results

    ok, refused = asyncio.run(twice())
    assert ok is True
    assert refused.startswith("refusing to fetch from flip.test: it resolves to 169.254.169.254")
    assert len(upstream.requests) == 1


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
    check_url(url, LINK_LOCAL)
    answer = asyncio.run(_get(GuardedTransport(LINK_LOCAL, resolve=resolve), url))
    assert answer.json() == {"ok": True}
    rebind = f"http://rebind.test:{port}/x"  # 169.254.169.254: allowed, but nothing is there
    with pytest.raises(Refused):
        asyncio.run(_get(GuardedTransport(OPEN, resolve=resolve), rebind))
