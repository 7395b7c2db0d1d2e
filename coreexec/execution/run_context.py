"""What an executor gets to run one run: the plan, the job, storage and the event sink."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.clock import SYSTEM_CLOCK, Clock
from coreexec.context import EventSink
from coreexec.events import Event
from coreexec.instance import Instance
from coreexec.io_managers import IOManager
from coreexec.job import JobDefinition
from coreexec.plan import ExecutionPlan, PlannedStep
from coreexec.step_runner import StepRun, run_step

EventListener = Callable[[Event], None]


@dataclass
class RunContext:
    """One run as its coordinator sees it.

    ``record`` persists an event and tells the listeners (the CLI's progress display);
    executors call it for every event of the run, from the coordinating thread.
    """

    run_id: str
    job: JobDefinition
    plan: ExecutionPlan
    run_config: Mapping[str, Any]
    run_tags: Mapping[str, str]
    instance: Instance
    io_manager: IOManager
    clock: Clock = SYSTEM_CLOCK
    listeners: list[EventListener] = field(default_factory=list)
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    already_succeeded: frozenset[str] = frozenset()
    attempts_made: dict[str, int] = field(default_factory=dict)
    wakers: list[Callable[[], None]] = field(default_factory=list)
    """Called by :meth:`request_cancel` so a coordinator blocked in a wait returns at once."""
    outcome: tuple[bool, list[str]] | None = None
    """Set by the coordinator at the end: (every step succeeded, keys of failed steps)."""
    step_errors: dict[str, BaseException] = field(default_factory=dict)
    """User exceptions of failed steps, kept by executors that run steps in this process."""

    _unsaved: list[Event] = field(default_factory=list)
    _must_flush: bool = False

    def record(self, event: Event, *, kept_elsewhere: bool = False) -> None:
        """Keep an event for the run's history and tell the listeners at once.

        Events are written to the run storage in batches by :meth:`flush`, which the
        coordinator calls after every pass of its loop: one transaction per pass
        rather than one per event. ``kept_elsewhere``: the event also sits where a
        resumed run reads it (a step's event on the run's Redis stream), so its write
        may wait (:attr:`StepDispatcher.storage_flush_interval_s`); any other event
        makes :attr:`must_flush` true.
        """
        self._unsaved.append(event)
        if not kept_elsewhere:
            self._must_flush = True
        for listener in self.listeners:
            listener(event)

    def run_step_here(self, step: PlannedStep, attempt: StepAttempt, sink: EventSink) -> None:
        """Run one attempt in this process, keeping the user's exception if it fails."""
        outcome = run_step(
            StepRun(
                run_id=self.run_id,
                job=self.job,
                step=step,
                attempt=attempt,
                run_config=self.run_config,
                io_manager=self.io_manager,
                run_tags=self.run_tags,
                clock=self.clock,
            ),
            sink,
        )
        if outcome.error is not None:
            self.step_errors[step.key] = outcome.error

    def request_cancel(self) -> None:
        """Cancel the run from this process (a signal handler may call it)."""
        self.cancel_requested.set()
        for wake in self.wakers:
            wake()

    @property
    def has_unsaved(self) -> bool:
        """Whether events wait for :meth:`flush`."""
        return bool(self._unsaved)

    @property
    def must_flush(self) -> bool:
        """Whether an unsaved event exists nowhere else (the coordinator's own)."""
        return self._must_flush

    def flush(self) -> None:
        """Write the recorded events to the run storage."""
        if self._unsaved:
            batch, self._unsaved = self._unsaved, []
            self._must_flush = False
            self.instance.storage.append_events(self.run_id, batch)
