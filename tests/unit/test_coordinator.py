"""The coordinator's traffic with the limiter and the run storage: nothing it can know is
wasted, nothing lost."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pytest

from coreexec import Instance, execute_job, job, step
from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.events import Event, EventKind
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import DispatchingExecutor, Executor, InitExecutorContext, executor
from coreexec.limits import (
    AcquireResult,
    InMemoryTagLimiter,
    Lease,
    SlotRequest,
    TagConcurrencyLimit,
)
from coreexec.plan import PlannedStep
from coreexec.storage.memory import InMemoryRunStorage
from coreexec.tags import PRIORITY_TAG

pytestmark = pytest.mark.unit

LIMIT = 2
STEPS = 7
WAREHOUSE = {"database": "warehouse"}


class CountingLimiter(InMemoryTagLimiter):
    """The in-memory limiter, counting the answers it gives."""

    def __init__(self) -> None:
        super().__init__()
        self.granted = 0
        self.refused = 0

    def try_acquire(self, request: SlotRequest, *, place_only: bool = False) -> AcquireResult:
        result = super().try_acquire(request, place_only=place_only)
        if result.granted:
            self.granted += 1
        else:
            self.refused += 1
        return result


class CountingStorage(InMemoryRunStorage):
    """In-memory run storage counting its write transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        self.writes += 1
        super().append_events(run_id, events)

    def stored(self) -> list[tuple[EventKind, str | None]]:
        (run,) = self.list_runs()
        return [(e.kind, e.step_key) for _, e in self.events(run.run_id)]


@dataclass
class Observed:
    """What the dispatcher saw: attempts running at once after each dispatch, and the
    steps the run storage said were queued each time it was about to run one."""

    running: list[int] = field(default_factory=list)
    stored_queued: list[set[str]] = field(default_factory=list)


class OldestFirstDispatcher(StepDispatcher):
    """Holds dispatched attempts as running; each wait() runs the oldest to its end."""

    def __init__(self, run: RunContext, observed: Observed, flush_interval_s: float) -> None:
        self.run = run
        self.observed = observed
        self.storage_flush_interval_s = flush_interval_s
        self.running: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self.sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self.sink = sink

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        self.running.append((step, attempt))
        self.observed.running.append(len(self.running))

    def wait(self, timeout_s: float | None) -> None:
        assert self.sink is not None
        stored = self.run.instance.storage.events(self.run.run_id)
        queued = {e.step_key or "" for _, e in stored if e.kind is EventKind.STEP_QUEUED}
        self.observed.stored_queued.append(queued)
        if self.running:
            step, attempt = self.running.popleft()
            self.run.run_step_here(step, attempt, self.sink)


def run_steps(
    tags: Mapping[str, str],
    *,
    limiter: CountingLimiter | None = None,
    flush_interval_s: float = 0.0,
) -> tuple[CountingStorage, Observed]:
    """Run STEPS independent steps with ``tags`` on an OldestFirstDispatcher (limited to
    LIMIT at once by ``limiter`` when given)."""
    observed = Observed()

    class OldestFirst(DispatchingExecutor):
        def __init__(self) -> None:
            self.tag_limiter = limiter
            self.tag_concurrency_limits = (
                (TagConcurrencyLimit(key="database", value="warehouse", limit=LIMIT),)
                if limiter is not None
                else ()
            )

        def create_dispatcher(self, run: RunContext) -> StepDispatcher:
            return OldestFirstDispatcher(run, observed, flush_interval_s)

    @executor(name="oldest_first")
    def oldest_first(context: InitExecutorContext) -> Executor:
        return OldestFirst()

    @step(tags=dict(tags))
    def part() -> int:
        return 1

    @job(executor_def=oldest_first)
    def parts() -> None:
        for number in range(STEPS):
            part.alias(f"part_{number}")()

    storage = CountingStorage()
    instance = Instance(storage=storage, home=Instance.ephemeral_instance().home)
    assert execute_job(parts, instance=instance).success
    return storage, observed


def test_a_pass_that_fills_a_slot_asks_for_it_no_more() -> None:
    limiter = CountingLimiter()
    _, observed = run_steps(WAREHOUSE, limiter=limiter)

    assert max(observed.running) == LIMIT
    # Each step asked once and was granted: after a grant took the last unit, the steps
    # behind it waited for the release instead of asking to be refused.
    assert (limiter.granted, limiter.refused) == (STEPS, 0)


