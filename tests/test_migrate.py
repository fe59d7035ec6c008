"""`flux migrate`: an embedded server's data dir moved into a JetStream stream and its object
store (one real nats-server) gives nodes on that stream the same state, versions and history,
whether they replay the stream or start from the copied snapshot; a second run copies nothing;
an interrupted run goes on where it stopped; a log whose first events retention removed moves
with the snapshot that covers them; a stream holding other events, and a pruned log without
such a snapshot, are refused with nothing copied."""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import nats
import pytest
from click.testing import CliRunner, Result

from conftest import FluxServer, wait_for
from coordination.test_concurrency import event
from flux.cli import main
from flux.log.sqlite import SQLiteLog
from natsserver import NatsServer

_streams = itertools.count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture
def env(nats_url: str) -> dict[str, str]:
    """The stream settings of one test (a stream of its own); FLUX_NATS_URL is not set, so the
    embedded server stays embedded and `--nats` says where to go."""
    n = next(_streams)
    return {"FLUX_NATS_STREAM": f"MIGRATE{n}", "FLUX_NATS_SUBJECT": f"migrate{n}"}


def migrate(data_dir: Path, nats_url: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(
        main,
        ["migrate", "--data-dir", str(data_dir), "--nats", nats_url],
        env={**env, "FLUX_NATS_URL": None, "FLUX_EVENT_LOG": None},
    )


def fill(srv: FluxServer, batches: int = 3) -> None:
    """Events on several entities, some deleted (one created again), single and batched."""
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        for b in range(batches):
            events = [event(f"m/{i % 37}", {"v": i, "b": b}) for i in range(b, b + 200)]
            answer = http.post("/api/events/batch", json={"events": events})
            assert answer.status_code == 200, answer.text
        for i in range(20):
            answer = http.post("/api/events", json=event(f"single/{i % 4}", {"n": i}))
            assert answer.status_code == 200, answer.text
        for entity_id in ("m/3", "m/4", "single/1"):
            assert http.delete(f"/api/state/entities/{entity_id}").status_code == 200
        answer = http.post("/api/events", json=event("m/3", {"again": True}))
        assert answer.status_code == 200, answer.text


def observe(url: str, ids: list[str]) -> dict[str, Any]:
    """What a client sees: last sequence, every entity (with its version), each id's history."""
    with httpx.Client(base_url=url, timeout=30) as http:
        health = http.get("/api/health").json()
        entities = sorted(http.get("/api/state/entities").json(), key=lambda e: e["id"])
        history = {
            entity_id: http.get(
                f"/api/events?entity={quote(entity_id, safe='')}"
                "&since=1970-01-01T00:00:00Z&limit=1000"
            ).json()
            for entity_id in ids
        }
    return {"last": health["lastSequence"], "entities": entities, "history": history}


async def stream_last(nats_url: str, stream: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        info = await nc.jetstream().stream_info(stream)
        return int(info.state.last_seq)
    finally:
        await nc.close()


def embedded(
    server_factory: type[FluxServer], data_dir: Path, env: dict[str, str], batches: int = 3
) -> dict[str, Any]:
    """Fill an embedded server at `data_dir`, stop it; what it served."""
    srv = server_factory(data_dir, {**env, "FLUX_RATE_LIMIT_ENABLED": "0"}).start()
    fill(srv, batches)
    ids = [f"m/{i}" for i in range(37)] + [f"single/{i}" for i in range(4)]
    seen = observe(srv.url, ids)
    assert srv.stop() in (0, -signal.SIGTERM), srv.logs()  # uvicorn re-raises it
    return seen


def test_a_migrated_stream_serves_the_same_state_versions_and_history(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    before = embedded(server_factory, tmp_path / "embedded", env)
    assert any(e["id"] == "m/3" for e in before["entities"])
    assert not any(e["id"] == "m/4" for e in before["entities"])  # deleted
    assert len(before["history"]["m/4"]) > 1  # its events and the deletion
    # Without the snapshot the node rebuilds the state from the copied events alone.
    shutil.rmtree(tmp_path / "embedded" / "snapshots")

    result = migrate(tmp_path / "embedded", nats_url, env)
    assert result.exit_code == 0, result.output
    assert f"events: {before['last']:,} copied, 0 already there" in result.stdout
    assert f"the stream ends at sequence {before['last']:,}" in result.stdout
    assert "snapshot: 0 copied, 0 already there" in result.stdout
    assert "none in the data dir" in result.stdout

    node = server_factory(tmp_path / "node" / "data", env, args=["--nats", nats_url]).start()
    after = observe(node.url, list(before["history"]))
    assert after == before
    # Versions go on from the migrated ones.
    answer = httpx.post(f"{node.url}/api/events", json=event("m/5", {"next": 1}), timeout=30)
    assert answer.json()["sequence"] == before["last"] + 1
    node.stop()

    again = migrate(tmp_path / "embedded", nats_url, env)
    assert again.exit_code == 3, again.output  # the stream now holds an event the log has not
    assert "beyond this log's" in again.stderr


def test_a_second_run_copies_nothing(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    before = embedded(server_factory, tmp_path / "embedded", env, batches=1)
    first = migrate(tmp_path / "embedded", nats_url, env)
    assert first.exit_code == 0, first.output
    snapshot = f"snapshot-{before['last']:020d}"  # written by the embedded server on its way out
    assert "snapshot: 1 copied, 0 already there" in first.stdout
    assert snapshot in first.stdout
    again = migrate(tmp_path / "embedded", nats_url, env)
    assert again.exit_code == 0, again.output
    assert "events: 0 copied" in again.stdout
    assert "nothing to do" in again.stdout
    assert "snapshot: 0 copied, 1 already there" in again.stdout
    assert asyncio.run(stream_last(nats_url, env["FLUX_NATS_STREAM"])) == before["last"]


def test_a_killed_migration_goes_on_where_it_stopped(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    """Killed (SIGKILL) once the stream holds some events: the stream holds a prefix, and the
    next run checks it and copies the rest."""
    before = embedded(server_factory, tmp_path / "embedded", env, batches=100)  # 20,000 events
    stream = env["FLUX_NATS_STREAM"]
    argv = [sys.executable, "-m", "flux", "migrate", "--data-dir", str(tmp_path / "embedded")]
    proc = subprocess.Popen(
        [*argv, "--nats", nats_url],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def started() -> bool:
        try:
            return asyncio.run(stream_last(nats_url, stream)) > 0
        except nats.js.errors.NotFoundError:
            return False

    try:
        wait_for(started, "the first events in the stream")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    # JetStream still stores what the killed process had sent: wait until the stream is still.
    copied = 0
    while copied != (copied := asyncio.run(stream_last(nats_url, stream))):
        time.sleep(0.3)
    assert 0 < copied < before["last"], f"not killed mid-way: {copied} of {before['last']}"

    result = migrate(tmp_path / "embedded", nats_url, env)
    assert result.exit_code == 0, result.output
    assert f"events: {before['last'] - copied:,} copied, {copied:,} already there" in result.stdout
    node = server_factory(tmp_path / "node" / "data", env, args=["--nats", nats_url]).start()
    assert observe(node.url, list(before["history"])) == before
    node.stop()


def test_a_stream_with_other_events_is_refused(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    embedded(server_factory, tmp_path / "embedded", env, batches=1)
    node = server_factory(tmp_path / "node" / "data", env, args=["--nats", nats_url]).start()
    answer = httpx.post(f"{node.url}/api/events", json=event("other/1", {"x": 1}), timeout=30)
    assert answer.status_code == 200, answer.text
    node.stop()
    stream = env["FLUX_NATS_STREAM"]
    held = asyncio.run(stream_last(nats_url, stream))

    result = migrate(tmp_path / "embedded", nats_url, env)
    assert result.exit_code == 3, result.output
    assert f"the stream {stream!r} holds other events than this log" in result.stderr
    assert "differ at sequence 1" in result.stderr
    assert asyncio.run(stream_last(nats_url, stream)) == held


async def prune(events_db: Path, keep: int) -> int:
    """Retention on the embedded log: all but its newest `keep` events removed; returns its
    first retained sequence."""
    log = SQLiteLog(str(events_db))
    await log.start(lambda records: None)
    try:
        await log.prune(await log.last_seq(), None, keep)
        return await log.first_seq()
    finally:
        await log.close()


def test_a_pruned_log_moves_with_the_snapshot_that_covers_it(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    """The embedded server's last snapshot covers the removed events: the stream begins at the
    first retained sequence, the snapshot goes to the object store, and a node starts from it
    with the same state and versions."""
    before = embedded(server_factory, tmp_path / "embedded", env, batches=1)
    first = asyncio.run(prune(tmp_path / "embedded" / "events.db", 10))
    assert first > 1
    result = migrate(tmp_path / "embedded", nats_url, env)
    assert result.exit_code == 0, result.output
    assert "events: 10 copied" in result.stdout
    assert "snapshot: 1 copied" in result.stdout
    node = server_factory(tmp_path / "node" / "data", env, args=["--nats", nats_url]).start()
    after = observe(node.url, [])
    assert (after["last"], after["entities"]) == (before["last"], before["entities"])
    answer = httpx.post(f"{node.url}/api/events", json=event("m/5", {"next": 1}), timeout=30)
    assert answer.json()["sequence"] == before["last"] + 1
    node.stop()


def test_a_pruned_log_without_a_snapshot_that_covers_it_is_refused(
    server_factory: type[FluxServer], tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    embedded(server_factory, tmp_path / "embedded", env, batches=1)
    first = asyncio.run(prune(tmp_path / "embedded" / "events.db", 10))
    shutil.rmtree(tmp_path / "embedded" / "snapshots")
    result = migrate(tmp_path / "embedded", nats_url, env)
    assert result.exit_code == 3, result.output
    assert f"the event log starts at sequence {first:,}" in result.stderr
    assert "no snapshot in the data dir covers them (it has none)" in result.stderr
    assert asyncio.run(stream_last(nats_url, env["FLUX_NATS_STREAM"])) == 0


def test_usage_errors(tmp_path: Path, env: dict[str, str], nats_url: str) -> None:
    no_nats = CliRunner().invoke(
        main,
        ["migrate", "--data-dir", str(tmp_path)],
        env={**env, "FLUX_NATS_URL": None, "FLUX_EVENT_LOG": None},
    )
    assert no_nats.exit_code == 2
    assert "give --nats or FLUX_NATS_URL" in no_nats.stderr
    no_log = migrate(tmp_path, nats_url, env)
    assert no_log.exit_code == 2
    assert "no event log at" in no_log.stderr


def test_nats_unreachable_fails_with_exit_1(tmp_path: Path, env: dict[str, str]) -> None:
    async def empty_log() -> None:
        log = SQLiteLog(str(tmp_path / "events.db"))
        await log.start(lambda records: None)
        await log.close()

    asyncio.run(empty_log())
    result = migrate(tmp_path, "nats://127.0.0.1:1", env)
    assert result.exit_code == 1, result.output
    assert "cannot connect to NATS at nats://127.0.0.1:1" in result.stderr
