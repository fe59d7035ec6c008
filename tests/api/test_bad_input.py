"""Bad input of every kind gets a 4xx JSON error, never a 500; nothing is half-applied; the
server keeps serving. Property tests compare the HTTP answers with `validate_event`."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from flux.errors import ValidationError
from flux.events import validate_event

from .helpers import assert_error, dumps, encode_id, new_event
from .strategies import anything, json_values

if TYPE_CHECKING:
    from conftest import FluxServer

FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def expected(raw: Any) -> str | None:
    """The error `validate_event` gives `raw` as the server decodes it, or None when valid."""
    try:
        validate_event(orjson.loads(dumps(raw)))
    except ValidationError as exc:
        return exc.message
    return None


def check_error_or_ok(response: Any, allowed: set[int]) -> None:
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code != 200:
        assert_error(response, response.status_code)


# -- property tests ----------------------------------------------------------------------------


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"{" + b)))
def test_arbitrary_bytes_to_publish(client: TestClient, body: bytes) -> None:
    check_error_or_ok(client.post("/api/events", content=body), {200, 400})


@FUZZ
@given(body=st.one_of(st.binary(max_size=300), st.binary(max_size=300).map(lambda b: b"[" + b)))
def test_arbitrary_bytes_to_batch(client: TestClient, body: bytes) -> None:
    check_error_or_ok(client.post("/api/events/batch", content=body), {200, 400})


@FUZZ
@given(raw=anything)
def test_arbitrary_json_to_publish_matches_validate_event(client: TestClient, raw: Any) -> None:
    response = client.post("/api/events", content=dumps(raw))
    message = expected(raw)
    if message is None:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, 400, message)


@FUZZ
@given(items=st.lists(anything, min_size=1, max_size=6), wrapped=st.booleans())
def test_arbitrary_json_to_batch_matches_validate_event(
    client: TestClient, items: list[Any], wrapped: bool
) -> None:
    response = client.post(
        "/api/events/batch", content=dumps({"events": items} if wrapped else items)
    )
    assert response.status_code == 200, response.text
    body = response.json()
    messages = [expected(item) for item in items]
    assert body["successful"] == messages.count(None)
    assert body["failed"] == len(items) - messages.count(None)
    for result, message in zip(body["results"], messages, strict=True):
        if message is None:
            assert result["error"] is None
        else:
            assert result["error"] == f"validation failed: {message}"
            assert result["eventId"] is None


@FUZZ
@given(body=json_values)
def test_arbitrary_json_to_the_json_endpoints(client: TestClient, body: Any) -> None:
    headers = {"content-type": "application/json"}
    response = client.post("/api/state/entities/delete", content=dumps(body), headers=headers)
    check_error_or_ok(response, {200, 400})
    response = client.put("/api/admin/config", content=dumps(body), headers=headers)
    check_error_or_ok(response, {200, 400})


@FUZZ
@given(
    # Lone surrogates cannot be sent as UTF-8 text (BAD_BODIES covers their escapes: 400).
    entity_id=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
        min_size=1,
        max_size=20,
    ),
    props=st.dictionaries(st.text(max_size=6), json_values, min_size=1, max_size=4),
)
def test_any_text_id_and_properties_round_trip(
    client: TestClient, entity_id: str, props: dict[str, Any]
) -> None:
    sent = new_event(entity_id, props)
    assert client.post("/api/events", content=dumps(sent)).status_code == 200
    if "%" in entity_id or props.get("__deleted__") is True:
        return  # (TestClient decodes `%` twice; a tombstone deletes)
    got = client.get(f"/api/state/entities/{encode_id(entity_id)}")
    assert got.status_code == 200
    assert got.json()["id"] == entity_id
    for name, value in props.items():
        assert got.json()["properties"][name] == value


# -- specific odd input ------------------------------------------------------------------------

EVENT_HEAD = (
    b'{"stream":"sensors","source":"t","timestamp":1,'
    b'"payload":{"entity_id":"ns/u","properties":{"v":'
)
EVENT_TAIL = b"}}}"

BAD_BODIES = {
    "lone high surrogate escape": EVENT_HEAD + b'"\\ud800"' + EVENT_TAIL,
    "lone low surrogate escape": EVENT_HEAD + b'"\\udc00"' + EVENT_TAIL,
    "reversed surrogate pair": EVENT_HEAD + b'"\\ude00\\ud83d"' + EVENT_TAIL,
    "surrogate in a key": b'{"\\ud800":1}',
    "invalid UTF-8 byte": EVENT_HEAD + b'"\xff"' + EVENT_TAIL,
    "overlong UTF-8": EVENT_HEAD + b'"\xc0\xaf"' + EVENT_TAIL,
    "encoded surrogate in UTF-8": EVENT_HEAD + b'"\xed\xa0\x80"' + EVENT_TAIL,
    "truncated UTF-8": EVENT_HEAD + b'"\xe2\x82"' + EVENT_TAIL,
    "raw control character": EVENT_HEAD + b'"a\x01b"' + EVENT_TAIL,
    "raw NUL byte": EVENT_HEAD + b'"a\x00b"' + EVENT_TAIL,
    "UTF-8 BOM": b"\xef\xbb\xbf" + EVENT_HEAD + b"1" + EVENT_TAIL,
    "UTF-16": (EVENT_HEAD + b"1" + EVENT_TAIL).decode().encode("utf-16"),
    "NaN": EVENT_HEAD + b"NaN" + EVENT_TAIL,
    "Infinity": EVENT_HEAD + b"Infinity" + EVENT_TAIL,
    "1e400": EVENT_HEAD + b"1e400" + EVENT_TAIL,
    "trailing comma": EVENT_HEAD + b"1," + EVENT_TAIL,
    "single quotes": b"{'stream': 'sensors'}",
    "comment": b"// hi\n" + EVENT_HEAD + b"1" + EVENT_TAIL,
    "truncated": EVENT_HEAD,
    "two documents": EVENT_HEAD + b"1" + EVENT_TAIL + b"{}",
    "nesting past the parser's limit": b"[" * 5000 + b"]" * 5000,
    "unclosed nesting": b"{" * 100_000,
    "form encoded": b"stream=sensors&source=t",
    "null byte only": b"\x00",
    "deep payload": EVENT_HEAD + b"[" * 300 + b"]" * 300 + EVENT_TAIL,
    "timestamp float": b'{"stream":"s","source":"t","timestamp":1.0,"payload":{}}',
    "timestamp too big": b'{"stream":"s","source":"t","timestamp":1844674407370955161600,'
    b'"payload":{}}',
    "timestamp as string": b'{"stream":"s","source":"t","timestamp":"1","payload":{}}',
}


@pytest.mark.parametrize("path", ["/api/events", "/api/events/batch"])
def test_bad_bodies(client: TestClient, path: str) -> None:
    for name, body in BAD_BODIES.items():
        if path.endswith("batch"):
            body = b"[" + body + b"]"
        response = client.post(path, content=body)
        if response.status_code == 200:  # the batch reports an invalid event per item
            assert path.endswith("batch"), name
            assert response.json()["successful"] == 0, name
        else:
            assert response.status_code == 400, name
            assert_error(response, 400)
    assert client.get("/api/health").json()["lastSequence"] == 0
    assert client.get("/api/state/entities").json() == []


ODD_TEXT = {
    "emoji": "😀👍🏽🇪🇺",
    "RTL": "שלום مرحبا",
    "bidi override": "\u202eabc\u202c",
    "escaped controls": "\t\n\r\x01\x1f",
    "combining": "e\u0301",
    "noncharacter": "\ufffe\uffff",
    "astral": "\U0001f600\U0010ffff",
    "zero width": "\u200b\u200d",
    "replacement char": "\ufffd",
}


def test_odd_unicode_round_trips(client: TestClient) -> None:
    for name, text in ODD_TEXT.items():
        entity_id = f"ns/{text}"
        sent = new_event(entity_id, {text: text, "v": [text]}, key=text, schema=text)
        response = client.post("/api/events", content=orjson.dumps(sent))
        assert response.status_code == 200, name
        got = client.get(f"/api/state/entities/{encode_id(entity_id)}").json()
        assert got["id"] == entity_id, name
        assert got["properties"] == {text: text, "v": [text]}, name
        (stored,) = client.get("/api/events", params={"entity": entity_id}).json()
        assert stored["key"] == stored["schema"] == text, name
        assert stored["payload"] == sent["payload"], name


def test_escaped_surrogate_pair_is_fine(client: TestClient) -> None:
    body = EVENT_HEAD + b'"\\ud83d\\ude00"' + EVENT_TAIL
    assert client.post("/api/events", content=body).status_code == 200
    assert client.get("/api/state/entities/ns%2Fu").json()["properties"] == {"v": "😀"}


def test_odd_text_in_errors_is_json_encoded(client: TestClient) -> None:
    stream = "bad\u0000\u202e😀"
    response = client.post("/api/events", content=orjson.dumps(new_event(stream=stream)))
    assert_error(
        response, 400, f"invalid stream format '{stream}': must be lowercase with optional dots"
    )


def test_large_but_valid_structures(client: TestClient) -> None:
    wide = {f"p{n}": n for n in range(20_000)}
    response = client.post("/api/events", content=orjson.dumps(new_event("ns/wide", wide)))
    assert response.status_code == 200
    assert len(client.get("/api/state/entities/ns%2Fwide").json()["properties"]) == 20_000
    long_id = "ns/" + "i" * 1021  # the longest id allowed (FLUX_MAX_ENTITY_ID_LENGTH)
    response = client.post("/api/events", content=orjson.dumps(new_event(long_id)))
    assert response.status_code == 200
    assert client.get(f"/api/state/entities/{long_id}").json()["id"] == long_id
    too_long = "ns/" + "i" * 30_000
    response = client.post("/api/events", content=orjson.dumps(new_event(too_long)))
    assert_error(
        response, 400, "entity_id is too long: 30003 characters (an entity_id has at most 1024)"
    )


# -- against the real server -------------------------------------------------------------------


def raw_request(server: FluxServer, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(data)
        if not read:
            return b""
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
        return b"".join(chunks)


def test_the_real_server_survives_abuse(server: FluxServer) -> None:
    host = b"Host: 127.0.0.1\r\n"
    # a body cut short: the client goes away mid-body
    raw_request(
        server,
        b"POST /api/events HTTP/1.1\r\n" + host + b'Content-Length: 1000\r\n\r\n{"stream":',
        read=False,
    )
    # invalid UTF-8 and a lone surrogate escape in the body
    for body in (EVENT_HEAD + b'"\xff\xfe"' + EVENT_TAIL, EVENT_HEAD + b'"\\udfff"' + EVENT_TAIL):
        reply = raw_request(
            server,
            b"POST /api/events HTTP/1.1\r\n"
            + host
            + b"Connection: close\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body,
        )
        head, _, payload = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 400"), reply
        assert b"application/json" in head
        assert set(orjson.loads(payload)) == {"error"}
    # not HTTP at all
    raw_request(server, b"\x16\x03\x01\x02\x00garbage\r\n\r\n")
    # a NUL and invalid UTF-8 in the path
    reply = raw_request(
        server,
        b"GET /api/state/entities/ns%00%FF HTTP/1.1\r\n" + host + b"Connection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 404"), reply
    assert orjson.loads(reply.partition(b"\r\n\r\n")[2]) == {"error": "Entity not found"}

    with httpx.Client(base_url=server.url, headers={"content-type": "application/json"}) as http:
        assert http.get("/api/health").json()["status"] == "ok"
        assert http.get("/api/health").json()["lastSequence"] == 0
        assert http.post("/api/events", content=orjson.dumps(new_event())).status_code == 200
    assert "Traceback" not in server.logs()
