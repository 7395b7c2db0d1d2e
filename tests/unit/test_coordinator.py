"""The coordinator's traffic with the limiter and the run storage: nothing it can know is
wasted, nothing lost."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import pytest

from coreexec import Instance, execute_job, job, step
from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.events import Event, EventKind
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import DispatchingExecutor, Executor, InitExecutorContext, executor
from coreexec.limits import AcquireResult, InMemoryTagLimiter, SlotRequest, TagConcurrencyLimit
from coreexec.plan import PlannedStep
from coreexec.storage.memory import InMemoryRunStorage

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

    def __init__(self, run: RunContext, peak: list[int], flush_interval_s: float = 0.0) -> None:
        self.run = run
        self.storage_flush_interval_s = flush_interval_s
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
    def __init__(
        self, limiter: CountingLimiter, peak: list[int], flush_interval_s: float = 0.0
    ) -> None:
        self.tag_limiter = limiter
        self.tag_concurrency_limits = (
            TagConcurrencyLimit(key="database", value="warehouse", limit=LIMIT),
        )
        self.peak = peak
        self.flush_interval_s = flush_interval_s

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        return OldestFirstDispatcher(run, self.peak, self.flush_interval_s)


class CountingStorage(InMemoryRunStorage):
    """In-memory run storage counting its write transactions."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def append_events(self, run_id: str, events: Sequence[Event]) -> None:
        self.writes += 1
        super().append_events(run_id, events)


def run_loads(limiter: CountingLimiter, peak: list[int], **executor_args: float) -> CountingStorage:
    """Run a job of STEPS steps tagged database=warehouse on an OldestFirstExecutor."""

    @executor(name="oldest_first")
    def oldest_first(context: InitExecutorContext) -> Executor:
        return OldestFirstExecutor(limiter, peak, **executor_args)

    @step(tags={"database": "warehouse"})
    def load() -> int:
        return 1

    @job(executor_def=oldest_first)
    def loads() -> None:
        for number in range(STEPS):
            load.alias(f"load_{number}")()

    storage = CountingStorage()
    result = execute_job(
        loads, instance=Instance(storage=storage, home=Instance.ephemeral_instance().home)
    )
    assert result.success
    return storage


def test_a_pass_that_fills_a_slot_asks_for_it_no_more() -> None:
    limiter = CountingLimiter()
    peak: list[int] = []
    run_loads(limiter, peak)

    assert max(peak) == LIMIT
    # Each step asked once and was granted: after a grant took the last unit, the steps
    # behind it waited for the release instead of asking to be refused.
    assert (limiter.granted, limiter.refused) == (STEPS, 0)


class QueuedSeen(OldestFirstDispatcher):
    """Notes, before running each step, which steps the run storage says were queued."""

    def __init__(self, run: RunContext, flush_interval_s: float, seen: list[set[str]]) -> None:
        super().__init__(run, [], flush_interval_s)
        self.seen = seen

    def wait(self, timeout_s: float | None) -> None:
        stored = self.run.instance.storage.events(self.run.run_id)
        self.seen.append({e.step_key or "" for _, e in stored if e.kind is EventKind.STEP_QUEUED})
        super().wait(timeout_s)


def run_fanout(flush_interval_s: float) -> tuple[CountingStorage, list[set[str]]]:
    """STEPS independent untagged steps; (storage, queued steps stored at each wait)."""
    seen: list[set[str]] = []

    class Fanout(DispatchingExecutor):
        def create_dispatcher(self, run: RunContext) -> StepDispatcher:
            return QueuedSeen(run, flush_interval_s, seen)

    @executor(name="fanout")
    def fanout(context: InitExecutorContext) -> Executor:
        return Fanout()

    @step
    def part() -> int:
        return 1

    @job(executor_def=fanout)
    def parts() -> None:
        for number in range(STEPS):
            part.alias(f"part_{number}")()

    storage = CountingStorage()
    instance = Instance(storage=storage, home=Instance.ephemeral_instance().home)
    assert execute_job(parts, instance=instance).success
    return storage, seen


def stored(storage: CountingStorage) -> list[tuple[EventKind, str | None]]:
    (run,) = storage.list_runs()
    return [(e.kind, e.step_key) for _, e in storage.events(run.run_id)]


def test_steps_events_may_wait_for_a_later_write_but_none_is_lost() -> None:
    every_pass, _ = run_fanout(0.0)
    held, _ = run_fanout(60.0)

    assert stored(held) == stored(every_pass)
    assert EventKind.RUN_SUCCESS in {kind for kind, _ in stored(held)}
    # Passes that only heard from steps wrote nothing: the run's start, the pass that
    # queued every step, the coordinator's last batch and the run's end.
    assert held.writes == 4 < every_pass.writes


def test_the_coordinators_own_events_are_written_in_the_pass_that_made_them() -> None:
    _, seen = run_fanout(60.0)
    # Before any step ran, the storage already said all of them were queued: a resume
    # after a crash here knows which attempts the dead coordinator had sent.
    assert seen[0] == {f"part_{number}" for number in range(STEPS)}
