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
# Properties only Flux sets (docs/coordination.md): an entity's lease, its presence holder, its
# time to live, and the reason on a tombstone Flux logged itself. Events may not set them.
LEASE = "__lease__"
PRESENCE = "__presence__"
TTL = "__ttl_ms__"
EXPIRED = "__expired__"
RESERVED = frozenset((LEASE, PRESENCE, TTL, EXPIRED))
CONDITION_FIELDS = ("expected_version", "expected_properties", "fencing_token")
MAX_TTL_MS = 10 * 365 * 24 * 3600 * 1000  # ten years
I64_MIN = -(2**63)
I64_MAX = 2**63 - 1

_random = random.Random()  # seeded from os.urandom once; uuid7 needs uniqueness, not secrecy
_getrandbits = _random.getrandbits
_time_ns = time.time_ns
_VARIANT = 0b10 << 62
# The first three groups of this millisecond's ids ("tttttttt-tttt-7aaa-"): the 48-bit time,
# the version and 12 random bits, drawn once per millisecond. Each id adds 62 random bits.
_prefix_ms = -1
_prefix = ""


def uuid7() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, version 7, 12 random bits per millisecond and
    62 per id (unique with overwhelming odds: a collision needs two ids of the same
    millisecond to draw the same 62 bits). About 1 µs, against 2.6 µs when every id was built
    from a 128-bit integer: one is made for every event that arrives without an `eventId`."""
    global _prefix_ms, _prefix
    ms = _time_ns() // 1_000_000
    if ms != _prefix_ms:
        h = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
        _prefix = f"{h[:8]}-{h[8:]}-7{_getrandbits(12):03x}-"
        _prefix_ms = ms
    tail = f"{_getrandbits(62) | _VARIANT:016x}"
    return f"{_prefix}{tail[:4]}-{tail[4:]}"


# Sets the top two bits of a byte to the RFC 9562 variant (0b10), leaving its six random bits.
_VARIANT_BYTE = bytes((b & 0x3F) | 0x80 for b in range(256))


def uuid7_many(count: int) -> list[str]:
    """`count` UUIDv7 strings of the current millisecond, as `uuid7` makes them (the same
    prefix, 62 random bits each), drawn and formatted with a few C calls for all of them: a
    sixth of `uuid7`'s cost per id, for a batch whose events arrive without an `eventId`."""
    global _prefix_ms, _prefix
    ms = _time_ns() // 1_000_000
    if ms != _prefix_ms:
        h = f"{ms & 0xFFFF_FFFF_FFFF:012x}"
        _prefix = f"{h[:8]}-{h[8:]}-7{_getrandbits(12):03x}-"
        _prefix_ms = ms
    # Each id's fourth group (2 bytes, the variant in its top bits) and fifth (6 bytes).
    fourth = bytearray(_getrandbits(16 * count).to_bytes(2 * count, "big"))
    fourth[0::2] = fourth[0::2].translate(_VARIANT_BYTE)
    fifth = _getrandbits(48 * count).to_bytes(6 * count, "big")
    return list(
        map(
            _prefix.__add__,
            map(
                "-".join,
                zip(fourth.hex(",", 2).split(","), fifth.hex(",", 6).split(","), strict=True),
            ),
        )
    )


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


