"""The server-side request forgery guard of generic sources: which URLs and addresses a source
may fetch.

A source URL is fetched by the server, so a URL could make Flux read what only the server can
reach: the cloud provider's metadata service (instance credentials), a service bound to
loopback, Flux's own admin API, the hosts of a private network. A `Policy` says what a source
may connect to. Refused:

- schemes other than `http` and `https`, and URLs with credentials in them;
- always: `0.0.0.0/8` (and `::`), multicast (`224.0.0.0/4`, `ff00::/8`) and the broadcast
  address;
- unless `allow_link_local` (FLUX_SOURCES_ALLOW_LINK_LOCAL): link-local addresses
  (`169.254.0.0/16`, `fe80::/10`), the cloud metadata addresses (`169.254.169.254`,
  `fd00:ec2::254`, `100.100.100.200`) and metadata host names (`metadata.google.internal`,
  `metadata`, ...);
- unless `allow_private` (FLUX_SOURCES_ALLOW_PRIVATE; by default on with auth off, off with
  auth on) or the address is in one of `allowed_networks` (FLUX_SOURCES_ALLOWED_NETWORKS):
  internal addresses, `INTERNAL` below (loopback, private, CGNAT, unique-local, site-local,
  documentation, benchmarking and reserved ranges), and any IPv6 address outside global
  unicast `2000::/3`.

An IPv6 address that carries an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
`::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`, Teredo's client) is judged by
the IPv4 address.

`Policy.refusal(...)` and `check_url(...)` are pure; `resolve_checked` resolves a host name with
`getaddrinfo` (in a thread) and checks every address; `GuardedBackend` makes every connection of
a source go through that check and connect to the address it checked, so neither a redirect nor
a DNS answer that changed between the check and the connection (DNS rebinding) gets past it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

from flux.config import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOW_SETTING = "FLUX_SOURCES_ALLOW_LINK_LOCAL"
PRIVATE_SETTING = "FLUX_SOURCES_ALLOW_PRIVATE"
NETWORKS_SETTING = "FLUX_SOURCES_ALLOWED_NETWORKS"

METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254", "100.100.100.200")
)
_LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")
_BROADCAST = ipaddress.ip_address("255.255.255.255")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_GLOBAL_UNICAST = ipaddress.ip_network("2000::/3")

# Internal addresses: refused unless the policy allows private addresses or the network.
INTERNAL: tuple[tuple[IPNetwork, str], ...] = tuple(
    (ipaddress.ip_network(net), what)
    for net, what in (
        ("127.0.0.0/8", "a loopback address"),
        ("::1/128", "a loopback address"),
        ("10.0.0.0/8", "a private address"),
        ("172.16.0.0/12", "a private address"),
        ("192.168.0.0/16", "a private address"),
        ("100.64.0.0/10", "a shared (CGNAT) address"),
        ("fc00::/7", "a unique-local address"),
        ("fec0::/10", "a site-local address"),
        ("192.0.0.0/24", "an IETF protocol address"),
        ("192.0.2.0/24", "a documentation address"),
        ("198.51.100.0/24", "a documentation address"),
        ("203.0.113.0/24", "a documentation address"),
        ("2001:db8::/32", "a documentation address"),
        ("198.18.0.0/15", "a benchmarking address"),
        ("240.0.0.0/4", "a reserved address"),
        ("64:ff9b:1::/48", "a local NAT64 address"),
        ("100::/64", "a discard-only address"),
    )
)


class Refused(Exception):
    """A URL or address a source may not fetch; `message` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries, if it is of a form that carries one."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's address (the one Teredo delivers to)
    value = int(address)
    if address in _NAT64:
        return ipaddress.IPv4Address(value & 0xFFFF_FFFF)
    if value >> 32 == 0 and value > 1:  # IPv4-compatible (deprecated), but not :: or ::1
        return ipaddress.IPv4Address(value)
    return None


def _never(address: IPAddress) -> str | None:
    if address.is_unspecified or address in _THIS_NETWORK or address == _BROADCAST:
        return f"{address} is not a host address"
    if address.is_multicast:
        return f"{address} is a multicast address"
    return None


def _link_local(address: IPAddress) -> str | None:
    if address in METADATA_ADDRESSES:
        return f"{address} is a cloud metadata address"
    if any(address in net for net in _LINK_LOCAL if net.version == address.version):
        return f"{address} is a link-local address"
    return None


def _internal(address: IPAddress) -> str | None:
    for net, what in INTERNAL:
        if net.version == address.version and address in net:
            return f"{address} is {what}"
    if isinstance(address, ipaddress.IPv6Address) and address not in _GLOBAL_UNICAST:
        return f"{address} is not a global unicast address"
    return None


