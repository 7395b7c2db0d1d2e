"""``ActiveExecution``: the state machine of one run's steps.

pending → ready → in flight → succeeded | failed | waiting to retry → ready ...
A failed step skips everything downstream of it; other branches go on. Ready steps come
out by priority (higher first), then plan order. Events of an attempt that is no longer
the step's current one (a duplicate delivery, a late report from a lost worker) are
ignored, so handling an event twice changes nothing.
"""

from __future__ import annotations

import heapq
import random
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import StrEnum

from coreexec.clock import SYSTEM_CLOCK, Clock
from coreexec.errors import PlanError
from coreexec.events import Event, EventKind
from coreexec.plan import ExecutionPlan, PlannedStep
from coreexec.retry import FailureClass


class StepState(StrEnum):
    PENDING = "pending"
    READY = "ready"
    IN_FLIGHT = "in_flight"
    WAITING_RETRY = "waiting_retry"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"


TERMINAL_STATES = frozenset({StepState.SUCCEEDED, StepState.FAILED, StepState.SKIPPED})


@dataclass(frozen=True)
class StepAttempt:
    """One try of one step. ``attempt_id`` is unique and doubles as the message id."""

    step_key: str
    number: int
    attempt_id: str


def new_attempt_id() -> str:
    return uuid.uuid4().hex


