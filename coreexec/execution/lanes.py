"""How many more steps a dispatcher takes in one dispatch pass, by kind.

A dispatcher that runs async steps on an event loop of its own
(:attr:`~coreexec.execution.dispatcher.StepDispatcher.max_async_in_flight`) takes up to
that many of them at once on top of its ``max_in_flight`` other steps. When one kind is
at capacity the coordinator's pass skips that kind's ready steps and goes on looking for
the other kind, but only while ready steps of the other kind remain unseen, so a pass
never reads more of the ready queue than can start.
"""

from __future__ import annotations

from coreexec.active_execution import ActiveExecution
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.plan import PlannedStep


class DispatchLanes:
    """The coordinator's count of in-flight attempts by kind (async on the loop, or not)."""

    def __init__(self, dispatcher: StepDispatcher, active: ActiveExecution) -> None:
        self._dispatcher = dispatcher
        self._active = active
        limit = dispatcher.max_async_in_flight
        self.split = limit is not None and bool(dispatcher.async_keys)
        self._keys = dispatcher.async_keys if self.split else frozenset()
        self._on_loop: set[str] = set()
        self._unseen = [0, 0]

    def begin_pass(self) -> None:
        """Call before reading the ready steps of a pass."""
        if not self.split:
            return
        self._on_loop = {a for a in self._on_loop if self._active.is_in_flight(a)}
        other, on_loop = self._active.ready_counts()
        self._unseen = [other, on_loop]

    def on_loop(self, step: PlannedStep) -> bool:
        return step.key in self._keys

    def seen(self, step: PlannedStep) -> bool:
        """Count ``step`` as read in this pass; True when its kind is at capacity."""
        on_loop = self.on_loop(step)
        if self.split:
            self._unseen[on_loop] -= 1
        return self._full(on_loop)

    def nothing_else_fits(self, step: PlannedStep) -> bool:
        """After :meth:`seen` said ``step``'s kind is full: whether the pass may stop."""
        if not self.split:
            return True
        other = not self.on_loop(step)
        return self._unseen[other] <= 0 or self._full(other)

    def started(self, step: PlannedStep, attempt_id: str) -> None:
        if self.split and self.on_loop(step):
            self._on_loop.add(attempt_id)

    def ended(self, attempt_id: str) -> None:
        self._on_loop.discard(attempt_id)

    def _full(self, on_loop: bool) -> bool:
        if on_loop:
            limit = self._dispatcher.max_async_in_flight
            return limit is not None and len(self._on_loop) >= limit
        capacity = self._dispatcher.max_in_flight
        in_flight = self._active.in_flight_count - len(self._on_loop)
        return capacity is not None and in_flight >= capacity
