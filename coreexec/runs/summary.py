"""A run's steps as a table, derived from its event log (for the CLI and run handles)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from coreexec.events import Event, EventKind
from coreexec.retry import FailureClass


@dataclass
class StepSummary:
    """Where one step stands, from the events seen so far."""

    step_key: str
    status: str = "pending"
    attempts: int = 0
    started_at: float | None = None
    ended_at: float | None = None
    error: str | None = None
    waiting_for: str | None = None

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.started_at


_STATUS_BY_KIND = {
    EventKind.STEP_QUEUED: "queued",
    EventKind.STEP_START: "running",
    EventKind.STEP_SUCCESS: "succeeded",
    EventKind.STEP_FAILURE: "failed",
    EventKind.STEP_RETRY_REQUESTED: "retry requested",
    EventKind.STEP_UP_FOR_RETRY: "waiting to retry",
    EventKind.STEP_SKIPPED: "skipped",
    EventKind.SLOT_WAIT: "waiting for slot",
}


def is_cancelled(event: Event) -> bool:
    """A step attempt that ended because its run was canceled (never retried)."""
    return (
        event.kind is EventKind.STEP_FAILURE
        and event.data.get("failure_class") == FailureClass.CANCELLED.value
    )


def _status_of(event: Event) -> str:
    return "cancelled" if is_cancelled(event) else _STATUS_BY_KIND[event.kind]


_RUN_ENDS = (EventKind.RUN_SUCCESS, EventKind.RUN_FAILURE, EventKind.RUN_CANCELED)
_UNSTARTED = ("pending", "queued", "waiting for slot", "waiting to retry", "retry requested")


def _end_with_run(steps: Iterable[StepSummary], run_end: Event) -> None:
    """Steps still open when the run ended (its coordinator failed or was lost) end
    with it: a running one failed as infrastructure, the others were not run."""
    for summary in steps:
        if summary.status == "running":
            summary.status = "failed"
            summary.ended_at = summary.ended_at or run_end.timestamp
            summary.error = f"infrastructure: the run ended first ({run_end.message})"
        elif summary.status in _UNSTARTED:
            summary.status = "not run"
            summary.waiting_for = None


def summarize(events: Iterable[Event], step_keys: Iterable[str] = ()) -> list[StepSummary]:
    """One summary per step, in order of first appearance (``step_keys`` first). Steps
    still open when the run ended (and was not resumed since) end with it."""
    steps: dict[str, StepSummary] = {key: StepSummary(key) for key in step_keys}
    run_end: Event | None = None
    for event in events:
        key = event.step_key
        if key is None:
            if event.kind in _RUN_ENDS:
                run_end = event
            elif event.kind is EventKind.RUN_START:
                run_end = None
            continue
        _apply(steps.setdefault(key, StepSummary(key)), event)
    if run_end is not None and run_end.kind is not EventKind.RUN_SUCCESS:
        _end_with_run(steps.values(), run_end)
    return list(steps.values())


def _apply(summary: StepSummary, event: Event) -> None:
    """What one event of the step says of where it stands."""
    kind = event.kind
    if kind in _STATUS_BY_KIND:
        summary.status = _status_of(event)
        if kind is not EventKind.SLOT_WAIT:
            # The wait ended with the state it was waiting in.
            summary.waiting_for = None
    if kind is EventKind.STEP_QUEUED:
        summary.attempts = max(summary.attempts, event.attempt or 0)
        summary.waiting_for = None
    elif kind is EventKind.STEP_START:
        summary.started_at = summary.started_at or event.timestamp
        summary.attempts = max(summary.attempts, event.attempt or 0)
    elif kind in (EventKind.STEP_SUCCESS, EventKind.STEP_FAILURE, EventKind.STEP_SKIPPED):
        _ended(summary, event)
    elif kind is EventKind.SLOT_WAIT:
        summary.waiting_for = event.message
    elif kind is EventKind.SLOT_ACQUIRED:
        summary.waiting_for = None
        if summary.status == "waiting for slot":
            summary.status = "pending"


def _ended(summary: StepSummary, event: Event) -> None:
    """An attempt's end (or the step's skip): when, and the error it left, if any."""
    summary.ended_at = event.timestamp
    if event.kind is EventKind.STEP_SUCCESS:
        summary.error = None
    elif event.kind is EventKind.STEP_FAILURE:
        error = event.data.get("error") or {}
        summary.error = event.message or str(error.get("message", ""))
    elif event.kind is EventKind.STEP_SKIPPED:
        summary.error = event.message
