"""The JetStream log: the shared contract against a real nats-server, plus what only JetStream
has (two logs on one stream, the subjects, the stream's settings)."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import nats
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import FluxServer, free_port
from flux.conditions import Check
from flux.config import ConfigError, Settings
from flux.errors import LogCorrupt, LogError, LogUnavailable, ValidationError
from flux.log import EventLog, Record, open_log
from flux.log.jetstream import JetStreamLog
from flux.log.natswire import (
    Ack,
    answer_of,
    batch_limit,
    differences,
    entity_subject,
    message_id,
    split_batches,
    stream_config,
    translate,
)
from natsserver import NatsServer
from test_restart import ENV, check_after_restart, observe, replayed, write_some

from .contract import TIMEOUT, LogContract, MakeLog, Opened, entries, make_event

_names = itertools.count()


@pytest.fixture(scope="module")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One nats-server for the module; each test gets a stream of its own (`stream`)."""
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server.url
    server.stop()


@pytest.fixture
def stream() -> tuple[str, str]:
    """A fresh stream name and subject prefix (streams may not share subjects)."""
    n = next(_names)
    return f"T{n}", f"flux.t{n}"


@pytest.fixture
def make_log(nats_url: str, stream: tuple[str, str]) -> MakeLog:
    name, subject = stream
    return lambda: JetStreamLog([nats_url], stream=name, subject=subject)


class TestJetStreamLog(LogContract):
    @pytest.fixture
    def unusable_log(self) -> EventLog:
        """Nothing listens on the port: NATS cannot be reached."""
        return JetStreamLog([f"nats://127.0.0.1:{free_port()}"], stream="X", subject="x", timeout=2)


def _open(make_log: MakeLog) -> Opened:
    return Opened(make_log())


async def _start(opened: Opened) -> Opened:
    with anyio.fail_after(TIMEOUT):
        await opened.log.start(opened.on_records, checker=opened.checker)
    return opened


@pytest.mark.anyio
async def test_two_logs_on_one_stream_see_each_others_writes_in_order(
    make_log: MakeLog,
) -> None:
    """Two nodes: each one's `on_records` gets every record, from both, in stream order, and
    both agree on sequences and log times."""
    one, two = await _start(_open(make_log)), await _start(_open(make_log))
    try:
        written = []
        for i in range(10):
            writer = one if i % 2 else two
            written += await writer.append(make_event(f"ns/{i % 3}", i=i), make_event(None, i=i))
        with anyio.fail_after(TIMEOUT):
            await one.log.sync()
            await two.log.sync()
        assert [r.seq for r in one.seen] == list(range(1, 21))
        assert one.seen == two.seen == await one.all()
        assert [(d.seq, d.at) for d in written] == [(r.seq, r.at) for r in one.seen]
        assert one.engine.entities.keys() == two.engine.entities.keys()
    finally:
        await one.log.close()
        await two.log.close()


@pytest.mark.anyio
async def test_conditional_writes_on_two_logs_pass_once(make_log: MakeLog) -> None:
    """Two nodes race conditional writes against one version. Each node lets its own writes
    to an entity take turns, so here JetStream's expected-subject-sequence check is what
    refuses the other node's: exactly one write passes."""
    one, two = await _start(_open(make_log)), await _start(_open(make_log))
    try:
        (created,) = await one.append(make_event("ns/c", n=0))
        with anyio.fail_after(TIMEOUT):
            await two.log.sync()
        racing = [
            node.append_checked([(make_event("ns/c", n=i), Check(expected_version=created.seq))])
            for i in range(10)
            for node in (one, two)
        ]
        results = [r for (r,) in await asyncio.gather(*racing)]
        passed = [r for r in results if r.failure is None]
        assert len(passed) == 1
        assert {r.failure.current_version for r in results if r.failure} == {passed[0].seq}
        assert [r.seq for r in await one.all()] == [1, 2]
    finally:
        await one.log.close()
        await two.log.close()


