"""GET /api/events/stream: the live changes as Server-Sent Events, against a real server with
httpx streaming. Same filters as the WebSocket; resume with Last-Event-ID (or `since`)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from conftest import FluxServer
from liveclient import TIMEOUT, ZULU, Publisher, Stream, event


@pytest.fixture(scope="module")
def sse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    data_dir = tmp_path_factory.mktemp("sse") / "data"
    srv = FluxServer(data_dir, env={"FLUX_METRICS_INTERVAL_SECONDS": "0.2"}).start()
    yield srv
    srv.stop()
    assert "Traceback" not in srv.logs()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name.removeprefix('test_')[:40]}/"


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


@asynccontextmanager
async def stream(
    base_url: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[Stream]:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=TIMEOUT) as http,
        http.stream("GET", "/api/events/stream", params=params, headers=headers) as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        yield Stream(response)


def test_changes_arrive_as_events_with_an_id_on_the_last_message_of_a_version(
    sse_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with stream(sse_server.url, prefix=ns) as events, Publisher(sse_server.url) as pub:
            (subscribed,) = await events.until_subscribed()
            assert events.retry == 1000
            assert subscribed["data"]["prefix"] == ns
            assert subscribed["id"] == str(subscribed["data"]["version"])
            seq = await pub.one(f"{ns}a", t=1, u=2, w=3)
            got = [await events.next() for _ in range(3)]
            assert [e["event"] for e in got] == ["state_update"] * 3
            assert [e["id"] for e in got] == [None, None, str(seq)]
            assert [e["data"]["property"] for e in got] == ["t", "u", "w"]
            first = got[0]["data"]
            assert set(first) == {"type", "entity_id", "property", "value", "timestamp", "version"}
            assert first["version"] == seq and ZULU.match(first["timestamp"])
            await pub.delete(f"{ns}a")
            deleted = await events.next()
            assert deleted["event"] == "entity_deleted"
            assert deleted["id"] == str(deleted["data"]["version"]) == str(seq + 1)

    run(main)


def test_metrics_update_events_have_no_id(sse_server: FluxServer) -> None:
    async def main() -> None:
        async with stream(sse_server.url, entity_id="nothing/here") as events:
            await events.until_subscribed()
            message = await events.next(skip_metrics=False)
            assert message["event"] == "metrics_update" and message["id"] is None
            assert {"entities", "events", "websocket", "publishers"} <= set(message["data"])

    run(main)


def test_filters_entity_prefix_and_everything(sse_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with (
            stream(sse_server.url, entity_id=f"{ns}x/1") as exact,
            stream(sse_server.url, prefix=f"{ns}x/") as prefix,
            stream(sse_server.url) as everything,
            Publisher(sse_server.url) as pub,
        ):
            for events in (exact, prefix, everything):
                await events.until_subscribed()
            for entity_id in (f"{ns}x/1", f"{ns}y", f"{ns}x/2"):
                await pub.one(entity_id, v=1)
            assert (await exact.next())["data"]["entity_id"] == f"{ns}x/1"
            assert [(await prefix.next())["data"]["entity_id"] for _ in range(2)] == [
                f"{ns}x/1",
                f"{ns}x/2",
            ]
            mine = []
            while len(mine) < 3:
                message = await everything.next()
                if message["data"].get("entity_id", "").startswith(ns):
                    mine.append(message["data"]["entity_id"])
            assert mine == [f"{ns}x/1", f"{ns}y", f"{ns}x/2"]
            # Nothing else for the exact stream: the next change to its entity is next.
            seq = await pub.one(f"{ns}x/1", v=2)
            assert (await exact.next())["data"]["version"] == seq

    run(main)


def test_resume_with_last_event_id_gets_exactly_the_missed_changes(
    sse_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with Publisher(sse_server.url) as pub:
            async with stream(sse_server.url, prefix=ns) as events:
                await events.until_subscribed()
                for n in range(3):
                    await pub.one(f"{ns}a", n=n)
                for _ in range(3):
                    await events.next()
                last_id = events.last_id
            missed = await pub.batch([event(f"{ns}{n % 2}", {"n": n}) for n in range(20)])
            assert last_id is not None
            # `since` in the URL is what the stream was opened with; the browser's
            # Last-Event-ID header on reconnection wins over it.
            async with stream(
                sse_server.url, headers={"Last-Event-ID": last_id}, prefix=ns, since=0
            ) as events:
                *replayed, subscribed = await events.until_subscribed()
                assert [int(e["id"]) for e in replayed] == missed
                assert [e["data"]["value"] for e in replayed] == list(range(20))
                assert subscribed["id"] == str(missed[-1])
            async with stream(sse_server.url, prefix=ns, since=missed[9]) as events:
                *replayed, _ = await events.until_subscribed()
                assert [int(e["id"]) for e in replayed] == missed[10:]

    run(main)


def test_a_resume_never_skips_the_rest_of_a_half_received_version(
    sse_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with Publisher(sse_server.url) as pub:
            async with stream(sse_server.url, entity_id=f"{ns}a") as events:
                await events.until_subscribed()
                before = await pub.one(f"{ns}a", p=0)
                seq = await pub.one(f"{ns}a", p=1, q=2, r=3)
                await events.next()
                await events.next()  # `p` of the 3-property version: no id yet
                partial = await events.next()
                assert partial["data"]["version"] == seq and partial["id"] is None
                assert events.last_id == str(before)
            async with stream(
                sse_server.url, headers={"Last-Event-ID": str(before)}, entity_id=f"{ns}a"
            ) as events:
                *replayed, _ = await events.until_subscribed()
                assert [e["data"]["property"] for e in replayed] == ["p", "q", "r"]
                assert [e["id"] for e in replayed] == [None, None, str(seq)]

    run(main)


def test_resync_events(sse_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(sse_server.url) as pub:
            seq = await pub.one(f"{ns}a", v=1)
            async with stream(sse_server.url, entity_id=f"{ns}a", since=seq + 100) as events:
                resync, snapshot, subscribed = await events.until_subscribed()
                assert (resync["event"], resync["id"]) == ("resync", None)
                assert (snapshot["event"], snapshot["id"]) == ("snapshot", None)
                assert snapshot["data"]["properties"] == {"v": 1}
                assert subscribed["id"] == str(await pub.last_seq())

    run(main)


@pytest.mark.parametrize(
    ("params", "headers"),
    [
        ({"since": "x"}, {}),
        ({"since": "-1"}, {}),
        ({"since": "²"}, {}),
        ({}, {"Last-Event-ID": b"\xb2"}),  # latin-1 "²": a digit, but not a version
        ({}, {"Last-Event-ID": b"1e3"}),
    ],
)
def test_a_bad_resume_version_is_a_400(
    sse_server: FluxServer, params: dict[str, str], headers: dict[str, bytes]
) -> None:
    response = httpx.get(
        f"{sse_server.url}/api/events/stream", params=params, headers=headers, timeout=TIMEOUT
    )
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["error"]


def test_a_closed_stream_leaves_no_connection_behind(sse_server: FluxServer) -> None:
    async def main() -> None:
        for _ in range(3):
            async with stream(sse_server.url) as events:
                await events.until_subscribed()
        async with httpx.AsyncClient(base_url=sse_server.url) as http:
            deadline = time.monotonic() + 10
            while "\nflux_websocket_connections 0\n" not in (await http.get("/metrics")).text:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

    run(main)


def test_a_client_leaving_mid_replay_leaves_nothing_behind(sse_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(sse_server.url) as pub:
            start = await pub.last_seq()
            await pub.batch(
                [event(f"{ns}{n % 5}", {"n": n, "pad": "p" * 300}) for n in range(3000)]
            )
            async with stream(sse_server.url, prefix=ns, since=start) as events:
                await events.next()  # the replay is under way
            deadline = time.monotonic() + 10
            while "\nflux_websocket_connections 0\n" not in (await pub.http.get("/metrics")).text:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)

    run(main)
    assert "Traceback" not in sse_server.logs()
