"""GET /api/ws against a real `flux serve`, with real WebSocket clients (docs/websocket.md).

One server serves the module; each test uses its own entity ids (a prefix per test), so tests do
not see each other's changes except through wildcard subscriptions, which they filter.
Every receive is bounded (wsclient.TIMEOUT)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import FluxServer, LocalTestClient
from flux.api.app import create_app
from flux.config import Settings
from liveclient import ZULU, Client, Message, Publisher, event, versions, ws_client

QUEUE_LIMIT = 500
MAX_SUBSCRIPTIONS = 5


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FluxServer]:
    data_dir = tmp_path_factory.mktemp("ws") / "data"
    env = {
        "FLUX_METRICS_INTERVAL_SECONDS": "0.2",
        "FLUX_WS_QUEUE_LIMIT": str(QUEUE_LIMIT),
        "FLUX_WS_MAX_SUBSCRIPTIONS": str(MAX_SUBSCRIPTIONS),
    }
    srv = FluxServer(data_dir, env=env).start()
    yield srv
    srv.stop()
    logs = srv.logs()
    assert "Traceback" not in logs, logs


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """An entity id prefix of this test's own."""
    return f"{request.node.name.removeprefix('test_')[:40]}/"


def run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


# -- message types and fields -----------------------------------------------------------------