@pytest.mark.anyio
async def test_a_retried_atomic_batch_is_answered_as_duplicates(make_log: MakeLog) -> None:
    """JetStream refuses a whole atomic batch that repeats a stored event id; the log finds
    which entries are stored and stores the rest, in one batch."""
    opened = await _start(_open(make_log))
    try:
        old = make_event("ns/a", x=1)
        (first,) = await opened.append(old)
        new = make_event("ns/b", x=2)
        done = await opened.append_checked([(old, None), (new, None)], atomic=True)
        assert [(d.seq, d.duplicate) for d in done] == [(first.seq, True), (2, False)]
        assert done[0].at == first.at
        assert [r.event for r in await opened.all()] == [old, new]
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_copy_in_keeps_sequences_log_times_and_ids_and_fills_holes(
    make_log: MakeLog,
) -> None:
    """`copy_in` (flux migrate): another log's records at their own sequences and log times,
    the holes between them and up to `upto_seq` as skipped numbers; a second log on the stream
    sees them as records; the next append continues above; a record at or below the stream's
    end, and a repeated event id, are LogErrors with nothing more stored."""
    theirs = [
        Record(1, 1_000, make_event("ns/a", v=1)),
        Record(2, 2_000, make_event(None, v=2)),
        Record(5, 5_000, make_event("ns/a", v=5)),
    ]
    opened = await _start(_open(make_log))
    try:
        assert await opened.log.copy_in(theirs[:2]) == 2
        assert await opened.log.copy_in(theirs[2:], upto_seq=8) == 8
        reader = await _start(_open(make_log))
        try:
            assert await reader.all() == theirs
        finally:
            await reader.log.close()
        assert await opened.log.history("ns/a", 0, 10) == [
            orjson.dumps(r.event) for r in (theirs[2], theirs[0])
        ]
        with pytest.raises(LogError, match="cannot copy sequence 8"):
            await opened.log.copy_in([Record(8, 8_000, make_event("ns/b"))])
        with pytest.raises(LogError, match="as a duplicate of 5"):
            await opened.log.copy_in([Record(9, 9_000, theirs[2].event)])
        (next_one,) = await opened.append(make_event("ns/b", v=9))
        assert next_one.seq == 9
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_an_atomic_batch_over_the_servers_limit_is_a_validation_error(
    make_log: MakeLog,
) -> None:
    """nats-server takes at most 1,000 messages in one atomic batch (by default): a larger
    atomic append is the client's to split (400, saying so), not a log failure, and nothing
    of it is stored."""
    opened = await _start(_open(make_log))
    try:
        events = [(make_event(f"ns/{i}", i=i), None) for i in range(1001)]
        with pytest.raises(ValidationError, match="1001 events .* max_msgs"):
            await opened.append_checked(events, atomic=True)
        assert await opened.all() == []
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_damage_in_the_stream_raises_log_corrupt(
    make_log: MakeLog, nats_url: str, stream: tuple[str, str]
) -> None:
    """A message on the log's subjects that is not a Flux event (another client wrote it) is
    damage: reads and history refuse it, `damage` says why."""
    opened = await _start(_open(make_log))
    try:
        await opened.append(make_event("ns/a"))
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        await js.publish(entity_subject(stream[1], "ns/a"), b"not json", headers={"Flux-At": "1"})
        await js.publish(entity_subject(stream[1], "ns/b"), orjson.dumps(make_event("ns/b")))
        await nc.close()
        with pytest.raises(LogCorrupt, match="stored event 2 does not decode"):
            await opened.all()
        with pytest.raises(LogCorrupt, match="does not decode"):
            await opened.log.history("ns/a", 0, 10)
        with pytest.raises(LogCorrupt, match="has no log time"):
            await opened.log.history("ns/b", 0, 10)
        damage = opened.log.damage
        assert damage is not None and stream[0] in damage
        with pytest.raises(LogCorrupt, match="stored event 2"):  # its consumer cannot go past it
            await opened.append(make_event("ns/c"))
        assert [r.seq for r in opened.seen] == [1]
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_a_stream_with_other_settings_is_a_start_up_error(
    nats_url: str, stream: tuple[str, str]
) -> None:
    name, subject = stream
    first = Opened(JetStreamLog([nats_url], stream=name, subject=subject, dedupe_window=60))
    await _start(first)
    await first.log.close()
    other = JetStreamLog([nats_url], stream=name, subject=subject, dedupe_window=120)
    with pytest.raises(LogError, match="duplicate_window is 60, Flux needs 120"):
        await other.start(lambda records: None)
    await other.close()
    again = Opened(JetStreamLog([nats_url], stream=name, subject=subject, dedupe_window=60))
    await _start(again)
    await again.log.verify()
    assert again.log.damage is None
    await again.log.close()


