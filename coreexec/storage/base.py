"""The run storage protocol: runs and their ordered event logs."""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from coreexec.events import Event


class RunStatus(StrEnum):
    QUEUED = "QUEUED"
    STARTING = "STARTING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    CANCELING = "CANCELING"
    CANCELED = "CANCELED"

    @property
    def is_finished(self) -> bool:
        return self in (RunStatus.SUCCESS, RunStatus.FAILURE, RunStatus.CANCELED)


@dataclass(frozen=True)
class RunRecord:
    """A run as stored. ``run_config`` stays here: messages carry only the run id."""

    run_id: str
    job_name: str
    status: RunStatus
    job_reference: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    run_config: Mapping[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    started_at: float | None = None
    ended_at: float | None = None
    parent_run_id: str | None = None
    """For a resumed run: the run it resumes."""


@runtime_checkable
class RunStorage(Protocol):
    """Where runs and their events live; safe to use from several processes."""

    def add_run(self, record: RunRecord) -> None: ...

    def get_run(self, run_id: str) -> RunRecord:
        """The run, or :class:`~coreexec.errors.RunNotFoundError`."""
        ...

    def list_runs(
        self, *, limit: int = 50, statuses: Collection[RunStatus] | None = None
    ) -> list[RunRecord]:
        """Newest first."""
        ...

    def set_status(
        self,
        run_id: str,
        status: RunStatus,
        *,
        expected: Collection[RunStatus] | None = None,
        at: float | None = None,
    ) -> bool:
        """Set the status (only from one of ``expected`` when given); True if it changed."""
        ...

    def append_events(self, run_id: str, events: Sequence[Event]) -> None: ...

    def events(
        self, run_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[tuple[int, Event]]:
        """Events with a storage id above ``after``, in order, as (id, event)."""
        ...

    def close(self) -> None: ...


def event_row(run_id: str, event: Event) -> tuple[str, str, str | None, float, str]:
    """The columns every SQL run storage stores for an event: run id, kind, step key,
    timestamp and the event as JSON (values JSON cannot hold are written with ``str``)."""
    body = json.dumps(event.to_dict(), separators=(",", ":"), default=str)
    return (run_id, event.kind.value, event.step_key, event.timestamp, body)