def test_steps_events_may_wait_for_a_later_write_but_none_is_lost() -> None:
    every_pass, _ = run_steps({})
    held, _ = run_steps({}, flush_interval_s=60.0)

    assert held.stored() == every_pass.stored()
    assert EventKind.RUN_SUCCESS in {kind for kind, _ in held.stored()}
    # Passes that only heard from steps wrote nothing: the run's start, the pass that
    # queued every step, the coordinator's last batch and the run's end.
    assert held.writes == 4 < every_pass.writes


def test_the_coordinators_own_events_are_written_in_the_pass_that_made_them() -> None:
    _, observed = run_steps({}, flush_interval_s=60.0)
    # Before any step ran, the storage already said all of them were queued: a resume
    # after a crash here knows which attempts the dead coordinator had sent.
    assert observed.stored_queued[0] == {f"part_{number}" for number in range(STEPS)}


HOLD_S = 1.0
"""How long the full dispatcher stays full: a few waiter TTLs."""

WAITER_TTL_MS = 300


class OneAtATimeDispatcher(StepDispatcher):
    """Runs one attempt at a time. The untagged step ``busy`` keeps it full for HOLD_S;
    then the dispatcher notes who waits for the warehouse slot and lets the other run
    holding it release it."""

    max_in_flight = 1

    def __init__(self, run: RunContext, limiter: InMemoryTagLimiter, other: Lease) -> None:
        self.run = run
        self.limiter = limiter
        self.other: Lease | None = other
        self.waiting_after_hold: list[str] = []
        self.running: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self.busy_until: float | None = None
        self.sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self.sink = sink

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        self.running.append((step, attempt))
        if step.key == "busy":
            self.busy_until = time.monotonic() + HOLD_S

    def wait(self, timeout_s: float | None) -> None:
        assert self.sink is not None
        if self.busy_until is not None:
            left_s = self.busy_until - time.monotonic()
            if left_s > 0:
                # The step runs on: time passes for the coordinator's timers only.
                threading.Event().wait(min(left_s, timeout_s or left_s))
                return
            self.busy_until = None
            self.waiting_after_hold = [w.step_key for s in self.limiter.slots() for w in s.waiters]
            assert self.other is not None
            self.limiter.release(self.other)
            self.other = None
        if self.running:
            step, attempt = self.running.popleft()
            self.run.run_step_here(step, attempt, self.sink)
        elif timeout_s:
            threading.Event().wait(min(timeout_s, 0.05))


def test_a_waiting_step_keeps_its_place_while_the_dispatcher_is_full() -> None:
    # The warehouse step is refused (another run holds the slot) and waits; the busy
    # step then fills the dispatcher for several waiter TTLs. The waiter must still be
    # queued at the end, or a later waiter of another run would be served before it.
    limiter = InMemoryTagLimiter(waiter_ttl_ms=WAITER_TTL_MS)
    rule = TagConcurrencyLimit(key="database", value="warehouse", limit=1)
    slot = rule.slot_for(WAREHOUSE)
    assert slot is not None
    other = limiter.try_acquire(SlotRequest("other-run", "load", "lease-other", 0, (slot,)))
    assert other.lease is not None
    made: list[OneAtATimeDispatcher] = []

    class OneAtATime(DispatchingExecutor):
        def __init__(self) -> None:
            self.tag_limiter = limiter
            self.tag_concurrency_limits = (rule,)

        def create_dispatcher(self, run: RunContext) -> StepDispatcher:
            assert other.lease is not None
            made.append(OneAtATimeDispatcher(run, limiter, other.lease))
            return made[-1]

    @executor(name="one_at_a_time")
    def one_at_a_time(context: InitExecutorContext) -> Executor:
        return OneAtATime()

    @step(tags={**WAREHOUSE, PRIORITY_TAG: "5"})
    def load() -> int:
        return 1

    @step
    def busy() -> int:
        return 2

    @job(executor_def=one_at_a_time)
    def loads() -> None:
        load()
        busy()

    instance = Instance(storage=InMemoryRunStorage(), home=Instance.ephemeral_instance().home)
    assert execute_job(loads, instance=instance).success
    (dispatcher,) = made
    assert dispatcher.waiting_after_hold == ["load"]
