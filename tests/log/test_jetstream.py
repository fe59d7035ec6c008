"""The JetStream log: the shared contract against a real nats-server, plus what only JetStream
has (two logs on one stream, the subjects, the stream's settings)."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import anyio
import nats
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from conftest import free_port
from flux.conditions import Check
from flux.config import Settings
from flux.errors import LogCorrupt, LogError, LogUnavailable
from flux.log import EventLog, open_log
from flux.log.jetstream import JetStreamLog, entity_subject, translate
from natsserver import NatsServer

from .contract import TIMEOUT, LogContract, MakeLog, Opened, make_event

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
    with pytest.raises(ValueError, match="not a JetStream stream name"):
        open_log("nats://127.0.0.1:4222?stream=a.b")
    with pytest.raises(ValueError, match="not a subject prefix"):
        open_log("nats://127.0.0.1:4222?subject=flux.*")
    with pytest.raises(ValueError, match="must be positive"):
        open_log("nats://127.0.0.1:4222?replicas=0")


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
        "nats://a:4222,b:4222?stream=EV&subject=flux.events&replicas=3&dedupe_window=300"
    )
    log = open_log(url)
    assert isinstance(log, JetStreamLog)
    assert (log.stream, log.replicas, log.dedupe_window) == ("EV", 3, 300.0)
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
