"""Deleting a namespace ends its past for everyone (issue 11, defect 1).

With auth on, once the admin deletes a namespace, nothing from before the delete is served
again: not its history (`GET /api/events`), not a WebSocket or SSE replay from `since=0`, not
its state or listings; not to an anonymous caller, not to the admin, and not to whoever
registers the same name next (a new namespace starts empty). Other namespaces keep their data,
and all of it holds after a restart (also after SIGKILL right after the delete answered). The
delete itself leaks nothing while it runs: subscribers without the namespace's token see no
`entity_deleted` of a private namespace, and writes in flight when the delete begins leave
nothing behind.

Real servers (`flux serve`), real HTTP, WebSocket and SSE clients.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from websockets.asyncio.client import connect

from conftest import FluxServer
from flux.client import path_segment
from liveclient import ws_url

ADMIN = "nsdel-admin"
ENV = {
    "FLUX_AUTH_ENABLED": "true",
    "FLUX_ADMIN_TOKEN": ADMIN,
    "FLUX_RATE_LIMIT_ENABLED": "false",
    "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
}
SECRET = "secret-" + secrets.token_hex(8)  # only the deleted namespaces ever held this value
TIMEOUT = 10.0
CHANGES = ("state_update", "entity_deleted", "snapshot")


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token is not None else {}


def register(http: httpx.Client, name: str, private: bool) -> str:
    made = http.post(
        "/api/namespaces", json={"name": name, "private": private}, headers=bearer(ADMIN)
    )
    assert made.status_code == 200, made.text
    token: str = made.json()["token"]
    return token


def event(entity_id: str, value: Any) -> dict[str, Any]:
    return {
        "stream": "nsdel",
        "source": "abuse",
        "timestamp": 1,
        "payload": {"entity_id": entity_id, "properties": {"value": value}},
    }


def publish(http: httpx.Client, token: str, entity_id: str, value: Any) -> int:
    stored = http.post("/api/events", json=event(entity_id, value), headers=bearer(token))
    assert stored.status_code == 200, stored.text
    seq: int = stored.json()["sequence"]
    return seq


def delete_namespace(http: httpx.Client, name: str) -> None:
    deleted = http.delete(f"/api/namespaces/{name}", headers=bearer(ADMIN))
    assert deleted.status_code == 204, deleted.text


def history(http: httpx.Client, entity_id: str, token: str | None) -> list[dict[str, Any]]:
    answer = http.get(
        "/api/events",
        params={"entity": entity_id, "since": "2000-01-01T00:00:00Z"},
        headers=bearer(token),
    )
    assert answer.status_code == 200, answer.text
    events: list[dict[str, Any]] = answer.json()
    return events


def values(events: list[dict[str, Any]]) -> list[Any]:
    return [e["payload"]["properties"].get("value") for e in events]


async def ws_replay(url: str, token: str | None, request: dict[str, Any]) -> list[dict[str, Any]]:
    """Subscribe with `request` and return every message up to `subscribed` (or `error`)."""
    got: list[dict[str, Any]] = []
    async with connect(
        ws_url(url), additional_headers=bearer(token), open_timeout=TIMEOUT, close_timeout=2
    ) as ws:
        await ws.send(orjson.dumps({"type": "subscribe", **request}).decode())
        while True:
            frame = await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert isinstance(frame, str)
            message = orjson.loads(frame)
            if message["type"] == "metrics_update":
                continue
            got.append(message)
            if message["type"] in ("subscribed", "error"):
                return got


async def sse_replay(url: str, token: str | None, params: dict[str, str]) -> list[dict[str, Any]]:
    """Open the event stream with `params` and return every event's data up to `subscribed`."""
    got: list[dict[str, Any]] = []
    async with (
        httpx.AsyncClient(base_url=url, timeout=TIMEOUT) as http,
        http.stream("GET", "/api/events/stream", params=params, headers=bearer(token)) as r,
    ):
        assert r.status_code == 200, await r.aread()
        kind = None
        lines = r.aiter_lines()
        while True:
            line = await asyncio.wait_for(anext(lines), TIMEOUT)
            if line.startswith("event: "):
                kind = line[len("event: ") :]
            elif line.startswith("data: ") and kind != "metrics_update":
                got.append({"type": kind, **orjson.loads(line[len("data: ") :])})
                if kind in ("subscribed", "error"):
                    return got


