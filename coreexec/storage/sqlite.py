"""Run storage in SQLite: the default under ``$COREEXEC_HOME/runs.db``.

Several processes (coordinators, workers, the CLI) open the same file: WAL mode lets
readers go on while one writes, a busy timeout waits for the writer, and a write that
still finds the database locked is tried again a few times before it gives up.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from coreexec.errors import StorageError
from coreexec.events import Event
from coreexec.storage.sql import SqlRunStorage

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    job_name TEXT NOT NULL,
    job_reference TEXT,
    status TEXT NOT NULL,
    tags TEXT NOT NULL,
    run_config TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    parent_run_id TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs (created_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    step_key TEXT,
    timestamp REAL NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_run ON events (run_id, id);
"""

_BUSY_TIMEOUT_MS = 30_000
_LOCKED_RETRIES = 5


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    return "locked" in str(exc) or "busy" in str(exc)


def _create_private(path: Path) -> None:
    """Create ``path`` readable by its owner only, unless it exists (SQLite gives its
    WAL and shared-memory files the database file's mode)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    os.close(fd)


class SqliteRunStorage(SqlRunStorage):
    """Runs and events in one SQLite file, safe across threads and processes."""

    runs_table = "runs"
    events_table = "events"
    param = "?"

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            # Run config is stored as given and may hold passwords: owner only.
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            _create_private(self.path)
        except OSError as exc:
            raise StorageError(
                f"cannot create the run storage directory {str(self.path.parent)!r}: {exc}; "
                "set COREEXEC_HOME to a writable directory"
            ) from exc
        self._local = threading.local()
        self._with_retries(lambda conn: conn.executescript(_SCHEMA))

    def _connection(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        # A connection must not cross a fork: reopen in a child process.
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            return conn
        try:
            conn = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            raise self._open_error(exc) from exc
        try:
            conn.execute(f"PRAGMA busy_timeout={_BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            # Turning a new file to WAL takes a lock the busy handler does not wait for:
            # a "locked" error here is left to the caller's retries.
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
                raise
            raise self._open_error(exc) from exc
        self._local.conn = conn
        self._local.pid = os.getpid()
        return conn

    def _open_error(self, exc: sqlite3.Error) -> StorageError:
        return StorageError(
            f"cannot open the run storage {str(self.path)!r}: {exc}; check the path and "
            "its permissions (COREEXEC_HOME)"
        )

    def _with_retries(self, work: Callable[[sqlite3.Connection], T]) -> T:
        delay_s = 0.05
        for attempt in range(_LOCKED_RETRIES):
            try:
                return work(self._connection())
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == _LOCKED_RETRIES - 1:
                    raise StorageError(f"run storage {str(self.path)!r}: {exc}") from exc
                time.sleep(delay_s)
                delay_s *= 2
        raise AssertionError("unreachable")

    def _fetch(self, doing: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._with_retries(lambda conn: conn.execute(sql, params).fetchall())

    def _write(self, doing: str, sql: str, params: Sequence[Any]) -> int:
        return self._with_retries(lambda conn: conn.execute(sql, params).rowcount)

    def _one_of(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        return f"{column} IN ({','.join('?' for _ in values)})", list(values)

    def _from_json(self, value: Any) -> Any:
        return json.loads(value)

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = self._event_rows(run_id, events)
        insert = self._insert_events_sql()

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(insert, rows)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        self._with_retries(work)

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