def json_kind(value: Any, array: str = "an array") -> str:
    """A JSON value's kind in words for an error message ("an object", "a string", ...);
    `array` names a list (the JSON path errors say "a list")."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return array
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a number"


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


_ABSENT = object()
_REQUIRED = ("stream", "source", "payload")
# Fields that must be strings when present: True for required ones (null is a type error),
# False for optional ones (null means absent).
_STRING_FIELDS = {"eventId": False, "stream": True, "source": True, "key": False, "schema": False}
NUL_MESSAGE = "{field} must not contain the NUL character (U+0000)"
# The longest entity id accepted by default, in characters (FLUX_MAX_ENTITY_ID_LENGTH). Matching
# a change against prefix subscriptions and the log's history index cost grows with id length.
MAX_ENTITY_ID_LENGTH = 1024
MAX_PAYLOAD_DEPTH = 128  # serde_json's recursion limit; orjson.dumps gives up at 254 levels


def _too_deep(container: Any, budget: int) -> bool:
    """Whether a dict or list nests more than `budget` levels (counting itself as one).

    Level by level rather than recursively. A typical payload (an id and a flat properties
    object) nests two levels, which `_two_levels` sees in plain loops, without building a list
    per level."""
    if budget >= 2 and _two_levels(container):
        return False
    level = [container]
    for _ in range(budget):
        level = [
            child
            for parent in level
            for child in (parent.values() if type(parent) is dict else parent)
            if type(child) is dict or type(child) is list
        ]
        if not level:
            return False
    return True


def _two_levels(container: Any) -> bool:
    """Whether no value inside a dict or list's values is itself a dict or list."""
    for value in container.values() if type(container) is dict else container:
        kind = type(value)
        if kind is dict:
            for inner in value.values():
                if type(inner) is dict or type(inner) is list:
                    return False
        elif kind is list:
            for inner in value:
                if type(inner) is dict or type(inner) is list:
                    return False
    return True


# Streams already seen to match STREAM_RE (a few distinct ones in practice; bounded anyway).
_valid_streams: set[str] = set()
_VALID_STREAMS_MAX = 4096


def _stream_ok(stream: str) -> bool:
    if stream in _valid_streams:
        return True
    if STREAM_RE.fullmatch(stream) is None:
        return False
    if len(_valid_streams) < _VALID_STREAMS_MAX:
        _valid_streams.add(stream)
    return True


def _decoding_error(obj: dict[str, Any]) -> ValidationError:
    """The error serde reports for an event object whose fields are mistyped or missing: the
    first mistyped field in input order, else the first missing one in declaration order."""
    for name, value in obj.items():
        required = _STRING_FIELDS.get(name)
        if required is not None:
            if type(value) is not str and (required or value is not None):
                return ValidationError(f"invalid type: {describe(value)}, expected a string")
        elif name == "timestamp":
            if type(value) is not int:
                return ValidationError(f"invalid type: {describe(value)}, expected i64")
            if not I64_MIN <= value <= I64_MAX:
                return ValidationError(f"invalid value: integer `{value}`, expected i64")
    missing = next(name for name in _REQUIRED if name not in obj)
    return ValidationError(f"missing field `{missing}`")


