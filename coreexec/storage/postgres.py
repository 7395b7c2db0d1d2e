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

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from coreexec.errors import StorageError
from coreexec.events import Event
from coreexec.storage.migrations import migrations
from coreexec.storage.sql import SqlRunStorage
from coreexec.urls import masked_url

T = TypeVar("T")

DEFAULT_POOL_SIZE = 4
CONNECT_TIMEOUT_S = 10
_MIGRATION_LOCK = 0x636F726565786563  # "coreexec": one bigint key for schema changes
_RUN_LOCK_SPACE = 0x636F7265  # "core": the first int4 key of per-run event locks

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


class PostgresRunStorage(SqlRunStorage):
    """Runs and events in a PostgreSQL database, safe for many writers on many machines."""

    runs_table = "coreexec_runs"
    events_table = "coreexec_events"
    param = "%s"

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

    def _fetch(self, doing: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._run(doing, lambda conn: conn.execute(sql, params).fetchall(), reads=True)

    def _write(self, doing: str, sql: str, params: Sequence[Any]) -> int:
        return self._run(doing, lambda conn: conn.execute(sql, params).rowcount)

    def _one_of(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        return f"{column} = ANY(%s)", [values]

    def _from_json(self, value: Any) -> Any:
        return value  # jsonb columns come back decoded

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        if not events:
            return
        rows = self._event_rows(run_id, events)
        insert = self._insert_events_sql()

        def work(conn: psycopg.Connection[Any]) -> None:
            # One round trip: BEGIN, the lock, the inserts and COMMIT go out together.
            with conn.pipeline(), conn.transaction(), conn.cursor() as cursor:
                cursor.execute(
                    "SELECT pg_advisory_xact_lock(%s, hashtext(%s))", (_RUN_LOCK_SPACE, run_id)
                )
                cursor.executemany(insert, rows)

        self._run(f"append events to run {run_id}", work)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()
