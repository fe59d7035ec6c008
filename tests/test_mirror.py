"""`flux.mirror.BucketMirror` on a real nats-server: every change applied once, in
order, an echo or a stale change ignored, and `catch_up` waiting for a watcher that lags."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.js.kv import KeyValue

from flux.cluster import Cluster
from flux.mirror import BucketMirror
from natsserver import NatsServer

_names = itertools.count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture
async def cluster(nats_url: str, tmp_path: Path) -> AsyncIterator[Cluster]:
    joined = Cluster([nats_url], stream=f"M{next(_names)}", replicas=1, node="t", data_dir=tmp_path)
    await joined.start()
    yield joined
    await joined.close()


class View:
    """What a mirror applied: the keys' values, and every (key, value) in the order applied."""

    def __init__(self, delay: float = 0.0) -> None:
        self.values: dict[str, bytes] = {}
        self.applied: list[tuple[str, bytes | None]] = []
        self.delay = delay

    async def apply(self, key: str, value: bytes | None) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)  # a node whose watcher lags behind
        self.applied.append((key, value))
        if value is None:
            self.values.pop(key, None)
        else:
            self.values[key] = value


async def mirror_of(cluster: Cluster, view: View) -> BucketMirror:
    kv: KeyValue = await cluster.bucket("things")
    mirror = BucketMirror(kv, "things", view.apply, timeout=5)
    await mirror.start()
    return mirror


@pytest.mark.anyio
async def test_start_loads_the_bucket_and_the_watcher_follows_it(cluster: Cluster) -> None:
    kv = await cluster.bucket("things")
    await kv.put("a", b"1")
    await kv.put("b", b"2")
    view = View()
    mirror = await mirror_of(cluster, view)
    try:
        assert view.values == {"a": b"1", "b": b"2"}
        await kv.put("a", b"3")
        await kv.delete("b")
        await mirror.catch_up()
        assert view.values == {"a": b"3"}
        assert view.applied[2:] == [("a", b"3"), ("b", None)]
    finally:
        await mirror.stop()


@pytest.mark.anyio
async def test_a_local_write_applies_once_and_its_echo_is_ignored(cluster: Cluster) -> None:
    view = View()
    mirror = await mirror_of(cluster, view)
    try:
        revision = await mirror.kv.put("k", b"new")
        # Whichever comes first, the local offer or the watcher's echo, applies; the other not.
        await mirror.offer("k", b"new", revision)
        await mirror.catch_up()
        assert not await mirror.offer("k", b"new", revision)
        assert not await mirror.offer("k", b"older", revision - 1)  # stale: ignored
        assert view.applied == [("k", b"new")]
        assert mirror.revision("k") == revision
    finally:
        await mirror.stop()


@pytest.mark.anyio
async def test_catch_up_waits_for_a_lagging_watcher(cluster: Cluster) -> None:
    """Another node's write is in the bucket before this node's watcher has applied it: a
    lookup that misses and catches up finds it."""
    writer = await mirror_of(cluster, View())
    lagging = View(delay=0.3)
    reader = await mirror_of(cluster, lagging)
    try:
        for i in range(3):
            key = f"ns{i}"
            await writer.offer(key, b"x", await writer.kv.put(key, b"x"))
            assert key not in lagging.values  # not applied yet
            await reader.catch_up()
            assert lagging.values[key] == b"x"
    finally:
        await writer.stop()
        await reader.stop()


@pytest.mark.anyio
async def test_concurrent_catch_ups_share_rounds_and_each_sees_what_came_before_it(
    cluster: Cluster,
) -> None:
    """200 callers at once (a flood of unknown tokens) cost at most two bucket status
    requests; a caller that comes after a write still finds it (it never joins a round that
    was already asking)."""
    writer = await mirror_of(cluster, View())
    lagging = View(delay=0.01)
    reader = await mirror_of(cluster, lagging)
    asked = 0
    status = reader.kv.status

    async def counted() -> KeyValue.BucketStatus:
        nonlocal asked
        asked += 1
        return await status()

    reader.kv.status = counted  # type: ignore[method-assign]
    try:
        await asyncio.gather(*(reader.catch_up() for _ in range(200)))
        assert 1 <= asked <= 2

        async def finds(key: str) -> None:
            await reader.catch_up()
            assert lagging.values[key] == b"v"

        checks = []
        for i in range(20):
            key = f"k{i}"
            await writer.kv.put(key, b"v")
            checks.append(asyncio.create_task(finds(key)))
        await asyncio.gather(*checks)
    finally:
        await writer.stop()
        await reader.stop()


@pytest.mark.anyio
async def test_blocking_runs_on_the_loop_from_a_thread_and_refuses_the_loop(
    cluster: Cluster,
) -> None:
    view = View()
    mirror = await mirror_of(cluster, view)

    async def write() -> int:
        revision = await mirror.kv.put("t", b"from a thread")
        await mirror.offer("t", b"from a thread", revision)
        return revision

    try:
        revision = await asyncio.to_thread(mirror.blocking, write())
        assert view.values["t"] == b"from a thread" and mirror.revision("t") == revision
        with pytest.raises(RuntimeError, match="on the event loop"):
            mirror.blocking(write())
    finally:
        await mirror.stop()
