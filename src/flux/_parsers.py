"""How settings are read from text: one parser per kind of value (pure). Each takes the
environment variable's text and returns the value, or raises ValueError saying what is wrong;
`flux.config` adds the variable's name and value to the message.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress


def boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError("expected true or false")


def non_negative_int(text: str) -> int:
    value = int(text.strip())
    if value < 0:
        raise ValueError("must not be negative")
    return value


def positive_int(text: str) -> int:
    value = int(text.strip())
    if value <= 0:
        raise ValueError("must be positive")
    return value


def positive_float(text: str) -> float:
    value = float(text.strip())
    if not value > 0:
        raise ValueError("must be positive")
    return value


def non_negative_float(text: str) -> float:
    value = float(text.strip())
    if not value >= 0 or value == float("inf"):
        raise ValueError("must be a non-negative number")
    return value


def port(text: str) -> int:
    value = int(text.strip())
    if not 0 <= value <= 65535:
        raise ValueError("must be between 0 and 65535")
    return value


def url(text: str) -> str:
    text = text.strip().rstrip("/")
    if not text.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text


def text(text: str) -> str:
    return text


def items(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def origins(text: str) -> tuple[str, ...]:
    """A comma list of origins (`scheme://host[:port]`, no path) or `*`; empty: the default."""
    found = tuple(item.rstrip("/") for item in items(text))
    for origin in found:
        scheme, sep, rest = origin.partition("://")
        if origin != "*" and not (sep and scheme in ("http", "https") and rest and "/" not in rest):
            raise ValueError(f"{origin!r} is not an origin (scheme://host[:port]) or *")
    return found


def hosts(text: str) -> tuple[str, ...]:
    """A comma list of host names (any port), `[v6]` addresses or `*`; empty: the default."""
    found = tuple(item.lower() for item in items(text))
    for host in found:
        if not host or any(c in host for c in "/@ ") or ":" in host.rpartition("]")[2]:
            raise ValueError(f"{host!r} is not a host name (without a port) or *")
    return found


def auto_bool(text: str) -> str:
    """`auto`, `true` or `false` (any spelling `boolean` takes); empty is `auto`."""
    lowered = text.strip().lower()
    if lowered in ("auto", ""):
        return "auto"
    try:
        return "true" if boolean(lowered) else "false"
    except ValueError:
        raise ValueError("expected auto, true or false") from None


def networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A comma list of CIDR networks (`127.0.0.0/8, fd00::/8`); a bare address is a /32 or
    /128. Empty: none."""
    found = []
    for item in items(text):
        try:
            found.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ValueError(f"{item!r} is not a network (like 10.0.0.0/8 or fd00::/8)") from None
    return tuple(found)


def optional_text(text: str) -> str | None:
    return text or None


def encryption_key(text: str) -> str | None:
    """Standard base64 of exactly 32 bytes (an AES-256 key); empty means unset. The text is kept
    (not the bytes) so that the key never shows in a repr; `flux.credentials` decodes it."""
    text = text.strip()
    if not text:
        return None
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("must be standard base64 of exactly 32 bytes") from None
    if len(key) != 32:
        raise ValueError(f"must be standard base64 of exactly 32 bytes (got {len(key)} bytes)")
    return text


def nats_servers(text: str) -> str:
    """A comma list of NATS servers, `nats://host:port` or `host:port`; returned as
    `nats://host:port,…` (empty: none)."""
    servers = []
    for item in items(text):
        hostport = item.removeprefix("nats://")
        host, sep, number = hostport.rpartition(":")
        if not (sep and host and number.isdigit() and 0 < int(number) <= 65535):
            raise ValueError(f"{item!r} is not a NATS server (nats://host:port)")
        if any(c in host for c in "/@?# "):
            raise ValueError(f"{item!r} is not a NATS server (nats://host:port)")
        servers.append(f"nats://{hostport}")
    return ",".join(servers)


def stream_name(text: str) -> str:
    """A JetStream stream name: no dots, wildcards, whitespace or path separators."""
    if not text or any(c in text for c in ".*> \t\r\n/\\"):
        raise ValueError(f"{text!r} is not a JetStream stream name")
    return text


def subject_prefix(text: str) -> str:
    """A NATS subject of literal tokens (`flux.events`): no wildcards, whitespace or empty
    tokens."""
    if not all(text.split(".")) or any(c in text for c in "*> \t\r\n"):
        raise ValueError(f"{text!r} is not a subject prefix (dot-separated literal tokens)")
    return text
