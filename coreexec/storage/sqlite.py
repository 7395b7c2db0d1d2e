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
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import Any, TypeVar

from coreexec.errors import RunNotFoundError, StorageError
from coreexec.events import Event
from coreexec.storage.base import RunRecord, RunStatus, event_row

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


class SqliteRunStorage:
    """Runs and events in one SQLite file, safe across threads and processes."""

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

    def add_run(self, record: RunRecord) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                (
                    record.run_id,
                    record.job_name,
                    record.job_reference,
                    record.status.value,
                    json.dumps(dict(record.tags)),
                    json.dumps(dict(record.run_config)),
                    record.created_at,
                    record.updated_at,
                    record.started_at,
                    record.ended_at,
                    record.parent_run_id,
                ),
            )

        self._with_retries(work)

    @staticmethod
    def _record(row: tuple[Any, ...]) -> RunRecord:
        return RunRecord(
            run_id=row[0],
            job_name=row[1],
            job_reference=row[2],
            status=RunStatus(row[3]),
            tags=json.loads(row[4]),
            run_config=json.loads(row[5]),
            created_at=row[6],
            updated_at=row[7],
            started_at=row[8],
            ended_at=row[9],
            parent_run_id=row[10],
        )

    def get_run(self, run_id: str) -> RunRecord:
        row = self._with_retries(
            lambda conn: conn.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        )
        if row is None:
            raise RunNotFoundError(run_id)
        return self._record(row)

    def list_runs(
        self, *, limit: int = 50, statuses: Collection[RunStatus] | None = None
    ) -> list[RunRecord]:
        query = "SELECT * FROM runs"
        params: list[Any] = []
        if statuses is not None:
            query += f" WHERE status IN ({','.join('?' for _ in statuses)})"
            params.extend(status.value for status in statuses)
        query += " ORDER BY created_at DESC LIMIT ?"
        params.append(limit)
        rows = self._with_retries(lambda conn: conn.execute(query, params).fetchall())
        return [self._record(row) for row in rows]

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        expected: Collection[RunStatus] | None = None,
        at: float | None = None,
    ) -> bool:
        when = at if at is not None else time.time()
        query = (
            "UPDATE runs SET status = ?, updated_at = ?,"
            # A resumed run keeps its first start; it has no end until it ends again.
            " started_at = CASE WHEN ? AND started_at IS NULL THEN ? ELSE started_at END,"
            " ended_at = CASE WHEN ? THEN ? WHEN ? THEN NULL ELSE ended_at END"
            " WHERE run_id = ?"
        )
        params: list[Any] = [
            status.value,
            when,
            status is RunStatus.STARTED,
            when,
            status.is_finished,
            when,
            status is RunStatus.STARTED,
            run_id,
        ]
        if expected is not None:
            query += f" AND status IN ({','.join('?' for _ in expected)})"
            params.extend(item.value for item in expected)
        changed = self._with_retries(lambda conn: conn.execute(query, params).rowcount)
        if changed == 0:
            self.get_run(run_id)  # raises RunNotFoundError for an unknown run
        return bool(changed)

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [event_row(run_id, event) for event in events]

        def work(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(
                    "INSERT INTO events (run_id, kind, step_key, timestamp, body)"
                    " VALUES (?,?,?,?,?)",
                    rows,
                )
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

        self._with_retries(work)

    def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, Event]]:
        query = "SELECT id, body FROM events WHERE run_id = ? AND id > ? ORDER BY id"
        params: list[Any] = [run_id, after]
        if limit is not None:
            query += " LIMIT ?"
            params.append(limit)
        rows = self._with_retries(lambda conn: conn.execute(query, params).fetchall())
        return [(row[0], Event.from_dict(json.loads(row[1]))) for row in rows]

    def close(self) -> None:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
