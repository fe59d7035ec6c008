"""Cross-namespace probes over every transport: with auth on, nothing of a private namespace
(its entity ids, its property values) reaches a caller without its token, however the probe
spells the id, prefix or namespace, over plain HTTP (entity, listing, history), WebSocket
(exact, prefix, snapshot, replay) and SSE (exact, prefix, replay). Every answer is a success or
a JSON error, never a 5xx.

The spellings are generated (hypothesis): the real id and namespace with case changes, extra
or missing slashes, percent-encoding, dot segments, look-alike characters, wildcards and cut
prefixes, since each is a way an authorization check keyed on a string could be slipped past.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from conftest import FluxServer
from flux.client import path_segment
from liveclient import ws_url

ADMIN = "isolation-admin"
SECRET = "secret-" + secrets.token_hex(8)  # the hidden entity's value; no probe contains it
HIDDEN_ID = "sec/hidden-" + secrets.token_hex(6)
TIMEOUT = 10.0

PROBES = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FluxServer, dict[str, str]]]:
    data_dir: Path = tmp_path_factory.mktemp("isolation") / "data"
    env = {
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_RATE_LIMIT_ENABLED": "false",
    }
    server = FluxServer(data_dir, env).start()
    try:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        tokens = {}
        for name, private in (("sec", True), ("pub", False)):
            made = httpx.post(
                f"{server.url}/api/namespaces",
                json={"name": name, "private": private},
                headers=admin,
            )
            assert made.status_code == 200, made.text
            tokens[name] = made.json()["token"]
        for entity_id, token, value in (
            (HIDDEN_ID, tokens["sec"], SECRET),
            ("pub/open", tokens["pub"], "public"),
        ):
            event = {
                "stream": "probe",
                "source": "isolation",
                "timestamp": 1,
                "payload": {"entity_id": entity_id, "properties": {"value": value}},
            }
            stored = httpx.post(
                f"{server.url}/api/events",
                json=event,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert stored.status_code == 200, stored.text
        yield server, tokens
    finally:
        server.stop()


def _lookalike(text: str) -> str:
    return text.replace("s", "\u0455").replace("e", "\u0435")  # Cyrillic look-alikes


SPELLINGS = st.sampled_from(
    [
        lambda t: t,
        str.upper,
        lambda t: t.title(),
        lambda t: t.replace("/", "//"),
        lambda t: "/" + t,
        lambda t: t + "/",
        lambda t: t.replace("/", "%2F"),
        lambda t: quote(t, safe=""),
        lambda t: "./" + t,
        lambda t: t + "/..",
        lambda t: "x/../" + t,
        lambda t: t[:-1],
        lambda t: t[:3],
        lambda t: t.split("/")[0],
        lambda t: t + "*",
        lambda t: " " + t,
        lambda t: t + "\t",
        _lookalike,
        lambda t: t.replace("/", "\\"),
        lambda t: t.replace("/", "\u2215"),  # division slash
    ]
)
BASES = st.sampled_from([HIDDEN_ID, "sec/", "sec", "*", "", HIDDEN_ID.split("-")[0]])
CALLERS = st.sampled_from(["none", "unknown", "other"])


def _headers(caller: str, tokens: dict[str, str]) -> dict[str, str]:
    if caller == "unknown":
        return {"Authorization": "Bearer not-a-token"}
    if caller == "other":
        return {"Authorization": f"Bearer {tokens['pub']}"}
    return {}


def _leaks(text: str) -> bool:
    """Whether a response shows the hidden entity's data. (Its id may come back in an answer
    that echoes the probe, a `subscribed` message say, so the value is what is looked for:
    every message that carries an entity's state or history carries its properties.)"""
    return SECRET in text


def _check_http(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.request.url, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body.get("error"), str), response.text
    assert not _leaks(response.text), (response.request.url, response.text)


async def _ws_probe(url: str, headers: dict[str, str], request: dict[str, Any]) -> None:
    async with connect(
        ws_url(url), additional_headers=headers, open_timeout=TIMEOUT, close_timeout=2
    ) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", **request}).decode())
        while True:
            frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert isinstance(frame, str)
            assert not _leaks(frame), (request, frame)
            kind = orjson.loads(frame)["type"]
            if kind in ("subscribed", "error"):
                return


async def _sse_probe(
    http: httpx.AsyncClient, headers: dict[str, str], params: dict[str, str]
) -> None:
    async with http.stream("GET", "/api/events/stream", params=params, headers=headers) as r:
        assert r.status_code < 500
        if r.status_code != 200:
            body = await r.aread()
            assert not _leaks(body.decode()), body
            return
        lines = r.aiter_lines()
        while True:
            line = await asyncio.wait_for(anext(lines), TIMEOUT)
            assert not _leaks(line), (params, line)
            if line in ("event: subscribed", "event: error"):
                return


@PROBES
@given(base=BASES, spell=SPELLINGS, caller=CALLERS)
def test_no_probe_reveals_a_private_namespace(
    world: tuple[FluxServer, dict[str, str]], base: str, spell: Any, caller: str
) -> None:
    server, tokens = world
    probe = spell(base)
    headers = _headers(caller, tokens)
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, headers=headers) as http:
        for path in (
            "/api/state/entities/" + path_segment(probe),
            "/api/state/entities/" + quote(probe, safe="/"),
        ):
            if path.rstrip("/") != "/api/state/entities":
                _check_http(http.get(path))
        for params in ({"namespace": probe}, {"prefix": probe}):
            _check_http(http.get("/api/state/entities", params=params))
        if probe:
            _check_http(http.get("/api/events", params={"entity": probe}))

    async def live() -> None:
        await _ws_probe(server.url, headers, {"entity_id": probe, "snapshot": True, "since": 0})
        await _ws_probe(server.url, headers, {"prefix": probe, "snapshot": True, "since": 0})
        async with httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http:
            await _sse_probe(http, headers, {"entity_id": probe, "since": "0"})
            await _sse_probe(http, headers, {"prefix": probe, "since": "0"})

    asyncio.run(live())


def test_the_owner_sees_what_the_probes_do_not(world: tuple[FluxServer, dict[str, str]]) -> None:
    """The control: the same transports do show the hidden entity to its namespace's token, so
    the probes above are looking where the data is."""
    server, tokens = world
    owner = {"Authorization": f"Bearer {tokens['sec']}"}
    with httpx.Client(base_url=server.url, timeout=TIMEOUT, headers=owner) as http:
        got = http.get("/api/state/entities/" + path_segment(HIDDEN_ID))
        assert got.status_code == 200 and got.json()["properties"]["value"] == SECRET
        assert _leaks(http.get("/api/state/entities", params={"prefix": "sec/"}).text)
        assert _leaks(http.get("/api/events", params={"entity": HIDDEN_ID}).text)

    async def live() -> None:
        async with connect(ws_url(server.url), additional_headers=owner) as ws:
            await ws.send(
                orjson.dumps({"type": "subscribe", "prefix": "sec/", "since": 0}).decode()
            )
            frames = []
            while not frames or orjson.loads(frames[-1])["type"] != "subscribed":
                frames.append(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert any(_leaks(str(frame)) for frame in frames)

    asyncio.run(live())


def test_server_wide_documents_reveal_nothing(world: tuple[FluxServer, dict[str, str]]) -> None:
    """Health, metrics, the OpenAPI document and the directory entity, anonymously."""
    server, _ = world
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        for path in ("/api/health", "/metrics", "/openapi.json"):
            _check_http(http.get(path))
        _check_http(http.get("/api/state/entities/" + path_segment("flux-core/directory")))