def test_state_update_has_every_field_one_message_per_property(
    live_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws, Publisher(live_server.url) as pub:
            (ack,) = await ws.subscribe(entity_id=f"{ns}s1")
            seq = await pub.one(f"{ns}s1", temperature=22.5, humidity=40, label="x", on=None)
            updates = await ws.changes(4)
            assert [u["property"] for u in updates] == ["temperature", "humidity", "label", "on"]
            assert [u["value"] for u in updates] == [22.5, 40, "x", None]
            for update in updates:
                assert set(update) == {
                    "type",
                    "entity_id",
                    "property",
                    "value",
                    "timestamp",
                    "version",
                }
                assert update["type"] == "state_update"
                assert update["entity_id"] == f"{ns}s1"
                assert update["version"] == seq
                assert ZULU.match(update["timestamp"]), update
            assert len({u["timestamp"] for u in updates}) == 1
            assert ack["version"] < seq
            entity = (await pub.http.get(f"/api/state/entities/{ns}s1")).json()
            assert entity["properties"]["temperature"] == 22.5

    run(main)


def test_subscribed_carries_the_filter_and_the_version(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            seq = await pub.one(f"{ns}a", v=1)
        async with ws_client(live_server.url) as ws:
            assert await ws.subscribe(entity_id=f"{ns}a") == [
                {"type": "subscribed", "entity_id": f"{ns}a", "version": seq}
            ]
            assert await ws.subscribe(prefix=ns) == [
                {"type": "subscribed", "prefix": ns, "version": seq}
            ]
            assert await ws.subscribe(entity_id="*") == [
                {"type": "subscribed", "entity_id": "*", "version": seq}
            ]

    run(main)


def test_entity_deleted(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws, Publisher(live_server.url) as pub:
            await ws.subscribe(prefix=ns)
            seq = await pub.one(f"{ns}gone", v=1)
            await ws.changes(1)
            await pub.delete(f"{ns}gone")
            deleted = await ws.expect("entity_deleted")
            assert set(deleted) == {"type", "entity_id", "timestamp", "version"}
            assert deleted["entity_id"] == f"{ns}gone"
            assert deleted["version"] == seq + 1 == await pub.last_seq()
            assert ZULU.match(deleted["timestamp"])
            # Live, a delete of an entity that does not exist sends nothing (as the original).
            await pub.delete(f"{ns}never-existed")
            await ws.nothing()

    run(main)


def test_ping_gets_pong(live_server: FluxServer) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws:
            await ws.send(type="ping")
            assert await ws.recv() == {"type": "pong"}

    run(main)


def test_metrics_update_every_interval_with_every_figure(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    """A server of its own, so that every figure is exact."""
    srv = server_factory(tmp_path / "m", env={"FLUX_METRICS_INTERVAL_SECONDS": "0.2"}).start()

    async def main() -> None:
        async with (
            ws_client(srv.url) as ws,
            ws_client(srv.url, max_queue=None),  # never read: buffers without limit
            Publisher(srv.url) as pub,
        ):
            await pub.batch([event(f"m/{n}", {"v": n}, source=f"src-{n % 3}") for n in range(12)])
            await pub.delete("m/0")
            await pub.one("m/1", source="src-0", v=100)
            # Wait for a tick that saw both connections and every event.
            while True:
                tick = await ws.recv_raw()
                if tick["type"] != "metrics_update":
                    continue
                if tick["websocket"]["connections"] == 2 and tick["events"]["total"] == 14:
                    break
            assert set(tick) == {
                "type",
                "timestamp",
                "entities",
                "events",
                "websocket",
                "publishers",
            }
            assert ZULU.match(tick["timestamp"])
            assert tick["entities"] == {"total": 11}
            assert tick["events"]["total"] == 14
            rate = tick["events"]["rate_per_second"]
            assert isinstance(rate, float) and 0 < rate <= 14 / 5
            assert tick["websocket"] == {"connections": 2}
            assert tick["publishers"] == {"active": 4}  # src-0, src-1, src-2 and the API's delete
            # Every interval: ticks keep coming, about 0.2 s apart.
            began = time.monotonic()
            for _ in range(5):
                while (await ws.recv_raw())["type"] != "metrics_update":
                    pass
            assert 0.5 < time.monotonic() - began < 5.0
            # GET /metrics gives the same figures.
            text = (await pub.http.get("/metrics")).text
            assert "\nflux_entities 11\n" in text
            assert "\nflux_events_total 14\n" in text
            assert "\nflux_websocket_connections 2\n" in text
            assert "\nflux_publishers_active 4\n" in text

    run(main)
    srv.stop()


# -- snapshot-on-subscribe -------------------------------------------------------------------


def test_snapshot_on_subscribe_then_live(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            await pub.one(f"{ns}a", t=1, u="x")
            await pub.one(f"{ns}b", t=2)
            last = await pub.one(f"{ns}a", t=3)
            newest = await pub.one(f"other-{ns}a", t=4)
            async with ws_client(live_server.url) as ws:
                received = await ws.subscribe(prefix=ns, snapshot=True)
                *snapshots, ack = received
                assert ack == {"type": "subscribed", "prefix": ns, "version": newest}
                by_id = {s["entity_id"]: s for s in snapshots}
                assert set(by_id) == {f"{ns}a", f"{ns}b"}
                a = by_id[f"{ns}a"]
                assert set(a) == {"type", "entity_id", "properties", "timestamp", "version"}
                assert a["type"] == "snapshot"
                assert a["properties"] == {"t": 3, "u": "x"}
                assert a["version"] == last
                assert ZULU.match(a["timestamp"])
                assert by_id[f"{ns}b"]["properties"] == {"t": 2}
                # A snapshot of one entity that does not exist is just the acknowledgement.
                assert [
                    m["type"] for m in await ws.subscribe(entity_id=f"{ns}zz", snapshot=True)
                ] == ["subscribed"]
                seq = await pub.one(f"{ns}b", t=5)
                (update,) = await ws.changes(1)
                assert (update["entity_id"], update["value"], update["version"]) == (
                    f"{ns}b",
                    5,
                    seq,
                )

    run(main)


# -- filters -----------------------------------------------------------------------------------


def test_exact_prefix_and_wildcard_filters(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with (
            ws_client(live_server.url) as exact,
            ws_client(live_server.url) as prefix,
            ws_client(live_server.url) as star,
            ws_client(live_server.url) as alias,
            Publisher(live_server.url) as pub,
        ):
            await exact.subscribe(entity_id=f"{ns}x/1")
            await prefix.subscribe(prefix=f"{ns}x/")
            await star.subscribe(entity_id="*")
            assert (await alias.subscribe(entityId=f"{ns}x/1"))[-1]["entity_id"] == f"{ns}x/1"
            ids = [f"{ns}x/1", f"{ns}x/10", f"{ns}x", f"{ns}y/1", f"{ns}x/1/deep"]
            seqs = {await pub.one(entity_id, v=n): entity_id for n, entity_id in enumerate(ids)}

            async def ids_seen(ws: Client, count: int) -> list[str]:
                got = [m["entity_id"] for m in await ws.changes(count)]
                await ws.nothing()
                return got

            assert await ids_seen(exact, 1) == [f"{ns}x/1"]
            assert await ids_seen(alias, 1) == [f"{ns}x/1"]
            assert await ids_seen(prefix, 3) == [f"{ns}x/1", f"{ns}x/10", f"{ns}x/1/deep"]
            # The wildcard sees every entity, this test's among them, in log order.
            mine = []
            while len(mine) < len(ids):
                message = (await star.changes(1))[0]
                if message["entity_id"].startswith(ns):
                    mine.append(message)
            assert [m["entity_id"] for m in mine] == ids
            assert [seqs[m["version"]] for m in mine] == ids

    run(main)


def test_a_connection_that_never_subscribed_receives_everything(
    live_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as fresh, Publisher(live_server.url) as pub:
            seq = await pub.one(f"{ns}anything", v=1)
            while True:
                message = await fresh.recv()
                if message.get("entity_id") == f"{ns}anything":
                    break
            assert message["type"] == "state_update" and message["version"] == seq

    run(main)


def test_unsubscribing_from_everything_means_nothing_arrives(
    live_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws, Publisher(live_server.url) as pub:
            await ws.subscribe(entity_id=f"{ns}a")
            await ws.subscribe(prefix=f"{ns}p/")
            await ws.send(type="unsubscribe", entity_id=f"{ns}a")
            await ws.send(type="unsubscribe", prefix=f"{ns}p/")
            await pub.one(f"{ns}a", v=1)
            await pub.one(f"{ns}p/1", v=1)
            await pub.one("somewhere/else", v=1)
            await ws.nothing()

    run(main)


def test_several_subscriptions_per_connection_and_unsubscribing_one(
    live_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws, Publisher(live_server.url) as pub:
            await ws.subscribe(entity_id=f"{ns}a")
            await ws.subscribe(prefix=f"{ns}p/")
            await ws.subscribe(entityId=f"{ns}b")
            for entity_id in (f"{ns}a", f"{ns}p/1", f"{ns}b", f"{ns}c"):
                await pub.one(entity_id, v=1)
            assert [m["entity_id"] for m in await ws.changes(3)] == [
                f"{ns}a",
                f"{ns}p/1",
                f"{ns}b",
            ]
            await ws.nothing()
            await ws.send(type="unsubscribe", entityId=f"{ns}b")
            await ws.send(type="unsubscribe", prefix=f"{ns}nothing-held")  # ignored
            for entity_id in (f"{ns}a", f"{ns}p/2", f"{ns}b"):
                await pub.one(entity_id, v=2)
            assert [m["entity_id"] for m in await ws.changes(2)] == [f"{ns}a", f"{ns}p/2"]
            await ws.nothing()

    run(main)


def test_too_many_subscriptions_is_an_error(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws:
            for n in range(MAX_SUBSCRIPTIONS):
                await ws.subscribe(entity_id=f"{ns}{n}")
            await ws.send(type="subscribe", entity_id=f"{ns}one-more")
            error = await ws.expect("error")
            assert f"max {MAX_SUBSCRIPTIONS}" in error["error"]
            await ws.send(type="unsubscribe", entity_id=f"{ns}0")
            await ws.subscribe(entity_id=f"{ns}one-more")

    run(main)


# -- bad messages --------------------------------------------------------------------------------

BAD = [
    ("not json", "not valid JSON"),
    ('{"type": "subscribe", "entity_id": ', "not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('"subscribe"', "must be a JSON object"),
    ('{"type": "dance"}', "unknown message type 'dance'"),
    ('{"type": 7}', "unknown message type 7"),
    ('{"entity_id": "x"}', "missing field `type`"),
    ('{"type": "subscribe"}', "missing field `entity_id`"),
    ('{"type": "unsubscribe"}', "missing field `entity_id`"),
    ('{"type": "subscribe", "entity_id": 5}', "`entity_id` must be a string"),
    ('{"type": "subscribe", "prefix": ["a"]}', "`prefix` must be a string"),
    ('{"type": "subscribe", "entity_id": "x", "since": -1}', "`since` must be"),
    ('{"type": "subscribe", "entity_id": "x", "since": "3"}', "`since` must be"),
    ('{"type": "subscribe", "entity_id": "x", "since": true}', "`since` must be"),
    ('{"type": "subscribe", "entity_id": "x", "snapshot": "yes"}', "`snapshot` must be"),
]


def test_bad_messages_get_an_error_and_the_connection_stays_up(
    live_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with ws_client(live_server.url) as ws, Publisher(live_server.url) as pub:
            await ws.subscribe(entity_id=f"{ns}a")
            for frame, expected in BAD:
                await ws.ws.send(frame)
                error = await ws.expect("error")
                assert set(error) == {"type", "error"}
                assert expected in error["error"], (frame, error)
            await ws.ws.send(b'{"type": "ping"}')  # a binary frame
            error = await ws.expect("error")
            assert "binary" in error["error"]
            # Still up, and the subscription still works.
            await ws.nothing()
            seq = await pub.one(f"{ns}a", v=1)
            assert (await ws.changes(1))[0]["version"] == seq

    run(main)


# -- resume with `since` -----------------------------------------------------------------------


def test_resume_after_a_disconnect_gets_exactly_the_missed_changes(
    live_server: FluxServer, ns: str
) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            async with ws_client(live_server.url) as ws:
                await ws.subscribe(prefix=ns)
                for n in range(5):
                    await pub.one(f"{ns}{n % 2}", n=n, half=n / 2)
                seen = await ws.changes(10)
            last = seen[-1]["version"]
            # While disconnected: 40 events (two properties each), a delete, and noise.
            missed = await pub.batch(
                [event(f"{ns}{n % 3}", {"n": n, "m": -n}) for n in range(40)]
                + [event(f"elsewhere/{n}", {"n": n}) for n in range(5)]
            )
            await pub.delete(f"{ns}1")
            deleted_at = await pub.last_seq()
            async with ws_client(live_server.url) as ws:
                received = await ws.subscribe(prefix=ns, since=last)
                *replayed, ack = received
                assert ack == {"type": "subscribed", "prefix": ns, "version": deleted_at}
                expected = [*missed[:40], deleted_at]
                assert versions(replayed) == expected
                assert len(replayed) == 40 * 2 + 1
                for n, seq in enumerate(missed[:40]):
                    pair = [m for m in replayed if m["version"] == seq]
                    assert [(m["property"], m["value"]) for m in pair] == [("n", n), ("m", -n)]
                    assert {m["entity_id"] for m in pair} == {f"{ns}{n % 3}"}
                assert replayed[-1]["type"] == "entity_deleted"
                # Then live, with no gap.
                seq = await pub.one(f"{ns}2", n=99)
                (update,) = await ws.changes(1)
                assert update["version"] == seq

    run(main)


def test_resume_from_the_current_version_replays_nothing(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            seq = await pub.one(f"{ns}a", v=1)
            async with ws_client(live_server.url) as ws:
                assert await ws.subscribe(entity_id=f"{ns}a", since=seq, snapshot=True) == [
                    {"type": "subscribed", "entity_id": f"{ns}a", "version": seq}
                ]

    run(main)


def test_since_wins_over_snapshot(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            first = await pub.one(f"{ns}a", v=1)
            second = await pub.one(f"{ns}a", v=2)
            async with ws_client(live_server.url) as ws:
                received = await ws.subscribe(entity_id=f"{ns}a", since=first, snapshot=True)
                assert [(m["type"], m["version"]) for m in received] == [
                    ("state_update", second),
                    ("subscribed", second),
                ]

    run(main)


def test_replay_sends_entity_deleted_for_every_tombstone(live_server: FluxServer, ns: str) -> None:
    """Documented: replay has no state, so a tombstone a client published for an entity that
    never existed (nothing live) still replays as entity_deleted. (A DELETE of such an entity
    logs nothing.)"""

    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            before = await pub.last_seq()
            await pub.delete(f"{ns}never-existed")
            assert await pub.last_seq() == before
            await pub.one(f"{ns}never-existed", __deleted__=True)
            async with ws_client(live_server.url) as ws:
                received = await ws.subscribe(prefix=ns, since=before)
                assert [(m["type"], m.get("entity_id", m.get("prefix"))) for m in received] == [
                    ("entity_deleted", f"{ns}never-existed"),
                    ("subscribed", ns),
                ]

    run(main)


def test_since_ahead_of_the_log_is_a_resync(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            seq = await pub.one(f"{ns}a", v=7)
            async with ws_client(live_server.url) as ws:
                resync, snapshot, ack = await ws.subscribe(prefix=ns, since=seq + 1000)
                assert resync["type"] == "resync" and resync["version"] == seq
                assert f"version {seq + 1000} is ahead" in resync["reason"]
                assert (snapshot["type"], snapshot["properties"]) == ("snapshot", {"v": 7})
                assert ack["version"] == seq

    run(main)


def test_resume_while_events_keep_arriving_has_no_gap_and_no_duplicate(
    live_server: FluxServer, ns: str
) -> None:
    """Events are published throughout the replay: the replay -> live boundary must neither
    lose nor repeat one."""

    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            start = await pub.one(f"{ns}a", n=-1)
            backlog = await pub.batch([event(f"{ns}{n % 4}", {"n": n}) for n in range(1500)])
            published: list[int] = [*backlog]
            acked = asyncio.Event()
            done = asyncio.Event()

            async def keep_publishing() -> None:
                """Before, during and after the replay: until 5 batches after the ack."""
                after_ack = 0
                for n in range(500):
                    seqs = await pub.batch(
                        [event(f"{ns}{k % 4}", {"n": 2000 + n}) for k in range(5)]
                        + [event(f"noise-{ns}", {"n": n})]
                    )
                    published.extend(seqs[:5])
                    after_ack += acked.is_set()
                    if after_ack == 5:
                        break
                done.set()

            async with ws_client(live_server.url) as ws:
                # End the receive-everything default first: only the subscription counts.
                await ws.send(type="unsubscribe", entity_id="*")
                await ws.nothing()
                writer = asyncio.create_task(keep_publishing())
                await asyncio.sleep(0.01)
                await ws.send(type="subscribe", prefix=ns, since=start)
                got: list[Message] = []
                ack = None
                deadline = time.monotonic() + 30
                while not done.is_set() or len(got) < len(published):
                    assert time.monotonic() < deadline, (len(got), len(published))
                    try:  # short waits: the writer may finish while we wait
                        message = await ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    if message["type"] == "subscribed":
                        ack = message
                        acked.set()
                        continue
                    assert message["type"] == "state_update", message
                    got.append(message)
                await writer
                assert ack is not None
                # Live ones followed the ack. (Whether some landed before it too depends on
                # the machine's pace: on a loaded one the replay can end before the writer's
                # first batch, so only "at or after the backlog" is certain.)
                assert backlog[-1] <= ack["version"] < published[-1]
                assert [m["version"] for m in got] == published  # none lost, none twice
                await ws.nothing()

    run(main)


def test_a_client_leaving_mid_replay_leaves_no_traceback(live_server: FluxServer, ns: str) -> None:
    async def main() -> None:
        async with Publisher(live_server.url) as pub:
            start = await pub.last_seq()
            await pub.batch(
                [event(f"{ns}{n % 7}", {"n": n, "pad": "x" * 200}) for n in range(3000)]
            )
            for _ in range(2):
                async with ws_client(live_server.url) as ws:
                    await ws.send(type="subscribe", prefix=ns, since=start)
                    await ws.recv()  # the replay is under way
                    ws.ws.transport.abort()  # gone, without a closing handshake
            response = await pub.http.get("/api/health")
            assert response.status_code == 200
            # Every connection is gone from the server's count (none left behind).
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                text = (await pub.http.get("/metrics")).text
                if "\nflux_websocket_connections 0\n" in text:
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(text)

    run(main)
    logs = live_server.logs()
    assert "Traceback" not in logs and "ERROR" not in logs, logs


# -- in-process: no task outlives a connection -------------------------------------------------


def test_no_task_outlives_a_connection(settings: Settings) -> None:
    with LocalTestClient(create_app(settings)) as client:

        def tasks() -> set[str]:
            names = {t.get_name() for t in asyncio.all_tasks()}
            return {name for name in names if name.startswith("flux-ws")}

        assert client.portal is not None
        for message in ({"type": "ping"}, {"type": "subscribe", "entity_id": "a", "since": 0}):
            with client.websocket_connect("/api/ws") as ws:
                ws.send_json(message)
                assert ws.receive_json()["type"] in ("pong", "subscribed")
                assert client.portal.call(tasks) == {
                    "flux-ws-send",
                    "flux-ws-receive",
                    "flux-ws-ended",
                }
            deadline = time.monotonic() + 5
            while client.portal.call(tasks) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert client.portal.call(tasks) == set()
        live: Any = client.app.state.live  # type: ignore[attr-defined]
        assert live.connections == 0


def test_http_get_on_the_websocket_route_is_not_a_crash(live_server: FluxServer) -> None:
    response = httpx.get(f"{live_server.url}/api/ws", timeout=10)
    assert response.status_code in (400, 404, 426)


def test_resync_when_the_log_no_longer_reaches_back(
    server_factory: type[FluxServer], tmp_path: Path
) -> None:
    env = {"FLUX_RETENTION_MAX_EVENTS": "10", "FLUX_SNAPSHOT_EVERY_EVENTS": "5"}
    srv = server_factory(tmp_path / "r", env=env).start()

    async def main() -> None:
        async with Publisher(srv.url) as pub:
            first = await pub.one("r/a", v=0)
            for n in range(1, 60):
                await pub.one(f"r/{'ab'[n % 2]}", v=n)
            await pub.one("other/x", v=1)
            await pub.delete("r/b")
            last = await pub.last_seq()
            deadline = time.monotonic() + 20
            while True:  # retention runs after each background snapshot
                async with ws_client(srv.url) as ws:
                    received = await ws.subscribe(prefix="r/", since=first)
                if received[0]["type"] == "resync" or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.05)
            resync, snapshot, ack = received
            assert set(resync) == {"type", "reason", "version"}
            assert resync["type"] == "resync" and resync["version"] == last
            assert f"no longer reaches back to version {first}" in resync["reason"]
            assert snapshot["type"] == "snapshot" and snapshot["entity_id"] == "r/a"
            assert snapshot["properties"] == {"v": 58}
            assert ack == {"type": "subscribed", "prefix": "r/", "version": last}
            # A `since` the log still holds replays as usual.
            async with ws_client(srv.url) as ws:
                received = await ws.subscribe(prefix="r/", since=last - 2)
                assert [m["type"] for m in received] == ["entity_deleted", "subscribed"]

    run(main)
    srv.stop()