@pytest.mark.anyio
async def test_the_stream_is_made_with_the_log_settings(
    nats_url: str, stream: tuple[str, str]
) -> None:
    name, subject = stream
    log = Opened(JetStreamLog([nats_url], stream=name, subject=subject, dedupe_window=30))
    await _start(log)
    await log.log.close()
    nc = await nats.connect(nats_url)
    info = await nc.jetstream().stream_info(name)
    await nc.close()
    config = info.config
    assert config.subjects == [f"{subject}.>"]
    assert config.duplicate_window == 30
    assert config.allow_atomic and config.allow_direct and config.deny_delete
    assert config.num_replicas == 1


def test_open_log_picks_jetstream_by_url() -> None:
    log = open_log("nats://127.0.0.1:4222,nats://10.0.0.2:4222?stream=S&replicas=3")
    assert isinstance(log, JetStreamLog)
    assert log.servers == ["nats://127.0.0.1:4222", "nats://10.0.0.2:4222"]
    assert (log.stream, log.subject, log.replicas, log.dedupe_window) == (
        "S",
        "flux.events",
        3,
        120.0,
    )
    with pytest.raises(ValueError, match="unknown parameter 'streams'"):
        open_log("nats://127.0.0.1:4222?streams=S")
    with pytest.raises(ValueError, match="names no NATS server"):
        open_log("nats://?stream=S")
    with pytest.raises(ValueError, match="'h' is not a NATS server"):
        open_log("nats://h?stream=S")
    with pytest.raises(ValueError, match="not a JetStream stream name"):
        open_log("nats://127.0.0.1:4222?stream=a.b")
    with pytest.raises(ValueError, match="not a subject prefix"):
        open_log("nats://127.0.0.1:4222?subject=flux.*")
    with pytest.raises(ValueError, match="must be positive"):
        open_log("nats://127.0.0.1:4222?replicas=0")
    with pytest.raises(ValueError, match="must be positive"):
        open_log("nats://127.0.0.1:4222?timeout=0")


def test_the_settings_make_the_jetstream_url() -> None:
    assert Settings(data_dir="/d").event_log_url() == "sqlite:////d/events.db"
    settings = Settings.from_env(
        {
            "FLUX_NATS_URL": "nats://a:4222, nats://b:4222",
            "FLUX_NATS_STREAM": "EV",
            "FLUX_NATS_REPLICAS": "3",
            "FLUX_DEDUPE_WINDOW_SECONDS": "300",
        }
    )
    url = settings.event_log_url()
    assert url == (
        "nats://a:4222,b:4222?stream=EV&subject=flux.events&replicas=3&dedupe_window=300&timeout=10"
    )
    log = open_log(url)
    assert isinstance(log, JetStreamLog)
    assert (log.stream, log.replicas, log.dedupe_window, log.timeout) == ("EV", 3, 300.0, 10.0)
    quick = Settings.from_env(
        {"FLUX_NATS_URL": "nats://a:4222", "FLUX_NATS_TIMEOUT_SECONDS": "2.5"}
    )
    log = open_log(quick.event_log_url())
    assert isinstance(log, JetStreamLog) and log.timeout == 2.5
    for name, value in (
        ("FLUX_NATS_URL", "nats://a"),
        ("FLUX_NATS_URL", "http://a:80"),
        ("FLUX_NATS_STREAM", "a.b"),
        ("FLUX_NATS_SUBJECT", "flux.>"),
        ("FLUX_NATS_REPLICAS", "0"),
    ):
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
    explicit = Settings(event_log="nats://c:4222?stream=X", nats_url="nats://a:4222")
    assert explicit.event_log_url().startswith("nats://c:4222?stream=X&subject=flux.events")