@dataclass(frozen=True)
class Policy:
    """What a generic source may connect to (see the module's docstring). The default is the
    policy with auth off: internal addresses allowed, link-local and metadata refused."""

    allow_private: bool = True
    allow_link_local: bool = False
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        """FLUX_SOURCES_ALLOW_PRIVATE (`auto`: allowed exactly when auth is off),
        FLUX_SOURCES_ALLOW_LINK_LOCAL and FLUX_SOURCES_ALLOWED_NETWORKS."""
        mode = settings.sources_allow_private
        allow_private = not settings.auth_enabled if mode == "auto" else mode == "true"
        return cls(
            allow_private, settings.sources_allow_link_local, settings.sources_allowed_networks
        )

    def _allowed(self, address: IPAddress) -> bool:
        return any(
            address in net for net in self.allowed_networks if net.version == address.version
        )

    def refusal(self, address: IPAddress) -> str | None:
        """Why a source may not connect to `address`, or None when it may. A reason the
        operator may lift ends by naming the setting."""
        reason = _never(address)
        if reason is not None:
            return reason
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_ipv4(address)
            if embedded is not None:
                inner = self.refusal(embedded)
                if inner is None:
                    return None
                return f"{address} is an IPv6 form of {embedded}, and {inner}"
        reason = _link_local(address)
        if reason is not None:
            return (
                None
                if self.allow_link_local
                else f"{reason} (allowed only with {ALLOW_SETTING}=true)"
            )
        if self.allow_private or self._allowed(address):
            return None
        reason = _internal(address)
        if reason is None:
            return None
        return f"{reason} (allowed only in {NETWORKS_SETTING} or with {PRIVATE_SETTING}=true)"


DEFAULT_POLICY = Policy()


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])  # an IPv6 zone id is not the address
    except ValueError:
        return None


def check_url(text: str, policy: Policy = DEFAULT_POLICY) -> httpx.URL:
    """The parsed URL if a source may fetch it, judging by the URL alone (the addresses a name
    resolves to are checked by `resolve_checked`). Raises Refused."""
    try:
        url = httpx.URL(text)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise Refused(f"invalid URL: {exc}") from None
    if url.scheme not in ("http", "https"):
        raise Refused("the URL must start with http:// or https://")
    host = url.host.rstrip(".").lower()
    if not host:
        raise Refused("the URL has no host")
    if url.userinfo:
        raise Refused("the URL must not hold credentials: give the secret as `token`")
    address = _literal(host)
    if address is not None:
        reason = policy.refusal(address)
        if reason is not None:
            raise Refused(f"refusing to fetch from {host}: {reason}")
    elif not policy.allow_link_local and host in METADATA_HOSTS:
        raise Refused(
            f"refusing to fetch from {host}: a cloud metadata host name "
            f"(allowed only with {ALLOW_SETTING}=true)"
        )
    return url


def port_of(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


async def system_resolve(host: str, port: int) -> list[str]:
    """Every address `getaddrinfo` gives for (host, port), in its order; runs in a thread.
    Raises Refused when the name does not resolve."""
    if not host or any(c in host for c in "\x00 \t\r\n"):
        raise Refused(f"cannot resolve {host!r}: not a host name")
    try:
        infos = await asyncio.to_thread(
            socket.getaddrinfo, host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (OSError, UnicodeError, ValueError) as exc:  # gaierror, an IDNA or NUL problem
        raise Refused(f"cannot resolve {host}: {exc}") from None
    addresses: list[str] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        text = str(sockaddr[0])
        if text not in addresses:
            addresses.append(text)
    return addresses


async def resolve_checked(
    host: str, port: int, policy: Policy = DEFAULT_POLICY, resolve: Resolver = system_resolve
) -> list[str]:
    """The addresses of `host` if every one of them may be fetched. Raises Refused if the name
    does not resolve or any address is refused (one bad address is enough: the system could
    pick it). When internal addresses are refused (auth on) the message does not say which
    address the name has: a tenant learns no more of the internal DNS than that."""
    literal = _literal(host)
    addresses = [str(literal)] if literal is not None else await resolve(host, port)
    if not addresses:
        raise Refused(f"cannot resolve {host}: no address")
    for text in addresses:
        address = _literal(text)
        if address is None:
            raise Refused(f"{host} resolved to {text!r}, which is not an IP address")
        reason = policy.refusal(address)
        if reason is None:
            continue
        if literal is None and not policy.allow_private:
            raise Refused(
                f"refusing to fetch from {host}: it resolves to an address sources may not "
                f"reach (internal or link-local; the operator may allow networks in "
                f"{NETWORKS_SETTING})"
            )
        raise Refused(f"refusing to fetch from {host}: it resolves to {text}; {reason}")
    return addresses


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """An httpcore network backend that resolves each host itself, refuses it unless every
    address passes `refusal`, and connects to a checked address (TLS still verifies the host
    name: httpcore sends the URL's host as SNI)."""

    def __init__(
        self,
        policy: Policy = DEFAULT_POLICY,
        resolve: Resolver = system_resolve,
        inner: httpcore.AsyncNetworkBackend | None = None,
    ) -> None:
        self.policy = policy
        self.resolve = resolve
        self.inner = inner if inner is not None else httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await resolve_checked(host, port, self.policy, self.resolve)
        error: Exception | None = None
        for address in addresses:
            try:
                return await self.inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise Refused("sources do not connect to Unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the `GuardedBackend`: no proxies from the environment (the check
    would see the proxy, not the source), and every connection checked."""

    def __init__(self, policy: Policy = DEFAULT_POLICY, resolve: Resolver = system_resolve) -> None:
        super().__init__(trust_env=False)
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            network_backend=GuardedBackend(policy, resolve),
        )
