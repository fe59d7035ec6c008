"""flux.api.frames and the WebSocket sender's grouping of writes (pure: no sockets). The frames
are read back by the `websockets` package's own client-side parser, which rejects anything
RFC 6455 does not allow (a bad length, a masked server frame, invalid UTF-8)."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode
from websockets.protocol import Protocol, Side

from flux.api.frames import text_frames
from flux.api.ws import writes

# Lengths in bytes around each header size's edges (7-bit, 16-bit, 64-bit lengths), some made
# of characters of two and three bytes so that characters and bytes differ.
TEXTS = [
    "",
    "a",
    "x" * 125,
    "x" * 126,
    "é" * 63,  # 126 bytes
    "€" * 42,  # 126 bytes
    "x" * 65_535,
    "x" * 65_536,
    "é" * 40_000,  # 80,000 bytes
    '{"type":"state_update","value":"naïve ☃"}',
]


def parse(data: bytes, chunk: int) -> list[Frame]:
    """The frames a client reads from `data`, fed `chunk` bytes at a time; fails on any
    protocol error."""
    client = Protocol(Side.CLIENT, max_size=None)  # an open connection's client side
    for start in range(0, len(data), chunk):
        client.receive_data(data[start : start + chunk])
        assert client.parser_exc is None, client.parser_exc
    frames = [event for event in client.events_received() if isinstance(event, Frame)]
    assert client.parser_exc is None, client.parser_exc
    return frames


@pytest.mark.parametrize("chunk", [1, 7, 65_536, 10_000_000])
def test_text_frames_read_back_as_the_same_texts_in_order(chunk: int) -> None:
    data = text_frames(TEXTS * 2)
    frames = parse(data, chunk)
    assert [frame.opcode for frame in frames] == [Opcode.TEXT] * len(TEXTS) * 2
    assert all(frame.fin for frame in frames)
    assert [bytes(frame.data).decode() for frame in frames] == TEXTS * 2


def test_text_frames_headers_have_the_shortest_length_form() -> None:
    assert text_frames(["x" * 125])[:2] == b"\x81\x7d"
    assert text_frames(["x" * 126])[:4] == b"\x81\x7e\x00\x7e"
    assert text_frames(["x" * 65_536])[:10] == b"\x81\x7f" + (65_536).to_bytes(8, "big")
    assert text_frames([]) == b""


def message(text: str) -> tuple[None, str, str]:
    return (None, "state_update", text)


def test_writes_group_texts_in_order_up_to_the_most_and_a_long_one_alone() -> None:
    texts = ["a" * 40, "b" * 40, "c" * 40, "d" * 200, "e" * 10, "f" * 90, "g" * 100]
    groups = list(writes([message(text) for text in texts], 100))
    assert groups == [
        ["a" * 40, "b" * 40],
        ["c" * 40],
        ["d" * 200],
        ["e" * 10, "f" * 90],
        ["g" * 100],
    ]
    assert list(writes([message("x")], 100)) == [["x"]]
