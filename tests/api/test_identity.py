"""flux.api.identity: the one way a request (HTTP, WebSocket, SSE) becomes a credential."""

from __future__ import annotations

from typing import Any

from conftest import REPO
from flux.api.identity import credential_of
from flux.auth import ANONYMOUS, BAD_FORMAT, EMPTY_TOKEN, Credential, hash_token


def scope(kind: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": kind, "path": "/", "headers": list(headers)}


def test_a_bearer_header_is_the_credential_of_http_and_websocket_scopes() -> None:
    for kind in ("http", "websocket"):
        found = credential_of(scope(kind, (b"host", b"x"), (b"authorization", b"Bearer tok-1")))
        assert found == Credential(hash_token("tok-1"))


def test_no_header_is_anonymous_and_a_bad_one_says_why() -> None:
    assert credential_of(scope("http")) is ANONYMOUS
    assert credential_of(scope("http", (b"authorization", b"Basic abc"))).problem == BAD_FORMAT
    assert credential_of(scope("http", (b"authorization", b"Bearer  "))).problem == EMPTY_TOKEN


def test_it_is_parsed_once_per_request_and_the_first_header_counts() -> None:
    request = scope("http", (b"authorization", b"Bearer one"), (b"authorization", b"Bearer two"))
    first = credential_of(request)
    assert first == Credential(hash_token("one"))
    request["headers"] = []  # not read again: the scope keeps what was found
    assert credential_of(request) is first


def test_no_other_module_reads_the_authorization_header() -> None:
    """Every path (hot write, handlers, admin gate, namespaces, connectors, sources, WebSocket,
    SSE) asks `credential_of`: no other module parses the header itself."""
    readers = set()
    for path in (REPO / "src" / "flux").rglob("*.py"):
        text = path.read_text()
        if "from_header(" in text or 'b"authorization"' in text or '("authorization")' in text:
            readers.add(str(path.relative_to(REPO / "src")))
    assert readers == {"flux/api/identity.py", "flux/auth.py"}  # (auth.py defines from_header)
