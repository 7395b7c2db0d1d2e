"""Live progress of a run in the terminal: one line per step transition."""

from __future__ import annotations

import click

from coreexec.events import Event, EventKind
from coreexec.runs.summary import StepSummary, is_cancelled

_SHOWN = {
    EventKind.STEP_START: ("start", "cyan"),
    EventKind.STEP_SUCCESS: ("ok", "green"),
    EventKind.STEP_FAILURE: ("FAIL", "red"),
    EventKind.STEP_UP_FOR_RETRY: ("retry", "yellow"),
    EventKind.STEP_RETRY_REQUESTED: ("retry?", "yellow"),
    EventKind.STEP_SKIPPED: ("skip", "magenta"),
    EventKind.SLOT_WAIT: ("wait", "yellow"),
    EventKind.STEP_LOG: ("log", None),
    EventKind.RUN_START: ("run", "blue"),
    EventKind.RUN_SUCCESS: ("run ok", "green"),
    EventKind.RUN_FAILURE: ("run FAIL", "red"),
    EventKind.RUN_CANCELED: ("canceled", "magenta"),
}


class ProgressPrinter:
    """An event listener that prints step transitions as they happen."""

    def __init__(self, *, total_steps: int, color: bool | None = None) -> None:
        self.total_steps = total_steps
        self.done = 0
        self.color = color

    def __call__(self, event: Event) -> None:
        shown = _SHOWN.get(event.kind)
        if shown is None:
            return
        label, color = ("cancel", "magenta") if is_cancelled(event) else shown
        if event.kind in (EventKind.STEP_SUCCESS, EventKind.STEP_SKIPPED) or (
            event.kind is EventKind.STEP_FAILURE and not event.data.get("retryable", False)
        ):
            self.done += 1
        counter = f"[{min(self.done, self.total_steps)}/{self.total_steps}]"
        who = event.step_key or ""
        if event.attempt and event.attempt > 1 and event.kind is EventKind.STEP_START:
            who += f" (attempt {event.attempt})"
        message = event.message
        if event.kind is EventKind.STEP_FAILURE:
            message = message.splitlines()[0] if message else "failed"
        tag = click.style(f"{label:>8}", fg=color) if color else f"{label:>8}"
        click.echo(f"{counter:>10} {tag} {who} {message}".rstrip(), color=self.color)


def format_summary(rows: list[StepSummary]) -> str:
    """The step table printed at the end of `coreexec run` and by `coreexec runs show`."""
    width = max([len("step"), *(len(row.step_key) for row in rows)])
    lines = [f"{'step':<{width}}  {'status':<17} {'attempts':>8} {'duration':>9}  detail"]
    for row in rows:
        duration = f"{row.duration_s:.3f}s" if row.duration_s is not None else "-"
        detail = (
            row.waiting_for or (row.error or "").splitlines()[0]
            if (row.waiting_for or row.error)
            else ""
        )
        lines.append(
            f"{row.step_key:<{width}}  {row.status:<17} {row.attempts:>8} {duration:>9}  {detail}"
        )
    return "\n".join(lines)
