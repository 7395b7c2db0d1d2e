"""What the SQL run storages share: the columns of a run, the queries and the rows.

A backend (:mod:`coreexec.storage.sqlite`, :mod:`coreexec.storage.postgres`) names its
tables and parameter style, runs a statement its own way (connections, retries, the
errors it raises) and appends events under its own locking; the SQL of runs and of
reading events is here once.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from coreexec.errors import RunNotFoundError
from coreexec.events import Event
from coreexec.storage.base import RunRecord, RunStatus, event_row

RUN_COLUMNS = (
    "run_id",
    "job_name",
    "job_reference",
    "status",
    "tags",
    "run_config",
    "created_at",
    "updated_at",
    "started_at",
    "ended_at",
    "parent_run_id",
)
EVENT_COLUMNS = ("run_id", "kind", "step_key", "timestamp", "body")
"""The columns :func:`~coreexec.storage.base.event_row` fills, in its order."""


def run_params(record: RunRecord) -> tuple[Any, ...]:
    """A run's values in the order of :data:`RUN_COLUMNS` (tags and run config as JSON)."""
    return (
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


class SqlRunStorage(ABC):
    """A run storage over SQL; see the module docstring for what a backend gives."""

    runs_table: ClassVar[str]
    events_table: ClassVar[str]
    param: ClassVar[str]
    """The placeholder of one parameter (``?``, ``%s``)."""

    @abstractmethod
    def _fetch(self, doing: str, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """The rows of a read; ``doing`` says what it was for in errors."""

    @abstractmethod
    def _write(self, doing: str, sql: str, params: Sequence[Any]) -> int:
        """Run a write; the number of rows it changed."""

    @abstractmethod
    def _one_of(self, column: str, values: list[str]) -> tuple[str, list[Any]]:
        """A condition that ``column`` is one of ``values``, and its parameters."""

    @abstractmethod
    def _from_json(self, value: Any) -> Any:
        """A JSON column's value as the driver returns it, decoded."""

    @abstractmethod
    def append_events(self, run_id: str, events: Sequence[Event]) -> None: ...

    @abstractmethod
    def close(self) -> None: ...

    def _insert_events_sql(self) -> str:
        values = ", ".join(self.param for _ in EVENT_COLUMNS)
        return f"INSERT INTO {self.events_table} ({', '.join(EVENT_COLUMNS)}) VALUES ({values})"

    @staticmethod
    def _event_rows(run_id: str, events: Sequence[Event]) -> list[tuple[Any, ...]]:
        return [event_row(run_id, event) for event in events]

    def _record(self, row: tuple[Any, ...]) -> RunRecord:
        return RunRecord(
            run_id=row[0],
            job_name=row[1],
            job_reference=row[2],
            status=RunStatus(row[3]),
            tags=self._from_json(row[4]),
            run_config=self._from_json(row[5]),
            created_at=row[6],
            updated_at=row[7],
            started_at=row[8],
            ended_at=row[9],
            parent_run_id=row[10],
        )

    def _select_runs(self) -> str:
        return f"SELECT {', '.join(RUN_COLUMNS)} FROM {self.runs_table}"

    def add_run(self, record: RunRecord) -> None:
        values = ",".join(self.param for _ in RUN_COLUMNS)
        sql = f"INSERT INTO {self.runs_table} ({', '.join(RUN_COLUMNS)}) VALUES ({values})"
        self._write(f"add run {record.run_id}", sql, run_params(record))

    def get_run(self, run_id: str) -> RunRecord:
        sql = f"{self._select_runs()} WHERE run_id = {self.param}"
        rows = self._fetch(f"read run {run_id}", sql, (run_id,))
        if not rows:
            raise RunNotFoundError(run_id)
        return self._record(rows[0])

    def list_runs(
        self, *, limit: int = 50, statuses: Collection[RunStatus] | None = None
    ) -> list[RunRecord]:
        sql = self._select_runs()
        params: list[Any] = []
        if statuses is not None:
            condition, values = self._one_of("status", [status.value for status in statuses])
            sql += f" WHERE {condition}"
            params += values
        sql += f" ORDER BY created_at DESC LIMIT {self.param}"
        params.append(limit)
        return [self._record(row) for row in self._fetch("list runs", sql, params)]

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        expected: Collection[RunStatus] | None = None,
        at: float | None = None,
    ) -> bool:
        when = at if at is not None else time.time()
        p = self.param
        sql = (
            f"UPDATE {self.runs_table} SET status = {p}, updated_at = {p},"
            # A resumed run keeps its first start; it has no end until it ends again.
            f" started_at = CASE WHEN {p} AND started_at IS NULL THEN {p} ELSE started_at END,"
            f" ended_at = CASE WHEN {p} THEN {p} WHEN {p} THEN NULL ELSE ended_at END"
            f" WHERE run_id = {p}"
        )
        started = status is RunStatus.STARTED
        params: list[Any] = [status.value, when, started, when, status.is_finished, when, started]
        params.append(run_id)
        if expected is not None:
            condition, values = self._one_of("status", [item.value for item in expected])
            sql += f" AND {condition}"
            params += values
        changed = self._write(f"set the status of run {run_id}", sql, params)
        if changed == 0:
            self.get_run(run_id)  # raises RunNotFoundError for an unknown run
        return bool(changed)

    def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, Event]]:
        p = self.param
        sql = f"SELECT id, body FROM {self.events_table} WHERE run_id = {p} AND id > {p}"
        sql += " ORDER BY id"
        params: list[Any] = [run_id, after]
        if limit is not None:
            sql += f" LIMIT {p}"
            params.append(limit)
        rows = self._fetch(f"read the events of run {run_id}", sql, params)
        return [(int(row[0]), Event.from_dict(json.loads(row[1]))) for row in rows]