# A NATS subject token: no dots, wildcards or whitespace, not empty (nats-server's rules).
_TOKEN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(st.text(max_size=1200))
def test_every_entity_id_has_a_subject_of_valid_tokens(entity_id: str) -> None:
    subject = entity_subject("flux.events", entity_id)
    tokens = subject.split(".")
    assert tokens[:3] == ["flux", "events", "r"]
    assert len(tokens) == 5 and tokens[3] in ("e", "h")
    assert tokens[4] and set(tokens[4]) <= _TOKEN_CHARS
    assert len(subject) <= 300


@given(st.text(max_size=300), st.text(max_size=300))
def test_different_ids_get_different_subjects(a: str, b: str) -> None:
    if a != b:
        assert entity_subject("p", a) != entity_subject("p", b)


def test_subjects_are_readable_base64_for_short_ids_and_hashes_for_long_ones() -> None:
    assert entity_subject("p", "ns/a.b") == "p.r.e.bnMvYS5i"
    assert entity_subject("p", None) == "p.r.n"
    assert entity_subject("p", "x" * 192).startswith("p.r.e.")
    long = entity_subject("p", "x" * 193)
    assert long.startswith("p.r.h.") and len(long) == len("p.r.h.") + 43
    assert entity_subject("p", "").startswith("p.r.h.")


def test_nats_errors_translate_to_log_errors() -> None:
    from nats.js.errors import APIError, ServiceUnavailableError

    refused = translate(APIError(code=400, err_code=10071, description="wrong last sequence: 3"))
    assert type(refused) is LogError and "wrong last sequence: 3" in refused.message
    assert type(translate(ServiceUnavailableError(code=503, description="x"))) is LogUnavailable
    assert type(translate(APIError(code=404, err_code=10059, description="x"))) is LogUnavailable
    assert type(translate(nats.errors.TimeoutError())) is LogUnavailable
    assert type(translate(nats.errors.NoServersError())) is LogUnavailable
    assert type(translate(ConnectionRefusedError())) is LogUnavailable
    assert type(translate(RuntimeError("bug"))) is LogError
    corrupt = LogCorrupt("x")
    assert translate(corrupt) is corrupt


@given(st.text(max_size=300))
def test_every_event_id_has_a_message_id_nats_keeps_as_it_is(event_id: str) -> None:
    msg_id = message_id(event_id)
    assert 0 < len(msg_id) <= 128
    assert msg_id.isascii() and msg_id.isprintable() and " " not in msg_id


@given(st.text(max_size=200), st.text(max_size=200))
def test_different_event_ids_get_different_message_ids(a: str, b: str) -> None:
    if a != b:
        assert message_id(a) != message_id(b)


def test_plain_event_ids_are_their_own_message_ids() -> None:
    assert message_id("0190a3c4-7b1e-7c2d-8e9f-0a1b2c3d4e5f") == (
        "0190a3c4-7b1e-7c2d-8e9f-0a1b2c3d4e5f"
    )
    for odd in (" a", "a ", "a\nb", "é", "~x", "x" * 129, ""):
        assert message_id(odd).startswith("~")