def about(messages: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    """The messages that carry an entity of namespace `name` (changes, snapshots, listed
    entities), or the secret value."""
    return [
        m
        for m in messages
        if (
            m.get("type", "snapshot") in CHANGES
            and str(m.get("entity_id", m.get("id"))).startswith(name + "/")
        )
        or SECRET in orjson.dumps(m).decode()
    ]


def assert_nothing_served(
    url: str, name: str, ids: list[str], token: str | None, *, state: bool = True
) -> None:
    """Nothing of namespace `name` from before its delete reaches `token`'s holder: history,
    replays (WebSocket and SSE, by id, prefix and wildcard) and, with `state`, its entities."""
    with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
        for entity_id in ids:
            assert history(http, entity_id, token) == [], entity_id
            if state:
                got = http.get(
                    "/api/state/entities/" + path_segment(entity_id), headers=bearer(token)
                )
                assert got.status_code == 404, got.text
        if state:
            for params in ({"prefix": name + "/"}, {"namespace": name}, {}):
                listed = http.get("/api/state/entities", params=params, headers=bearer(token))
                assert listed.status_code == 200, listed.text
                assert about(listed.json(), name) == [], listed.text

    async def live() -> None:
        requests: list[dict[str, Any]] = [{"entity_id": i, "since": 0} for i in ids]
        requests += [{"prefix": name + "/", "since": 0}, {"entity_id": "*", "since": 0}]
        for request in requests:
            got = await ws_replay(url, token, request)
            assert got[-1]["type"] == "subscribed", got
            assert about(got, name) == [], (request, got)
            params = {k: str(v) for k, v in request.items()}
            streamed = await sse_replay(url, token, params)
            assert streamed[-1]["type"] == "subscribed", streamed
            assert about(streamed, name) == [], (params, streamed)

    asyncio.run(live())


def test_a_deleted_namespace_s_past_is_served_to_nobody(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    server = server_factory(data_dir, env=ENV).start()
    secret_ids = ["sec/a", "sec/deep/b", "old/x"]
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        sec = register(http, "sec", private=True)
        old = register(http, "old", private=True)
        pub = register(http, "pub", private=False)
        publish(http, sec, "sec/a", SECRET)
        publish(http, sec, "sec/a", SECRET + "-2")
        publish(http, sec, "sec/deep/b", SECRET)
        publish(http, old, "old/x", SECRET)
        publish(http, pub, "pub/open", "public")
        # the control: before the delete, the history is there and private
        assert values(history(http, "sec/a", sec)) == [SECRET + "-2", SECRET]
        assert http.get("/api/events", params={"entity": "sec/a"}).status_code == 401

        delete_namespace(http, "sec")
        delete_namespace(http, "old")

    for reader in (None, ADMIN, pub):
        assert_nothing_served(server.url, "sec", secret_ids[:2], reader)
        assert_nothing_served(server.url, "old", secret_ids[2:], reader)

    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        # the other namespaces keep everything
        assert values(history(http, "pub/open", None)) == ["public"]
        # the same name registered again starts empty, for its new owner too
        fresh = register(http, "sec", private=True)
        assert http.get("/api/namespaces/sec", headers=bearer(fresh)).json()["entityCount"] == 0
        assert history(http, "sec/a", fresh) == []
        publish(http, fresh, "sec/a", "fresh")
        assert values(history(http, "sec/a", fresh)) == ["fresh"]
        assert values(history(http, "sec/a", ADMIN)) == ["fresh"]

    def check_after(url: str) -> None:
        with httpx.Client(base_url=url, timeout=TIMEOUT) as http:
            assert values(history(http, "pub/open", None)) == ["public"]
            assert values(history(http, "sec/a", fresh)) == ["fresh"]
            assert history(http, "sec/deep/b", fresh) == []
        for reader in (None, ADMIN, pub):
            assert_nothing_served(url, "old", secret_ids[2:], reader)

        async def new_owner_replays() -> None:
            for request in ({"entity_id": "sec/a", "since": 0}, {"prefix": "sec/", "since": 0}):
                got = await ws_replay(url, fresh, request)
                streamed = await sse_replay(url, fresh, {k: str(v) for k, v in request.items()})
                for messages in (got, streamed):
                    assert messages[-1]["type"] == "subscribed", messages
                    assert SECRET not in orjson.dumps(messages).decode(), messages
                    shown = about(messages, "sec")
                    assert shown and all(m.get("value", "fresh") == "fresh" for m in shown)
                    assert {m["entity_id"] for m in shown} == {"sec/a"}, messages

        asyncio.run(new_owner_replays())

    check_after(server.url)
    # durable: the same after a restart, and after a kill with no chance to write anything
    server.stop()
    again = server_factory(data_dir, env=ENV, port=server.port).start()
    check_after(again.url)
    again.kill()
    third = server_factory(data_dir, env=ENV, port=server.port).start()
    check_after(third.url)
    third.stop()


def test_a_delete_shows_subscribers_nothing_of_a_private_namespace(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    """Live subscribers without the token get no `entity_deleted` for the private namespace's
    entities as it is deleted (their ids are private too); the admin's connection does."""
    server = server_factory(data_dir, env=ENV).start()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        sec = register(http, "sec", private=True)
        pub = register(http, "pub", private=False)
        for n in range(5):
            publish(http, sec, f"sec/hidden-{n}", SECRET)

        async def watch() -> None:
            async with (
                connect(ws_url(server.url), open_timeout=TIMEOUT) as anonymous,
                connect(ws_url(server.url), additional_headers=bearer(pub)) as other,
                connect(ws_url(server.url), additional_headers=bearer(ADMIN)) as admin,
            ):
                sockets = (anonymous, other, admin)
                for ws in sockets:
                    await ws.send(orjson.dumps({"type": "subscribe", "entity_id": "*"}).decode())
                    while orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))["type"] != (
                        "subscribed"
                    ):
                        pass
                await asyncio.to_thread(delete_namespace, http, "sec")
                await asyncio.to_thread(publish, http, pub, "pub/marker", "done")
                for ws in sockets:
                    seen = []
                    while True:
                        message = orjson.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                        if message.get("entity_id") == "pub/marker":
                            break
                        seen.append(message)
                    if ws is admin:
                        assert len(about(seen, "sec")) == 5, seen
                    else:
                        assert about(seen, "sec") == [], seen

        asyncio.run(watch())
    server.stop()


def test_writes_in_flight_during_a_delete_leave_nothing_behind(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    """Writers keep publishing new entities (batches) to a private namespace while the admin
    deletes it: whatever they got in before the delete took effect is gone with it (state and
    history), and nothing of it reaches the next owner of the name."""
    server = server_factory(data_dir, env=ENV).start()
    stop = threading.Event()
    written: list[str] = []
    lock = threading.Lock()

    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        token = register(http, "race", private=True)
        publish(http, token, "race/first", SECRET)

        def writer(tag: int) -> None:
            n = 0
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as mine:
                while not stop.is_set():
                    ids = [f"race/w{tag}-{n}-{i}" for i in range(200)]
                    n += 1
                    answer = mine.post(
                        "/api/events/batch",
                        json={"events": [event(i, SECRET) for i in ids]},
                        headers=bearer(token),
                    )
                    assert answer.status_code == 200, answer.text
                    body = answer.json()
                    with lock:
                        written.extend(
                            i for i, r in zip(ids, body["results"], strict=True) if not r["error"]
                        )
                    if body["failed"]:
                        return  # the namespace is gone

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(3)]
        for thread in threads:
            thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(written) < 2_000 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert all(thread.is_alive() for thread in threads)
            delete_namespace(http, "race")
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
        listed = http.get("/api/state/entities", params={"prefix": "race/"}, headers=bearer(ADMIN))
        assert listed.json() == [], f"{len(listed.json())} entities survived the delete"
        fresh = register(http, "race", private=False)
        for entity_id in ["race/first", *written[-20:], *written[:5]]:
            assert history(http, entity_id, fresh) == [], entity_id
            assert history(http, entity_id, None) == [], entity_id
    assert_nothing_served(server.url, "race", ["race/first", written[-1]], None)
    server.stop()


def test_reads_during_a_delete_reveal_nothing(
    server_factory: type[FluxServer], data_dir: Path
) -> None:
    """While a large private namespace is being deleted (its tombstones take a while), an
    anonymous reader polling its entities and history gets refusals or nothing, never data."""
    server = server_factory(data_dir, env=ENV).start()
    with httpx.Client(base_url=server.url, timeout=TIMEOUT) as http:
        token = register(http, "big", private=True)
        for chunk in range(12):
            events = [event(f"big/e{chunk}-{i}", SECRET) for i in range(1_000)]
            answer = http.post("/api/events/batch", json={"events": events}, headers=bearer(token))
            assert answer.json()["failed"] == 0
        leaks: list[str] = []
        done = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=TIMEOUT) as anon:
                while not done.is_set():
                    for answer in (
                        anon.get("/api/state/entities/" + path_segment("big/e11-999")),
                        anon.get("/api/state/entities", params={"prefix": "big/"}),
                        anon.get("/api/events", params={"entity": "big/e0-0"}),
                    ):
                        assert answer.status_code < 500, answer.text
                        if SECRET in answer.text:
                            leaks.append(answer.text[:200])

        prober = threading.Thread(target=probe)
        prober.start()
        try:
            delete_namespace(http, "big")
        finally:
            done.set()
            prober.join(30)
        assert leaks == []
    server.stop()