def validate_event(obj: Any, max_id_length: int = MAX_ENTITY_ID_LENGTH) -> Event:
    """Check one decoded event and return it in canonical form, generating `eventId` when absent.
    Raises ValidationError with the first failure, in the original's order of checks: decoding
    errors first (like serde: the first mistyped field in input order, then the first missing
    field), then the validation rules. A string `payload.entity_id` may have at most
    `max_id_length` characters."""
    if type(obj) is not dict:
        raise ValidationError(f"invalid type: {describe(obj)}, expected struct Event")
    stream = obj.get("stream")
    source = obj.get("source")
    # Left out, the server's time (the seed's examples leave it out; the original's 400 was
    # the first thing a newcomer met). `null` is still a type error, as in the original.
    timestamp = obj.get("timestamp", _ABSENT)
    stamped = timestamp is _ABSENT
    if stamped:
        timestamp = now_ms()
    event_id = obj.get("eventId")
    key = obj.get("key")
    schema = obj.get("schema")
    if not (
        type(stream) is str
        and type(source) is str
        and type(timestamp) is int
        and I64_MIN <= timestamp <= I64_MAX
        and (event_id is None or type(event_id) is str)
        and (key is None or type(key) is str)
        and (schema is None or type(schema) is str)
        and "payload" in obj
    ):
        raise _decoding_error(obj)
    payload = obj["payload"]

    if not stream:
        raise ValidationError("stream is required")
    if not source:
        raise ValidationError("source is required")
    if payload is None:
        raise ValidationError("payload is required")
    if not _stream_ok(stream):
        raise ValidationError(
            f"invalid stream format '{stream}': must be lowercase with optional dots"
        )
    if timestamp <= 0:
        raise ValidationError(f"timestamp must be positive, got {timestamp}")
    if type(payload) is not dict:
        raise ValidationError("payload must be a JSON object")
    if _too_deep(payload, MAX_PAYLOAD_DEPTH):
        raise ValidationError(
            f"recursion limit exceeded: payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
        )
    if event_id and "\x00" in event_id:
        raise ValidationError(NUL_MESSAGE.format(field="eventId"))
    entity_id = payload.get("entity_id")
    if type(entity_id) is str:
        if len(entity_id) > max_id_length:
            raise too_long("entity_id", entity_id, max_id_length)
        if "\x00" in entity_id:
            raise ValidationError(NUL_MESSAGE.format(field="entity_id"))

    props = payload.get("properties", _ABSENT)
    if type(props) is not dict and props is not _ABSENT:
        # The original stored such an event and changed no state: a silent no-op a newcomer
        # takes for a bug. An absent `properties` still is one (an event the state ignores).
        raise ValidationError(f"`payload.properties` must be a JSON object, got {describe(props)}")
    if type(props) is dict and (
        LEASE in props or PRESENCE in props or TTL in props or EXPIRED in props
    ):
        raise ValidationError(
            f"properties {', '.join(sorted(RESERVED & props.keys()))} are set by Flux itself "
            "(leases, presence, `ttl_ms`), not by events"
        )
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
    # An event with only the envelope's fields (the common case) has nothing more to check.
    if len(obj) > 4 - stamped + (event_id is not None) + (key is not None) + (schema is not None):
        _coordination_fields(obj, event)
    return event


# The JSON values that nest nothing: properties of only these are two levels below a payload.
_SCALARS = frozenset((str, int, float, bool, type(None)))


def validate_many(
    items: list[Any], max_id_length: int = MAX_ENTITY_ID_LENGTH
) -> list[Event | ValidationError]:
    """`validate_event` for each item of a batch: its event, or the ValidationError it raises.

    The common shape is checked inline: an object of exactly `stream`, `source`, `timestamp`
    and `payload` (and, optionally, a non-empty `eventId`), a stream already seen to be valid,
    a payload of exactly a string `entity_id` and a `properties` object of scalar values. Such
    an event passes every rule of `validate_event` and takes the same canonical form (its ids,
    when it has none, made together: `uuid7_many`); anything else goes to `validate_event`
    itself, so every error and every unusual event is handled by the one validator. A
    per-event function call and the nesting walk were most of the validation's cost."""
    out: list[Event | ValidationError] = []
    append = out.append
    ids: list[str] | None = None
    next_id = 0
    streams = _valid_streams
    scalars = _SCALARS
    reserved = RESERVED
    for obj in items:
        if type(obj) is dict and 4 <= len(obj) <= 5:
            get = obj.get
            stream = get("stream")
            source = get("source")
            timestamp = get("timestamp")
            payload = get("payload")
            event_id = get("eventId") if len(obj) == 5 else None
            if (
                type(payload) is dict
                and len(payload) == 2
                and type(source) is str
                and source
                and type(timestamp) is int
                and 0 < timestamp <= I64_MAX
                and (len(obj) == 4 or (type(event_id) is str and event_id))
                and type(stream) is str
                and stream in streams  # only valid streams are in it
            ):
                entity_id = payload.get("entity_id")
                props = payload.get("properties")
                if (
                    type(entity_id) is str
                    and type(props) is dict
                    and len(entity_id) <= max_id_length
                    and "\x00" not in entity_id
                    and scalars.issuperset(map(type, props.values()))
                    and props.keys().isdisjoint(reserved)
                    and (event_id is None or "\x00" not in event_id)
                ):
                    if event_id is None:
                        if ids is None:
                            ids = uuid7_many(len(items))
                        event_id = ids[next_id]
                        next_id += 1
                    append(
                        {
                            "eventId": event_id,
                            "stream": stream,
                            "source": source,
                            "timestamp": timestamp,
                            "payload": payload,
                        }
                    )
                    continue
        try:
            append(validate_event(obj, max_id_length))
        except ValidationError as exc:
            append(exc)
    return out