@pytest.mark.anyio
async def test_event_ids_that_are_not_plain_header_values_deduplicate_exactly(
    make_log: MakeLog,
) -> None:
    """NATS trims and folds header values; ids it would change (or that are too long) go as
    hashes, so `a`, ` a` and `a\\nb` stay three events, each stored once."""
    opened = await _start(_open(make_log))
    try:
        events = [make_event("ns/a", i=i) for i in range(5)]
        for event, event_id in zip(events, ["a", " a", "a\nb", "é" * 50, "x" * 5000], strict=True):
            event["eventId"] = event_id
        done = await opened.append(*events)
        assert [(d.seq, d.duplicate) for d in done] == [(i, False) for i in range(1, 6)]
        again = await opened.append(*events[::-1])
        assert [(d.seq, d.duplicate) for d in again] == [(i, True) for i in range(5, 0, -1)]
        checked = await opened.append_checked([(events[1], Check(expected_version=0))])
        assert checked == [done[1]._replace(duplicate=True)]
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_a_checked_append_sends_its_unchecked_entries_together(make_log: MakeLog) -> None:
    """Entries without a check between checked ones go as one plain append (consecutive
    sequences, one log time); each checked one sees the state with everything before it."""
    opened = await _start(_open(make_log))
    try:
        a, b, c, d = (make_event("ns/x", n=i) for i in range(4))
        done = await opened.append_checked(
            [
                (a, None),
                (b, None),
                (c, Check(expected_version=2)),  # b's sequence: b is applied before c is decided
                (a, None),  # a repeat in the same append
                (d, Check(expected_version=2)),  # c moved it to 3
            ]
        )
        assert [(r.seq, r.duplicate, r.failure is None) for r in done] == [
            (1, False, True),
            (2, False, True),
            (3, False, True),
            (1, True, True),
            (0, False, False),
        ]
        assert done[0].at == done[1].at
        assert done[4].failure is not None and done[4].failure.current_version == 3
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_history_finds_a_sparse_entity_across_growing_windows(make_log: MakeLog) -> None:
    opened = await _start(_open(make_log))
    try:
        mine = []
        for i in range(4):
            (done,) = await opened.append(make_event("ns/rare", i=i))
            mine.append(done)
            await opened.append(*(make_event(f"ns/busy{n % 7}", n=n) for n in range(150)))

        def xs(events: list[dict[str, object]]) -> list[object]:
            return [e["payload"]["properties"]["i"] for e in events]  # type: ignore[index]

        assert xs(await opened.history("ns/rare")) == [3, 2, 1, 0]
        assert xs(await opened.history("ns/rare", limit=3)) == [3, 2, 1]
        assert xs(await opened.history("ns/rare", after_seq=mine[1].seq)) == [3, 2]
        assert xs(await opened.history("ns/rare", since_us=mine[2].at)) == [3, 2]
        assert len(await opened.history("ns/busy3", limit=500)) == 4 * len(range(3, 150, 7))
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_verify_reports_a_stream_changed_behind_the_logs_back(
    make_log: MakeLog, nats_url: str, stream: tuple[str, str]
) -> None:
    opened = await _start(_open(make_log))
    try:
        await opened.log.verify()
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        config = (await js.stream_info(stream[0])).config
        config.duplicate_window = 5
        await js.update_stream(config)
        await nc.close()
        with pytest.raises(LogError, match="was changed: duplicate_window is 5, Flux needs 120"):
            await opened.log.verify()
    finally:
        await opened.log.close()


