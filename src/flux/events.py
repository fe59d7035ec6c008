"""Events: decoding and validating the envelope, ids and timestamps. Pure: no I/O.

An accepted event is kept as a plain dict in canonical form (`eventId`, `stream`, `source`,
`timestamp`, optional `key` and `schema`, `payload`); unknown top-level fields are dropped, as in
the original Flux. Error messages follow the original's wording (serde's for decoding errors, less
the line and column).
"""

from __future__ import annotations

import functools
import random
import re
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from flux.errors import ValidationError

Event = dict[str, Any]

STREAM_RE = re.compile(r"[a-z0-9]+(?:\.[a-z0-9]+)*")
DELETION_STREAM = "flux.events.deletions"
DELETED = "__deleted__"
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

_random = random.Random()  # seeded from os.urandom once; uuid7 needs uniqueness, not secrecy


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, version 7, 74 random bits."""
    ms = time.time_ns() // 1_000_000
    rand = _random.getrandbits(74)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | (rand >> 62) << 64
        | 0b10 << 62
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now_us() -> int:
    """Server time in microseconds since the epoch."""
    return time.time_ns() // 1000


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@functools.lru_cache(maxsize=4096)
def _seconds_text(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def format_time(us: int, zulu: bool = False) -> str:
    """RFC 3339 in UTC with the fewest of 0/3/6 fraction digits that keep every non-zero digit;
    `+00:00` for REST, `Z` for WebSocket messages (as the original)."""
    seconds, fraction = divmod(us, 1_000_000)
    if fraction == 0:
        frac = ""
    elif fraction % 1000 == 0:
        frac = f".{fraction // 1000:03d}"
    else:
        frac = f".{fraction:06d}"
    return f"{_seconds_text(seconds)}{frac}{'Z' if zulu else '+00:00'}"


def parse_time(text: str) -> int:
    """RFC 3339 / ISO 8601 text to microseconds; a time without an offset is UTC.
    Raises ValueError."""
    parsed = datetime.fromisoformat(text.strip())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def decode_json(body: bytes) -> Any:
    """Parse a JSON body; raises ValidationError with a readable message."""
    if not body.strip():
        raise ValidationError("EOF while parsing a value at line 1 column 0")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValidationError(f"invalid JSON: {exc}") from None


def describe(value: Any) -> str:
    """serde's words for a JSON value's type, as in `invalid type: <describe>, expected ...`."""
    if value is None:
        return "null"
    if value is True or value is False:
        return f"boolean `{'true' if value else 'false'}`"
    if isinstance(value, int):
        return f"integer `{value}`"
    if isinstance(value, float):
        return f"floating point `{value!r}`"
    if isinstance(value, str):
        return f"string {orjson.dumps(value).decode()}"
    if isinstance(value, list):
        return "sequence"
    return "map"


_REQUIRED = ("stream", "source", "timestamp", "payload")


def validate_event(obj: Any) -> Event:
    """Check one decoded event and return it in canonical form, generating `eventId` when absent.
    Raises ValidationError with the first failure, in the original's order of checks."""
    if type(obj) is not dict:
        raise ValidationError(f"invalid type: {describe(obj)}, expected struct Event")
    for name in _REQUIRED:
        if name not in obj:
            raise ValidationError(f"missing field `{name}`")
    stream = obj["stream"]
    source = obj["source"]
    timestamp = obj["timestamp"]
    payload = obj["payload"]
    if type(stream) is not str:
        raise ValidationError(f"invalid type: {describe(stream)}, expected a string")
    if type(source) is not str:
        raise ValidationError(f"invalid type: {describe(source)}, expected a string")
    if type(timestamp) is not int:
        raise ValidationError(f"invalid type: {describe(timestamp)}, expected i64")
    if not I64_MIN <= timestamp <= I64_MAX:
        raise ValidationError(f"invalid value: integer `{timestamp}`, expected i64")
    event_id = obj.get("eventId")
    if event_id is not None and type(event_id) is not str:
        raise ValidationError(f"invalid type: {describe(event_id)}, expected a string")
    key = obj.get("key")
    if key is not None and type(key) is not str:
        raise ValidationError(f"invalid type: {describe(key)}, expected a string")
    schema = obj.get("schema")
    if schema is not None and type(schema) is not str:
        raise ValidationError(f"invalid type: {describe(schema)}, expected a string")

    if not stream:
        raise ValidationError("stream is required")
    if not source:
        raise ValidationError("source is required")
    if payload is None:
        raise ValidationError("payload is required")
    if STREAM_RE.fullmatch(stream) is None:
        raise ValidationError(
            f"invalid stream format '{stream}': must be lowercase with optional dots"
        )
    if timestamp <= 0:
        raise ValidationError(f"timestamp must be positive, got {timestamp}")
    if type(payload) is not dict:
        raise ValidationError("payload must be a JSON object")

    event: Event = {
        "eventId": event_id or uuid7(),
        "stream": stream,
        "source": source,
        "timestamp": timestamp,
    }
    if key is not None:
        event["key"] = key
    if schema is not None:
        event["schema"] = schema
    event["payload"] = payload
    return event


def entity_of(event: Event) -> str | None:
    """The entity an event is about (`payload.entity_id` when it is a string), else None."""
    entity_id = event["payload"].get("entity_id")
    return entity_id if type(entity_id) is str else None


def tombstone(entity_id: str) -> Event:
    """The deletion event that DELETE endpoints append (same shape as the original's)."""
    ms = now_ms()
    return {
        "eventId": uuid7(),
        "stream": DELETION_STREAM,
        "source": "api",
        "timestamp": ms,
        "key": entity_id,
        "payload": {"entity_id": entity_id, "properties": {DELETED: True, "__deleted_at__": ms}},
    }


def namespace_of(entity_id: str) -> str | None:
    """The part of an id before its first `/`, or None for an id without one."""
    head, sep, _ = entity_id.partition("/")
    return head if sep else None
