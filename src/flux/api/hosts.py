"""Which `Host` header names the server answers: its guard against DNS rebinding.

A page on `evil.example` whose DNS name is then pointed at 127.0.0.1 reaches a server on
localhost from the visitor's browser as a same-origin page: CORS does not stop it, but the
request says `Host: evil.example`. A server bound to a loopback address therefore answers only
the loopback names (`localhost`, `127.0.0.1`, `[::1]`, and the bind address), with any port,
unless `FLUX_ALLOWED_HOSTS` names others (`*`: any). Bound to any other address, it answers any
name unless `FLUX_ALLOWED_HOSTS` says otherwise (behind a proxy or on a LAN the names are the
operator's to list). A request without a `Host` (HTTP/1.0) is not a browser's and passes.
"""

from __future__ import annotations

import ipaddress

from flux.config import Settings

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
_CACHE_SIZE = 256


class HostCheck:
    """`allowed(raw)` for a raw `Host` header value; answers are cached per value (a server sees
    a handful of distinct ones), so the check is one dict lookup per request."""

    def __init__(self, names: set[str]) -> None:
        self.names = names
        self._seen: dict[bytes, bool] = {}

    def allowed(self, raw: bytes) -> bool:
        answer = self._seen.get(raw)
        if answer is None:
            answer = host_name(raw.decode("latin-1")) in self.names
            if len(self._seen) >= _CACHE_SIZE:
                self._seen.clear()
            self._seen[raw] = answer
        return answer


def host_check(settings: Settings) -> HostCheck | None:
    """The check for these settings, or None when every host is allowed."""
    names = set(settings.allowed_hosts)
    if not names:
        if not is_loopback(settings.host):
            return None
        names = {*LOOPBACK_NAMES, host_name(_bracketed(settings.host))}
    if "*" in names:
        return None
    return HostCheck(names)


def host_name(host: str) -> str:
    """The name part of a `Host` value, lowercased, without its port or a final dot:
    `Example.COM.:80` -> `example.com`, `[::1]:3000` -> `[::1]`."""
    host = host.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[: end + 1] if end > 0 else host
    name, sep, port = host.rpartition(":")
    if sep and (port.isdigit() or not port):
        host = name
    return host[:-1] if host.endswith(".") else host


def is_loopback(address: str) -> bool:
    if address.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False


def _bracketed(address: str) -> str:
    """An IPv6 address as a `Host` header writes it (`::1` -> `[::1]`)."""
    return f"[{address}]" if ":" in address and not address.startswith("[") else address