def test_flux_serve_on_jetstream_restarts_from_the_stream(
    server_factory: type[FluxServer], data_dir: Path, nats_url: str, stream: tuple[str, str]
) -> None:
    """`flux serve` with FLUX_NATS_URL: writes, then SIGKILL (no snapshot) and a restart that
    replays the stream into the same state; then a clean stop and a start from the snapshot."""
    name, subject = stream
    env = {**ENV, "FLUX_NATS_URL": nats_url, "FLUX_NATS_STREAM": name, "FLUX_NATS_SUBJECT": subject}
    server = server_factory(data_dir, env=env).start()
    assert not (data_dir / "events.db").exists()
    with httpx.Client(
        base_url=server.url, headers={"content-type": "application/json"}, timeout=10
    ) as client:
        write_some(client)
        before = observe(client)
    server.kill()

    restarted = server_factory(data_dir, env=env).start()
    assert replayed(restarted) == before["lastSequence"]
    with httpx.Client(base_url=restarted.url, timeout=10) as client:
        check_after_restart(client, before)
        again = observe(client)
    assert restarted.stop() in (0, -signal.SIGTERM)
    assert f"snapshot-{again['lastSequence']:020d}.json.gz written" in restarted.logs()

    third = server_factory(data_dir, env=env).start()
    assert replayed(third) == 0
    with httpx.Client(base_url=third.url, timeout=10) as client:
        assert observe(client) == again
        assert client.get("/api/health").json()["status"] == "ok"
    third.stop()
    assert not (data_dir / "events.db").exists()


def test_publish_answers_decode_to_acks_or_refusals() -> None:
    assert answer_of(b'{"stream":"S","seq":7}') == Ack(7, False, 0)
    assert answer_of(b'{"stream":"S","seq":3,"duplicate":true}') == Ack(3, True, 0)
    assert answer_of(b'{"stream":"S","seq":9,"batch":"b","count":4}') == Ack(9, False, 4)
    refused = answer_of(
        b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 2"}}'
    )
    assert isinstance(refused, nats.js.errors.APIError) and refused.err_code == 10071
    for bad in (b"", b"[]", b'{"stream":"S"}', b'{"seq":"x"}'):
        with pytest.raises(LogError, match="JetStream answered"):
            answer_of(bad)


def test_a_stream_is_compared_on_the_settings_flux_depends_on() -> None:
    wanted = stream_config("S", "p.>", 1, 120.0)
    assert differences(wanted, wanted) == []
    other = stream_config("S", "q.>", 3, 60.0)
    other.deny_delete = False
    other.max_age = 3600.0
    assert differences(other, wanted) == [
        "subjects is ['q.>'], Flux needs ['p.>']",
        "num_replicas is 3, Flux needs 1",
        "max_age is 3600, Flux needs 0",
        "duplicate_window is 60, Flux needs 120",
        "deny_delete is false, Flux needs true",
    ]


@pytest.mark.anyio
async def test_nats_gone_refuses_at_once_and_back_the_log_catches_up(tmp_path: Path) -> None:
    """The server stopped under two started logs: each says it is unavailable, an append is
    refused at once as not stored, a read too; the server back on its port and store, both
    reconnect by themselves, and one gets what the other wrote meanwhile."""
    server = NatsServer(tmp_path / "nats").start()
    try:
        make = lambda: JetStreamLog([server.url], stream="GONE", subject="gone", timeout=5)  # noqa: E731
        one, two = await _start(_open(make)), await _start(_open(make))
        try:
            await one.append(make_event("ns/a", i=1))
            assert one.log.unavailable is None
            await anyio.to_thread.run_sync(server.stop)
            with anyio.fail_after(TIMEOUT):
                while one.log.unavailable is None:
                    await anyio.sleep(0.02)
            assert (
                one.log.unavailable == "event log unavailable: not connected to NATS (reconnecting)"
            )
            with anyio.fail_after(0.5), pytest.raises(LogUnavailable) as refused:
                await one.log.append(entries(make_event("ns/a", i=2)))
            assert refused.value.outcome == LogError.NOT_STORED
            with anyio.fail_after(0.5), pytest.raises(LogUnavailable):
                await one.log.history("ns/a", 0, 10)
            await anyio.to_thread.run_sync(server.start)
            with anyio.fail_after(TIMEOUT):
                while one.log.unavailable or two.log.unavailable:
                    await anyio.sleep(0.02)
                (written,) = await two.append(make_event("ns/b", i=3))
                while one.engine.last_seq < written.seq:  # delivered without a new append
                    await anyio.sleep(0.02)
            assert [r.seq for r in one.seen] == [1, 2]
            assert (await one.append(make_event("ns/a", i=4)))[0].seq == 3
        finally:
            await one.log.close()
            await two.log.close()
    finally:
        server.stop()


