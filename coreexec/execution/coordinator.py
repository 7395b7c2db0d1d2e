"""The coordinator: one run's loop of take ready steps → get slots → dispatch → hear back.

It blocks in the dispatcher's ``wait`` until something happens: an event from a step,
a wake-up from the tag limiter, a cancel request. Its only timers are the ones with a
meaning: a retry coming due, leases to refresh, the low-rate check for a cancel
requested through the run storage by another process.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from coreexec.active_execution import ActiveExecution, StepAttempt, StepState, new_attempt_id
from coreexec.errors import BrokerConnectionError, CoreExecError, LimiterError
from coreexec.events import STEP_ATTEMPT_ENDINGS, TRANSIENT_KINDS, Event, EventKind
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.lanes import DispatchLanes
from coreexec.execution.run_context import RunContext
from coreexec.limits.base import Lease, SlotBlock, SlotRequest, TagLimiter
from coreexec.limits.rules import TagConcurrencyLimit, slots_for
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.storage.base import RunStatus

logger = logging.getLogger(__name__)

CANCEL_CHECK_INTERVAL_S = 1.0


@dataclass
class _PassSlots:
    """What one dispatch pass learned of the slots: refused to a step (``blocked``), or
    filled by a grant (``full``). Steps after it in the pass need not ask for those."""

    blocked: set[str] = field(default_factory=set)
    full: set[str] = field(default_factory=set)


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
        self.limiter = limiter if limit_rules or limiter is not None else None
        self.limit_rules = tuple(limit_rules)
        self.active = ActiveExecution(
            run.plan,
            run_id=run.run_id,
            retries_enabled=retries_enabled,
            clock=run.clock,
            already_succeeded=run.already_succeeded,
            attempts_made=run.attempts_made,
            marked=dispatcher.async_keys,
        )
        self._leases: dict[str, Lease] = {}
        self._waiting: dict[str, SlotRequest] = {}
        self._ask_again_by: dict[str, float] = {}
        self._wait_shown: dict[str, tuple[str, ...]] = {}
        self._next_refresh_at: float | None = None
        self._outages_seen = 0
        self._next_slot_try_at: float | None = None
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
            self._release(event.attempt_id, wake_self=False)

    def _record_all(self, events: Sequence[Event]) -> None:
        for event in events:
            self.context.record(event)

    # -- slots --------------------------------------------------------------------------

    def _event(self, kind: EventKind, step_key: str, message: str, **data: object) -> Event:
        return Event(
            kind=kind,
            run_id=self.context.run_id,
            timestamp=self.context.clock.now(),
            step_key=step_key,
            message=message,
            data=data,
        )

    def _acquire(self, step: PlannedStep, pass_slots: _PassSlots) -> str | None:
        """A lease id for ``step`` (its future attempt id), or None while it must wait."""
        if self.limiter is None:
            return new_attempt_id()
        specs = slots_for(self.limit_rules, step.tags)
        if not specs:
            return new_attempt_id()
        names = {spec.name for spec in specs}
        if step.key not in self._waiting:
            if names & (pass_slots.blocked | pass_slots.full):
                # A step ahead of it in this pass waits for one of these slots, or took
                # its last unit: the release to come wakes this run.
                return None
        elif names & pass_slots.full and not self._must_ask_again(step.key):
            return None
        request = self._waiting.get(step.key) or SlotRequest(
            run_id=self.context.run_id,
            step_key=step.key,
            lease_id=new_attempt_id(),
            priority=step.priority,
            slots=specs,
            wake_key=self.dispatcher.wake_key,
        )
        result = self.limiter.try_acquire(request)
        if result.lease is None:
            self._waiting[step.key] = request
            pass_slots.blocked.update(block.slot.name for block in result.blocked_on)
            self._show_wait(step, result.blocked_on)
            self._ask_again_after(step.key, result.retry_in_ms)
            return None
        pass_slots.full.update(result.full)
        self._waiting.pop(step.key, None)
        self._ask_again_by.pop(step.key, None)
        self._wait_shown.pop(step.key, None)
        self._leases[request.lease_id] = result.lease
        self._schedule_refresh()
        self.context.record(
            self._event(
                EventKind.SLOT_ACQUIRED,
                step.key,
                "acquired " + ", ".join(spec.name for spec in specs),
                slots=[spec.name for spec in specs],
                lease_id=request.lease_id,
            )
        )
        return request.lease_id

    def _keep_places(self) -> None:
        """The dispatcher is full: waiting steps cannot start even if granted, but a
        waiter that stops asking loses its place in the slots' queues once its waiter TTL
        lapses. Those due to ask renew their places without taking a slot."""
        if self.limiter is None:
            return
        for step_key, request in self._waiting.items():
            if self._must_ask_again(step_key):
                result = self.limiter.try_acquire(request, place_only=True)
                self._ask_again_after(step_key, result.retry_in_ms)

    def _ask_again_after(self, step_key: str, retry_in_ms: int | None) -> None:
        """A refused waiter asks again after ``retry_in_ms`` even without a wake-up: none
        comes when a holder crashes, and a waiter that stops asking loses its place."""
        if retry_in_ms is None:
            return
        ask_at = self.context.clock.now() + retry_in_ms / 1000
        self._ask_again_by[step_key] = ask_at
        self._try_slots_at(ask_at)

    def _must_ask_again(self, step_key: str) -> bool:
        """Whether a waiter must ask even though its slot is full: its place in the
        queue (or a crashed holder's lease) is due for another look."""
        ask_by = self._ask_again_by.get(step_key)
        if ask_by is None or self.context.clock.now() >= ask_by:
            return True
        self._try_slots_at(ask_by)
        return False

    def _try_slots_at(self, at: float) -> None:
        if self._next_slot_try_at is None or at < self._next_slot_try_at:
            self._next_slot_try_at = at

    def _show_wait(self, step: PlannedStep, blocks: Sequence[SlotBlock]) -> None:
        holders = tuple(
            sorted(f"{h.run_id[:8]}/{h.step_key}" for block in blocks for h in block.holders)
        )
        if self._wait_shown.get(step.key) == holders:
            return
        self._wait_shown[step.key] = holders
        rules = [block.slot.rule for block in blocks]
        self.context.record(
            self._event(
                EventKind.SLOT_WAIT,
                step.key,
                f"waiting for {', '.join(rules)}; held by {', '.join(holders) or 'nobody'}",
                slots=[block.slot.name for block in blocks],
                rules=rules,
                holders=[
                    {"run_id": h.run_id, "step_key": h.step_key}
                    for block in blocks
                    for h in block.holders
                ],
            )
        )

    def _release(self, lease_id: str, *, wake_self: bool = True) -> None:
        lease = self._leases.pop(lease_id, None)
        if lease is None or self.limiter is None:
            return
        try:
            self.limiter.release(
                lease, skip_wake_key=None if wake_self else self.dispatcher.wake_key
            )
        except LimiterError as exc:
            logger.warning("releasing slots of %s failed: %s", lease.step_key, exc)
        self.context.record(
            self._event(
                EventKind.SLOT_RELEASED,
                lease.step_key,
                "released " + ", ".join(spec.name for spec in lease.slots),
                slots=[spec.name for spec in lease.slots],
                lease_id=lease_id,
            )
        )

    def _schedule_refresh(self) -> None:
        if self.limiter is not None and self._next_refresh_at is None:
            self._next_refresh_at = self.context.clock.now() + self.limiter.lease_ttl_ms / 3000

    def _refresh_leases(self) -> None:
        if self.limiter is None or self._next_refresh_at is None:
            return
        if self.dispatcher.outages_ridden != self._outages_seen:
            # The leases may have lapsed in the outage, or gone with a Redis that lost
            # its data: take them back before anyone else is granted their units.
            self._outages_seen = self.dispatcher.outages_ridden
        elif self.context.clock.now() < self._next_refresh_at:
            return
        for lease in list(self._leases.values()):
            try:
                if not self.limiter.refresh(lease, reclaim=True):
                    logger.warning(
                        "lease of step %s had lapsed; held again for it (its slots %s may "
                        "be over their limits until holders release)",
                        lease.step_key,
                        ", ".join(spec.name for spec in lease.slots),
                    )
            except (LimiterError, BrokerConnectionError) as exc:
                # Redis went away between the dispatcher's read and this refresh: the
                # refresh catches up in the pass after the dispatcher has ridden it out.
                logger.warning("refreshing the lease of step %s failed: %s", lease.step_key, exc)
                self._next_refresh_at = self.context.clock.now()
                return
        self._next_refresh_at = None
        if self._leases or self._waiting:
            self._schedule_refresh()

    # -- the loop ---------------------------------------------------------------------

    def _dispatch_ready(self) -> None:
        self._next_slot_try_at = None
        self.lanes.begin_pass()
        pass_slots = _PassSlots()
        at_capacity = False
        for step in self.active.ready_in_order():
            if self.lanes.seen(step):
                at_capacity = True
                if self.lanes.nothing_else_fits(step):
                    break
                continue  # a step of the other kind (async or not) may still start
            lease_id = self._acquire(step, pass_slots)
            if lease_id is None:
                continue
            attempt = self.active.start_attempt(step.key, lease_id)
            self.lanes.started(step, attempt.attempt_id)
            self._start(step, attempt)
        if at_capacity:
            self._keep_places()
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
            self._release(lost.attempt_id)

    def _cancel(self) -> None:
        self.context.instance.storage.set_status(
            self.context.run_id,
            RunStatus.CANCELING,
            expected=(RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING),
        )
        self._record_all(self.active.cancel())
        for request in self._waiting.values():
            if self.limiter is not None:
                self.limiter.withdraw(request)
        self._waiting.clear()
        self._ask_again_by.clear()
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
        if self._next_refresh_at is not None:
            deadlines.append(self._next_refresh_at)
        if self._next_slot_try_at is not None:
            deadlines.append(self._next_slot_try_at)
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
                self._refresh_leases()
        finally:
            self.dispatcher.close()
            for lease_id in list(self._leases):
                self._release(lease_id)
            if self.limiter is not None:
                for request in self._waiting.values():
                    self.limiter.withdraw(request)
            self.context.flush()
        failed = sorted(self.active.keys_in(StepState.FAILED))
        self.context.outcome = (self.active.succeeded, failed)
        return self.active.succeeded
