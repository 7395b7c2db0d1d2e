"""Run and step events: what happened, in order; the run's durable history."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from coreexec.errors import MalformedEventError


class EventKind(StrEnum):
    RUN_STARTING = "RUN_STARTING"
    RUN_START = "RUN_START"
    RUN_SUCCESS = "RUN_SUCCESS"
    RUN_FAILURE = "RUN_FAILURE"
    RUN_CANCELING = "RUN_CANCELING"
    RUN_CANCELED = "RUN_CANCELED"
    STEP_QUEUED = "STEP_QUEUED"
    STEP_START = "STEP_START"
    STEP_OUTPUT = "STEP_OUTPUT"
    STEP_LOG = "STEP_LOG"
    STEP_SUCCESS = "STEP_SUCCESS"
    STEP_FAILURE = "STEP_FAILURE"
    STEP_RETRY_REQUESTED = "STEP_RETRY_REQUESTED"
    STEP_UP_FOR_RETRY = "STEP_UP_FOR_RETRY"
    STEP_SKIPPED = "STEP_SKIPPED"
    STEP_HEARTBEAT = "STEP_HEARTBEAT"
    SLOT_WAIT = "SLOT_WAIT"
    SLOT_ACQUIRED = "SLOT_ACQUIRED"
    SLOT_RELEASED = "SLOT_RELEASED"


STEP_ATTEMPT_ENDINGS = frozenset(
    {EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE, EventKind.STEP_RETRY_REQUESTED}
)
"""Events that end a step attempt (reported by whoever ran it)."""

TRANSIENT_KINDS = frozenset({EventKind.STEP_HEARTBEAT})
"""Events that drive the coordinator but are not kept in the run's history."""


@dataclass(frozen=True)
class Event:
    """One thing that happened in a run; JSON-serialisable through ``to_dict``."""

    kind: EventKind
    run_id: str
    timestamp: float
    step_key: str | None = None
    attempt: int | None = None
    attempt_id: str | None = None
    message: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": self.kind.value,
            "run_id": self.run_id,
            "ts": self.timestamp,
        }
        if self.step_key is not None:
            body["step_key"] = self.step_key
        if self.attempt is not None:
            body["attempt"] = self.attempt
        if self.attempt_id is not None:
            body["attempt_id"] = self.attempt_id
        if self.message:
            body["message"] = self.message
        if self.data:
            body["data"] = dict(self.data)
        return body

    @classmethod
    def from_dict(cls, body: Mapping[str, Any]) -> Event:
        """Rebuild an event; raises :class:`~coreexec.errors.MalformedEventError` naming the
        problem when ``body`` is malformed."""
        try:
            kind = EventKind(body["kind"])
            run_id = str(body["run_id"])
            timestamp = float(body["ts"])
        except (KeyError, ValueError, TypeError) as exc:
            raise MalformedEventError(f"malformed event {dict(body)!r}: {exc!r}") from exc
        attempt = body.get("attempt")
        return cls(
            kind=kind,
            run_id=run_id,
            timestamp=timestamp,
            step_key=body.get("step_key"),
            attempt=int(attempt) if attempt is not None else None,
            attempt_id=body.get("attempt_id"),
            message=str(body.get("message", "")),
            data=dict(body.get("data") or {}),
        )

    @property
    def is_step_event(self) -> bool:
        return self.step_key is not None