async def _batch_headers(nats_url: str, stream: tuple[str, str], count: int) -> list[str | None]:
    """The `Nats-Batch-Id` of the stream's first `count` messages (None: not from an atomic
    batch), read with a consumer of its own."""
    nc = await nats.connect(nats_url)
    try:
        sub = await nc.jetstream().subscribe(
            f"{stream[1]}.>", stream=stream[0], ordered_consumer=True
        )
        found = []
        for _ in range(count):
            msg = await sub.next_msg(timeout=TIMEOUT)
            found.append((msg.headers or {}).get("Nats-Batch-Id"))
        return found
    finally:
        await nc.close()


@pytest.mark.anyio
async def test_concurrent_plain_appends_share_atomic_batches(
    make_log: MakeLog, nats_url: str, stream: tuple[str, str]
) -> None:
    """Plain appends made while a group is under way go together in the next one, stored as
    JetStream atomic batches (the stored messages' `Nats-Batch-Id`): fewer batches than
    appends. A retried event id in the group (alone, or beside a new event) makes JetStream
    refuse the batch it is in: it is answered as the duplicate it is, and the rest of the
    group is stored once each, every append's events in consecutive sequences."""
    opened = await _start(_open(make_log))
    try:
        old = make_event("ns/old", x=0)
        (first,) = await opened.append(old)
        (single,) = await _batch_headers(nats_url, stream, 1)
        assert single is not None, "one plain event is an atomic batch of one"
        news = [[make_event(f"ns/{i % 9}", i=i, n=n) for n in range(1 + i % 3)] for i in range(60)]
        beside = make_event("ns/beside", x=1)
        appends = [*news[:30], [old], [old, beside], *news[30:]]
        with anyio.fail_after(TIMEOUT):
            results = await asyncio.gather(*(opened.log.append(entries(*a)) for a in appends))
        again = first._replace(duplicate=True)
        assert results[30] == [again] and results[31][0] == again
        new = [
            *zip(news[:30], results[:30], strict=True),
            ([beside], results[31][1:]),
            *zip(news[30:], results[32:], strict=True),
        ]
        stored = {r.seq: r.event for r in await opened.all()}
        total = sum(len(events) for events, _ in new)
        assert sorted(stored) == list(range(1, total + 2)), "each event stored once"
        for events, done in new:
            assert not any(d.duplicate for d in done)
            assert [d.seq for d in done] == list(range(done[0].seq, done[0].seq + len(events)))
            assert [stored[d.seq] for d in done] == events
        batch_ids = await _batch_headers(nats_url, stream, total + 1)
        assert None not in batch_ids
        assert len(set(batch_ids[1:])) < len(appends) / 4, "appends share batches"
    finally:
        await opened.log.close()


@pytest.mark.anyio
async def test_a_plain_append_over_the_batch_limit_goes_in_several_atomic_batches(
    make_log: MakeLog, nats_url: str, stream: tuple[str, str]
) -> None:
    """nats-server takes 1,000 messages per atomic batch: a plain append of 2,500 events is
    stored as three batches, in order, each whole (consecutive sequences on one node)."""
    opened = await _start(_open(make_log))
    try:
        events = [make_event(f"ns/{i % 50}", i=i) for i in range(2_500)]
        done = await opened.append(*events)
        assert [d.seq for d in done] == list(range(1, 2_501))
        assert [r.event for r in await opened.all()] == events
        batch_ids = await _batch_headers(nats_url, stream, 2_500)
        sizes = [len(list(run)) for _, run in itertools.groupby(batch_ids)]
        assert sizes == [1_000, 1_000, 500]
        assert len(set(batch_ids)) == 3
    finally:
        await opened.log.close()