def _coordination_fields(obj: dict[str, Any], event: Event) -> None:
    """Copy and check the optional coordination fields (docs/coordination.md): the conditions
    `expected_version`, `expected_properties` and `fencing_token`, and `ttl_ms`, which becomes
    the entity's `__ttl_ms__` property (0 or null: no time to live any more)."""
    conditions = [name for name in CONDITION_FIELDS if obj.get(name) is not None]
    ttl = obj.get("ttl_ms")
    if not conditions and "ttl_ms" not in obj:
        return
    payload = event["payload"]
    entity_id = payload.get("entity_id")
    props = payload.get("properties")
    if type(entity_id) is not str or type(props) is not dict:
        field = conditions[0] if conditions else "ttl_ms"
        raise ValidationError(
            f"`{field}` needs `payload.entity_id` (a string) and `payload.properties` (an object)"
        )
    version = obj.get("expected_version")
    if version is not None:
        if type(version) is not int or version < 0:
            raise ValidationError(
                "`expected_version` must be a non-negative integer (0: the entity must not exist)"
            )
        event["expected_version"] = version
    expected = obj.get("expected_properties")
    if expected is not None:
        if type(expected) is not dict:
            raise ValidationError(
                "`expected_properties` must be an object of property values (null: absent)"
            )
        if _too_deep(expected, MAX_PAYLOAD_DEPTH):
            raise ValidationError(
                f"recursion limit exceeded: `expected_properties` nests deeper than "
                f"{MAX_PAYLOAD_DEPTH} levels"
            )
        event["expected_properties"] = expected
    token = obj.get("fencing_token")
    if token is not None:
        if type(token) is not int or token < 1:
            raise ValidationError("`fencing_token` must be a positive integer (a lease's token)")
        event["fencing_token"] = token
    if "ttl_ms" in obj:
        if ttl is not None and (type(ttl) is not int or not 0 <= ttl <= MAX_TTL_MS):
            raise ValidationError(
                f"`ttl_ms` must be an integer from 0 (no time to live) to {MAX_TTL_MS}"
            )
        if props.get(DELETED) is True:
            raise ValidationError("`ttl_ms` cannot be given with a deletion")
        payload["properties"] = {**props, TTL: ttl or None}


def conditions_of(event: Event) -> bool:
    """Whether a validated event carries a condition (`expected_version`,
    `expected_properties` or `fencing_token`). One `len` for an event without any."""
    return len(event) > 5 and (
        "expected_version" in event or "expected_properties" in event or "fencing_token" in event
    )


def check_entity_id(entity_id: str, max_length: int = MAX_ENTITY_ID_LENGTH) -> str:
    """An entity id given outside an event (a DELETE, a read): the same rules as in events.
    Raises ValidationError."""
    if len(entity_id) > max_length:
        raise too_long("entity_id", entity_id, max_length)
    if "\x00" in entity_id:
        raise ValidationError(NUL_MESSAGE.format(field="entity_id"))
    return entity_id


def check_id_part(text: str, field: str, max_length: int = MAX_ENTITY_ID_LENGTH) -> str:
    """An id, prefix or namespace given to find entities (a read, a filter, a subscription):
    no longer than an id may be, since a longer one could match nothing. Only the length is
    checked (a read of an id that cannot exist finds nothing). Raises ValidationError naming
    `field`."""
    if len(text) > max_length:
        raise too_long(field, text, max_length)
    return text


def too_long(field: str, text: str, max_length: int) -> ValidationError:
    return ValidationError(
        f"{field} is too long: {len(text)} characters (an entity_id has at most {max_length})"
    )


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
