"""Generated frames and query strings against the live transports of a real server: every
WebSocket frame gets an answer that is a protocol message (an `error` for a bad one), the
connection stays usable after it, every SSE request is a stream or a JSON error (never a 5xx),
and the server's log holds no traceback at the end."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from api.strategies import json_values
from conftest import FluxServer
from liveclient import ws_url

TIMEOUT = 10.0
KNOWN = ("subscribed", "snapshot", "resync", "state_update", "entity_deleted", "error")
KNOWN_REPLIES = (*KNOWN, "pong", "authenticated", "unsubscribed")

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    data_dir: Path = tmp_path_factory.mktemp("protocol-fuzz") / "data"
    srv = FluxServer(data_dir, {"FLUX_DIRECTORY_INTERVAL_SECONDS": "0"}).start()
    with httpx.Client(base_url=srv.url) as http:
        for n in range(3):
            event = {
                "stream": "fuzz",
                "source": "fuzz",
                "timestamp": 1,
                "payload": {"entity_id": f"fz/e{n}", "properties": {"n": n}},
            }
            assert http.post("/api/events", json=event).status_code == 200
    yield srv
    srv.stop()
    assert "Traceback" not in srv.logs(), srv.logs()


filters = st.fixed_dictionaries(
    {},
    optional={
        "entity_id": st.one_of(st.sampled_from(["fz/e1", "*", "", "fz/"]), json_values),
        "entityId": json_values,
        "prefix": st.one_of(st.sampled_from(["fz/", "", "f"]), json_values),
        "since": st.one_of(st.integers(min_value=-5, max_value=2**70), json_values),
        "snapshot": st.one_of(st.booleans(), json_values),
        "token": st.one_of(st.text(max_size=12), json_values),
    },
)
messages = st.one_of(
    st.builds(
        lambda kind, fields: {"type": kind, **fields},
        st.one_of(
            st.sampled_from(["subscribe", "unsubscribe", "auth", "ping", "", "SUBSCRIBE"]),
            json_values,
        ),
        filters,
    ),
    json_values,
)


def _dumps(message: Any) -> str:
    """JSON text of a generated message; the standard library takes the integers beyond 64 bits
    (a `since` up to 2**70) that orjson refuses."""
    try:
        return orjson.dumps(message, option=orjson.OPT_NON_STR_KEYS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(message)


frames = st.one_of(
    messages.map(_dumps),
    st.text(max_size=40),
    st.binary(max_size=40),
    st.just("[" * 2000 + "]" * 2000),
    st.just('{"type":"subscribe","entity_id":"fz/e1","since":' + "9" * 400 + "}"),
)


async def _answers(ws: Any, frame: str | bytes) -> list[dict[str, Any]]:
    """Send `frame`, then a ping; everything that came back before the pong."""
    await ws.send(frame)
    await ws.send('{"type":"ping"}')
    got = []
    while True:
        raw = await asyncio.wait_for(ws.recv(), TIMEOUT)
        message = orjson.loads(raw)
        if message["type"] == "pong":
            return got
        if message["type"] != "metrics_update":
            got.append(message)


@FUZZ
@given(batch=st.lists(frames, min_size=1, max_size=5))
def test_any_websocket_frame_gets_a_protocol_answer(server: FluxServer, batch: list[Any]) -> None:
    async def scenario() -> None:
        async with connect(ws_url(server.url), open_timeout=TIMEOUT, close_timeout=2) as ws:
            for frame in batch:
                for message in await _answers(ws, frame):
                    assert message["type"] in KNOWN_REPLIES, (frame, message)
                    if message["type"] == "error":
                        assert set(message) == {"type", "error"}, message
                        assert message["error"], message

    asyncio.run(scenario())


queries = st.dictionaries(
    st.sampled_from(["entity_id", "prefix", "since", "snapshot", "x"]),
    st.one_of(
        st.text(max_size=12),
        st.integers(min_value=-3, max_value=2**70).map(str),
        st.just("9" * 300),
    ),
    max_size=3,
)


@FUZZ
@given(params=queries, last_event_id=st.one_of(st.none(), st.text(max_size=10)))
def test_any_sse_query_is_a_stream_or_a_json_error(
    server: FluxServer, params: dict[str, str], last_event_id: str | None
) -> None:
    headers = {}
    if last_event_id is not None and last_event_id.isprintable() and last_event_id.isascii():
        headers["Last-Event-ID"] = last_event_id

    async def scenario() -> None:
        async with (
            httpx.AsyncClient(base_url=server.url, timeout=TIMEOUT) as http,
            http.stream("GET", "/api/events/stream", params=params, headers=headers) as response,
        ):
            if response.status_code != 200:
                assert 400 <= response.status_code < 500, response.status_code
                body = orjson.loads(await response.aread())
                assert isinstance(body["error"], str)
                return
            lines = response.aiter_lines()
            while True:
                line = await asyncio.wait_for(anext(lines), TIMEOUT)
                if line.startswith("event: "):
                    assert line[len("event: ") :] in (*KNOWN, "metrics_update"), line
                if line in ("event: subscribed", "event: error"):
                    return

    asyncio.run(scenario())
