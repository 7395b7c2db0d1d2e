"""The coordinator: one run's loop of take ready steps → get slots → dispatch → hear back.

The slots (asking the tag limiter, keeping a waiting step's place, refreshing and
releasing leases) are :class:`coreexec.execution.slots.StepSlots`; the loop dispatches,
waits and records. It blocks in the dispatcher's ``wait`` until something happens: an
event from a step, a wake-up from the tag limiter, a cancel request. Its only timers are
the ones with a meaning: a retry coming due, leases to refresh, the low-rate check for a
cancel requested through the run storage by another process.
"""

from __future__ import annotations

from collections.abc import Sequence

from coreexec.active_execution import ActiveExecution, StepAttempt, StepState
from coreexec.errors import CoreExecError
from coreexec.events import STEP_ATTEMPT_ENDINGS, TRANSIENT_KINDS, Event, EventKind
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.lanes import DispatchLanes
from coreexec.execution.run_context import RunContext
from coreexec.execution.slots import StepSlots
from coreexec.limits.base import TagLimiter
from coreexec.limits.rules import TagConcurrencyLimit
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.storage.base import RunStatus

CANCEL_CHECK_INTERVAL_S = 1.0


class Coordinator:
    """Drives one run through a dispatcher until every step has ended."""

    def __init__(
        self,
        run: RunContext,
        dispatcher: StepDispatcher,
        *,
        retries_enabled: bool = True,
        limiter: TagLimiter | None = None,
        limit_rules: Sequence[TagConcurrencyLimit] = (),
    ) -> None:
        self.context = run
        self.dispatcher = dispatcher
        self.active = ActiveExecution(
            run.plan,
            run_id=run.run_id,
            retries_enabled=retries_enabled,
            clock=run.clock,
            already_succeeded=run.already_succeeded,
            attempts_made=run.attempts_made,
            marked=dispatcher.async_keys,
        )
        self.slots = StepSlots(run, limiter, limit_rules, wake_key=dispatcher.wake_key)
        self._next_cancel_check_at = run.clock.now() + CANCEL_CHECK_INTERVAL_S
        self._last_flush_at = run.clock.now()
        self.lanes = DispatchLanes(dispatcher, self.active)

    # -- events -----------------------------------------------------------------------

    def _record(self, event: Event) -> None:
        if event.kind in TRANSIENT_KINDS:
            return
        # A step's own event: the dispatcher's stream (where it has one) keeps it too.
        self.context.record(event, kept_elsewhere=True)
        for derived in self.active.handle(event):
            self.context.record(derived)
        if event.kind in STEP_ATTEMPT_ENDINGS and event.attempt_id is not None:
            # An attempt's end always brings a dispatch pass, in which this run's own
            # waiters ask again: a wake-up to itself would only add a pass.
            self.slots.release(event.attempt_id, wake_self=False)

    def _record_all(self, events: Sequence[Event]) -> None:
        for event in events:
            self.context.record(event)

    # -- the loop ---------------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        pass_slots = self.slots.begin_pass()
        self.lanes.begin_pass()
        at_capacity = False
        for step in self.active.ready_in_order():
            if self.lanes.seen(step):
                at_capacity = True
                if self.lanes.nothing_else_fits(step):
                    break
                continue  # a step of the other kind (async or not) may still start
            lease_id = self.slots.acquire(step, pass_slots)
            if lease_id is None:
                continue
            attempt = self.active.start_attempt(step.key, lease_id)
            self.lanes.started(step, attempt.attempt_id)
            self._start(step, attempt)
        if at_capacity:
            self.slots.keep_places()
        # One send for the whole pass (one broker round trip where the broker batches).
        self._fail_lost(self.dispatcher.flush())

    def _start(self, step: PlannedStep, attempt: StepAttempt) -> None:
        self.context.record(
            Event(
                kind=EventKind.STEP_QUEUED,
                run_id=self.context.run_id,
                timestamp=self.context.clock.now(),
                step_key=step.key,
                attempt=attempt.number,
                attempt_id=attempt.attempt_id,
                data={"priority": step.priority},
            )
        )
        try:
            self.dispatcher.dispatch(step, attempt)
        except CoreExecError as exc:
            self._fail_lost(
                [LostAttempt(attempt.attempt_id, FailureClass.INFRASTRUCTURE, str(exc))]
            )

    def _fail_lost(self, lost_attempts: Sequence[LostAttempt]) -> None:
        for lost in lost_attempts:
            self.lanes.ended(lost.attempt_id)
            self._record_all(
                self.active.fail_attempt(lost.attempt_id, lost.failure_class, lost.message)
            )
            self.slots.release(lost.attempt_id)

    def _cancel(self) -> None:
        self.context.instance.storage.set_status(
            self.context.run_id,
            RunStatus.CANCELING,
            expected=(RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING),
        )
        self._record_all(self.active.cancel())
        self.slots.stop_waiting()
        running: list[StepAttempt] = list(self.active.in_flight.values())
        if running:
            self.dispatcher.terminate(running)

    def _check_cancel(self) -> None:
        if self.context.cancel_requested.is_set():
            return
        now = self.context.clock.now()
        if now < self._next_cancel_check_at:
            return
        self._next_cancel_check_at = now + CANCEL_CHECK_INTERVAL_S
        status = self.context.instance.storage.get_run(self.context.run_id).status
        if status is RunStatus.CANCELING:
            self.context.cancel_requested.set()

    def _flush_if_due(self) -> None:
        """Write the pass's events to the run storage, or keep them for a later pass
        when the dispatcher allows it and all of them are steps' own events, which its
        stream keeps for a resume: storage commits are CPU that steps starting on the
        same machine would rather have. The coordinator's own events (a step queued, a
        slot taken) are written in the pass that made them."""
        now = self.context.clock.now()
        interval_s = self.dispatcher.storage_flush_interval_s
        if self.context.must_flush or now - self._last_flush_at >= interval_s:
            self.context.flush()
            self._last_flush_at = now

    def _wait_timeout(self) -> float | None:
        deadlines = [self._next_cancel_check_at]
        if self.context.has_unsaved:
            deadlines.append(self._last_flush_at + self.dispatcher.storage_flush_interval_s)
        if self.active.next_retry_at is not None:
            deadlines.append(self.active.next_retry_at)
        deadlines.extend(self.slots.deadlines())
        return max(0.0, min(deadlines) - self.context.clock.now())

    def run(self) -> bool:
        """Run to the end; True when every step succeeded."""
        self.dispatcher.start(self._record)
        self.context.wakers.append(self.dispatcher.wake)
        try:
            while True:
                self._check_cancel()
                if self.context.cancel_requested.is_set() and not self.active.canceled:
                    self._cancel()
                if not self.active.canceled:
                    self._dispatch_ready()
                self._fail_lost(self.dispatcher.lost_attempts())
                self._flush_if_due()
                if self.active.is_complete:
                    break
                self.dispatcher.wait(self._wait_timeout())
                self.slots.refresh(self.dispatcher.outages_ridden)
        finally:
            self.dispatcher.close()
            self.slots.close()
            self.context.flush()
        failed = sorted(self.active.keys_in(StepState.FAILED))
        self.context.outcome = (self.active.succeeded, failed)
        return self.active.succeeded
