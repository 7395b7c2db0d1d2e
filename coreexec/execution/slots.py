"""A run's slots: what its coordinator asks of the tag limiter, and what it holds.

:class:`StepSlots` asks for a ready step's slots, keeps the place of a step that waits
for them (asking again when its place is due for another look, with no wake-up to say
so), refreshes the leases it holds and releases them when their attempts end. It
records what a reader of the run wants to see of it: a slot taken, a wait and who it
waits for, a slot released.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from coreexec.active_execution import new_attempt_id
from coreexec.errors import BrokerConnectionError, LimiterError
from coreexec.events import Event, EventKind
from coreexec.execution.run_context import RunContext
from coreexec.limits.base import (
    AcquireResult,
    Lease,
    SlotBlock,
    SlotRequest,
    TagLimiter,
)
from coreexec.limits.rules import SlotSpec, TagConcurrencyLimit, slots_for
from coreexec.plan import PlannedStep

logger = logging.getLogger(__name__)


@dataclass
class SlotPass:
    """What one dispatch pass learned of the slots: refused to a step (``blocked``), or
    filled by a grant (``full``). Steps after it in the pass need not ask for those."""

    blocked: set[str] = field(default_factory=set)
    full: set[str] = field(default_factory=set)


class StepSlots:
    """One run's slot bookkeeping: its waiting requests, its leases and their timers.

    With no limiter (or no rule matching a step's tags) every step gets its lease id at
    once and nothing is held.
    """

    def __init__(
        self,
        run: RunContext,
        limiter: TagLimiter | None,
        rules: Sequence[TagConcurrencyLimit],
        *,
        wake_key: str | None,
    ) -> None:
        self.context = run
        self.limiter = limiter
        self.rules = tuple(rules)
        self.wake_key = wake_key
        self._leases: dict[str, Lease] = {}
        self._waiting: dict[str, SlotRequest] = {}
        self._ask_again_by: dict[str, float] = {}
        self._wait_shown: dict[str, tuple[str, ...]] = {}
        self._next_refresh_at: float | None = None
        self._outages_seen = 0
        self._next_try_at: float | None = None
        self._slots_by_step: dict[str, tuple[tuple[SlotSpec, ...], frozenset[str]]] = {}

    # -- asking -------------------------------------------------------------------------

    def begin_pass(self) -> SlotPass:
        """Start a dispatch pass: the steps that ask in it set when to try again."""
        self._next_try_at = None
        return SlotPass()

    def acquire(self, step: PlannedStep, pass_slots: SlotPass) -> str | None:
        """A lease id for ``step`` (its future attempt id), or None while it must wait."""
        # Called for every ready step in every pass: the checks stay inline, and a step's
        # slots (fixed by the rules and its tags) are worked out once.
        if self.limiter is None:
            return new_attempt_id()
        known = self._slots_by_step.get(step.key)
        if known is None:
            specs = slots_for(self.rules, step.tags)
            known = self._slots_by_step[step.key] = (specs, frozenset(spec.name for spec in specs))
        specs, names = known
        if not specs:
            return new_attempt_id()
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
            wake_key=self.wake_key,
        )
        result = self.limiter.try_acquire(request)
        if result.lease is None:
            self._refused(step, request, result, pass_slots)
            return None
        pass_slots.full.update(result.full)
        self._granted(request, result.lease)
        return request.lease_id

    def _refused(
        self,
        step: PlannedStep,
        request: SlotRequest,
        result: AcquireResult,
        pass_slots: SlotPass,
    ) -> None:
        self._waiting[step.key] = request
        pass_slots.blocked.update(block.slot.name for block in result.blocked_on)
        self._show_wait(step, result.blocked_on)
        self._ask_again_after(step.key, result.retry_in_ms)

    def _granted(self, request: SlotRequest, lease: Lease) -> None:
        self._waiting.pop(request.step_key, None)
        self._ask_again_by.pop(request.step_key, None)
        self._wait_shown.pop(request.step_key, None)
        self._leases[request.lease_id] = lease
        self._schedule_refresh()
        names = [spec.name for spec in request.slots]
        self.context.record(
            self._event(
                EventKind.SLOT_ACQUIRED,
                request.step_key,
                "acquired " + ", ".join(names),
                slots=names,
                lease_id=request.lease_id,
            )
        )

    def keep_places(self) -> None:
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
        self._try_at(ask_at)

    def _must_ask_again(self, step_key: str) -> bool:
        """Whether a waiter must ask even though its slot is full: its place in the
        queue (or a crashed holder's lease) is due for another look."""
        ask_by = self._ask_again_by.get(step_key)
        if ask_by is None or self.context.clock.now() >= ask_by:
            return True
        self._try_at(ask_by)
        return False

    def _try_at(self, at: float) -> None:
        if self._next_try_at is None or at < self._next_try_at:
            self._next_try_at = at

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

    def stop_waiting(self) -> None:
        """Give up every waiting step's place (the run was canceled)."""
        if self.limiter is not None:
            for request in self._waiting.values():
                self.limiter.withdraw(request)
        self._waiting.clear()
        self._ask_again_by.clear()

    # -- holding ------------------------------------------------------------------------

    def release(self, lease_id: str, *, wake_self: bool = True) -> None:
        """Release the slots of the attempt ``lease_id`` (none held: nothing to do).

        ``wake_self=False`` when this run makes a dispatch pass anyway: a wake-up to
        itself would only add a pass."""
        lease = self._leases.pop(lease_id, None)
        if lease is None or self.limiter is None:
            return
        try:
            self.limiter.release(lease, skip_wake_key=None if wake_self else self.wake_key)
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

    def refresh(self, outages_ridden: int) -> None:
        """Refresh the leases held when due, or at once after the dispatcher rode out
        another Redis outage (``outages_ridden`` counts them)."""
        if self.limiter is None or self._next_refresh_at is None:
            return
        if outages_ridden != self._outages_seen:
            # The leases may have lapsed in the outage, or gone with a Redis that lost
            # its data: take them back before anyone else is granted their units.
            self._outages_seen = outages_ridden
        elif self.context.clock.now() < self._next_refresh_at:
            return
        if not self._refresh_all(self.limiter):
            return
        self._next_refresh_at = None
        if self._leases or self._waiting:
            self._schedule_refresh()

    def _refresh_all(self, limiter: TagLimiter) -> bool:
        """Refresh every lease held; False when Redis could not be reached."""
        for lease in list(self._leases.values()):
            try:
                if not limiter.refresh(lease, reclaim=True):
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
                return False
        return True

    def close(self) -> None:
        """The run ended: release every lease still held and withdraw every waiter."""
        for lease_id in list(self._leases):
            self.release(lease_id)
        if self.limiter is not None:
            for request in self._waiting.values():
                self.limiter.withdraw(request)

    # -- timers -------------------------------------------------------------------------

    def deadlines(self) -> list[float]:
        """When the coordinator must look again even if nothing happens: leases to
        refresh, a waiter whose place is due for another look."""
        return [at for at in (self._next_refresh_at, self._next_try_at) if at is not None]

    def _event(self, kind: EventKind, step_key: str, message: str, **data: object) -> Event:
        return Event(
            kind=kind,
            run_id=self.context.run_id,
            timestamp=self.context.clock.now(),
            step_key=step_key,
            message=message,
            data=data,
        )
