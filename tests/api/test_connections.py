"""The pure parts of the connection guard (flux.api.connections) and the Host check
(flux.api.hosts); the guard itself is tested against a real server in
tests/abuse/test_slow_clients.py."""

from __future__ import annotations

import pytest

from flux.api.body import is_json_type
from flux.api.connections import TIMED_OUT, TOO_MANY, ClientCounts
from flux.api.hosts import host_check, host_name, is_loopback
from flux.config import ConfigError, Settings


def test_client_counts() -> None:
    counts = ClientCounts(2)
    a, b, c, d = object(), object(), object(), object()
    assert counts.admit(a, "10.0.0.1") and counts.admit(b, "10.0.0.1")
    assert not counts.admit(c, "10.0.0.1")
    assert counts.admit(d, "10.0.0.2")
    counts.release(a)
    counts.release(a)  # once only
    counts.release(c)  # never admitted
    assert counts.counts == {"10.0.0.1": 1, "10.0.0.2": 1}
    assert counts.admit(c, "10.0.0.1")
    for connection in (b, c, d):
        counts.release(connection)
    assert counts.counts == {} and counts.holders == {}
    unlimited = ClientCounts(0)
    assert all(unlimited.admit(object(), "10.0.0.1") for _ in range(1000))
    assert ClientCounts(1).admit(object(), None)  # a Unix socket has no address


def test_error_answers() -> None:
    assert TIMED_OUT.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert TIMED_OUT.endswith(b'\r\n\r\n{"error":"request timeout"}')
    assert TOO_MANY.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert b"connection: close\r\n" in TOO_MANY


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("localhost:3000", "localhost"),
        ("Example.COM.:80", "example.com"),
        ("[::1]:3000", "[::1]"),
        ("[::1]", "[::1]"),
        ("127.0.0.1", "127.0.0.1"),
        ("evil.example:", "evil.example"),
        ("a:b", "a:b"),
    ],
)
def test_host_name(header: str, name: str) -> None:
    assert host_name(header) == name


def test_host_check_defaults() -> None:
    loopback = host_check(Settings())
    assert loopback is not None
    assert loopback.allowed(b"localhost:1") and loopback.allowed(b"[::1]:3000")
    assert not loopback.allowed(b"evil.example")
    assert not loopback.allowed(b"localhost.evil.example")
    assert host_check(Settings(host="0.0.0.0")) is None
    assert host_check(Settings(allowed_hosts=("*",))) is None
    v6 = host_check(Settings(host="::1"))
    assert v6 is not None and v6.allowed(b"[::1]:80")
    named = host_check(Settings(host="0.0.0.0", allowed_hosts=("flux.example",)))
    assert named is not None and named.allowed(b"FLUX.example:8080")
    assert not named.allowed(b"localhost")
    assert is_loopback("127.0.0.5") and is_loopback("localhost") and not is_loopback("10.0.0.1")


def test_list_settings() -> None:
    env = {
        "FLUX_CORS_ORIGINS": "https://a.example, http://b.example:8080/",
        "FLUX_ALLOWED_HOSTS": "",
    }
    settings = Settings.from_env(env)
    assert settings.cors_origins == ("https://a.example", "http://b.example:8080")
    assert settings.allowed_hosts == ()
    for name, value in (
        ("FLUX_CORS_ORIGINS", "a.example"),
        ("FLUX_CORS_ORIGINS", "https://a.example/path"),
        ("FLUX_ALLOWED_HOSTS", "flux.example:3000"),
        ("FLUX_ALLOWED_HOSTS", "http://flux.example"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})


@pytest.mark.parametrize(
    ("value", "json"),
    [
        (None, False),
        ("", False),
        ("application/json", True),
        ("application/json;charset=utf-8", True),
        (" APPLICATION/JSON ; charset=UTF-8", True),
        ("application/problem+json", True),
        ("application/+json", False),
        ("text/plain", False),
        ("text/x+json", False),
        ("application/jsonx", False),
        ("multipart/form-data; boundary=x", False),
    ],
)
def test_is_json_type(value: str | None, json: bool) -> None:
    assert is_json_type(value) is json
