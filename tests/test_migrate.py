"""`flux migrate`: an embedded server's data dir moved into a JetStream stream and its object
store (one real nats-server) gives nodes on that stream the same state, versions and history,
whether they replay the stream or start from the copied snapshot; a second run copies nothing;
an interrupted run goes on where it stopped; a log whose first events retention removed moves
with the snapshot that covers them; a stream holding other events, and a pruned log without
such a snapshot, are refused with nothing copied. What is not an event (namespaces and their
tokens, history floors, the runtime config, connector credentials, generic sources) moves into
the cluster's buckets, and a node with an empty data dir serves it as the embedded server did;
a bucket key holding another value is refused, by name."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
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
from fakegithub import TOKEN as GITHUB_TOKEN
from fakegithub import FakeGitHub, repo
from flux.cli import main
from flux.log.sqlite import SQLiteLog
from jsonserver import JsonServer
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
    # Auth off, no config change, no connector: nothing else to move.
    assert "none in the data dir (auth was never on)" in first.stdout
    assert "config: 0 copied, 0 already there" in first.stdout
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


async def empty_log(data_dir: Path) -> None:
    log = SQLiteLog(str(data_dir / "events.db"))
    await log.start(lambda records: None)
    await log.close()


def test_a_runtime_config_file_that_does_not_read_is_refused(
    tmp_path: Path, env: dict[str, str], nats_url: str
) -> None:
    """The embedded server ignored it; the migration does not guess: it refuses, by name."""
    asyncio.run(empty_log(tmp_path))
    (tmp_path / "runtime-config.json").write_text('{"max_batch_delete": "many"}')
    result = migrate(tmp_path, nats_url, env)
    assert result.exit_code == 3, result.output
    assert "config: " in result.stderr and "runtime-config.json does not read" in result.stderr
    assert "max_batch_delete must be" in result.stderr


def test_nats_unreachable_fails_with_exit_1(tmp_path: Path, env: dict[str, str]) -> None:
    asyncio.run(empty_log(tmp_path))
    result = migrate(tmp_path, "nats://127.0.0.1:1", env)
    assert result.exit_code == 1, result.output
    assert "cannot connect to NATS at nats://127.0.0.1:1" in result.stderr


# -- what is not an event: namespaces, runtime config, credentials, sources ----------------------

ADMIN = "migrate-admin-token"
KEY = base64.b64encode(bytes(range(32))).decode()
SOURCE_TOKEN = "upstream-secret-5c1e"


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def auth_env(env: dict[str, str], github: FakeGitHub) -> dict[str, str]:
    """Auth on, an admin token, the credential key, local sources and the fake GitHub: the
    embedded server and the node alike."""
    return {
        **env,
        "FLUX_AUTH_ENABLED": "true",
        "FLUX_ADMIN_TOKEN": ADMIN,
        "FLUX_ENCRYPTION_KEY": KEY,
        "FLUX_DIRECTORY_INTERVAL_SECONDS": "0",
        "FLUX_SOURCES_ALLOWED_NETWORKS": "127.0.0.0/8",
        "FLUX_SOURCES_MIN_POLL_INTERVAL_SECONDS": "1",
        "FLUX_CONNECTOR_RETRY_SECONDS": "0.2",
        "FLUX_GITHUB_API_URL": github.url,
        "FLUX_GITHUB_POLL_INTERVAL_SECONDS": "1",
    }


@pytest.fixture(scope="module")
def upstream() -> Iterator[JsonServer]:
    server = JsonServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def github() -> Iterator[FakeGitHub]:
    fake = FakeGitHub().start()
    fake.repos = [repo("octo", "moved")]
    yield fake
    fake.stop()


def register(http: httpx.Client, name: str, private: bool = False) -> str:
    answer = http.post(
        "/api/namespaces", json={"name": name, "private": private}, headers=bearer(ADMIN)
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["token"]
    return token


def publish(http: httpx.Client, token: str, entity_id: str) -> httpx.Response:
    return http.post("/api/events", json=event(entity_id, {"x": 1}), headers=bearer(token))


async def bucket_op(nats_url: str, bucket: str, key: str, value: bytes | None) -> None:
    """Put `value` under `key` in a bucket, or delete the key (None), as an operator would."""
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        if value is None:
            await kv.delete(key)
        else:
            await kv.put(key, value)
    finally:
        await nc.close()


async def bucket_keys(nats_url: str, bucket: str) -> list[str]:
    nc = await nats.connect(nats_url)
    try:
        kv = await nc.jetstream().key_value(bucket)
        try:
            return sorted(await kv.keys())
        except nats.js.errors.NoKeysError:
            return []
    finally:
        await nc.close()


def test_namespaces_config_credentials_and_sources_move_and_work_on_a_node(
    server_factory: type[FluxServer],
    tmp_path: Path,
    env: dict[str, str],
    nats_url: str,
    upstream: JsonServer,
    github: FakeGitHub,
) -> None:
    """An embedded server with auth on holds two namespaces (one private) and a deleted one,
    a runtime config change, a generic source with a bearer token and a GitHub credential;
    after `flux migrate`, a node on an empty data dir takes the old tokens, keeps the private
    namespace private and the deleted name's past hidden, enforces the config, polls the
    source with its token and the GitHub connector with its credential."""
    full_env = auth_env(env, github)
    stream = env["FLUX_NATS_STREAM"]
    srv = server_factory(tmp_path / "embedded", full_env).start()
    upstream.set("/moved", {"temp": 4})
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        alpha = register(http, "alpha")
        secret = register(http, "secret", private=True)
        gone = register(http, "gone")
        for token, entity_id in ((alpha, "alpha/x"), (secret, "secret/x"), (gone, "gone/x")):
            assert publish(http, token, entity_id).status_code == 200
        assert http.delete("/api/namespaces/gone", headers=bearer(ADMIN)).status_code == 204
        doc = {
            "name": "moved",
            "url": upstream.url("/moved"),
            "poll_interval_secs": 1,
            "entity_key": "moved",
            "namespace": "alpha",
            "auth_type": "bearer",
            "token": SOURCE_TOKEN,
        }
        answer = http.post("/api/connectors/generic", json=doc, headers=bearer(alpha))
        assert answer.status_code == 201, answer.text
        source_id = answer.json()["source_id"]
        answer = http.post(
            "/api/connectors/github/token", json={"token": GITHUB_TOKEN}, headers=bearer(alpha)
        )
        assert answer.status_code == 200, answer.text
        config = {"max_batch_delete": 4321, "rate_limit_per_namespace_per_minute": 5}
        answer = http.put("/api/admin/config", json=config, headers=bearer(ADMIN))
        assert answer.status_code == 200, answer.text
    assert srv.stop() in (0, -signal.SIGTERM), srv.logs()
    settings = len(json.loads((tmp_path / "embedded" / "runtime-config.json").read_bytes()))

    first = migrate(tmp_path / "embedded", nats_url, env)
    assert first.exit_code == 0, first.output
    assert "namespaces: 3 copied, 0 already there" in first.stdout
    assert "2 namespaces (tokens as their hashes" in first.stdout
    assert "1 deleted name(s) with a history floor" in first.stdout
    assert f"config: {settings} copied, 0 already there" in first.stdout
    assert "credentials: 2 copied, 0 already there" in first.stdout  # GitHub's, the source's
    assert "the nodes need the same FLUX_ENCRYPTION_KEY" in first.stdout
    assert "start every node with the FLUX_ENCRYPTION_KEY" in first.stderr
    assert "sources: 1 copied, 0 already there" in first.stdout

    again = migrate(tmp_path / "embedded", nats_url, env)
    assert again.exit_code == 0, again.output
    for step, held in (("namespaces", 3), ("config", settings), ("credentials", 2), ("sources", 1)):
        assert f"{step}: 0 copied, {held} already there" in again.stdout, again.stdout
    assert again.stdout.count("nothing to do") == 5  # the events too

    # An interrupted run (some keys not yet written) is completed by the next one.
    credential_keys = asyncio.run(bucket_keys(nats_url, f"{stream}_credentials"))
    assert len(credential_keys) == 2
    asyncio.run(bucket_op(nats_url, f"{stream}_credentials", credential_keys[0], None))
    asyncio.run(bucket_op(nats_url, f"{stream}_sources", f"source.{source_id}", None))
    third = migrate(tmp_path / "embedded", nats_url, env)
    assert third.exit_code == 0, third.output
    assert "credentials: 1 copied, 1 already there" in third.stdout
    assert "sources: 1 copied, 0 already there" in third.stdout

    source_calls = len(upstream.calls("/moved"))
    github_calls = len(github.requests)
    node = server_factory(tmp_path / "node" / "data", full_env, args=["--nats", nats_url]).start()
    with httpx.Client(base_url=node.url, timeout=30) as http:
        # The old tokens work.
        assert publish(http, alpha, "alpha/y").status_code == 200
        assert publish(http, secret, "secret/y").status_code == 200
        assert publish(http, gone, "gone/y").status_code == 401
        # The private namespace stays private.
        path = "/api/state/entities/secret%2Fx"
        assert http.get(path).status_code in (401, 403)
        assert http.get(path, headers=bearer(alpha)).status_code in (401, 403)
        assert http.get(path, headers=bearer(secret)).status_code == 200
        # The deleted name's past stays hidden, from a new namespace of that name and the admin.
        assert http.get("/api/namespaces/gone", headers=bearer(ADMIN)).status_code == 404
        again_gone = register(http, "gone")
        history = "/api/events?entity=gone%2Fx&since=1970-01-01T00:00:00Z"
        for token in (again_gone, ADMIN):
            answer = http.get(history, headers=bearer(token))
            assert answer.status_code == 200 and answer.json() == [], answer.text
        alpha_history = http.get(
            "/api/events?entity=alpha%2Fx&since=1970-01-01T00:00:00Z", headers=bearer(ADMIN)
        )
        assert len(alpha_history.json()) == 1  # the events themselves moved
        # The config is in effect: shown, and the rate limit enforced (1 write done above).
        shown = http.get("/api/admin/config", headers=bearer(ADMIN)).json()
        assert shown["max_batch_delete"] == 4321, shown
        statuses = [publish(http, secret, f"secret/{i}").status_code for i in range(5)]
        assert statuses == [200, 200, 200, 200, 429], statuses
        # The source is listed and polled with its token.
        listed = http.get("/api/connectors/generic", headers=bearer(alpha)).json()["sources"]
        assert [s["source_id"] for s in listed] == [source_id]
        polled = f"/api/connectors/generic/{source_id}"
        seen = wait_for(
            lambda: (s := http.get(polled, headers=bearer(alpha)).json())["polls"] and s
        )
        assert seen["has_token"] is True and seen["last_error"] is None, seen
        calls = upstream.calls("/moved")[source_calls:]
        assert calls and calls[-1].headers["authorization"] == f"Bearer {SOURCE_TOKEN}"
        # The GitHub credential is used (the fake answers 401 to any other token).
        github_path = "/api/connectors/github"
        status = wait_for(
            lambda: (s := http.get(github_path, headers=bearer(alpha)).json())["polls"] and s
        )
        assert status["status"] == "configured" and status["last_error"] is None, status
        made = github.requests[github_calls:]
        assert made and made[-1][1]["authorization"] == f"Bearer {GITHUB_TOKEN}"
    node.stop()
    # Nothing of it came from the node's data dir.
    for name in ("namespaces.db", "credentials.db", "sources.db", "runtime-config.json"):
        assert not (tmp_path / "node" / "data" / name).exists(), name


def test_a_bucket_key_with_another_value_is_refused_by_name(
    server_factory: type[FluxServer],
    tmp_path: Path,
    env: dict[str, str],
    nats_url: str,
    github: FakeGitHub,
) -> None:
    """A key the cluster holds with another value than the data dir's stops the migration at
    that step (exit 3), naming the key, and nothing of that step is copied."""
    srv = server_factory(tmp_path / "embedded", auth_env(env, github)).start()
    with httpx.Client(base_url=srv.url, timeout=30) as http:
        register(http, "first")
        register(http, "second")
    assert srv.stop() in (0, -signal.SIGTERM), srv.logs()
    assert migrate(tmp_path / "embedded", nats_url, env).exit_code == 0
    bucket = f"{env['FLUX_NATS_STREAM']}_namespaces"
    other = {"id": "nsother", "token_hash": "0" * 64, "created_at": 1, "private": False}
    asyncio.run(bucket_op(nats_url, bucket, "ns.first", json.dumps(other).encode()))
    asyncio.run(bucket_op(nats_url, bucket, "ns.second", None))

    result = migrate(tmp_path / "embedded", nats_url, env)
    assert result.exit_code == 3, result.output
    assert "namespaces: the bucket" in result.stderr
    assert "holds namespace first (key ns.first) with another value" in result.stderr
    assert asyncio.run(bucket_keys(nats_url, bucket)) == ["ns.first"]  # second not copied
