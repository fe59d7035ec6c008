"""FluxService joins the parts: ingest -> log.append -> engine.apply -> listeners.

Committed records reach `_on_records` on the event loop in sequence order (the log guarantees
it); they are applied to the engine there, before the appends that wrote them return, so a
client's read after its write's 200 sees the write. Snapshots are taken on the loop (one C call
to encode) and written in a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import orjson

from flux.config import RuntimeConfig, Settings
from flux.engine import Change, StateEngine
from flux.errors import LogError, ValidationError
from flux.events import Event, entity_of, now_us, tombstone
from flux.log import Appended, Entry, EventLog, Record, open_log
from flux.snapshots import SnapshotStore

logger = logging.getLogger("flux.service")

Listener = Callable[[list[Change], list[Record]], None]


class FluxService:
    def __init__(
        self,
        settings: Settings,
        log: EventLog | None = None,
        snapshots: SnapshotStore | None = None,
    ) -> None:
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.log = log if log is not None else open_log(settings.event_log_url())
        self.snapshots = snapshots or SnapshotStore(
            self.data_dir / "snapshots", keep=settings.snapshot_keep
        )
        self.engine = StateEngine()
        self.runtime = RuntimeConfig.from_settings(settings)
        self.listeners: list[Listener] = []
        self.events_total = 0  # events applied since start (replay excluded)
        self.started_at = time.monotonic()
        self.ready = False
        self._snapshot_seq = 0
        self._snapshot_lock = asyncio.Lock()
        self._snapshot_task: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Restore the newest valid snapshot, replay the log after it, then accept writes."""
        began = time.monotonic()
        self._load_runtime()
        self.snapshots.clean_temp_files()
        self.engine = await asyncio.to_thread(self._restore_snapshot)
        self._snapshot_seq = self.engine.last_seq
        # New events must get sequences above the state's, even when the log is behind the
        # snapshot (the log file was lost or replaced): else a later replay would skip them.
        await self.log.start(self._on_records, after_seq=self.engine.last_seq)
        first = await self.log.first_seq()
        if first > self.engine.last_seq + 1:
            logger.error(
                "the log starts at sequence %d but the state covers only up to %d: "
                "events %d..%d are gone and no snapshot holds them",
                first,
                self.engine.last_seq,
                self.engine.last_seq + 1,
                first - 1,
            )
        replayed = 0
        async for batch in self.log.read(self.engine.last_seq):
            for seq, at, event in batch:
                self.engine.apply(event, seq, at)
            replayed += len(batch)
        self.ready = True
        logger.info(
            "state ready: %d entities at sequence %d (%d events replayed) in %.2fs",
            len(self.engine),
            self.engine.last_seq,
            replayed,
            time.monotonic() - began,
        )
        self._ticker = asyncio.create_task(self._snapshot_ticker(), name="flux-snapshots")

    def _restore_snapshot(self) -> StateEngine:
        for path in self.snapshots.paths():
            try:
                engine = StateEngine.restore(self.snapshots.load(path))
            except (OSError, ValueError) as exc:
                logger.warning("snapshot %s is unusable (%s); trying an older one", path, exc)
                continue
            logger.info(
                "loaded snapshot %s: %d entities at sequence %d",
                path.name,
                len(engine),
                engine.last_seq,
            )
            return engine
        if self.snapshots.paths():
            logger.warning("no usable snapshot; rebuilding state from the whole log")
        return StateEngine()

    async def stop(self) -> None:
        """Write a final snapshot and close the log."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._snapshot_task is not None:
            with contextlib.suppress(Exception):
                await self._snapshot_task
        try:
            if self.ready and self.engine.last_seq > self._snapshot_seq:
                try:
                    await self.snapshot()
                except OSError as exc:
                    logger.error("final snapshot failed: %s", exc)
        finally:
            await self.log.close()
            self.ready = False

    # -- runtime config --------------------------------------------------------------------

    @property
    def _runtime_path(self) -> Path:
        return self.data_dir / "runtime-config.json"

    def _load_runtime(self) -> None:
        path = self._runtime_path
        if not path.exists():
            return
        try:
            self.runtime.update(orjson.loads(path.read_bytes()))
        except (OSError, ValueError) as exc:
            logger.error("ignoring %s: %s", path, exc)
            return
        logger.info("runtime config loaded from %s", path)

    async def update_runtime(self, changes: dict[str, object]) -> None:
        """Validate, persist, then apply runtime config changes. Raises ValueError."""
        checked = self.runtime.validated(changes)
        merged = {**self.runtime.as_dict(), **checked}
        await asyncio.to_thread(_write_atomic, self._runtime_path, orjson.dumps(merged))
        self.runtime.update(checked)
        if checked:
            logger.info("runtime config changed: %s", checked)

    # -- writing ---------------------------------------------------------------------------

    async def publish(self, events: Sequence[Event]) -> list[Appended]:
        """Append validated events durably; returns after the state has them."""
        entries = []
        for event in events:
            try:
                data = orjson.dumps(event)
            except orjson.JSONEncodeError as exc:
                raise ValidationError(f"event cannot be stored: {exc}") from None
            entries.append(Entry(event, event["eventId"], entity_of(event), data))
        return await self.log.append(entries)

    async def delete(self, entity_ids: Sequence[str]) -> list[tuple[Event, Appended]]:
        """Append one tombstone per id (whether or not the entity exists)."""
        events = [tombstone(entity_id) for entity_id in entity_ids]
        return list(zip(events, await self.publish(events), strict=True))

    def _on_records(self, records: list[Record]) -> None:
        changes = self.engine.apply_all(records)
        self.events_total += len(records)
        for listener in self.listeners:
            try:
                listener(changes, records)
            except Exception:
                logger.exception("a state listener failed")
        if (
            self.engine.last_seq - self._snapshot_seq >= self.settings.snapshot_every_events
            and self._snapshot_task is None
        ):
            self._snapshot_task = asyncio.create_task(self._background_snapshot())

    # -- snapshots and retention -----------------------------------------------------------

    async def snapshot(self) -> int:
        """Write a snapshot of the current state, then apply retention; returns its sequence.

        Retention removes only events that every kept snapshot covers (up to the oldest kept
        one's sequence), so falling back to an older snapshot at start-up still finds the
        events after it."""
        async with self._snapshot_lock:
            seq = self.engine.last_seq
            data = self.engine.snapshot()
            began = time.monotonic()
            path = await asyncio.to_thread(self.snapshots.save, data, seq)
            self._snapshot_seq = seq
            kept = self.snapshots.paths()
            covered = min((self.snapshots.sequence_of(p) for p in kept), default=seq)
            logger.info(
                "snapshot %s written: %d entities, %d bytes of state, %.2fs",
                path.name,
                len(self.engine),
                len(data),
                time.monotonic() - began,
            )
        await self._apply_retention(min(covered, seq))
        return seq

    async def _apply_retention(self, covered_seq: int) -> None:
        s = self.settings
        if not s.retention_max_age_seconds and not s.retention_max_events:
            return
        before = now_us() - s.retention_max_age_seconds * 1_000_000
        try:
            removed = await self.log.prune(
                covered_seq,
                before if s.retention_max_age_seconds else None,
                s.retention_max_events or None,
            )
        except LogError as exc:
            logger.error("retention pass failed: %s", exc)
            return
        if removed:
            logger.info("retention removed %d events up to sequence %d", removed, covered_seq)

    async def _background_snapshot(self) -> None:
        try:
            await self.snapshot()
        except Exception:
            logger.exception("snapshot failed")
        finally:
            self._snapshot_task = None

    async def _snapshot_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.snapshot_interval_seconds)
            if self.engine.last_seq > self._snapshot_seq and self._snapshot_task is None:
                self._snapshot_task = asyncio.create_task(self._background_snapshot())


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
