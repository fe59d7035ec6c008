"""Snapshot files: gzip-compressed engine state, one file per snapshot, named by sequence.

Writes are atomic (`flux.files.atomic_file`: temp file, fsync, rename, fsync of the
directory). gzip's CRC and length trailer make a torn or corrupted file fail to load, so
start-up falls back to an older one.
"""

from __future__ import annotations

import gzip
import logging
import os
import re
import zlib
from pathlib import Path

from flux.config import Settings
from flux.files import atomic_file

logger = logging.getLogger("flux.snapshots")

_NAME = re.compile(r"snapshot-(\d{20})\.json\.gz")


class SnapshotStore:
    def __init__(
        self, directory: str | os.PathLike[str], keep: int = Settings.snapshot_keep
    ) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def save(self, data: bytes, seq: int) -> Path:
        """Write one snapshot durably and drop the oldest beyond `keep`. Blocking: call it in a
        thread. Raises OSError; a failed write leaves no temp file behind."""
        path = self.directory / f"snapshot-{seq:020d}.json.gz"
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
        match = _NAME.fullmatch(path.name)
        if match is None:
            raise ValueError(f"not a snapshot file name: {path.name}")
        return int(match.group(1))

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
