"""runtime-config.json: loaded at start; a file that does not hold a JSON object of valid
values is logged and ignored, never a failed start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from flux.config import RuntimeConfig, Settings
from flux.runtime import FILE_NAME, RuntimeFile


@pytest.mark.parametrize(
    "text", [b"[1, 2]", b'"text"', b"7", b"{not json", b'{"max_batch_delete": 0}']
)
def test_a_bad_file_is_ignored(
    tmp_path: Path, text: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / FILE_NAME).write_bytes(text)
    config = RuntimeConfig(Settings())
    with caplog.at_level(logging.ERROR, logger="flux.runtime"):
        RuntimeFile(tmp_path, config).load()
    assert config.as_dict() == Settings().runtime_values()
    assert "ignoring" in caplog.text


def test_a_good_file_is_applied(tmp_path: Path) -> None:
    (tmp_path / FILE_NAME).write_bytes(b'{"max_batch_delete": 7, "unknown": 1}')
    config = RuntimeConfig(Settings())
    RuntimeFile(tmp_path, config).load()
    assert config.current.max_batch_delete == 7
