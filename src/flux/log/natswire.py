"""What the JetStream event log writes to NATS and reads back, pure (no I/O): subjects, message
ids and headers, stored records, publish acknowledgements, how a group of appends is cut into
atomic batches, the stream's settings, and NATS errors in Flux's terms. Why each is so:
`flux/log/jetstream.py`'s docstring.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import itertools
import re
from typing import Any, NamedTuple

import nats.errors
import nats.js.errors
import orjson
from nats.aio.msg import Msg
from nats.js import api

from flux import _parsers as parse
from flux.errors import LogError, LogUnavailable
from flux.log import Record

AT = "Flux-At"  # the log time, microseconds
MSG_ID = "Nats-Msg-Id"
EXPECTED = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST = "Nats-Expected-Last-Sequence"
BATCH_ID = "Nats-Batch-Id"
BATCH_SEQ = "Nats-Batch-Sequence"
BATCH_COMMIT = "Nats-Batch-Commit"

_PLAIN_ID_BYTES = 192  # longer ids are hashed: 256 characters of base64url at most
_UNAVAILABLE_CODES = frozenset({10008, 10039, 10059, 10076})  # no JetStream, no stream


class Ack(NamedTuple):
    """JetStream's acknowledgement of a publish: the stored sequence (of the original, for a
    duplicate), and how many messages an atomic batch stored."""

    seq: int
    duplicate: bool
    stored: int


Answer = Ack | nats.js.errors.APIError


def answer_of(data: bytes) -> Answer:
    """JetStream's answer to a publish: an acknowledgement, or the APIError it refused the
    message with. Raises LogError when the answer is neither."""
    try:
        answer = orjson.loads(data)
        error = answer.get("error")
        if error is not None:
            return nats.js.errors.APIError(
                code=error.get("code"),
                description=error.get("description"),
                err_code=error.get("err_code"),
            )
        return Ack(int(answer["seq"]), bool(answer.get("duplicate")), int(answer.get("count", 0)))
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError):
        raise LogError(f"event log error: JetStream answered {data!r:.200}") from None


def split_batches(todo: list[int], owner: list[int], limit: int) -> list[list[int]]:
    """`todo` (indexes of a group's entries, in order; `owner[i]`: the append of entry i) cut
    into atomic batches of at most `limit`: an append that fits in one batch is not cut (a
    batch ends before it when it would not fit); a longer one fills as many as it needs, in
    order, its last part shared with the appends after it."""
    batches: list[list[int]] = []
    current: list[int] = []
    for _, indexes in itertools.groupby(todo, key=owner.__getitem__):
        run = list(indexes)
        if current and len(current) + len(run) > limit:
            batches.append(current)
            current = []
        while len(run) > limit:
            batches.append(run[:limit])
            run = run[limit:]
        current.extend(run)
    if current:
        batches.append(current)
    return batches


def batch_limit(description: str | None, size: int) -> int:
    """The atomic batch limit a refusal of a batch of `size` states ("atomic publish batch is
    too large: 100"); half of `size` when it states none below it."""
    _, _, stated = (description or "").rpartition(":")
    with contextlib.suppress(ValueError):
        limit = int(stated)
        if 0 < limit < size:
            return limit
    return max(1, size // 2)


def stream_config(
    name: str, subjects: str, replicas: int, dedupe_window: float
) -> api.StreamConfig:
    """The stream the log needs: file storage, nothing removed but by the log (retention is
    Flux's), no message deleted (`deny_delete`: a hole is damage), direct gets, atomic batches,
    event ids remembered `dedupe_window` seconds."""
    return api.StreamConfig(
        name=name,
        description="Flux events",
        subjects=[subjects],
        retention=api.RetentionPolicy.LIMITS,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        discard=api.DiscardPolicy.OLD,
        max_msgs=-1,
        max_bytes=-1,
        max_age=0,
        max_msgs_per_subject=-1,
        duplicate_window=dedupe_window,
        allow_direct=True,
        allow_atomic=True,
        deny_delete=True,
        deny_purge=False,
    )


class Damaged(Exception):
    """Damage found in what the stream returned (see `flux/log/jetstream.py`)."""


def translate(exc: BaseException) -> LogError:
    """Map a NATS error (or an unexpected one) to the Flux error tree."""
    if isinstance(exc, LogError):
        return exc
    if isinstance(exc, nats.js.errors.APIError):
        description = exc.description or "no description"
        if exc.code == 503 or exc.err_code in _UNAVAILABLE_CODES:
            return LogUnavailable(f"event log unavailable: JetStream: {description}")
        return LogError(f"event log error: JetStream refused: {description} (error {exc.err_code})")
    if isinstance(exc, TimeoutError | nats.errors.TimeoutError):
        return LogUnavailable("event log unavailable: JetStream did not answer in time")
    if isinstance(exc, nats.errors.Error | OSError):
        return LogUnavailable(f"event log unavailable: NATS: {exc}")
    return LogError(f"event log error: {exc!r}")


def entity_subject(prefix: str, entity_id: str | None) -> str:
    """The subject of an entity's events: `<prefix>.r.e.<base64url of the id>`, the id's
    SHA-256 (`.r.h.`) past 192 bytes, `<prefix>.r.n` without an entity."""
    if entity_id is None:
        return f"{prefix}.r.n"
    raw = entity_id.encode("utf-8", "surrogatepass")
    if 0 < len(raw) <= _PLAIN_ID_BYTES:
        return f"{prefix}.r.e.{_b64(raw)}"
    return f"{prefix}.r.h.{_b64(hashlib.sha256(raw).digest())}"


def message_id(event_id: str) -> str:
    """The `Nats-Msg-Id` of an event: its id when that is a plain header value (up to 128
    printable ASCII characters, no space: NATS would trim or fold others), else `~` and the
    SHA-256 of its UTF-8 (`~` is not in the plain set, so the two forms never meet)."""
    if _PLAIN_MSG_ID.fullmatch(event_id):
        return event_id
    return "~" + _b64(hashlib.sha256(event_id.encode("utf-8", "surrogatepass")).digest())


_PLAIN_MSG_ID = re.compile(r"[!-}]{1,128}")  # printable ASCII without space, `~` and DEL


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def check_names(stream: str, subject: str) -> None:
    """Raise ValueError unless `stream` is a valid stream name and `subject` a subject prefix
    of literal tokens."""
    parse.stream_name(stream)
    parse.subject_prefix(subject)


def differences(actual: api.StreamConfig, wanted: api.StreamConfig) -> list[str]:
    """The settings of `actual` that differ from `wanted` where Flux depends on them."""
    problems = []
    for name in (
        "subjects",
        "retention",
        "storage",
        "num_replicas",
        "discard",
        "max_msgs",
        "max_bytes",
        "max_age",
        "max_msgs_per_subject",
        "duplicate_window",
    ):
        have, want = getattr(actual, name), getattr(wanted, name)
        if isinstance(want, float):
            same = have is not None and abs(float(have) - want) < 1e-6
        else:
            same = have == want
        if not same:
            problems.append(f"{name} is {_show(have)}, Flux needs {_show(want)}")
    for name in ("allow_direct", "allow_atomic", "deny_delete", "deny_purge", "sealed"):
        have, want = bool(getattr(actual, name)), bool(getattr(wanted, name))
        if have != want:
            problems.append(f"{name} is {str(have).lower()}, Flux needs {str(want).lower()}")
    return problems


def _show(value: Any) -> str:
    if hasattr(value, "value"):  # an enum
        return str(value.value)
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value)


def decode(seq: int, headers: dict[str, str] | None, data: bytes) -> Record:
    """The record stored as message `seq`; raises Damaged when it is not one."""
    at = log_time(seq, headers or {})
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Damaged(f"stored event {seq} does not decode") from None
    if type(event) is not dict:
        raise Damaged(f"stored event {seq} is not a JSON object")
    return Record(seq, at, event)


def log_time(seq: int, headers: dict[str, str]) -> int:
    """The `Flux-At` of stored message `seq`; raises Damaged when it has none."""
    try:
        return int(headers[AT])
    except (KeyError, ValueError):
        raise Damaged(f"stored message {seq} has no log time ({AT})") from None


def check_owner(seq: int, entity_id: str, data: bytes) -> None:
    """Raise Damaged unless stored event `seq` decodes and is `entity_id`'s."""
    try:
        event = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise Damaged(f"stored event {seq} does not decode") from None
    payload = event.get("payload") if type(event) is dict else None
    if type(payload) is not dict or payload.get("entity_id") != entity_id:
        raise Damaged(f"event {seq} on the subject of {entity_id!r} belongs to another entity")


def sequence_of(msg: Msg) -> int:
    """The stream sequence of a message a direct get returned."""
    return int((msg.headers or {})["Nats-Sequence"])


def rfc3339(at_us: int) -> str:
    """A time in microseconds as JetStream's API takes it."""
    moment = datetime.datetime.fromtimestamp(at_us / 1e6, tz=datetime.UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
