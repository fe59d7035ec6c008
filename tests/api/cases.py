"""Event validation cases, shared by the pure tests (test_unit_events) and the HTTP tests
(test_events, test_batch): (id, decoded body, the error message it must get)."""

from __future__ import annotations

from typing import Any

from flux.events import MAX_PAYLOAD_DEPTH

from .helpers import nested_payload, new_event


def _without(field: str) -> dict[str, Any]:
    raw = new_event()
    del raw[field]
    return raw


# Every rule and its message; each case breaks one thing.
CASES: list[tuple[str, Any, str]] = [
    ("not an object", [], "invalid type: sequence, expected struct Event"),
    ("null", None, "invalid type: null, expected struct Event"),
    ("string", "x", 'invalid type: string "x", expected struct Event'),
    ("missing stream", _without("stream"), "missing field `stream`"),
    ("missing source", _without("source"), "missing field `source`"),
    ("missing payload", _without("payload"), "missing field `payload`"),
    ("stream number", new_event(stream=1), "invalid type: integer `1`, expected a string"),
    ("stream null", new_event(stream=None), "invalid type: null, expected a string"),
    ("source list", new_event(source=[]), "invalid type: sequence, expected a string"),
    ("source bool", new_event(source=True), "invalid type: boolean `true`, expected a string"),
    ("timestamp string", new_event(timestamp="x"), 'invalid type: string "x", expected i64'),
    (
        "timestamp float",
        new_event(timestamp=1.5),
        "invalid type: floating point `1.5`, expected i64",
    ),
    ("timestamp bool", new_event(timestamp=True), "invalid type: boolean `true`, expected i64"),
    ("timestamp null", new_event(timestamp=None), "invalid type: null, expected i64"),
    (
        "timestamp over i64",
        new_event(timestamp=2**63),
        "invalid value: integer `9223372036854775808`, expected i64",
    ),
    ("eventId number", new_event(eventId=7), "invalid type: integer `7`, expected a string"),
    ("key map", new_event(key={}), "invalid type: map, expected a string"),
    ("schema number", new_event(schema=2), "invalid type: integer `2`, expected a string"),
    ("empty stream", new_event(stream=""), "stream is required"),
    ("empty source", new_event(source=""), "source is required"),
    ("null payload", new_event(payload=None), "payload is required"),
    ("timestamp zero", new_event(timestamp=0), "timestamp must be positive, got 0"),
    ("timestamp negative", new_event(timestamp=-5), "timestamp must be positive, got -5"),
    ("payload list", new_event(payload=[1]), "payload must be a JSON object"),
    ("payload string", new_event(payload="x"), "payload must be a JSON object"),
    ("payload number", new_event(payload=0), "payload must be a JSON object"),
    ("payload false", new_event(payload=False), "payload must be a JSON object"),
    (
        "payload too deep",
        new_event(payload=nested_payload(MAX_PAYLOAD_DEPTH + 1)),
        f"recursion limit exceeded: payload nests deeper than {MAX_PAYLOAD_DEPTH} levels",
    ),
]

BAD_STREAMS = [
    "Sensors",
    "a-b",
    "a_b",
    "a/b",
    ".a",
    "a.",
    "a..b",
    ".",
    "a b",
    " a",
    "a\n",
    "é",
    "ａ",  # fullwidth
    "a\x00",
    "😀",
    "\u202ea",
]
for _stream in BAD_STREAMS:
    CASES.append(
        (
            f"stream {_stream!r}",
            new_event(stream=_stream),
            f"invalid stream format '{_stream}': must be lowercase with optional dots",
        )
    )

# Order of checks: each case breaks two things; the message names the one checked first.
ORDER: list[tuple[str, Any, str]] = [
    (
        "type error before missing field",
        {"stream": 1},
        "invalid type: integer `1`, expected a string",
    ),
    (
        "type errors in input order",
        {"timestamp": "x", "stream": 1, "source": "s", "payload": {}},
        'invalid type: string "x", expected i64',
    ),
    (
        "type errors in input order (2)",
        {"stream": 1, "timestamp": "x", "source": "s", "payload": {}},
        "invalid type: integer `1`, expected a string",
    ),
    (
        "optional field type error before missing field",
        {"key": 1},
        "invalid type: integer `1`, expected a string",
    ),
    (
        "missing fields in declaration order",
        {"payload": {}, "timestamp": 1},
        "missing field `stream`",
    ),
    ("missing source before timestamp", {"stream": "s", "payload": {}}, "missing field `source`"),
    (
        "missing field before rules",
        {"stream": "", "source": "", "timestamp": 0},
        "missing field `payload`",
    ),
    ("stream before source", new_event(stream="", source=""), "stream is required"),
    ("source before payload", new_event(source="", payload=None), "source is required"),
    (
        "null payload before stream format",
        new_event(stream="Bad", payload=None),
        "payload is required",
    ),
    (
        "stream format before timestamp",
        new_event(stream="Bad", timestamp=0),
        "invalid stream format 'Bad': must be lowercase with optional dots",
    ),
    (
        "timestamp before payload type",
        new_event(timestamp=-1, payload=[]),
        "timestamp must be positive, got -1",
    ),
]
