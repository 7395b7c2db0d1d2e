"""Run storage in a dict: for tests and ``execute_in_process``."""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
from dataclasses import replace

from coreexec.errors import RunNotFoundError
from coreexec.events import Event
from coreexec.storage.base import RunRecord, RunStatus


class InMemoryRunStorage:
    """Ephemeral: gone with the process."""

    def __init__(self) -> None:
        self._runs: dict[str, RunRecord] = {}
        self._events: dict[str, list[tuple[int, Event]]] = {}
        self._next_id = 0
        self._lock = threading.Lock()

    def add_run(self, record: RunRecord) -> None:
        with self._lock:
            self._runs[record.run_id] = record
            self._events.setdefault(record.run_id, [])

    def get_run(self, run_id: str) -> RunRecord:
        with self._lock:
            try:
                return self._runs[run_id]
            except KeyError:
                raise RunNotFoundError(run_id) from None

    def list_runs(
        self, *, limit: int = 50, statuses: Collection[RunStatus] | None = None
    ) -> list[RunRecord]:
        with self._lock:
            runs = [r for r in self._runs.values() if statuses is None or r.status in statuses]
        runs.sort(key=lambda r: r.created_at, reverse=True)
        return runs[:limit]

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        expected: Collection[RunStatus] | None = None,
        at: float | None = None,
    ) -> bool:
        when = at if at is not None else time.time()
        with self._lock:
            record = self._runs.get(run_id)
            if record is None:
                raise RunNotFoundError(run_id)
            if expected is not None and record.status not in expected:
                return False
            restarted = status is RunStatus.STARTED
            # A resumed run keeps its first start; it has no end until it ends again.
            started = when if restarted and record.started_at is None else record.started_at
            ended = when if status.is_finished else None if restarted else record.ended_at
            self._runs[run_id] = replace(
                record, status=status, updated_at=when, started_at=started, ended_at=ended
            )
            return True

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        with self._lock:
            log = self._events.setdefault(run_id, [])
            for event in events:
                self._next_id += 1
                log.append((self._next_id, event))

    def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, Event]]:
        with self._lock:
            log = self._events.get(run_id, [])
            selected = [item for item in log if item[0] > after]
        return selected[:limit] if limit is not None else selected

    def close(self) -> None:
        return None