class ActiveExecution:
    """Tracks every step of a run and decides what may start next."""

    def __init__(
        self,
        plan: ExecutionPlan,
        *,
        run_id: str,
        retries_enabled: bool = True,
        clock: Clock = SYSTEM_CLOCK,
        rng: random.Random | None = None,
        already_succeeded: Iterable[str] = (),
        attempts_made: dict[str, int] | None = None,
        marked: frozenset[str] = frozenset(),
    ) -> None:
        """``marked``: steps whose ready ones :meth:`ready_counts` counts apart."""
        self.plan = plan
        self.run_id = run_id
        self.retries_enabled = retries_enabled
        self._clock = clock
        self._rng = rng or random.Random()
        self._state: dict[str, StepState] = {}
        self._unfinished = 0
        """Steps not in a terminal state: is_complete is asked every pass, so it is kept."""
        self._marked = marked
        self._ready = [0, 0]
        """Ready steps not marked, and marked."""
        self._missing: dict[str, int] = {}
        self._heap: list[tuple[int, int, str]] = []
        self._retry_at: dict[str, float] = {}
        self._never_started: dict[str, int] = {}
        """Attempts per step that failed before the step started (an image that could not
        be pulled, a pod never scheduled): they do not use up the user's retries."""
        self._attempts: dict[str, int] = dict(attempts_made or {})
        self._current: dict[str, StepAttempt] = {}
        self._in_flight: dict[str, StepAttempt] = {}
        self._canceled = False
        done = set(already_succeeded)
        for key in done:
            plan.step(key)
        for planned in plan.steps:
            if planned.key in done:
                self._set_state(planned.key, StepState.SUCCEEDED)
                continue
            missing = sum(1 for up in planned.upstream_keys if up not in done)
            self._missing[planned.key] = missing
            self._set_state(planned.key, StepState.PENDING)
            if missing == 0:
                self._make_ready(planned.key)

    def _set_state(self, step_key: str, state: StepState) -> None:
        before = self._state.get(step_key)
        self._state[step_key] = state
        if (before is StepState.READY) != (state is StepState.READY):
            self._ready[step_key in self._marked] += 1 if state is StepState.READY else -1
        self._unfinished += (state not in TERMINAL_STATES) - (
            before is not None and before not in TERMINAL_STATES
        )

    # -- queries ---------------------------------------------------------------------

    def state_of(self, step_key: str) -> StepState:
        return self._state[step_key]

    def keys_in(self, state: StepState) -> list[str]:
        return [key for key, value in self._state.items() if value is state]

    @property
    def in_flight(self) -> dict[str, StepAttempt]:
        """Attempts started and not yet ended, by attempt id."""
        return dict(self._in_flight)

    @property
    def in_flight_count(self) -> int:
        return len(self._in_flight)

    def is_in_flight(self, attempt_id: str) -> bool:
        return attempt_id in self._in_flight

    def ready_counts(self) -> tuple[int, int]:
        """How many ready steps are not marked, and how many are (see ``marked``)."""
        self._promote_due_retries()
        return self._ready[0], self._ready[1]

    def current_attempt(self, step_key: str) -> StepAttempt | None:
        return self._current.get(step_key)

    @property
    def is_complete(self) -> bool:
        return self._unfinished == 0 and not self._in_flight

    @property
    def has_ready(self) -> bool:
        self._promote_due_retries()
        return any(self._state[key] is StepState.READY for _, _, key in self._heap)

    @property
    def succeeded(self) -> bool:
        return self.is_complete and all(
            state is StepState.SUCCEEDED for state in self._state.values()
        )

    @property
    def next_retry_at(self) -> float | None:
        return min(self._retry_at.values(), default=None)

    @property
    def canceled(self) -> bool:
        return self._canceled

    # -- starting steps -------------------------------------------------------------

    def _make_ready(self, key: str) -> None:
        planned = self.plan.step(key)
        self._set_state(key, StepState.READY)
        heapq.heappush(self._heap, (-planned.priority, self.plan.index_of(key), key))

    def _promote_due_retries(self) -> None:
        if not self._retry_at:
            return
        now = self._clock.now()
        for key, due in list(self._retry_at.items()):
            if due <= now:
                del self._retry_at[key]
                self._make_ready(key)

    def ready_in_order(self) -> Iterator[PlannedStep]:
        """Ready steps, highest priority first then plan order.

        Steps the caller does not start (:meth:`start_attempt`) stay ready; stopping
        the iteration early is cheap, so a caller with two free slots reads two steps.
        """
        self._promote_due_retries()
        passed_over: list[tuple[int, int, str]] = []
        seen: set[str] = set()
        current: tuple[int, int, str] | None = None
        try:
            while self._heap:
                current = heapq.heappop(self._heap)
                # Entries of steps that left READY, or a second entry of a retried step,
                # are dropped here rather than searched out of the heap eagerly.
                if self._state[current[2]] is not StepState.READY or current[2] in seen:
                    current = None
                    continue
                seen.add(current[2])
                yield self.plan.step(current[2])
                if self._state[current[2]] is StepState.READY:
                    passed_over.append(current)
                current = None
        finally:
            if current is not None and self._state[current[2]] is StepState.READY:
                passed_over.append(current)
            for item in passed_over:
                heapq.heappush(self._heap, item)

    def start_attempt(self, step_key: str, attempt_id: str | None = None) -> StepAttempt:
        """Mark a ready step in flight under a new attempt (id made now, before dispatch)."""
        if self._state.get(step_key) is not StepState.READY:
            raise PlanError(
                f"step {step_key!r} is {self._state.get(step_key)}, not ready", step_key=step_key
            )
        number = self._attempts.get(step_key, 0) + 1
        self._attempts[step_key] = number
        attempt = StepAttempt(step_key, number, attempt_id or new_attempt_id())
        self._set_state(step_key, StepState.IN_FLIGHT)
        self._current[step_key] = attempt
        self._in_flight[attempt.attempt_id] = attempt
        return attempt

    # -- events -----------------------------------------------------------------------

    def _is_current(self, event: Event) -> StepAttempt | None:
        if event.attempt_id is None:
            return None
        return self._in_flight.get(event.attempt_id)

    def handle(self, event: Event) -> list[Event]:
        """Apply an event reported by whoever runs a step; returns events it implies."""
        if event.step_key is None or event.step_key not in self._state:
            return []
        if event.kind not in (
            EventKind.STEP_SUCCESS,
            EventKind.STEP_FAILURE,
            EventKind.STEP_RETRY_REQUESTED,
        ):
            return []
        attempt = self._is_current(event)
        if attempt is None or attempt.step_key != event.step_key:
            return []
        del self._in_flight[attempt.attempt_id]
        if event.kind is EventKind.STEP_SUCCESS:
            return self._succeed(attempt.step_key)
        if event.kind is EventKind.STEP_RETRY_REQUESTED:
            max_retries = int(event.data.get("max_retries", 0))
            wait_s = float(event.data.get("seconds_to_wait", 0.0))
            if self.retries_enabled and not self._canceled and attempt.number <= max_retries:
                return [self._schedule_retry(attempt, wait_s, "retry requested by the step")]
            return self._fail(
                attempt,
                FailureClass.USER_ERROR,
                f"step {attempt.step_key!r} asked for a retry but has used its "
                f"{max_retries} retries"
                + ("" if self.retries_enabled else " (retries are disabled for this run)"),
                emit=True,
            )
        failure_class = FailureClass(event.data.get("failure_class", FailureClass.USER_ERROR))
        retryable = bool(event.data.get("retryable", True))
        policy = self.plan.step(attempt.step_key).retry_policy
        if (
            self.retries_enabled
            and not self._canceled
            and retryable
            and policy is not None
            and policy.retries(failure_class)
            and self._retries_used(attempt, event) <= policy.max_retries
        ):
            delay_s = policy.delay_for(attempt.number, self._rng)
            return [self._schedule_retry(attempt, delay_s, f"{failure_class.value} failure")]
        return self._fail(attempt, failure_class, event.message, emit=False)

    def _retries_used(self, attempt: StepAttempt, failure: Event) -> int:
        """The attempts of the step that count against its retry policy, this one
        included. An attempt that failed before the step started (its failure says
        ``not_started``) counts only against a budget of its own, as large as the
        policy's, so an unschedulable pod does not use up the step's retries and cannot
        be retried forever either."""
        key = attempt.step_key
        if failure.data.get("not_started"):
            self._never_started[key] = self._never_started.get(key, 0) + 1
            return self._never_started[key]
        return attempt.number - self._never_started.get(key, 0)

    def fail_attempt(
        self, attempt_id: str, failure_class: FailureClass, message: str
    ) -> list[Event]:
        """Fail an attempt for a reason seen by the coordinator (lost heartbeats, no worker).

        Returns the STEP_FAILURE event and what it implies; nothing if the attempt had
        already ended.
        """
        attempt = self._in_flight.get(attempt_id)
        if attempt is None:
            return []
        failure = self._attempt_event(
            EventKind.STEP_FAILURE,
            attempt,
            message,
            failure_class=failure_class.value,
            retryable=failure_class is not FailureClass.CANCELLED,
            error={"type": "CoordinatorDetected", "message": message, "traceback": ""},
        )
        return [failure, *self.handle(failure)]

    def cancel(self) -> list[Event]:
        """Stop starting steps: everything not yet in flight is skipped."""
        self._canceled = True
        events: list[Event] = []
        self._retry_at.clear()
        for key, state in self._state.items():
            if state in (StepState.PENDING, StepState.READY, StepState.WAITING_RETRY):
                self._set_state(key, StepState.SKIPPED)
                events.append(self._event(EventKind.STEP_SKIPPED, key, "run canceled"))
        return events

    # -- transitions ------------------------------------------------------------------

    def _event(self, kind: EventKind, step_key: str, message: str, **data: object) -> Event:
        return Event(
            kind=kind,
            run_id=self.run_id,
            timestamp=self._clock.now(),
            step_key=step_key,
            message=message,
            data=data,
        )

    def _attempt_event(
        self, kind: EventKind, attempt: StepAttempt, message: str, **data: object
    ) -> Event:
        return Event(
            kind=kind,
            run_id=self.run_id,
            timestamp=self._clock.now(),
            step_key=attempt.step_key,
            attempt=attempt.number,
            attempt_id=attempt.attempt_id,
            message=message,
            data=data,
        )

    def _succeed(self, step_key: str) -> list[Event]:
        self._set_state(step_key, StepState.SUCCEEDED)
        if self._canceled:
            return []
        for child in self.plan.downstream_of(step_key):
            if self._state[child] is not StepState.PENDING:
                continue
            self._missing[child] -= 1
            if self._missing[child] == 0:
                self._make_ready(child)
        return []

    def _schedule_retry(self, attempt: StepAttempt, delay_s: float, why: str) -> Event:
        self._set_state(attempt.step_key, StepState.WAITING_RETRY)
        self._retry_at[attempt.step_key] = self._clock.now() + delay_s
        return self._attempt_event(
            EventKind.STEP_UP_FOR_RETRY,
            attempt,
            f"{why}; attempt {attempt.number + 1} in {delay_s:.3f}s",
            delay_s=delay_s,
            next_attempt=attempt.number + 1,
        )

    def _fail(
        self, attempt: StepAttempt, failure_class: FailureClass, message: str, *, emit: bool
    ) -> list[Event]:
        self._set_state(attempt.step_key, StepState.FAILED)
        events: list[Event] = []
        if emit:
            events.append(
                self._attempt_event(
                    EventKind.STEP_FAILURE,
                    attempt,
                    message,
                    failure_class=failure_class.value,
                    retryable=False,
                    final=True,
                )
            )
        stack = list(self.plan.downstream_of(attempt.step_key))
        while stack:
            child = stack.pop()
            if self._state[child] in (StepState.PENDING, StepState.READY):
                self._set_state(child, StepState.SKIPPED)
                events.append(
                    self._event(
                        EventKind.STEP_SKIPPED,
                        child,
                        f"skipped: upstream step {attempt.step_key!r} failed",
                        upstream=attempt.step_key,
                    )
                )
                stack.extend(self.plan.downstream_of(child))
        return events
