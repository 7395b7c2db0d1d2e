"""Run storage in PostgreSQL: runs shared by coordinators and workers on many machines.

Chosen by ``COREEXEC_STORAGE_URL=postgresql://user:password@host:5432/db`` (psycopg 3
and its pool are dependencies of coreexec). Each process keeps a small
connection pool (a new one after a fork: a connection must not cross one). The schema
is created and upgraded by the versioned migrations under ``migrations/postgres``,
one at a time under an advisory lock, and a database whose schema is newer than this
code is refused. Event ids come from an identity column taken under a per-run advisory
lock, so a run's events are in commit order and never share an id; status changes are
one ``UPDATE ... WHERE status = ANY(expected)``, a compare-and-set.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from coreexec.errors import RunNotFoundError, StorageError
from coreexec.events import Event
from coreexec.storage.base import RunRecord, RunStatus, event_row
from coreexec.storage.migrations import migrations
from coreexec.urls import masked_url

T = TypeVar("T")

DEFAULT_POOL_SIZE = 4
CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK = 0x636F726565786563  # "coreexec": one bigint key for schema changes
_RUN_LOCK_SPACE = 0x636F7265  # "core": the first int4 key of per-run event locks
_COLUMNS = (
    "run_id, job_name, job_reference, status, tags, run_config, created_at, updated_at,"
    " started_at, ended_at, parent_run_id"
)

_VERSION_TABLE = """
CREATE TABLE IF NOT EXISTS coreexec_schema_version (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at DOUBLE PRECISION NOT NULL
)
"""


def latest_schema_version() -> int:
    return len(migrations("postgres"))


def _schema_version(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT COALESCE(MAX(version), 0) FROM coreexec_schema_version")
    return int(row.fetchone()[0])  # type: ignore[index]


def _refuse_newer(current: int, known: int, url: str) -> None:
    if current > known:
        raise StorageError(
            f"run storage {masked_url(url)} has schema version {current}, newer than "
            f"this coreexec knows ({known}): upgrade coreexec on this machine "
            "(every process of a fleet must run the same or a newer version)"
        )


def migrate(conn: psycopg.Connection[Any], *, url: str) -> int:
    """Bring the schema up to date (one process at a time); return its version.

    A schema newer than this code knows is refused: writing to it with old code could
    lose what the newer code stores. An up-to-date schema costs one query, no lock.
    """
    known = migrations("postgres")
    try:
        current = _schema_version(conn)
    except psycopg.errors.UndefinedTable:
        current = -1
    _refuse_newer(current, len(known), url)
    if current == len(known):
        return current
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        conn.execute(_VERSION_TABLE)
        current = _schema_version(conn)
        _refuse_newer(current, len(known), url)
        for migration in known[current:]:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO coreexec_schema_version VALUES (%s, %s, %s)",
                (migration.version, migration.name, time.time()),
            )
    return len(known)


def _oneline(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _record(row: tuple[Any, ...]) -> RunRecord:
    return RunRecord(
        run_id=row[0],
        job_name=row[1],
        job_reference=row[2],
        status=RunStatus(row[3]),
        tags=row[4],
        run_config=row[5],
        created_at=row[6],
        updated_at=row[7],
        started_at=row[8],
        ended_at=row[9],
        parent_run_id=row[10],
    )


class PostgresRunStorage:
    """Runs and events in a PostgreSQL database, safe for many writers on many machines."""

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        self.url = url
        self.display_url = masked_url(url)
        self.pool_size = pool_size
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._pid = 0
        self._left_behind: list[ConnectionPool] = []
        with self._connect() as conn:
            self.schema_version = migrate(conn, url=url)

    def _error(self, exc: BaseException, doing: str) -> StorageError:
        return StorageError(f"run storage {self.display_url}: cannot {doing}: {_oneline(exc)}")

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self.url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
        except psycopg.Error as exc:
            raise StorageError(
                f"cannot connect to the run storage {self.display_url}: {_oneline(exc)}; check "
                "COREEXEC_STORAGE_URL (host, port, database, user; the password is read "
                "from the URL or PGPASSWORD/~/.pgpass) and that the server is up"
            ) from exc

    def _pool_for_this_process(self) -> ConnectionPool:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                return self._pool
            if self._pool is not None:
                # Inherited through a fork: its connections belong to the parent, and
                # closing them here would close the parent's. Keep it from being collected.
                self._left_behind.append(self._pool)
            pool = ConnectionPool(
                self.url,
                min_size=1,
                max_size=self.pool_size,
                kwargs={"autocommit": True, "connect_timeout": CONNECT_TIMEOUT_S},
                open=False,
                name="coreexec-run-storage",
            )
            try:
                pool.open(wait=True, timeout=CONNECT_TIMEOUT_S)
            except PoolTimeout as exc:
                pool.close()
                raise self._error(exc, "open a connection pool") from exc
            self._pool, self._pid = pool, os.getpid()
            return pool

    def _run(
        self, doing: str, work: Callable[[psycopg.Connection[Any]], T], *, reads: bool = False
    ) -> T:
        """``work`` on a pooled connection. After a connection the server closed (a
        restart, an idle timeout) the pool's idle connections are checked and the broken
        ones replaced; a read is then tried once more, a write is not, since it may have
        been committed before the connection broke."""
        for attempt in (1, 2):
            pool = self._pool_for_this_process()
            try:
                with pool.connection() as conn:
                    return work(conn)
            except psycopg.OperationalError as exc:
                pool.check()
                if not reads or attempt == 2:
                    raise self._error(exc, doing) from exc
            except (psycopg.Error, PoolTimeout) as exc:
                raise self._error(exc, doing) from exc
        raise AssertionError("unreachable")

    def add_run(self, record: RunRecord) -> None:
        params = (
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
        )
        sql = f"INSERT INTO coreexec_runs ({_COLUMNS}) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
        self._run(f"add run {record.run_id}", lambda conn: conn.execute(sql, params))

    def get_run(self, run_id: str) -> RunRecord:
        sql = f"SELECT {_COLUMNS} FROM coreexec_runs WHERE run_id = %s"
        row = self._run(
            f"read run {run_id}", lambda conn: conn.execute(sql, (run_id,)).fetchone(), reads=True
        )
        if row is None:
            raise RunNotFoundError(run_id)
        return _record(row)

    def list_runs(
        self, *, limit: int = 50, statuses: Collection[RunStatus] | None = None
    ) -> list[RunRecord]:
        sql = f"SELECT {_COLUMNS} FROM coreexec_runs"
        params: list[Any] = []
        if statuses is not None:
            sql += " WHERE status = ANY(%s)"
            params.append([status.value for status in statuses])
        sql += " ORDER BY created_at DESC LIMIT %s"
        params.append(limit)
        rows = self._run("list runs", lambda conn: conn.execute(sql, params).fetchall(), reads=True)
        return [_record(row) for row in rows]

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        expected: Collection[RunStatus] | None = None,
        at: float | None = None,
    ) -> bool:
        when = at if at is not None else time.time()
        sql = (
            "UPDATE coreexec_runs SET status = %s, updated_at = %s,"
            " started_at = CASE WHEN %s THEN %s ELSE started_at END,"
            " ended_at = CASE WHEN %s THEN %s ELSE ended_at END"
            " WHERE run_id = %s"
        )
        params: list[Any] = [status.value, when, status is RunStatus.STARTED, when]
        params += [status.is_finished, when, run_id]
        if expected is not None:
            sql += " AND status = ANY(%s)"
            params.append([item.value for item in expected])
        changed = self._run(
            f"set the status of run {run_id}", lambda conn: conn.execute(sql, params).rowcount
        )
        if changed == 0:
            self.get_run(run_id)  # raises RunNotFoundError for an unknown run
        return bool(changed)

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = [event_row(run_id, event) for event in events]

        def work(conn: psycopg.Connection[Any]) -> None:
            # One round trip: BEGIN, the lock, the inserts and COMMIT go out together.
            with conn.pipeline(), conn.transaction(), conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_RUN_LOCK_SPACE, run_id)
                )
                cursor.executemany(
                    "INSERT INTO coreexec_events (run_id, kind, step_key, timestamp, body)"
                    " VALUES (%s, %s, %s, %s, %s)",
                    rows,
                )

        self._run(f"append events to run {run_id}", work)

    def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, Event]]:
        sql = "SELECT id, body FROM coreexec_events WHERE run_id = %s AND id > %s ORDER BY id"
        params: list[Any] = [run_id, after]
        if limit is not None:
            sql += " LIMIT %s"
            params.append(limit)
        rows = self._run(
            f"read the events of run {run_id}",
            lambda conn: conn.execute(sql, params).fetchall(),
            reads=True,
        )
        return [(int(row[0]), Event.from_dict(json.loads(row[1]))) for row in rows]

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()
