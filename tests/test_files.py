"""flux.files: a file is replaced whole or not at all, with no temp file left behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from flux.files import atomic_file, write_atomic


def test_write_atomic_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deeper" / "config.json"
    write_atomic(path, b"one")
    write_atomic(path, b"two")
    assert path.read_bytes() == b"two"
    assert sorted(p.name for p in path.parent.iterdir()) == ["config.json"]


def test_a_failed_write_keeps_the_old_content_and_no_temp_file(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    write_atomic(path, b"old")
    with pytest.raises(OSError, match="disk full"), atomic_file(path) as f:
        f.write(b"half of the new")
        raise OSError("disk full")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