def test_a_group_is_cut_into_batches_without_cutting_an_append_that_fits() -> None:
    # owner: the append each entry belongs to; appends of 3, 2, 4 and 1 entries
    owner = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    everything = list(range(10))
    assert split_batches(everything, owner, 5) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    assert split_batches(everything, owner, 4) == [[0, 1, 2], [3, 4], [5, 6, 7, 8], [9]]
    assert split_batches(everything, owner, 100) == [everything]
    # an append longer than a batch fills batches, in order; its rest is shared
    assert split_batches(everything, owner, 2) == [[0, 1], [2], [3, 4], [5, 6], [7, 8], [9]]
    assert split_batches([0, 2, 5, 9], owner, 2) == [[0, 2], [5, 9]]
    assert split_batches([], owner, 3) == []


def test_the_batch_limit_is_learned_from_the_refusal() -> None:
    assert batch_limit("atomic publish batch is too large: 100", 1_000) == 100
    assert batch_limit("atomic publish batch is too large", 1_000) == 500
    assert batch_limit("atomic publish batch is too large: 1000", 1_000) == 500
    assert batch_limit(None, 1) == 1


@pytest.mark.anyio
async def test_a_lower_batch_limit_is_learned_from_the_server(tmp_path: Path) -> None:
    """A server that takes 5 messages per atomic batch refuses the log's first batch of 12:
    the log learns the limit from the refusal and stores the append in batches of 5, 5 and
    2, in order; an atomic append over the limit is still a ValidationError."""
    server = NatsServer(tmp_path / "nats", batch_max_msgs=5).start()
    try:
        subject = ("SMALL", "small")
        opened = await _start(
            _open(lambda: JetStreamLog([server.url], stream=subject[0], subject=subject[1]))
        )
        try:
            events = [make_event(f"ns/{i % 4}", i=i) for i in range(12)]
            done = await opened.append(*events)
            assert [(d.seq, d.duplicate) for d in done] == [(i, False) for i in range(1, 13)]
            assert [r.event for r in await opened.all()] == events
            batch_ids = await _batch_headers(server.url, subject, 12)
            assert [len(list(run)) for _, run in itertools.groupby(batch_ids)] == [5, 5, 2]
            with pytest.raises(ValidationError, match="6 events"):
                await opened.append_checked(
                    [(make_event("ns/x", i=i), None) for i in range(6)], atomic=True
                )
        finally:
            await opened.log.close()
    finally:
        server.stop()


@pytest.mark.anyio
async def test_an_event_id_stored_for_another_entity_fails_no_other_append(
    make_log: MakeLog,
) -> None:
    """A client that reuses an event id for another entity: JetStream refuses the batch it is
    in, and the log finds no such id on that entity's subject; the batch's events are then
    published one by one, so the reused id is answered as the duplicate JetStream says it is
    and the other appends of the group are stored, once each."""
    opened = await _start(_open(make_log))
    try:
        original = make_event("ns/a", x=0)
        (first,) = await opened.append(original)
        reused = {**make_event("ns/b", x=1), "eventId": original["eventId"]}
        others = [make_event(f"ns/{i}", i=i) for i in range(10)]
        with anyio.fail_after(TIMEOUT):
            results = await asyncio.gather(
                *(opened.log.append(entries(e)) for e in [*others[:5], reused, *others[5:]])
            )
        assert results[5] == [first._replace(duplicate=True)]
        stored = [r.event for r in await opened.all()]
        assert stored[0] == original and len(stored) == 11
        assert sorted(map(str, stored[1:])) == sorted(map(str, others))
        assert all(not r.duplicate for (r,) in results[:5] + results[6:])
    finally:
        await opened.log.close()
