"""The runtime config's file: `<data dir>/runtime-config.json`, the admin's changes to the
runtime-mutable settings (`flux.config.RuntimeConfig`), loaded at start and written before a
change takes effect.

`RuntimeStore` is what the admin API needs of wherever the changes are kept: this file, or in
a cluster the bucket every node follows (`flux.shared.runtime.SharedRuntime`)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any, Protocol

import orjson

from flux.config import RuntimeConfig
from flux.files import write_atomic

logger = logging.getLogger("flux.runtime")

FILE_NAME = "runtime-config.json"


class RuntimeStore(Protocol):
    async def update(self, changes: dict[str, object]) -> None:
        """Validate, persist, then apply runtime config changes. Raises ValueError."""

    async def refresh(self) -> None:
        """Bring `config` up to every change already persisted (before showing it)."""


def read_values(path: Path) -> dict[str, Any] | None:
    """The values the file at `path` holds (not yet checked), or None when there is none.
    Raises OSError, or ValueError when it is not a JSON object."""
    if not path.exists():
        return None
    values = orjson.loads(path.read_bytes())
    if not isinstance(values, dict):
        raise ValueError("not a JSON object")
    return values


class RuntimeFile:
    def __init__(self, data_dir: str | Path, config: RuntimeConfig) -> None:
        self.path = Path(data_dir) / FILE_NAME
        self.config = config

    def load(self) -> None:
        """Apply the file's values to `config`, if there is a file; a file that does not read
        is logged and ignored."""
        path = self.path
        try:
            values = read_values(path)
            if values is None:
                return
            self.config.update(values)
        except (OSError, ValueError) as exc:
            logger.error("ignoring %s: %s", path, exc)
            return
        logger.info("runtime config loaded from %s", path)

    async def update(self, changes: dict[str, object]) -> None:
        """Validate, persist, then apply runtime config changes. Raises ValueError."""
        config = self.config
        checked = config.validated(changes)
        merged = {**config.as_dict(), **checked}
        await asyncio.to_thread(write_atomic, self.path, orjson.dumps(merged))
        config.update(checked)
        if checked:
            logger.info("runtime config changed: %s", checked)

    async def refresh(self) -> None:
        """Nothing to do: only this node changes its file, and it applies what it writes."""
