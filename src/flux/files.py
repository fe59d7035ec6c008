"""Durable file writes: a file is replaced whole or not at all, and survives a crash once
written (temp file beside it, fsync, rename, fsync of the directory). A write that fails,
a full disk included, leaves no temp file behind."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path) -> Iterator[BinaryIO]:
    """A binary file to write `path`'s new content into; it replaces `path` when the block
    ends without an error. Blocking: call it in a thread from async code. Raises OSError."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_directory(path.parent)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` with `data`, durably (see `atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in `directory` durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
