"""One small SQLite file behind a store: the namespace registry (`namespaces.db`), the credential
store (`credentials.db`) and the source store (`sources.db`).

`SQLiteDB` opens the file (its directory made first), applies the store's pragmas and schema
script and an optional migration, then runs statements one at a time under a lock, so one
connection serves every thread. `transaction()` groups statements into one atomic change
(`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any error). Every `sqlite3.Error` comes out as
the store's own `FluxError` class: `<prefix><driver message>` for a statement,
`cannot open <name> <path>: ...` at open, `<prefix><name> is closed` once closed; the driver's
error is its `__cause__`. Calls block: async callers run them in a thread.

The event log (`flux.log.sqlite`) does not use this: it has its own writer thread.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from flux.errors import FluxError

Params = Sequence[Any]


class SQLiteDB:
    """One SQLite file of a store. `error` builds the store's error from a message; `prefix`
    starts every statement's error message; `name` names the store in the open and closed
    messages (`"the source store"`). `pragmas` are run at open (`"synchronous=FULL"`), then the
    `schema` script, then `migrate(connection)`. Thread-safe."""

    def __init__(
        self,
        path: str | Path,
        schema: str,
        *,
        name: str,
        error: Callable[[str], FluxError],
        prefix: str,
        pragmas: Sequence[str] = (),
        migrate: Callable[[sqlite3.Connection], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.schema = schema
        self.name = name
        self.error = error
        self.prefix = prefix
        self.pragmas = tuple(pragmas)
        self.migrate = migrate
        self._lock = threading.RLock()  # re-entered by the statements of a transaction
        self._db: sqlite3.Connection | None = None

    @property
    def is_open(self) -> bool:
        return self._db is not None

    def open(self) -> None:
        """Open (or reopen) the file and bring its schema up to date. Raises the store's error
        (`cannot open <name> <path>: ...`)."""
        with self._lock:
            self._close()
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            except (sqlite3.Error, OSError) as exc:
                raise self.error(f"cannot open {self.name} {self.path}: {exc}") from exc
            try:
                for pragma in self.pragmas:
                    db.execute(f"PRAGMA {pragma}")
                db.executescript(self.schema)
                if self.migrate is not None:
                    self.migrate(db)
            except sqlite3.Error as exc:
                db.close()
                raise self.error(f"cannot open {self.name} {self.path}: {exc}") from exc
            except BaseException:
                db.close()
                raise
            self._db = db

    def close(self) -> None:
        """Close the file; later calls raise the store's error until `open` again. Idempotent."""
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            db.close()

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        """Every row `sql` returns. Raises the store's error."""
        with self._lock:
            try:
                return self._connection().execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; returns how many rows it changed. Raises the store's error."""
        with self._lock:
            try:
                return self._connection().execute(sql, params).rowcount
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """The `query` and `execute` calls in the block are one atomic change: committed when the
        block ends, rolled back when it raises (the error is re-raised, a driver error as the
        store's). Other threads wait until it ends. Not nestable."""
        with self._lock:
            try:
                db = self._connection()
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise self._translate(exc) from exc

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise sqlite3.OperationalError(f"{self.name} is closed")
        return self._db

    def _translate(self, exc: sqlite3.Error) -> FluxError:
        return self.error(f"{self.prefix}{exc}")
