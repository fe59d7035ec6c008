"""WebSocket text frames for several messages at once (RFC 6455, section 5.2), pure.

The live fan-out writes every message it has queued for one connection in one
`transport.write` (flux.api.connections, `SEND_TEXTS`): a system call per message was the largest
share of the server's time with many subscribers. A frame the server sends is unmasked (section
5.1) and, with no extension negotiated (`flux serve` turns compression off), is a header of two,
four or ten bytes followed by the UTF-8 text: framed here in a few operations per message rather
than by the `websockets` protocol object's general path (about a microsecond per frame, in
Python), which would cost as much as the system calls saved.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

FIN_TEXT = 0x81  # FIN bit set, opcode 1 (text): each message is one whole frame
_SHORT = [bytes((FIN_TEXT, length)) for length in range(126)]  # 7-bit length, no extra bytes
_MEDIUM = struct.Struct("!BBH")  # length 126: a 16-bit length follows
_LONG = struct.Struct("!BBQ")  # length 127: a 64-bit length follows


def text_frames(texts: Iterable[str]) -> bytes:
    """The unmasked text frames of `texts`, in order, as one byte string."""
    parts: list[bytes] = []
    append = parts.append
    for text in texts:
        data = text.encode()
        length = len(data)
        if length < 126:
            append(_SHORT[length])
        elif length < 65536:
            append(_MEDIUM.pack(FIN_TEXT, 126, length))
        else:
            append(_LONG.pack(FIN_TEXT, 127, length))
        append(data)
    return b"".join(parts)
