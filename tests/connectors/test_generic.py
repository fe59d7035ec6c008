"""Generic sources: the API's input checks (`source_config`) and the mapping from a response
to events (pure), and the fetch against a local JSON server (size cap, redirects, upstream
errors)."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from flux.connectors.base import ConnectorError
from flux.connectors.generic import (
    FETCH_FAILED,
    GenericSource,
    MappingError,
    build_events,
    retry_after,
    upstream_error,
)
from flux.connectors.source_config import (
    Auth,
    SourceConfig,
    config_from_json,
    parse_config,
    parse_token,
)
from flux.connectors.ssrf import GuardedTransport, Policy
from flux.errors import RateLimited, ValidationError
from flux.events import validate_event
from jsonserver import JsonServer

SID = "0f8fad5b-d9cb-469f-a165-70867728950e"
BASE: dict[str, Any] = {
    "name": "weather",
    "url": "http://127.0.0.1:9/x",
    "poll_interval_secs": 1,
    "entity_key": "oslo",
    "namespace": "demo",
}


def config(**changes: Any) -> SourceConfig:
    return parse_config({**BASE, **changes})


# -- input checks -------------------------------------------------------------------------------


def test_parse_config_round_trips_through_its_stored_form() -> None:
    parsed = config(
        auth_type={"api_key_header": "X-Api-Key"},
        items="$.data",
        entity_key="$.id",
        mapping={"t": "$.temp"},
    )
    assert parsed.auth == Auth("header", "X-Api-Key")
    assert config_from_json(parsed.as_json()) == parsed
    assert parsed.as_json() == {
        **BASE,
        "entity_key": "$.id",
        "auth_type": {"api_key_header": "X-Api-Key"},
        "items": "$.data",
        "mapping": {"t": "$.temp"},
    }
    assert config().auth == Auth("none")
    assert config(auth_type="Bearer").auth == Auth("bearer")


BAD: list[tuple[dict[str, Any], str]] = [
    ({"name": None}, "missing field `name`"),
    ({"name": 3}, "`name`: invalid type: integer `3`, expected a string"),
    ({"name": " "}, "`name` must be 1 to 200 characters"),
    ({"url": None}, "missing field `url`"),
    ({"url": ["x"]}, "`url`: invalid type: sequence, expected a string"),
    ({"url": "ftp://x/"}, "`url`: the URL must start with http:// or https://"),
    ({"url": "http://169.254.169.254/"}, "`url`: refusing to fetch from 169.254.169.254"),
    ({"url": "http://metadata.google.internal/"}, "cloud metadata host name"),
    ({"url": "http://x/" + "a" * 5000}, "`url` is longer than 4096 characters"),
    ({"poll_interval_secs": None}, "missing field `poll_interval_secs`"),
    ({"poll_interval_secs": 0}, "`poll_interval_secs` must be between 1 and 31536000"),
    ({"poll_interval_secs": -5}, "`poll_interval_secs` must be between 1"),
    ({"poll_interval_secs": 1.5}, "expected an integer"),
    ({"poll_interval_secs": "60"}, "expected an integer"),
    ({"poll_interval_secs": True}, "expected an integer"),
    ({"namespace": None}, "missing field `namespace`"),
    ({"namespace": "ab"}, "Namespace name too short"),
    ({"namespace": "Demo"}, "Invalid character 'D'"),
    ({"namespace": "a/b"}, "Invalid character '/'"),
    ({"namespace": "flux-core"}, "reserved for Flux"),
    ({"entity_key": None}, "missing field `entity_key`"),
    ({"entity_key": ""}, "`entity_key` must not be empty"),
    ({"entity_key": "a\x00b"}, "NUL"),
    ({"entity_key": "$.a["}, "`entity_key`: JSON path '$.a['"),
    ({"items": "$.data"}, "with `items`, `entity_key` must be a JSON path"),
    ({"items": "data", "entity_key": "$.id"}, "`items`: JSON path 'data' must start with $"),
    ({"items": 5}, "`items`: invalid type"),
    ({"mapping": []}, "`mapping`: invalid type: sequence"),
    ({"mapping": {"a": 1}}, "`mapping.a`: invalid type: integer `1`, expected a JSON path"),
    ({"mapping": {"a": "x"}}, "`mapping.a`: JSON path 'x' must start with $"),
    ({"mapping": {"": "$.x"}}, "a property name must not be empty"),
    ({"auth_type": "basic"}, '`auth_type` must be "none", "bearer"'),
    ({"auth_type": {"api_key_header": "Bad Header"}}, "must be an HTTP header name"),
    ({"auth_type": {"api_key_header": "Host"}}, "may not be Host"),
    ({"auth_type": {"header": "X"}}, '`auth_type` must be "none", "bearer"'),
    ({"auth_type": 1}, '`auth_type` must be "none", "bearer"'),
]


@pytest.mark.parametrize(("changes", "message"), BAD)
def test_parse_config_names_the_bad_field(changes: dict[str, Any], message: str) -> None:
    doc = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    with pytest.raises(ValidationError) as info:
        parse_config(doc)
    assert message in info.value.message


def test_link_local_urls_pass_when_allowed() -> None:
    allowing = Policy(allow_link_local=True)
    parse_config({**BASE, "url": "http://169.254.169.254/latest"}, allowing)
    with pytest.raises(ValidationError, match="multicast"):
        parse_config({**BASE, "url": "http://224.0.0.1/"}, allowing)


def test_internal_urls_are_refused_by_the_auth_on_policy() -> None:
    strict = Policy(allow_private=False)
    for url in ("http://127.0.0.1:3000/api/admin/config", "http://10.0.0.1/", "http://[fd00::1]/"):
        parse_config({**BASE, "url": url})
        with pytest.raises(ValidationError, match="`url`: refusing to fetch from"):
            parse_config({**BASE, "url": url}, strict)
    parse_config({**BASE, "url": "https://api.example.com/x.json"}, strict)


def test_the_minimum_interval() -> None:
    assert parse_config({**BASE, "poll_interval_secs": 10}, min_interval=10)
    with pytest.raises(ValidationError) as info:
        parse_config({**BASE, "poll_interval_secs": 9}, min_interval=10)
    assert info.value.message == (
        "`poll_interval_secs` must be at least 10 (FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS)"
    )
    assert parse_config({**BASE, "poll_interval_secs": 1}).poll_interval_secs == 1


def test_parse_token() -> None:
    assert parse_token({}, Auth("none")) is None
    assert parse_token({"token": ""}, Auth("none")) is None
    assert parse_token({"token": "s3"}, Auth("bearer")) == "s3"
    for doc, auth, message in [
        ({}, Auth("bearer"), "`auth_type` 'bearer' needs a `token`"),
        ({"token": ""}, Auth("header", "X-Key"), "needs a `token`"),
        ({"token": "s3"}, Auth("none"), '`token` given but `auth_type` is "none"'),
        ({"token": 5}, Auth("bearer"), "`token`: invalid type"),
        ({"token": "a\r\nX-Evil: 1"}, Auth("bearer"), "line breaks"),
    ]:
        with pytest.raises(ValidationError) as info:
            parse_token(doc, auth)
        assert message in info.value.message


def test_auth_headers() -> None:
    assert Auth("none").headers("t") == {}
    assert Auth("bearer").headers("t") == {"Authorization": "Bearer t"}
    assert Auth("header", "X-Api-Key").headers("t") == {"X-Api-Key": "t"}
    assert Auth("bearer").headers(None) == {}


# -- from a response to events --------------------------------------------------------------------


def ids_and_properties(events: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    for event in events:
        validate_event(event)  # what ingestion will check
        assert event["stream"] == "generic"
        assert event["source"] == f"generic.{SID}"
    return [(e["payload"]["entity_id"], e["payload"]["properties"]) for e in events]


def test_default_publishes_the_top_level_object_under_a_literal_key() -> None:
    events = build_events(SID, config(), {"temp": 21.5, "sky": {"clouds": 3}}, now=1234)
    assert ids_and_properties(events) == [("demo/oslo", {"temp": 21.5, "sky": {"clouds": 3}})]
    assert events[0]["key"] == "oslo"
    assert events[0]["timestamp"] == 1234
    assert events[0]["namespace"] == "demo"


def test_entity_key_as_a_json_path() -> None:
    events = build_events(SID, config(entity_key="$.station.id"), {"station": {"id": 42}, "t": 1})
    assert ids_and_properties(events) == [("demo/42", {"station": {"id": 42}, "t": 1})]
    events = build_events(SID, config(entity_key="$['name']"), {"name": "oslo/blindern"})
    assert ids_and_properties(events)[0][0] == "demo/oslo/blindern"


def test_fan_out_with_items_and_mapping() -> None:
    doc = {
        "data": {
            "list": [
                {"id": "a1", "title": "First", "meta": {"state": "open"}, "extra": 1},
                {"id": 2, "title": "Second", "meta": {"state": "closed"}},
            ]
        }
    }
    events = build_events(
        SID,
        config(
            items="$.data.list",
            entity_key="$.id",
            mapping={"name": "$.title", "state": "$.meta.state", "extra": "$.extra"},
        ),
        doc,
    )
    assert ids_and_properties(events) == [
        ("demo/a1", {"name": "First", "state": "open", "extra": 1}),
        ("demo/2", {"name": "Second", "state": "closed", "extra": None}),
    ]
    # Without a mapping each item's object is the properties.
    events = build_events(SID, config(items="$.data.list", entity_key="$.id"), doc)
    assert ids_and_properties(events)[1] == ("demo/2", doc["data"]["list"][1])
    # A top-level list, and an empty one.
    assert len(build_events(SID, config(items="$", entity_key="$.id"), [{"id": "x"}])) == 1
    assert build_events(SID, config(items="$", entity_key="$.id"), []) == []


def test_mapping_without_items_picks_from_the_response() -> None:
    events = build_events(
        SID,
        config(mapping={"t": "$.main.temp", "first": "$.list[0]"}),
        {
            "main": {"temp": 3},
            "list": ["x", "y"],
        },
    )
    assert ids_and_properties(events) == [("demo/oslo", {"t": 3, "first": "x"})]
    # A list response with a mapping is fine too.
    events = build_events(SID, config(mapping={"n": "$[1]"}), [10, 20])
    assert ids_and_properties(events) == [("demo/oslo", {"n": 20})]


@pytest.mark.parametrize(
    ("changes", "document", "message"),
    [
        ({}, [1, 2], "the response is a list, not a JSON object"),
        ({}, "text", "the response is a string, not a JSON object"),
        ({}, None, "the response is null, not a JSON object"),
        ({"entity_key": "$.id"}, {"x": 1}, "entity_key: $.id is missing"),
        ({"entity_key": "$.id"}, {"id": True}, "is a boolean, expected a string or an integer"),
        ({"entity_key": "$.id"}, {"id": 1.5}, "is a number, expected a string or an integer"),
        ({"entity_key": "$.id"}, {"id": {"a": 1}}, "is an object, expected a string"),
        ({"entity_key": "$.id"}, {"id": ""}, "the entity key at $.id is empty"),
        ({"entity_key": "$.id"}, {"id": "a\x00"}, "contains the NUL character"),
        ({"items": "$.data", "entity_key": "$.id"}, {"x": 1}, "items: $.data is missing"),
        ({"items": "$.data", "entity_key": "$.id"}, {"data": {}}, "items: $.data is an object"),
        (
            {"items": "$.data", "entity_key": "$.id"},
            {"data": [{"id": 1}, {"no": 2}]},
            "item 1: entity_key: $.id is missing",
        ),
        (
            {"items": "$.data", "entity_key": "$.id"},
            {"data": [{"id": 1}, 7]},
            "item 1: entity_key: $ is a number, not an object",
        ),
        ({"items": "$", "entity_key": "$[0]"}, [["k", 1]], "item 0 is a list, not a JSON object"),
    ],
)
def test_a_response_without_the_expected_shape_fails_clearly(
    changes: dict[str, Any], document: Any, message: str
) -> None:
    with pytest.raises(MappingError) as info:
        build_events(SID, config(**changes), document)
    assert message in info.value.message


def test_an_empty_object_publishes_nothing() -> None:
    assert build_events(SID, config(), {}) == []


# -- upstream errors ------------------------------------------------------------------------------


def test_upstream_errors_and_retry_after() -> None:
    empty = httpx.Headers()
    assert "HTTP 401" in upstream_error(401, empty).message
    assert "token" in upstream_error(401, empty).message
    assert upstream_error(403, empty).message == "upstream denied access (HTTP 403)"
    assert upstream_error(500, empty).message == "upstream error: HTTP 500"
    limited = upstream_error(429, httpx.Headers({"Retry-After": "7"}))
    assert limited.retry_after == 7.0
    assert limited.message == "upstream rate limit (HTTP 429), asks to wait 7s"
    assert upstream_error(429, empty).retry_after is None
    assert upstream_error(500, httpx.Headers({"Retry-After": "7"})).retry_after is None
    assert retry_after(httpx.Headers({"Retry-After": "999999999"})) == 86_400
    date = httpx.Headers({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})
    assert retry_after(date, now=1445412480 - 30) == 30
    assert retry_after(httpx.Headers({"Retry-After": "soon"})) is None


# -- the fetch, against a local server ---------------------------------------------------------


@pytest.fixture
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    yield server
    server.stop()


def fetch(source: GenericSource, token: str | None = None) -> list[dict[str, Any]]:
    async def go() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=GuardedTransport(), timeout=5) as client:
            return await source.fetch(client, token)

    return asyncio.run(go())


def source(url: str, **changes: Any) -> GenericSource:
    limit = changes.pop("limit", 10_485_760)
    return GenericSource(SID, config(url=url, **changes), max_response_bytes=limit)


def failure(src: GenericSource, token: str | None = None) -> ConnectorError:
    with pytest.raises(ConnectorError) as info:
        fetch(src, token)
    return info.value


def test_fetch_sends_the_secret_as_configured(upstream: JsonServer) -> None:
    upstream.set("/w", {"temp": 1})
    events = fetch(source(upstream.url("/w"), auth_type="bearer"), "s3cret")
    assert ids_and_properties(events) == [("demo/oslo", {"temp": 1})]
    assert upstream.requests[-1].headers["authorization"] == "Bearer s3cret"
    assert upstream.requests[-1].headers["user-agent"] == "flux-source/1.0"
    fetch(source(upstream.url("/w"), auth_type={"api_key_header": "X-Api-Key"}), "k3y")
    assert upstream.requests[-1].headers["x-api-key"] == "k3y"
    assert "authorization" not in upstream.requests[-1].headers
    fetch(source(upstream.url("/w")))
    assert "authorization" not in upstream.requests[-1].headers


def test_size_cap_with_and_without_content_length(upstream: JsonServer) -> None:
    big = {"blob": "x" * 5000}
    upstream.set("/big", big)
    upstream.set("/stream", big, chunked=True)
    upstream.set(
        "/gzip",
        raw=gzip.compress(b'{"blob":"' + b"x" * 50_000 + b'"}'),
        headers={"Content-Encoding": "gzip"},
    )
    upstream.set("/small", {"ok": 1}, chunked=True)
    assert failure(source(upstream.url("/big"), limit=1000)).message == (
        "upstream response is over the 1000-byte limit (5012)"
    )
    assert failure(source(upstream.url("/stream"), limit=1000)).message == (
        "upstream response is over the 1000-byte limit"
    )
    # The cap counts decompressed bytes: a small gzip body cannot smuggle a big document.
    assert failure(source(upstream.url("/gzip"), limit=10_000)).message == (
        "upstream response is over the 10000-byte limit"
    )
    assert len(fetch(source(upstream.url("/small"), limit=1000))) == 1
    assert len(fetch(source(upstream.url("/big"), limit=5012))) == 1


def test_upstream_statuses_become_clear_errors(upstream: JsonServer) -> None:
    for status, message in [
        (401, "upstream refused the credentials (HTTP 401): check the source's token"),
        (403, "upstream denied access (HTTP 403)"),
        (404, "upstream error: HTTP 404"),
        (500, "upstream error: HTTP 500"),
        (502, "upstream error: HTTP 502"),
    ]:
        upstream.set("/e", {"error": "x"}, status=status)
        assert failure(source(upstream.url("/e"))).message == message
    upstream.set("/e", {}, status=429, headers={"Retry-After": "3"})
    error = failure(source(upstream.url("/e")))
    assert error.retry_after == 3.0
    upstream.set("/e", raw=b"<html>not json</html>")
    assert failure(source(upstream.url("/e"))).message.startswith(
        "upstream did not answer with JSON"
    )


def test_unreachable_upstream() -> None:
    from conftest import free_port

    error = failure(source(f"http://127.0.0.1:{free_port()}/x"))
    assert error.message.startswith("cannot reach 127.0.0.1: ")


def test_redirects_are_followed_checked_and_keep_the_secret_at_home(
    upstream: JsonServer,
) -> None:
    other = JsonServer().start()
    try:
        other.set("/data", {"from": "other"})
        upstream.set("/data", {"from": "home"})
        upstream.set("/same", status=302, headers={"Location": "/data"})
        upstream.set("/away", status=307, headers={"Location": other.url("/data")})
        upstream.set("/meta", status=302, headers={"Location": "http://169.254.169.254/latest"})
        upstream.set("/meta6", status=301, headers={"Location": "http://[::ffff:a9fe:a9fe]/"})
        upstream.set("/file", status=302, headers={"Location": "file:///etc/passwd"})
        upstream.set("/loop", status=302, headers={"Location": "/loop"})
        bearer = {"auth_type": "bearer"}
        events = fetch(source(upstream.url("/same"), **bearer), "s3cret")
        assert events[0]["payload"]["properties"] == {"from": "home"}
        assert upstream.calls("/data")[-1].headers["authorization"] == "Bearer s3cret"
        events = fetch(source(upstream.url("/away"), **bearer), "s3cret")
        assert events[0]["payload"]["properties"] == {"from": "other"}
        assert "authorization" not in other.calls("/data")[-1].headers  # another origin
        for path in ("/meta", "/meta6"):
            message = failure(source(upstream.url(path))).message
            assert message.startswith("refusing to fetch from"), message
            assert "FLUX_SOURCES_ALLOW_LINK_LOCAL" in message
        assert "must start with http://" in failure(source(upstream.url("/file"))).message
        assert failure(source(upstream.url("/loop"))).message == (
            "upstream redirected more than 5 times"
        )
        assert len(upstream.calls("/loop")) == 6
    finally:
        other.stop()


# -- with auth on: one message for every failure to fetch ----------------------------------------

HOME = Policy(allow_private=False, allowed_networks=(ipaddress.ip_network("127.0.0.1/32"),))


def tenant_failure(url: str, **changes: Any) -> ConnectorError:
    """What a source with auth on (errors not detailed, the loopback server allowed) raises."""
    src = GenericSource(SID, config(url=url, **changes), 1000, HOME, detailed_errors=False)

    async def go() -> list[dict[str, Any]]:
        async with httpx.AsyncClient(transport=GuardedTransport(HOME), timeout=1) as client:
            return await src.fetch(client, None)

    with pytest.raises(ConnectorError) as info:
        asyncio.run(go())
    return info.value


def test_without_detail_every_fetch_failure_reads_the_same(upstream: JsonServer) -> None:
    from conftest import free_port

    upstream.set("/missing", {"error": "x"}, status=404)
    upstream.set("/denied", {"error": "x"}, status=401)
    upstream.set("/limited", {}, status=429, headers={"Retry-After": "3"})
    upstream.set("/slow", {"ok": 1}, delay=2.0)
    upstream.set("/inside", status=302, headers={"Location": "http://127.0.0.2/"})
    upstream.set("/meta", status=302, headers={"Location": "http://169.254.169.254/"})
    upstream.set("/file", status=302, headers={"Location": "file:///etc/passwd"})
    upstream.set("/loop", status=302, headers={"Location": "/loop"})
    urls = [upstream.url(p) for p in ("/missing", "/denied", "/limited", "/slow", "/inside")]
    urls += [upstream.url(p) for p in ("/meta", "/file", "/loop")]
    urls += [f"http://127.0.0.1:{free_port()}/", "http://does-not-resolve.invalid/"]
    for url in urls:
        error = tenant_failure(url)
        assert error.message == FETCH_FAILED, (url, error.message)
        assert error.detail and error.detail != FETCH_FAILED  # for the server log
    assert tenant_failure(upstream.url("/limited")).retry_after == 3.0  # still honoured
    # What is wrong with a response it did get is still said: the tenant may read it anyway.
    upstream.set("/html", raw=b"<html></html>")
    upstream.set("/big", {"x": "y" * 2000})
    upstream.set("/list", [1, 2])
    assert tenant_failure(upstream.url("/html")).message.startswith("upstream did not answer")
    assert tenant_failure(upstream.url("/big")).message.startswith("upstream response is over")
    assert "not a JSON object" in tenant_failure(upstream.url("/list")).message


def test_describe_failure_without_detail() -> None:
    quiet = GenericSource(SID, config(), detailed_errors=False)
    loud = GenericSource(SID, config())
    assert quiet.describe_failure(TimeoutError()) == FETCH_FAILED
    assert loud.describe_failure(TimeoutError()) == "timed out"
    assert quiet.describe_failure(httpx.ConnectError("refused")) == FETCH_FAILED
    assert quiet.describe_failure(ConnectorError("bad shape")) == "bad shape"
    assert quiet.describe_failure(RateLimited(3)) == "Flux refused the events: rate limit exceeded"


def test_the_interval_has_a_floor() -> None:
    assert GenericSource(SID, config(poll_interval_secs=1)).poll_interval_seconds == 1.0
    floored = GenericSource(SID, config(poll_interval_secs=1), min_interval_seconds=10)
    assert floored.poll_interval_seconds == 10.0
    slow = GenericSource(SID, config(poll_interval_secs=60), min_interval_seconds=10)
    assert slow.poll_interval_seconds == 60.0
