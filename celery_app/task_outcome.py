"""How a step attempt's end reads to Celery, and so to Flower.

Flower learns task states from worker events, so the step task ends the way Celery's
own tasks do:

- a succeeded attempt returns its small status dict: SUCCESS;
- a failed attempt raises :class:`StepAttemptFailed`: FAILURE, with the step's error
  type and message as the exception and the step's own traceback (never the frames of
  the worker's machinery). The exception is one of the task's ``throws``, so the worker
  logs it at INFO without a traceback; with ``task_acks_on_failure_or_timeout`` (on by
  default) the message is acknowledged, never redelivered, and Celery retries nothing;
- a delivery dropped because its attempt was already claimed raises ``Ignore``: the
  message is acknowledged and no state event is sent, so the attempt keeps the state its
  first delivery gave it (no extra FAILURE, no SUCCESS over a failure);
- a delivery the coordinator fenced (the run was canceled, or the attempt given up
  before it started) reports ``task-revoked`` and is ignored the same way: REVOKED.

A cancelled running attempt is terminated by the coordinator's revoke, which Celery
itself reports as REVOKED.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from celery import Task

from coreexec.errors import CoreExecError


class StepAttemptFailed(CoreExecError):
    """A step attempt failed; raised by the step task so that Celery records FAILURE.

    Reads as the step's own error (``repr`` is ``ErrorType('message')``), and carries
    the step's traceback as text, which :class:`StepTask` hands to Celery's event.
    """

    def __init__(self, error_type: str, message: str, step_traceback: str = "") -> None:
        super().__init__(error_type, message, step_traceback)
        self.error_type = error_type
        self.message = message
        self.step_traceback = step_traceback

    @classmethod
    def from_error(cls, error: Mapping[str, Any]) -> StepAttemptFailed:
        """From an error dict as step events carry it (``type``, ``message``, ``traceback``)."""
        return cls(
            str(error.get("type") or "Error"),
            str(error.get("message") or ""),
            str(error.get("traceback") or ""),
        )

    def __str__(self) -> str:
        return f"{self.error_type}: {self.message}" if self.message else self.error_type

    def __repr__(self) -> str:
        return f"{self.error_type}({self.message!r})"


class StepTask(Task):  # type: ignore[misc]  # Celery ships no type information
    """Base of the step task: a failure's traceback is the step's, not the worker's."""

    throws = (StepAttemptFailed,)

    def on_failure(
        self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any
    ) -> None:
        # ``einfo`` is what the pool hands to the worker's main process, which sends it
        # in the task-failed event (Flower's "traceback").
        if isinstance(exc, StepAttemptFailed) and einfo is not None:
            einfo.traceback = exc.step_traceback or str(exc)
