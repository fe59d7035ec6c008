"""Snapshot files: gzip-compressed engine state, one file per snapshot, named by sequence.

Writes are atomic (`flux.files.atomic_file`: temp file, fsync, rename, fsync of the
directory). gzip's CRC and length trailer make a torn or corrupted file fail to load, so
start-up falls back to an older one.

The service reaches its snapshots through the `Snapshots` Protocol: the files of the data dir
(`FileSnapshots`, over `SnapshotStore`) in embedded mode, the cluster's object store
(`flux.cluster.ObjectSnapshots`) on a JetStream log, with the same names and the same gzip form.
"""

from __future__ import annotations

import asyncio
import gzip
import logging
import os
import re
import zlib
from pathlib import Path
from typing import Protocol

from flux.config import Settings
from flux.files import atomic_file

logger = logging.getLogger("flux.snapshots")

_NAME = re.compile(r"snapshot-(\d{20})\.json\.gz")


def snapshot_name(seq: int) -> str:
    return f"snapshot-{seq:020d}.json.gz"


def sequence_in(name: str) -> int | None:
    """The sequence a snapshot name carries, or None for any other name."""
    match = _NAME.fullmatch(name)
    return int(match.group(1)) if match is not None else None


def compress(data: bytes) -> bytes:
    """A snapshot's stored form (gzip, as the files are)."""
    return gzip.compress(data, compresslevel=1, mtime=0)


def decompress(blob: bytes, name: str) -> bytes:
    """A snapshot's bytes from its stored form. Raises ValueError when it is truncated,
    corrupted or empty."""
    try:
        data = gzip.decompress(blob)
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise ValueError(f"corrupt snapshot {name}: {exc}") from exc
    if not data:
        raise ValueError(f"empty snapshot {name}")
    return data


class Snapshots(Protocol):
    """Where the service keeps its snapshots, newest `keep` of them."""

    keep: int

    async def prepare(self) -> None:
        """Remove what an interrupted write left behind."""

    async def listing(self) -> list[tuple[str, int]]:
        """The snapshots' names and sequences, newest (highest sequence) first."""

    async def load(self, name: str) -> bytes:
        """A snapshot's state. Raises ValueError for a damaged one, OSError or LogError when
        it cannot be read."""

    async def save(self, data: bytes, seq: int) -> str:
        """Store a snapshot of the state at `seq` durably, drop those beyond `keep`; returns its
        name."""


class SnapshotStore:
    def __init__(
        self, directory: str | os.PathLike[str], keep: int = Settings.snapshot_keep
    ) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def save(self, data: bytes, seq: int) -> Path:
        """Write one snapshot durably and drop the oldest beyond `keep`. Blocking: call it in a
        thread. Raises OSError; a failed write leaves no temp file behind."""
        path = self.directory / snapshot_name(seq)
        with (
            atomic_file(path) as raw,
            gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=1, mtime=0) as gz,
        ):
            gz.write(data)
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def paths(self) -> list[Path]:
        """Snapshot files, newest (highest sequence) first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NAME.fullmatch(p.name)]
        return sorted(found, key=lambda p: p.name, reverse=True)

    @staticmethod
    def sequence_of(path: Path) -> int:
        seq = sequence_in(path.name)
        if seq is None:
            raise ValueError(f"not a snapshot file name: {path.name}")
        return seq

    @staticmethod
    def load(path: Path) -> bytes:
        """The snapshot's bytes. Raises OSError when the file cannot be read and ValueError when
        it is truncated or corrupted (a bad header, bad deflate data, a CRC or length
        mismatch, or an empty file)."""
        try:
            with gzip.open(path, "rb") as gz:
                data = gz.read()
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise ValueError(f"corrupt snapshot file {path.name}: {exc}") from exc
        if not data:  # an empty file reads as no gzip member at all
            raise ValueError(f"empty snapshot file {path.name}")
        return data

    def clean_temp_files(self) -> None:
        if self.directory.is_dir():
            for tmp in self.directory.glob("snapshot-*.tmp"):
                logger.info("removing unfinished snapshot %s", tmp.name)
                tmp.unlink(missing_ok=True)


class FileSnapshots:
    """`Snapshots` in the data dir: a `SnapshotStore`, its blocking calls run in a thread."""

    def __init__(self, store: SnapshotStore) -> None:
        self.store = store
        self.keep = store.keep

    async def prepare(self) -> None:
        await asyncio.to_thread(self.store.clean_temp_files)

    async def listing(self) -> list[tuple[str, int]]:
        paths = await asyncio.to_thread(self.store.paths)
        return [(path.name, self.store.sequence_of(path)) for path in paths]

    async def load(self, name: str) -> bytes:
        return await asyncio.to_thread(self.store.load, self.store.directory / name)

    async def save(self, data: bytes, seq: int) -> str:
        return (await asyncio.to_thread(self.store.save, data, seq)).name
