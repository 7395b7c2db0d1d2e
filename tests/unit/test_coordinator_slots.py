"""How the coordinator talks to the tag limiter: no round trip it can know is wasted."""

from __future__ import annotations

from collections import deque

import pytest

from coreexec import Instance, execute_job, job, step
from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import DispatchingExecutor, Executor, InitExecutorContext, executor
from coreexec.limits import AcquireResult, InMemoryTagLimiter, SlotRequest, TagConcurrencyLimit
from coreexec.plan import PlannedStep

pytestmark = pytest.mark.unit

LIMIT = 2
STEPS = 7


class CountingLimiter(InMemoryTagLimiter):
    """The in-memory limiter, counting the answers it gives."""

    def __init__(self) -> None:
        super().__init__()
        self.granted = 0
        self.refused = 0

    def try_acquire(self, request: SlotRequest) -> AcquireResult:
        result = super().try_acquire(request)
        if result.granted:
            self.granted += 1
        else:
            self.refused += 1
        return result


class OldestFirstDispatcher(StepDispatcher):
    """Holds dispatched attempts as running; each wait() runs the oldest to its end."""

    def __init__(self, run: RunContext, peak: list[int]) -> None:
        self.run = run
        self.peak = peak
        self.running: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self.sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self.sink = sink

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        self.running.append((step, attempt))
        self.peak.append(len(self.running))

    def wait(self, timeout_s: float | None) -> None:
        assert self.sink is not None
        if self.running:
            step, attempt = self.running.popleft()
            self.run.run_step_here(step, attempt, self.sink)


class OldestFirstExecutor(DispatchingExecutor):
    def __init__(self, limiter: CountingLimiter, peak: list[int]) -> None:
        self.tag_limiter = limiter
        self.tag_concurrency_limits = (
            TagConcurrencyLimit(key="database", value="warehouse", limit=LIMIT),
        )
        self.peak = peak

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        return OldestFirstDispatcher(run, self.peak)


def test_a_pass_that_fills_a_slot_asks_for_it_no_more() -> None:
    limiter = CountingLimiter()
    peak: list[int] = []

    @executor(name="oldest_first")
    def oldest_first(context: InitExecutorContext) -> Executor:
        return OldestFirstExecutor(limiter, peak)

    @step(tags={"database": "warehouse"})
    def load() -> int:
        return 1

    @job(executor_def=oldest_first)
    def loads() -> None:
        for number in range(STEPS):
            load.alias(f"load_{number}")()

    result = execute_job(loads, instance=Instance.ephemeral_instance())

    assert result.success
    assert max(peak) == LIMIT
    # Each step asked once and was granted: after a grant took the last unit, the steps
    # behind it waited for the release instead of asking to be refused.
    assert (limiter.granted, limiter.refused) == (STEPS, 0)
