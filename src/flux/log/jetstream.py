"""The event log on NATS JetStream: one stream that every Flux node writes to and follows.

Subjects. The stream (`stream`, FLUX_NATS_STREAM) takes `<prefix>.>` (`subject`,
FLUX_NATS_SUBJECT). An entity's events go on `<prefix>.r.e.<token>`, the token being the id's
UTF-8 bytes in unpadded base64url: its alphabet (letters, digits, `-`, `_`) is valid in a NATS
subject token whatever the id holds (dots, `*`, `>`, spaces, any Unicode), it is reversible (the
subjects in `nats stream subjects` decode back to ids) and a third shorter than base32. An id
over 192 bytes goes on `<prefix>.r.h.<SHA-256 of the id, base64url>` instead: entity ids may be
4 KiB of UTF-8, and a subject that long would not fit a NATS protocol line (4 KiB by default).
Two ids sharing a hash would only share a subject (their conditional writes would conflict
more often, and history checks each event's entity): never a wrong answer. Events without an
entity go on `<prefix>.r.n`. `<prefix>.skip` holds numbers skipped on purpose (see below).

Sequences are the stream's sequences, the same on every node. Each log instance is an ordered
consumer of the stream from the sequence it started at: it hands records to `on_records` in
stream order, on the event loop, in one call for each burst that arrived together. `append`
waits for JetStream's acknowledgement (stored and, with `sync_interval: always` on the server,
on disk), then for its own consumer to have delivered its records (read-your-writes).

Group commit. Plain appends (no condition, not atomic) go through one writer per node, as on
the SQLite log: it takes everything queued (whole appends, up to `_MAX_GROUP` entries), stores
it, answers each append, and takes what arrived meanwhile; one group is in flight at a time.
A group is published as JetStream atomic batches, all sent before their acknowledgements are
awaited, with one log time: with `sync_interval: always` nats-server fsyncs a batch once, at
its commit, where it fsyncs each plain message on its own (bench/RESULTS.md: about 4,600 plain
messages/s against 52-61k in batches of 1,000). A batch holds at most the server's limit (1,000
messages unless its `jetstream { limits { batch { max_msgs } } }` says otherwise; the log
learns a lower one from the refusal). An append that fits in one batch is never cut, so its
events are stored whole or not at all, in consecutive sequences; a longer one fills several
batches in order (consecutive unless another node's writes fall between them). Each event id
goes once into a group: a repeat in a later append of the group is answered as a duplicate of
the first. JetStream refuses a whole batch that holds an id it has stored (a retry): the log
looks the batch's ids up on their entities' subjects (`_find_stored`), answers those as
duplicates and sends the rest again, so one client's retry costs the others of its group one
more round, not a failure; when it finds none (the id was stored for another entity) each of
the batch's events is published alone and JetStream answers it.

Faults (docs/cluster.md, "What each fault does"). A failed append says what became of it
(`LogError.outcome`). While NATS is unreachable (nats-py reconnecting) every append and read is
refused at once, before anything is handed to nats-py (which would buffer it and send it after
the reconnection, to a writer already told it failed): nothing stored. A publish that NATS had
nowhere to send (no responders: no stream leader), or that JetStream refused, is not stored
either. Once a message was sent, a lost connection or an acknowledgement missing after
`timeout` leaves the outcome unknown: the append then waits briefly for a connection and looks
its events up by id (`_settle`); all found, it succeeds; else it fails as unknown, and sending
the events again with the same eventIds is safe (a stored one is a duplicate). A batch is
stored whole or not at all, and each append is answered for all of its entries: not stored
when none of them is (its batches refused, or never committed: a batch whose commit was not
sent is discarded by the server), else unknown (or its results, when the lookup finds them
all). Only an append longer than one batch, or one whose batch was refused for a stored id
and sent again event by event, can end partly stored: unknown, completed by that retry.
After a reconnection the consumer is re-created at once from the sequence after the last one
taken (the server may be a restarted one that lost its ephemeral consumers, or another one);
missed heartbeats (`_HEARTBEAT`) re-create it too, e.g. when the server holding it died.

Log time. `at` is a header (`Flux-At`, microseconds) set once per append from the publishing
node's clock, never below any time that node has published or seen delivered. Replay, history
and every node read it from the stored message, so all agree on it. Across nodes it may step
back by their clock skew; nothing here depends on it never doing so, except `prune` by age,
which bisects by it (off by at most that skew).

Duplicates. `Nats-Msg-Id` is the event id: within the stream's duplicate window
(`dedupe_window`, FLUX_DEDUPE_WINDOW_SECONDS) JetStream stores an id once and acknowledges a
repeat as a duplicate of the stored sequence; after the window a repeat is stored again.
JetStream checks the conditions below before the message id on a single server, so a refused
conditional write, and an atomic batch that JetStream refused for a repeated id, are looked up
by id on their entities' subjects within the window before they are answered: a retry is
answered as the duplicate it is, never as a conflict with its own first success.

Conditions. A checked entry is decided by the checker against this node's state, and published
with `Nats-Expected-Last-Subject-Sequence` = the newest sequence on its entity's subject that
this state includes (0: none). JetStream refuses the write if the entity got another event
meanwhile, from any node: the log then waits until its state has that event and decides again
(at most `_RETRIES` times). On one node, checked writes to one entity take turns (a lock per
subject), so they do not refuse each other; nodes are kept apart by JetStream alone. The
checker gets no unapplied records: it runs on the event loop, where the state is exactly what
`on_records` has been handed.

Lease tokens. The checker writes a lease's token when it decides the acquisition, before
JetStream gives the event its sequence, so the token is the predicted sequence: one above
the newest this node has applied or had acknowledged. It is the event's own sequence unless
another write landed first, and it is always above every earlier token of the same entity:
the expected-subject-sequence check proves this node had applied that entity's newest event,
hence the previous acquisition (stored at or above its token). Fencing compares tokens of one
entity, which is what that guarantees; tokens of different entities are not ordered.

Atomic appends are JetStream atomic batches too (nats-server 2.12 or later, the stream created
with `allow_atomic`), each one alone: stored whole in consecutive sequences, or not at all. An
atomic append over the server's batch limit is a ValidationError (400) that says so: nothing
of it is stored (it cannot be cut without losing what `atomic` promises).

Reading uses direct gets (`allow_direct`): `read` walks the stream in batches, `history` walks
an entity's subject backwards in growing windows, `prune` purges a prefix of the stream.

Numbers skipped on purpose: when the state is ahead of the stream at start (`after_seq`), new
records must get sequences above it. An empty stream is purged up to there (JetStream then
continues above it); a stream that holds events gets one empty `<prefix>.skip` message per
missing number. Neither is a record. `copy_in` (`flux migrate`) stores another log's records
at their own sequences and fills that log's holes with the same skipped numbers; `begin_at`
makes an empty stream start where a pruned log does.

Damage: the stream is created with `deny_delete`, and Flux only removes a prefix (purge), so a
sequence missing inside a range, a stored event that does not decode or has no `Flux-At`, and
lost or deleted messages that stream info reports, are damage: `LogCorrupt`, kept in `damage`.
A record this node's consumer cannot decode also stops its writes (its state cannot go past
that record); reads go on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import contextvars
import heapq
import itertools
import logging
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl

import nats.errors
import nats.js.errors
import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from flux import _parsers as parse
from flux.conditions import KEEP, Failure, Verdict
from flux.errors import LogCorrupt, LogError, LogUnavailable, ValidationError
from flux.events import entity_of, now_us
from flux.log import Appended, Checker, Entry, OnRecords, Record
from flux.log.natswire import (
    AT,
    BATCH_COMMIT,
    BATCH_ID,
    BATCH_SEQ,
    EXPECTED,
    EXPECTED_LAST,
    MSG_ID,
    Ack,
    Answer,
    Damaged,
    answer_of,
    batch_limit,
    check_names,
    check_owner,
    decode,
    differences,
    entity_subject,
    log_time,
    message_id,
    rfc3339,
    sequence_of,
    split_batches,
    stream_config,
    translate,
)

logger = logging.getLogger("flux.log")

_RETRIES = 10  # decisions per conditional write before it gives up (the entity kept changing)
_PAGE = 1_000  # messages per direct-get request
_PAGE_BYTES = 8 << 20
_SCAN_MARGIN_US = 60_000_000  # clock skew allowed when looking for a stored event id
_FILLERS_AT_ONCE = 1_000
_HEARTBEAT = 1.0  # seconds between the consumer's idle heartbeats; two missed: it is re-created
_RECONNECT_GRACE = 2.0  # how long an unacknowledged write waits for NATS to be back to look
_BATCH_LIMIT = 1_000  # messages per atomic batch: nats-server's default cap (lowered if it says)
_MAX_GROUP = 10_000  # entries of plain appends in one group; more waits for the next group

# JetStream's error codes (nats-server's errors.json) the log acts on.
_WRONG_LAST_SEQUENCE = 10071  # the entity's subject moved (or the stream, for copy_in)
_BATCH_HAS_DUPLICATE = 10201
_BATCH_TOO_LARGE = 10199
_BUSY = frozenset({10164, 10176, 10210})  # subject in use, batch incomplete, too many batches
_STREAM_NAME_IN_USE = 10058
URL_PARAMETERS = ("stream", "subject", "replicas", "dedupe_window", "timeout")


class _Attempt:
    """One append's progress: whether any of its messages was handed to NATS yet. Before that,
    a failure is definitive (nothing can be stored); after it, the outcome is unknown unless
    the log learns it."""

    __slots__ = ("sent",)

    def __init__(self) -> None:
        self.sent = False


class _Waiting:
    """One plain append queued for the next group: its entries (each id once), their
    (subject, JSON, message id), and the future its results or its error go to."""

    __slots__ = ("entries", "future", "parts")

    def __init__(
        self,
        entries: list[Entry],
        parts: list[tuple[str, bytes, str]],
        future: asyncio.Future[list[Appended]],
    ) -> None:
        self.entries = entries
        self.parts = parts
        self.future = future


# The append under way in this task (`_send` marks it); a context variable because the
# messages are sent several calls below `append`, by helpers that also serve the start-up.
_ATTEMPT: contextvars.ContextVar[_Attempt | None] = contextvars.ContextVar(
    "flux_log_attempt", default=None
)


def from_url(url: str, defaults: dict[str, str]) -> JetStreamLog:
    """The log for `nats://host:port[,host2:port2][?stream=..&subject=..&replicas=..&
    dedupe_window=..&timeout=..]`; parameters not given come from `defaults`. Raises
    ValueError."""
    hosts, _, query = url.partition("://")[2].partition("?")
    servers = [server for server in parse.nats_servers(hosts).split(",") if server]
    if not servers:
        raise ValueError(f"event log URL {url!r} names no NATS server")
    params = dict(defaults)
    for key, value in parse_qsl(query, keep_blank_values=True):
        if key not in URL_PARAMETERS:
            raise ValueError(
                f"unknown parameter {key!r} in {url!r}; known: {', '.join(URL_PARAMETERS)}"
            )
        params[key] = value
    try:
        replicas = int(params["replicas"])
        window = float(params["dedupe_window"])
        timeout = float(params.get("timeout", "10"))
    except ValueError as exc:
        raise ValueError(f"event log URL {url!r}: {exc}") from None
    if replicas < 1 or window <= 0 or timeout <= 0:
        raise ValueError(
            f"event log URL {url!r}: replicas, dedupe_window and timeout must be positive"
        )
    return JetStreamLog(
        servers,
        stream=params["stream"],
        subject=params["subject"],
        replicas=replicas,
        dedupe_window=window,
        timeout=timeout,
    )


class JetStreamLog:
    def __init__(
        self,
        servers: Sequence[str],
        *,
        stream: str,
        subject: str,
        replicas: int = 1,
        dedupe_window: float = 120.0,
        timeout: float = 10.0,
    ) -> None:
        """A log on the JetStream stream `stream` (created at start when missing) with the
        subjects `<subject>.>`, `replicas` copies, event ids remembered `dedupe_window` seconds.
        `timeout` bounds each wait on the server: a request, an acknowledgement, and this
        node's consumer delivering an acknowledged event. Raises ValueError for bad names."""
        check_names(stream, subject)
        self.servers = list(servers)
        self.stream = stream
        self.subject = subject
        self.replicas = replicas
        self.dedupe_window = float(dedupe_window)
        self.timeout = timeout
        self._all = f"{subject}.>"
        self._records = f"{subject}.r.>"
        self._none = f"{subject}.r.n"
        self._skip = f"{subject}.skip"
        self._direct = f"$JS.API.DIRECT.GET.{stream}"
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._sub: JetStreamContext.PushSubscription | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_records: OnRecords | None = None
        self._checker: Checker | None = None
        self._started = False
        self._closed = False
        self._broken: LogError | None = None
        self._damage: str | None = None
        # The consumer's progress: the newest stream sequence it took (records and skipped
        # numbers), the records taken but not yet handed to `on_records` (with their entity
        # subject), and the newest sequence handed on (the state includes everything up to it).
        self._received = 0
        self._pending: list[tuple[str | None, Record]] = []
        self._flush: asyncio.Handle | None = None
        self._applied = 0
        self._waiters: list[tuple[int, int, asyncio.Future[None]]] = []
        self._waiter_ids = itertools.count()
        # Per entity subject that this node has written with conditions: its newest sequence
        # that the state includes (0: none); kept up to date as records are handed on.
        self._subject_seq: dict[str, int] = {}
        self._last_at = 0
        self._acked = 0  # the highest sequence JetStream acknowledged to this log
        self._publishing = asyncio.Lock()
        self._locks: dict[str, asyncio.Lock] = {}
        self._lock_users: dict[str, int] = {}
        self._inflight: set[asyncio.Future[None]] = set()
        # Plain appends waiting for the next group, the task that stores the groups (one at a
        # time; None while there is nothing to do), and the atomic batch size it cuts them into.
        self._queue: collections.deque[_Waiting] = collections.deque()
        self._writer: asyncio.Task[None] | None = None
        self._batch_limit = _BATCH_LIMIT
        # Publishes waiting for JetStream's answer, by the last token of their reply subject.
        self._reply_prefix = ""
        self._answers: dict[str, asyncio.Future[Answer]] = {}
        self._tokens = itertools.count()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(
        self, on_records: OnRecords, *, after_seq: int = 0, checker: Checker | None = None
    ) -> None:
        """Connect, create or check the stream, and follow it from its end. New records get
        sequences above every stored one and above `after_seq`. Raises LogUnavailable when
        NATS cannot be reached, LogError when the stream exists with other settings."""
        self._loop = asyncio.get_running_loop()
        self._on_records = on_records
        self._checker = checker
        try:
            self._nc = await self._connect()
            self._js = self._nc.jetstream(timeout=self.timeout)
            self._reply_prefix = self._nc.new_inbox() + "."
            await self._nc.subscribe(self._reply_prefix + "*", cb=self._answer)
            state = await self._ensure_stream()
            last = await self._raise_floor(state, after_seq)
            self._received = self._applied = last
            self._last_at = await self._at_of(last) if last else 0
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=last + 1
            )
            self._sub = await self._js.subscribe(
                self._all,
                stream=self.stream,
                cb=self._take,
                ordered_consumer=True,
                config=config,
                idle_heartbeat=_HEARTBEAT,
            )
            # nats-py re-creates an ordered consumer (after a lost heartbeat, a reconnect) from
            # the sequence after the last one it delivered, 0 before the first: it would send
            # the whole stream again. It starts from the end instead.
            jsi = self._sub._sub._jsi
            if jsi is not None and jsi._sseq < last:
                jsi._sseq = last
        except Exception as exc:
            error = translate(exc)
            self._broken = error
            logger.error("cannot open the JetStream event log %s: %s", self.stream, error.message)
            await self._disconnect()
            raise error from exc
        self._started = True

    async def _connect(self) -> NATS:
        nc = NATS()
        try:
            # NATS reconnects by itself once connected; the first connect is bounded here.
            await asyncio.wait_for(
                nc.connect(
                    servers=self.servers,
                    name="flux",
                    connect_timeout=max(1, min(int(self.timeout), 5)),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    error_cb=self._nats_error,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                ),
                self.timeout,
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            if isinstance(exc, Exception):
                where = ", ".join(self.servers)
                raise LogUnavailable(
                    f"event log unavailable: cannot connect to NATS at {where}"
                ) from exc
            raise
        return nc

    async def _nats_error(self, exc: Exception) -> None:
        logger.warning("NATS: %s", exc)

    async def _disconnected(self) -> None:
        """The publishes waiting for an acknowledgement fail now: JetStream's answers to them,
        if any, went to the lost connection. Their outcome is unknown (stored or not)."""
        if self._started and not self._closed:
            logger.warning("disconnected from NATS; reconnecting")
        answers = [future for future in self._answers.values() if not future.done()]
        for future in answers:
            future.set_exception(
                LogUnavailable(
                    "event log unavailable: the connection to NATS was lost before JetStream "
                    "acknowledged; the events may be stored (sending them again with the same "
                    "eventId is safe)",
                    LogError.UNKNOWN,
                )
            )

    async def _reconnected(self) -> None:
        """Follow the stream again from the sequence after the last one taken, at once: the
        server may have been restarted (its ephemeral consumers are gone) or be another one.
        A consumer that cannot be made now (JetStream still electing its leaders) is made
        again after two missed heartbeats (`_HEARTBEAT`), by nats-py's ordered consumer."""
        logger.info("reconnected to NATS")
        jsi = self._sub._sub._jsi if self._sub is not None else None
        if jsi is not None and not self._closed:
            await jsi.reset_ordered_consumer(max(jsi._sseq, self._received) + 1)

    async def _ensure_stream(self) -> api.StreamState:
        """Create the stream, or check the one there: a stream with other settings is an
        error, not reused (it would break deduplication, retention or the subjects)."""
        assert self._js is not None
        wanted = stream_config(self.stream, self._all, self.replicas, self.dedupe_window)
        try:
            info = await self._js.stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            try:
                info = await self._js.add_stream(wanted)
                logger.info("created the JetStream stream %s (subjects %s)", self.stream, self._all)
                return info.state
            except nats.js.errors.APIError as exc:
                if exc.err_code != _STREAM_NAME_IN_USE:  # another node created it meanwhile
                    raise
            info = await self._js.stream_info(self.stream)
        problems = differences(info.config, wanted)
        if problems:
            raise LogError(
                f"event log unusable: the JetStream stream {self.stream!r} exists with other "
                f"settings: {'; '.join(problems)}"
            )
        return info.state

    async def _raise_floor(self, state: api.StreamState, after_seq: int) -> int:
        """Make the stream's last sequence at least `after_seq`; returns it."""
        last = state.last_seq
        if after_seq <= last:
            return last
        logger.warning(
            "the JetStream stream %s ends at sequence %d but the state is at %d (was the stream "
            "replaced or lost?); new events get sequences from %d",
            self.stream,
            last,
            after_seq,
            after_seq + 1,
        )
        if state.messages == 0:
            await self._api(f"$JS.API.STREAM.PURGE.{self.stream}", {"seq": after_seq + 1})
            return (await self._info()).state.last_seq
        while last < after_seq:
            count = min(after_seq - last, _FILLERS_AT_ONCE)
            futures, _ = await self._publish([(self._skip, b"", {}) for _ in range(count)])
            acks = await self._acks(futures)
            last = max(max(ack.seq for ack in _stored(acks)), last)
        return last

    async def close(self) -> None:
        """Refuse new work, let the appends under way finish, then disconnect."""
        if self._closed:
            return
        self._closed = True
        if self._inflight:
            await asyncio.wait(list(self._inflight))
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        self._fail_waiters(LogUnavailable("event log unavailable: the log is closed"))
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        await self._disconnect()

    async def _disconnect(self) -> None:
        nc, self._nc = self._nc, None
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()

    @property
    def damage(self) -> str | None:
        """Why the log is known to be damaged (the first damage seen), or None."""
        return self._damage

    @property
    def unavailable(self) -> str | None:
        """Why the log cannot take writes now (NATS unreachable: nats-py reconnects by itself),
        or None."""
        if self._started and not self._closed and not self._connected():
            return "event log unavailable: not connected to NATS (reconnecting)"
        return None

    def _connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def _note(self, detail: str) -> LogCorrupt:
        error = LogCorrupt(f"event log is damaged: {detail} (JetStream stream {self.stream})")
        if self._damage is None:
            self._damage = error.message
            logger.critical("%s", error.message)
        return error

    async def verify(self) -> None:
        """Stream info: the stream still has Flux's settings, and JetStream reports no message
        lost or deleted inside it. Raises LogCorrupt (kept in `damage`) or LogError."""
        self._usable()
        with self._translated():
            info = await self._info()
            problems = differences(
                info.config,
                stream_config(self.stream, self._all, self.replicas, self.dedupe_window),
            )
            if problems:
                raise LogError(
                    f"event log error: the JetStream stream {self.stream!r} was changed: "
                    f"{'; '.join(problems)}"
                )
            state = info.state
            if state.num_deleted:
                raise self._note(f"{state.num_deleted} messages inside the stream are missing")
            if state.lost is not None and state.lost.msgs:
                raise self._note(f"JetStream lost {len(state.lost.msgs)} messages")

    def _usable(self) -> None:
        """For reads: a log that cannot follow its stream any more still reads it."""
        if self._closed:
            raise LogUnavailable("event log unavailable: the log is closed")
        if not self._started:
            raise self._broken or LogUnavailable("event log unavailable: the log is not started")
        self._reachable()

    def _sendable(self) -> None:
        if self._closed:
            raise LogUnavailable("event log unavailable: the log is closed")
        if self._broken is not None:
            raise self._broken
        self._reachable()

    def _reachable(self) -> None:
        """Refuse at once while NATS is unreachable: nats-py would keep a request or publish
        in its buffer for the reconnection (a request then times out, a publish is sent
        later, after its writer was told it failed)."""
        if self._started and not self._connected():
            raise LogUnavailable("event log unavailable: not connected to NATS (reconnecting)")

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        try:
            yield
        except (LogError, ValidationError):
            raise
        except Damaged as exc:
            raise self._note(str(exc)) from exc
        except Exception as exc:
            raise translate(exc) from exc

    # -- following the stream ---------------------------------------------------------------

    async def _take(self, msg: Msg) -> None:
        """The ordered consumer's callback: one message, in stream order."""
        if self._broken is not None:
            return
        seq = msg.metadata.sequence.stream
        if seq <= self._received:  # again, after the ordered consumer was re-created
            return
        subject = msg.subject
        if subject != self._skip:
            try:
                record = decode(seq, msg.headers, msg.data)
            except Damaged as exc:
                self._break(self._note(str(exc)))
                return
            self._pending.append((subject if subject != self._none else None, record))
            if record.at > self._last_at:
                self._last_at = record.at
        self._received = seq
        if self._flush is None:
            assert self._loop is not None
            self._flush = self._loop.call_soon(self._hand_on)

    def _hand_on(self) -> None:
        """Hand what the consumer took to `on_records` (one call), then wake the appends that
        wait for it. The newest sequences of the subjects written with conditions move with
        the state, here."""
        self._flush = None
        pending, self._pending = self._pending, []
        subject_seq = self._subject_seq
        records = []
        for subject, record in pending:
            if subject in subject_seq:
                subject_seq[subject] = record.seq
            records.append(record)
        if records and self._on_records is not None:
            try:
                self._on_records(records)
            except Exception:  # the log stays correct; the state is the caller's to fix
                logger.exception("applying %d records failed", len(records))
        self._applied = self._received
        waiters = self._waiters
        while waiters and waiters[0][0] <= self._applied:
            future = heapq.heappop(waiters)[2]
            if not future.done():
                future.set_result(None)

    def _break(self, error: LogError) -> None:
        """The stream cannot be followed any more: every wait fails with `error`."""
        self._broken = error
        self._fail_waiters(error)

    def _fail_waiters(self, error: LogError) -> None:
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(error)

    async def _until_applied(self, seq: int) -> None:
        """Wait until `on_records` has been handed every record up to `seq`."""
        if self._applied >= seq:
            return
        if self._broken is not None:
            raise self._broken
        assert self._loop is not None
        future: asyncio.Future[None] = self._loop.create_future()
        heapq.heappush(self._waiters, (seq, next(self._waiter_ids), future))
        try:
            await asyncio.wait_for(future, self.timeout)
        except TimeoutError:
            raise LogUnavailable(
                f"event log unavailable: sequence {seq} is stored but this node did not get it "
                f"back from the stream within {self.timeout:g}s"
            ) from None

    # -- writing ---------------------------------------------------------------------------

    def submit(
        self, entries: Sequence[Entry], *, checked: bool = False, atomic: bool = False
    ) -> asyncio.Future[list[Appended]]:
        """`append` in a task of its own (its work is a coroutine's: NATS round trips)."""
        return asyncio.ensure_future(self.append(entries, checked=checked, atomic=atomic))

    async def append(
        self, entries: Sequence[Entry], *, checked: bool = False, atomic: bool = False
    ) -> list[Appended]:
        """Store `entries` (see the log contract). A failure says what became of them in its
        `outcome` (`flux.errors.LogError`): nothing is stored when none of their messages was
        handed to NATS; after that it is unknown, unless JetStream's acknowledgements, or a
        lookup by id after a lost one, tell."""
        try:
            self._usable()
            self._sendable()
        except LogError as exc:
            raise type(exc)(exc.message, LogError.NOT_STORED) from exc
        if not entries:
            return []
        if checked and self._checker is None:
            raise LogUnavailable("event log unavailable: conditions need a checker")
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        self._inflight.add(done)
        attempt = _Attempt()
        token = _ATTEMPT.set(attempt)
        try:
            with self._translated():
                if atomic:
                    return await self._decide(list(entries), atomic=True)
                if checked:
                    return await self._append_checked(entries)
                return await self._append_plain(entries)
        except LogError as exc:
            if exc.outcome is not None:
                raise
            outcome = LogError.UNKNOWN if attempt.sent else LogError.NOT_STORED
            raise type(exc)(exc.message, outcome) from exc  # a fresh one: `_broken` is shared
        finally:
            _ATTEMPT.reset(token)
            self._inflight.discard(done)
            done.set_result(None)

    async def _append_plain(self, entries: Sequence[Entry]) -> list[Appended]:
        """Queue `entries` for the next group (`_write_groups`), wait for its answer, then for
        this node's state to have them (read-your-writes)."""
        try:
            order, unique = _unique(entries)
            parts = [
                (self._subject_of(e.entity_id), bytes(e.data), message_id(e.event_id))
                for e in unique
            ]
        except Exception as exc:  # not an Entry: nothing was sent
            raise LogError(f"event log error: cannot append {entries!r:.200}: {exc!r}") from exc
        assert self._loop is not None
        future: asyncio.Future[list[Appended]] = self._loop.create_future()
        self._queue.append(_Waiting(unique, parts, future))
        if self._writer is None:
            # Its own context: the writer serves every append, not the one that woke it.
            self._writer = self._loop.create_task(
                self._write_groups(), context=contextvars.Context()
            )
        try:
            results = await future
        except LogUnavailable as exc:
            if exc.outcome != LogError.UNKNOWN:
                raise
            items = [(i, parts[i][0], e) for i, e in enumerate(unique)]
            found = await self._settle(items)
            if found is None:
                raise
            logger.info("%d events whose acknowledgement was lost are stored", len(found))
            results = [found[i] for i in range(len(unique))]
        await self._until_own_applied(max(r.seq for r in results))
        return _in_order(order, results)

    async def _write_groups(self) -> None:
        """The one writer of plain appends: takes what is queued (whole appends, up to
        `_MAX_GROUP` entries), stores it (`_commit_group`), answers each append, and goes on
        with what arrived meanwhile; ends when nothing is queued."""
        try:
            while self._queue:
                group: list[_Waiting] = []
                count = 0
                while self._queue and (
                    not group or count + len(self._queue[0].entries) <= _MAX_GROUP
                ):
                    waiting = self._queue.popleft()
                    if not waiting.future.done():  # else its writer stopped waiting
                        group.append(waiting)
                        count += len(waiting.entries)
                try:
                    await self._commit_group(group)
                except Exception as exc:  # a bug: answer rather than leave the appends waiting
                    logger.exception("storing a group of %d appends failed", len(group))
                    error = translate(exc)
                    for waiting in group:
                        _answer_with(waiting.future, type(error)(error.message, LogError.UNKNOWN))
        finally:
            self._writer = None

    async def _commit_group(self, group: list[_Waiting]) -> None:
        """Store a group's entries (each event id once: a repeat in a later append of the
        group is answered as a duplicate of the first) in atomic batches, then answer each
        append: its results, or an error whose outcome covers all of its entries."""
        fresh: list[tuple[str, bytes, str, Entry]] = []
        owner: list[int] = []  # the append of the group that stores each of `fresh`
        places: list[list[int]] = []  # each append's entries, as indexes in `fresh`
        first: dict[str, int] = {}
        for n, waiting in enumerate(group):
            spots = []
            for entry, part in zip(waiting.entries, waiting.parts, strict=True):
                index = first.setdefault(entry.event_id, len(fresh))
                if index == len(fresh):
                    fresh.append((*part, entry))
                    owner.append(n)
                spots.append(index)
            places.append(spots)
        stored: dict[int, Appended] = {}
        failed: dict[int, LogError] = {}
        await self._store_group(fresh, owner, stored, failed)
        for n, (waiting, spots) in enumerate(zip(group, places, strict=True)):
            errors = [failed[i] for i in spots if i in failed]
            if not errors:
                results = [stored[i] if owner[i] == n else _repeat(stored[i]) for i in spots]
                _answer_with(waiting.future, results)
                continue
            new = any(i in stored and not stored[i].duplicate for i in spots)
            none = all(e.outcome == LogError.NOT_STORED for e in errors) and not new
            outcome = LogError.NOT_STORED if none else LogError.UNKNOWN
            _answer_with(waiting.future, type(errors[0])(errors[0].message, outcome))

    async def _store_group(
        self,
        fresh: list[tuple[str, bytes, str, Entry]],
        owner: list[int],
        stored: dict[int, Appended],
        failed: dict[int, LogError],
    ) -> None:
        """Publish `fresh` (subject, JSON, message id, entry) as atomic batches of at most the
        server's limit (`split_batches`), all sent before their acknowledgements are awaited,
        with one log time; fill `stored` and `failed` by index. A batch JetStream refuses for a
        stored event id has those ids looked up (`_find_stored`) and the rest sent again; one
        over the server's limit is cut smaller; one refused while JetStream is busy is sent
        again (at most `_RETRIES` rounds)."""
        todo = list(range(len(fresh)))
        at: int | None = None
        for _ in range(_RETRIES):
            batches = split_batches(todo, owner, self._batch_limit)
            sent: list[tuple[list[int], asyncio.Future[Answer]]] = []
            try:
                for batch in batches:
                    messages = [fresh[i][:2] + ({MSG_ID: fresh[i][2]},) for i in batch]
                    future, at = await self._publish_batch(messages, at)
                    sent.append((batch, future))
            except Exception as exc:  # its commit was not sent: this batch and the rest not stored
                error = translate(exc)
                for batch in batches[len(sent) :]:
                    for i in batch:
                        failed[i] = type(error)(error.message, LogError.NOT_STORED)
            assert at is not None or not sent
            todo, busy = [], False
            answers = await self._each_answer([future for _, future in sent])
            for (batch, _), answer in zip(sent, answers, strict=True):
                if isinstance(answer, Ack):
                    assert at is not None
                    if answer.stored != len(batch):
                        error = LogError(
                            f"event log error: JetStream stored {answer.stored} of {len(batch)}",
                            LogError.UNKNOWN,
                        )
                        failed.update(dict.fromkeys(batch, error))
                        continue
                    base = answer.seq - len(batch) + 1
                    for k, i in enumerate(batch):
                        stored[i] = Appended(base + k, at, False)
                elif isinstance(answer, LogError):
                    failed.update(dict.fromkeys(batch, answer))
                elif answer.err_code == _BATCH_HAS_DUPLICATE:
                    todo += await self._without_stored(batch, fresh, at, stored, failed)
                elif answer.err_code == _BATCH_TOO_LARGE:
                    self._batch_limit = batch_limit(answer.description, len(batch))
                    todo += batch
                elif answer.err_code in _BUSY:
                    todo += batch
                    busy = True
                else:  # refused: nothing of this batch is stored
                    error = translate(answer)
                    failed.update(
                        dict.fromkeys(batch, type(error)(error.message, LogError.NOT_STORED))
                    )
            if not todo:
                return
            todo.sort()
            if busy:
                await asyncio.sleep(0.02)
        refused = LogUnavailable(
            f"event log unavailable: JetStream refused these events {_RETRIES} times (busy); "
            "they are not stored, try again",
            LogError.NOT_STORED,
        )
        failed.update(dict.fromkeys(todo, refused))

    async def _without_stored(
        self,
        batch: list[int],
        fresh: list[tuple[str, bytes, str, Entry]],
        at: int | None,
        stored: dict[int, Appended],
        failed: dict[int, LogError],
    ) -> list[int]:
        """A batch JetStream refused because it holds an event id stored already (nothing of
        it is stored): the entries found stored are answered as duplicates; returns the others,
        to be sent again. When none is found on its entity's subject (the id was stored for
        another entity, or is not readable yet), each entry is published alone instead and
        JetStream answers it (stored, or the duplicate of a sequence)."""
        try:
            found = await self._find_stored([(i, fresh[i][0], fresh[i][3]) for i in batch])
        except Exception as exc:  # the lookup failed: nothing of the batch is stored
            error = self._note(str(exc)) if isinstance(exc, Damaged) else translate(exc)
            failed.update(dict.fromkeys(batch, type(error)(error.message, LogError.NOT_STORED)))
            return []
        if found:
            stored.update(found)
            return [i for i in batch if i not in found]
        messages = [fresh[i][:2] + ({MSG_ID: fresh[i][2]},) for i in batch]
        try:
            futures, at = await self._publish(messages, at)
        except Exception as exc:  # some may have been sent
            error = translate(exc)
            failed.update(dict.fromkeys(batch, type(error)(error.message, LogError.UNKNOWN)))
            return []
        for i, answer in zip(batch, await self._each_answer(futures), strict=True):
            if isinstance(answer, LogError):
                failed[i] = answer
            elif isinstance(answer, Ack):
                duplicate = answer.duplicate
                try:
                    logged = await self._at_of(answer.seq) if duplicate else at
                except Exception as exc:  # stored, but its log time is not known
                    error = translate(exc)
                    failed[i] = type(error)(error.message, LogError.UNKNOWN)
                    continue
                stored[i] = Appended(answer.seq, logged, duplicate)
            else:
                error = translate(answer)
                failed[i] = type(error)(error.message, LogError.NOT_STORED)
        return []

    async def _each_answer(
        self, futures: Sequence[asyncio.Future[Answer]]
    ) -> list[Answer | LogError]:
        """Each publish's answer, waited for `timeout` in all: its acknowledgement or refusal,
        or the LogError (with its outcome) of one that did not come."""
        if futures:
            await asyncio.wait(futures, timeout=self.timeout)
        answers: list[Answer | LogError] = []
        for future in futures:
            if not future.done():
                future.cancel()
                answers.append(
                    LogUnavailable(
                        f"event log unavailable: JetStream did not acknowledge within "
                        f"{self.timeout:g}s; the events may be stored (sending them again with "
                        "the same eventId is safe)",
                        LogError.UNKNOWN,
                    )
                )
                continue
            failure = future.exception()
            if failure is not None:
                error = translate(failure)
                outcome = error.outcome or LogError.UNKNOWN
                answers.append(type(error)(error.message, outcome))
                continue
            answer = future.result()
            if isinstance(answer, Ack):
                self._acked = max(self._acked, answer.seq)
            answers.append(answer)
        return answers

    async def _settle(self, items: list[tuple[int, str, Entry]]) -> dict[int, Appended] | None:
        """After an acknowledgement that did not come: the results of `items` (index, subject,
        entry) when every one of them is found stored after all (a lookup by id, as for a
        refused conditional write), else None: the outcome stays unknown (a message not found
        may still be stored later, e.g. by a stream leader elected meanwhile). Waits for the
        connection `_RECONNECT_GRACE` seconds at most (another server of a cluster takes over
        within it; a lone server that is down does not), the lookup `timeout`."""
        try:
            async with asyncio.timeout(_RECONNECT_GRACE):
                while not self._connected():
                    if self._closed:
                        return None
                    await asyncio.sleep(0.05)
            async with asyncio.timeout(self.timeout):
                found = await self._find_stored(items)
        except (TimeoutError, LogError, nats.errors.Error, Damaged):
            return None
        return found if len(found) == len(items) else None

    async def _until_own_applied(self, seq: int) -> None:
        """`_until_applied` for an append whose messages JetStream acknowledged up to `seq`:
        a failure to get them back says they are stored."""
        try:
            await self._until_applied(seq)
        except LogError as exc:
            raise type(exc)(exc.message, LogError.STORED) from exc

    async def _append_checked(self, entries: Sequence[Entry]) -> list[Appended]:
        """Each checked entry decided on the state that has the entries before it; the entries
        without a check between them go together, as a plain append."""
        order, unique = _unique(entries)
        results: list[Appended] = []
        start = 0
        while start < len(unique):
            end = start + 1
            if unique[start].check is None:
                while end < len(unique) and unique[end].check is None:
                    end += 1
                results.extend(await self._append_plain(unique[start:end]))
            else:
                results.extend(await self._decide([unique[start]], atomic=False))
            start = end
        return _in_order(order, results)

    async def _decide(self, entries: list[Entry], *, atomic: bool) -> list[Appended]:
        """One checked entry, or an atomic append: decide the conditions, publish what passed
        with the expected subject sequences, and decide again when JetStream refuses because
        an entity moved. Returns a result per entry of `entries`."""
        order, unique = _unique(entries)
        subjects = [self._subject_of(e.entity_id) for e in unique]
        guarded = sorted({s for s, e in zip(subjects, unique, strict=True) if e.check is not None})
        stored: dict[int, Appended] = {}  # index in `unique` -> its result
        async with self._locked(guarded):
            for _ in range(_RETRIES):
                await self._learn(guarded, refresh=False)
                todo = [i for i in range(len(unique)) if i not in stored]
                if not todo:
                    return _in_order(order, [stored[i] for i in range(len(unique))])
                # From here to the publish nothing awaits: the expected sequences describe the
                # state the checker decides on.
                expected = {s: self._subject_seq[s] for s in guarded}
                # The log time, taken before deciding and given to the checker as its clock:
                # a write a lease allows is stored with a time the lease covers.
                decided_at = self._stamp()
                verdicts = self._verdicts([unique[i] for i in todo], atomic, decided_at)
                if any(isinstance(v, Failure) for v in verdicts):
                    found = await self._find_stored([(i, subjects[i], unique[i]) for i in todo])
                    if found:  # repeats of stored events: decide again without them
                        stored.update(found)
                        continue
                    at = decided_at
                    for i, verdict in zip(todo, verdicts, strict=True):
                        failure = verdict if isinstance(verdict, Failure) else None
                        stored[i] = Appended(0, at, False, failure)
                    return _in_order(order, [stored[i] for i in range(len(unique))])
                messages = []
                marked: set[str] = set()
                for i, verdict in zip(todo, verdicts, strict=True):
                    entry, subject = unique[i], subjects[i]
                    assert not isinstance(verdict, Failure)
                    event = verdict.event
                    headers = {MSG_ID: message_id(entry.event_id)}
                    if subject in expected and subject not in marked:
                        headers[EXPECTED] = str(expected[subject])
                        marked.add(subject)
                    data = entry.data if event is None else orjson.dumps(event)
                    messages.append((subject, data, headers))
                items = [(i, subjects[i], unique[i]) for i in todo]
                try:
                    outcome = await self._store(messages, atomic, decided_at)
                except LogUnavailable as exc:
                    settled = await self._settle(items) if exc.outcome == LogError.UNKNOWN else None
                    if settled is None:
                        raise
                    await self._until_own_applied(max(r.seq for r in settled.values()))
                    stored.update(settled)
                    continue
                if isinstance(outcome, nats.js.errors.APIError):
                    if outcome.err_code == _BATCH_HAS_DUPLICATE:
                        found = await self._find_stored(items)
                        if not found:
                            raise LogError(
                                "event log error: JetStream refused the batch for an event id "
                                "it has stored, and the log did not find which"
                            )
                        stored.update(found)
                    elif outcome.err_code == _WRONG_LAST_SEQUENCE:
                        await self._learn(guarded, refresh=True)
                    elif outcome.err_code in _BUSY:  # another write is under way: wait a little
                        await asyncio.sleep(0.02)
                        await self._learn(guarded, refresh=True)
                    elif outcome.err_code == _BATCH_TOO_LARGE:
                        raise ValidationError(
                            f"an atomic batch of {len(messages)} events is more than the "
                            f"JetStream server takes in one atomic batch ({outcome.description}"
                            "); send fewer events per atomic batch, or raise the server's "
                            "jetstream { limits { batch { max_msgs } } }"
                        )
                    else:  # refused: nothing of this write is stored
                        error = translate(outcome)
                        raise type(error)(error.message, LogError.NOT_STORED)
                    continue
                acks, at = outcome
                for i, ack_seq, duplicate in acks:
                    index = todo[i]
                    if duplicate:
                        stored[index] = Appended(ack_seq, await self._at_of(ack_seq), True)
                    else:
                        stored[index] = Appended(ack_seq, at, False)
                await self._until_own_applied(max(seq for _, seq, _ in acks))
                return _in_order(order, [stored[i] for i in range(len(unique))])
        raise LogUnavailable(
            f"event log unavailable: this write was refused {_RETRIES} times (its entities kept "
            "changing while its conditions were decided, or JetStream was busy); try again"
        )

    def _verdicts(self, entries: list[Entry], atomic: bool, at: int) -> list[Verdict]:
        """The checker's verdicts for one group (every entry passes when none has a check)."""
        if all(e.check is None for e in entries):
            return [KEEP] * len(entries)
        checker = self._checker
        assert checker is not None
        first = max(self._applied, self._acked) + 1
        pairs = [(e.event, e.check) for e in entries]
        try:
            (verdicts,) = checker([(pairs, atomic)], first, [], at // 1000)
        except Exception as exc:
            logger.exception("deciding the conditions of %d entries failed", len(entries))
            raise LogUnavailable(f"event log unavailable: conditions not decided: {exc!r}") from exc
        return verdicts

    async def _store(
        self,
        messages: list[tuple[str, bytes, dict[str, str]]],
        atomic: bool,
        at: int | None = None,
    ) -> tuple[list[tuple[int, int, bool]], int] | nats.js.errors.APIError:
        """Publish `messages` (one, or an atomic batch). Returns ((position, sequence,
        duplicate) per message, at), or the APIError JetStream refused them with."""
        if atomic:
            future, at = await self._publish_batch(messages, at)
            (ack,) = await self._acks([future])
        else:
            futures, at = await self._publish(messages, at)
            (ack,) = await self._acks(futures)
        if isinstance(ack, nats.js.errors.APIError):
            return ack
        if atomic:
            count = len(messages)
            if ack.stored != count:
                raise LogError(f"event log error: JetStream stored {ack.stored} of {count}")
            first = ack.seq - count + 1
            return [(i, first + i, False) for i in range(count)], at
        return [(0, ack.seq, ack.duplicate)], at

    async def _publish(
        self, messages: list[tuple[str, bytes, dict[str, str]]], at: int | None = None
    ) -> tuple[list[asyncio.Future[Answer]], int]:
        """Send `messages` back to back with one log time; returns their acknowledgements to
        come, and that time. Nothing is sent once the log is closed."""
        async with self._publishing:
            self._sendable()
            if at is None:  # else the time the conditions were decided at
                at = self._stamp()
            stamp = str(at)
            futures = []
            try:
                for subject, data, headers in messages:
                    headers[AT] = stamp
                    futures.append(await self._send(subject, data, headers, acked=True))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        return futures, at

    async def _publish_batch(
        self, messages: list[tuple[str, bytes, dict[str, str]]], at: int | None = None
    ) -> tuple[asyncio.Future[Answer], int]:
        """Send `messages` as one atomic batch; only its commit is acknowledged."""
        batch = uuid.uuid4().hex
        last = len(messages)
        async with self._publishing:
            self._sendable()
            if at is None:  # else the time the conditions were decided at
                at = self._stamp()
            stamp = str(at)
            for n, (subject, data, headers) in enumerate(messages, start=1):
                headers.update({AT: stamp, BATCH_ID: batch, BATCH_SEQ: str(n)})
                if n == last:
                    headers[BATCH_COMMIT] = "1"
                future = await self._send(subject, data, headers, acked=n == last)
        return future, at

    async def _send(
        self, subject: str, data: bytes, headers: dict[str, str], *, acked: bool
    ) -> asyncio.Future[Answer]:
        """Publish one message; the future gets JetStream's answer when `acked` (else it is
        done at once: a staged message of an atomic batch, answered with its commit)."""
        assert self._nc is not None and self._loop is not None
        self._reachable()  # the connection may have dropped after an earlier message
        attempt = _ATTEMPT.get()
        if attempt is not None:
            attempt.sent = True
        future: asyncio.Future[Answer] = self._loop.create_future()
        if not acked:
            await self._nc.publish(subject, data, headers=headers)
            future.set_result(Ack(0, False, 0))
            return future
        token = str(next(self._tokens))
        self._answers[token] = future
        future.add_done_callback(lambda _: self._answers.pop(token, None))
        await self._nc.publish(subject, data, reply=self._reply_prefix + token, headers=headers)
        return future

    async def _answer(self, msg: Msg) -> None:
        """JetStream's answer to a publish (the reply subscription's callback)."""
        future = self._answers.pop(msg.subject[len(self._reply_prefix) :], None)
        if future is None or future.done():
            return
        if (msg.headers or {}).get("Status") == "503":  # nobody takes the subject
            # NATS had nowhere to send the message (e.g. the stream's leader is being elected):
            # it is not stored.
            future.set_exception(
                LogUnavailable(
                    f"event log unavailable: no JetStream server took the message (the stream "
                    f"for {self._all} is missing, or electing its leader); it is not stored",
                    LogError.NOT_STORED,
                )
            )
            return
        try:
            future.set_result(answer_of(msg.data))
        except LogError as exc:
            future.set_exception(exc)

    def _stamp(self) -> int:
        at = max(now_us(), self._last_at)
        self._last_at = at
        return at

    async def _acks(self, futures: Sequence[asyncio.Future[Answer]]) -> list[Answer]:
        """The acknowledgements (or refusals) of published messages, waited for `timeout`.
        Raises LogUnavailable when one did not come, or the first error of the transport: with
        the outcome NOT_STORED when no message was stored (each refused, or sent where nothing
        took it), else UNKNOWN."""
        try:
            answers: Sequence[Answer | BaseException] = await asyncio.wait_for(
                asyncio.gather(*futures, return_exceptions=True), self.timeout
            )
        except TimeoutError:
            raise LogUnavailable(
                f"event log unavailable: JetStream did not acknowledge within {self.timeout:g}s;"
                " the events may be stored (sending them again with the same eventId is safe)",
                LogError.UNKNOWN,
            ) from None
        acks: list[Answer] = []
        failure: BaseException | None = None
        for answer in answers:
            if isinstance(answer, Ack):
                self._acked = max(self._acked, answer.seq)
            elif not isinstance(answer, nats.js.errors.APIError):
                failure = failure or answer
                continue
            acks.append(answer)
        if failure is not None:
            error = translate(failure)
            refused = all(_refused(each) for each in answers)
            raise type(error)(
                error.message, LogError.NOT_STORED if refused else LogError.UNKNOWN
            ) from failure
        return acks

    async def _find_stored(self, items: list[tuple[int, str, Entry]]) -> dict[int, Appended]:
        """Which of `items` (index, subject, entry) are stored within the duplicate window:
        their results as duplicates, by index. Reads the entities' subjects from the window's
        start (JetStream keeps no index by message id that a client could ask)."""
        wanted: dict[str, dict[str, int]] = {}
        for index, subject, entry in items:
            wanted.setdefault(subject, {})[message_id(entry.event_id)] = index
        since = now_us() - int(self.dedupe_window * 1e6) - _SCAN_MARGIN_US
        found: dict[int, Appended] = {}
        for subject, ids in wanted.items():
            async for seq, msg in self._scan(subject, start_us=since):
                headers = msg.headers or {}
                match = ids.get(headers.get(MSG_ID, ""))
                if match is not None:
                    found[match] = Appended(seq, log_time(seq, headers), True)
        return found

    async def _learn(self, subjects: list[str], *, refresh: bool) -> None:
        """Know, for each of `subjects` (whose locks this task holds), the newest sequence on
        it that the state includes: asked of JetStream when not known yet or when `refresh`
        (after JetStream said the subject moved, or purged its newest message). An answer at
        or below the applied sequence is in the state; if a newer event comes meanwhile, the
        next publish is refused and the subject asked again, so the expected sequence is never
        ahead of what the checker saw."""
        for subject in subjects:
            before = self._subject_seq.get(subject)
            if before is not None and not refresh:
                continue
            newest = await self._direct_one({"last_by_subj": subject})
            seq = 0 if newest is None else sequence_of(newest)
            if self._subject_seq.get(subject) != before:
                continue  # the consumer handed on a newer one meanwhile
            if seq > self._applied:
                await self._until_applied(seq)  # handing it on sets it
            else:
                self._subject_seq[subject] = seq

    @contextlib.asynccontextmanager
    async def _locked(self, subjects: list[str]) -> AsyncIterator[None]:
        """Hold the locks of `subjects` (sorted, so two holders cannot wait on each other)."""
        counted: list[str] = []
        held: list[asyncio.Lock] = []
        try:
            for subject in subjects:
                self._lock_users[subject] = self._lock_users.get(subject, 0) + 1
                counted.append(subject)
                lock = self._locks.setdefault(subject, asyncio.Lock())
                await lock.acquire()
                held.append(lock)
            yield
        finally:
            for lock in held:
                lock.release()
            for subject in counted:
                self._lock_users[subject] -= 1
                if not self._lock_users[subject]:
                    del self._lock_users[subject], self._locks[subject]

    def _subject_of(self, entity_id: str | None) -> str:
        return entity_subject(self.subject, entity_id)

    async def sync(self) -> int:
        """Waits for the appends begun before it, then until `on_records` has been handed
        everything up to the stream's last sequence, which it returns."""
        self._usable()
        pending = list(self._inflight)
        if pending:
            await asyncio.wait(pending)
        with self._translated():
            last = (await self._info()).state.last_seq
            await self._until_applied(last)
        return last

    # -- copying another log in -------------------------------------------------------------

    async def copy_in(self, records: Sequence[Record], *, upto_seq: int = 0) -> int:
        """Store `records` of another log (in sequence order, all above the stream's last
        sequence) at their own sequences, with their own log times and event ids, the numbers
        between them as skipped numbers, then skipped numbers up to `upto_seq`: a log copied in
        keeps its versions (`flux migrate`). Each message is published with the sequence it
        must follow (`Nats-Expected-Last-Sequence`), so a write from elsewhere that lands
        between them fails the copy with LogError instead of shifting it; so does a record
        JetStream takes for a duplicate. Returns the stream's last sequence."""
        self._usable()
        self._sendable()
        with self._translated():
            last = (await self._info()).state.last_seq
            messages: list[tuple[int, str, bytes, dict[str, str]]] = []
            at = self._last_at
            for record in records:
                if record.seq <= last + len(messages):
                    raise LogError(
                        f"event log error: cannot copy sequence {record.seq} into the stream "
                        f"{self.stream}: it is at {last + len(messages)} already"
                    )
                while last + len(messages) + 1 < record.seq:
                    messages.append((last + len(messages) + 1, self._skip, b"", {AT: str(at)}))
                at = record.at
                event = record.event
                headers = {MSG_ID: message_id(event["eventId"]), AT: str(at)}
                subject = self._subject_of(entity_of(event))
                messages.append((record.seq, subject, orjson.dumps(event), headers))
            while last + len(messages) < upto_seq:
                messages.append((last + len(messages) + 1, self._skip, b"", {AT: str(at)}))
            for start in range(0, len(messages), _FILLERS_AT_ONCE):
                await self._copy_chunk(messages[start : start + _FILLERS_AT_ONCE])
            self._last_at = max(self._last_at, at)
            return last + len(messages)

    async def begin_at(self, seq: int) -> None:
        """Make an empty stream go on at `seq` (purged up to there: JetStream keeps counting
        from it), for a log copied in whose retention removed its first events. Raises LogError
        when the stream holds messages or is past `seq` already."""
        self._usable()
        with self._translated():
            state = (await self._info()).state
            if state.last_seq == seq - 1:
                return
            if state.messages or state.last_seq >= seq:
                raise LogError(
                    f"event log error: the stream {self.stream} is at sequence "
                    f"{state.last_seq}, it cannot begin at {seq}"
                )
            await self._api(f"$JS.API.STREAM.PURGE.{self.stream}", {"seq": seq})

    async def _copy_chunk(self, messages: list[tuple[int, str, bytes, dict[str, str]]]) -> None:
        """Publish `messages` (sequence, subject, data, headers) back to back, each expecting
        the one before it; raises LogError unless every one is stored at its sequence."""
        async with self._publishing:
            self._sendable()
            futures = []
            try:
                for seq, subject, data, headers in messages:
                    headers[EXPECTED_LAST] = str(seq - 1)
                    futures.append(await self._send(subject, data, headers, acked=True))
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
        answers = await self._acks(futures)
        for (seq, _, _, _), answer in zip(messages, answers, strict=True):
            if isinstance(answer, nats.js.errors.APIError):
                if answer.err_code == _WRONG_LAST_SEQUENCE:
                    raise LogError(
                        f"event log error: the stream {self.stream} got other messages while "
                        f"sequence {seq} was copied in (is a Flux node writing to it?)"
                    )
                raise translate(answer)
            if answer.duplicate or answer.seq != seq:
                what = "as a duplicate of" if answer.duplicate else "at"
                raise LogError(
                    f"event log error: JetStream stored sequence {seq} {what} {answer.seq} in "
                    f"the stream {self.stream}"
                )

    # -- reading ---------------------------------------------------------------------------

    async def read(self, after_seq: int, batch_size: int = 10_000) -> AsyncIterator[list[Record]]:
        """Records above `after_seq`, in batches of `batch_size` (the last may be smaller)."""
        self._usable()
        prev = after_seq
        done = False
        while not done:
            batch: list[Record] = []
            while len(batch) < batch_size and not done:
                request = {
                    "seq": prev + 1,
                    "next_by_subj": self._all,
                    "batch": min(batch_size - len(batch), _PAGE),
                    "max_bytes": _PAGE_BYTES,
                }
                with self._translated():
                    msgs, pending = await self._direct_batch(request)
                    for msg in msgs:
                        seq = sequence_of(msg)
                        if seq != prev + 1:
                            await self._check_jump(prev, seq)
                        prev = seq
                        headers = msg.headers or {}
                        if headers.get("Nats-Subject") != self._skip:
                            batch.append(decode(seq, headers, msg.data))
                done = not msgs or pending == 0
            if batch:
                yield batch

    async def _check_jump(self, prev: int, seq: int) -> None:
        """Sequences after `prev` up to `seq` are not stored: fine when retention removed them
        (they are below the stream's first), damage otherwise."""
        first = (await self._info()).state.first_seq
        if seq > first:
            raise Damaged(f"sequences {prev + 1}..{seq - 1} are missing from the stream")

    async def history(
        self, entity_id: str, since_us: int, limit: int, after_seq: int = 0
    ) -> list[bytes]:
        """The entity's subject, read backwards in windows of sequences that grow fourfold
        until `limit` events are found or the events get older than `since_us` (log times
        grow with the sequence, see the module docstring)."""
        self._usable()
        if limit <= 0:
            return []
        subject = self._subject_of(entity_id)
        found: list[bytes] = []
        with self._translated():
            newest = await self._direct_one({"last_by_subj": subject})
            if newest is None:
                return []
            high = sequence_of(newest)
            width = max(2 * limit, 64)
            while high > after_seq:
                low = max(after_seq + 1, high - width + 1)
                window = [item async for item in self._scan(subject, start_seq=low, upto=high)]
                for seq, msg in reversed(window):
                    headers = msg.headers or {}
                    if log_time(seq, headers) < since_us:
                        return found
                    check_owner(seq, entity_id, msg.data)
                    found.append(bytes(msg.data))
                    if len(found) == limit:
                        return found
                high = low - 1
                width *= 4
        return found

    async def first_seq(self) -> int:
        self._usable()
        with self._translated():
            first = await self._direct_one({"seq": 1, "next_by_subj": self._records})
            if first is None:
                return (await self._info()).state.last_seq + 1
            return sequence_of(first)

    async def last_seq(self) -> int:
        self._usable()
        with self._translated():
            return (await self._info()).state.last_seq

    # -- retention -------------------------------------------------------------------------

    async def prune(self, upto_seq: int, before_us: int | None, keep_events: int | None) -> int:
        """Purge the stream up to the bound SQLite's log would use (`keep_events` counts
        messages: skipped numbers count as events)."""
        self._usable()
        if before_us is None and keep_events is None:
            return 0
        with self._translated():
            state = (await self._info()).state
            if state.messages == 0:
                return 0
            limits = []
            if before_us is not None:
                kept = await self._first_at_or_after(before_us, state.first_seq, state.last_seq)
                limits.append(kept - 1 if kept is not None else upto_seq)
            if keep_events is not None:
                limits.append(state.last_seq - keep_events)
            bound = min(upto_seq, max(limits))
            if bound < state.first_seq:
                return 0
            done = await self._api(f"$JS.API.STREAM.PURGE.{self.stream}", {"seq": bound + 1})
            return int(done.get("purged", 0))

    async def _first_at_or_after(self, at_us: int, low: int, high: int) -> int | None:
        """The lowest sequence logged at or after `at_us`, by bisection (see the module
        docstring on log time)."""

        async def first_from(seq: int) -> tuple[int, int]:
            msg = await self._direct_one({"seq": seq, "next_by_subj": self._all})
            if msg is None:
                return high + 1, 2**63
            found = sequence_of(msg)
            return found, log_time(found, msg.headers or {})

        if (await first_from(high))[1] < at_us:
            return None
        while low < high:
            mid = (low + high) // 2
            if (await first_from(mid))[1] >= at_us:
                high = mid
            else:
                low = mid + 1
        return (await first_from(low))[0]

    # -- requests to JetStream ---------------------------------------------------------------

    async def _info(self) -> api.StreamInfo:
        assert self._js is not None
        return await self._js.stream_info(self.stream)

    async def _api(self, subject: str, request: dict[str, Any]) -> dict[str, Any]:
        assert self._nc is not None
        msg = await self._nc.request(subject, orjson.dumps(request), timeout=self.timeout)
        answer: dict[str, Any] = orjson.loads(msg.data)
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises
        return answer

    async def _at_of(self, seq: int) -> int:
        """The log time of the stored message `seq` (0 when it is gone)."""
        msg = await self._direct_one({"seq": seq})
        return 0 if msg is None else log_time(seq, msg.headers or {})

    async def _direct_one(self, request: dict[str, Any]) -> Msg | None:
        """One direct get: the message, or None when there is none."""
        assert self._nc is not None
        msg = await self._nc.request(self._direct, orjson.dumps(request), timeout=self.timeout)
        status = (msg.headers or {}).get("Status")
        if status == "404":
            return None
        if status is not None:
            raise LogUnavailable(f"event log unavailable: JetStream direct get answered {status}")
        return msg

    async def _direct_batch(self, request: dict[str, Any]) -> tuple[list[Msg], int]:
        """A batch direct get: the messages, and how many more match after them."""
        assert self._nc is not None
        inbox = self._nc.new_inbox()
        sub = await self._nc.subscribe(inbox)
        try:
            await self._nc.publish(self._direct, orjson.dumps(request), reply=inbox)
            msgs: list[Msg] = []
            while True:
                msg = await sub.next_msg(timeout=self.timeout)
                headers = msg.headers or {}
                status = headers.get("Status")
                if status is None:
                    msgs.append(msg)
                elif status == "204":  # end of batch
                    return msgs, int(headers.get("Nats-Num-Pending", "0"))
                elif status == "404":
                    return msgs, 0
                else:
                    raise LogUnavailable(
                        f"event log unavailable: JetStream direct get answered {status}"
                    )
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _scan(
        self,
        subject: str,
        *,
        start_seq: int = 0,
        start_us: int | None = None,
        upto: int | None = None,
    ) -> AsyncIterator[tuple[int, Msg]]:
        """The messages on `subject` from `start_seq` (or logged by JetStream from `start_us`
        on) up to `upto`, in order."""
        request: dict[str, Any] = {"next_by_subj": subject, "batch": _PAGE}
        if start_us is not None:
            request["start_time"] = rfc3339(start_us)
        else:
            request["seq"] = start_seq
        while True:
            msgs, pending = await self._direct_batch(request)
            seq = 0
            for msg in msgs:
                seq = sequence_of(msg)
                if upto is not None and seq > upto:
                    return
                yield seq, msg
            if not msgs or pending == 0:
                return
            request = {"next_by_subj": subject, "batch": _PAGE, "seq": seq + 1}


def _unique(entries: Sequence[Entry]) -> tuple[list[int], list[Entry]]:
    """The entries with each event id once (the first), and for each entry its index there."""
    first: dict[str, int] = {}
    order = []
    unique: list[Entry] = []
    for entry in entries:
        index = first.setdefault(entry.event_id, len(unique))
        if index == len(unique):
            unique.append(entry)
        order.append(index)
    return order, unique


def _in_order(order: list[int], results: list[Appended]) -> list[Appended]:
    """Each entry's result: the first occurrence of an id gets its own, repeats a duplicate."""
    seen: set[int] = set()
    out = []
    for index in order:
        result = results[index]
        if index in seen:
            result = _repeat(result)
        seen.add(index)
        out.append(result)
    return out


def _answer_with(future: asyncio.Future[list[Appended]], answer: list[Appended] | LogError) -> None:
    """Resolve a queued append (unless its writer stopped waiting)."""
    if future.done():
        return
    if isinstance(answer, LogError):
        future.set_exception(answer)
    else:
        future.set_result(answer)


def _repeat(result: Appended) -> Appended:
    """The result of an entry that repeats an earlier one of the same append."""
    return result if result.failure is not None else Appended(result.seq, result.at, True)


def _stored(answers: list[Answer]) -> list[Ack]:
    """The acknowledgements; raises the first refusal, translated (NOT_STORED when every
    message was refused, else UNKNOWN: the others are stored)."""
    for answer in answers:
        if isinstance(answer, nats.js.errors.APIError):
            error = translate(answer)
            refused = all(_refused(each) for each in answers)
            raise type(error)(error.message, LogError.NOT_STORED if refused else LogError.UNKNOWN)
    return [answer for answer in answers if isinstance(answer, Ack)]


def _refused(answer: Answer | BaseException) -> bool:
    """Whether a publish's answer says its message is not stored."""
    if isinstance(answer, nats.js.errors.APIError):
        return True
    return isinstance(answer, LogError) and answer.outcome == LogError.NOT_STORED
