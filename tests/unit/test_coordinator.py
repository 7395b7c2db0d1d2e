"""The coordinator's traffic with the limiter and the run storage: nothing it can know is
wasted, nothing lost."""

from __future__ import annotations

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
from coreexec.limits import AcquireResult, InMemoryTagLimiter, SlotRequest, TagConcurrencyLimit
from coreexec.plan import PlannedStep
from coreexec.storage.memory import InMemoryRunStorage

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

    def try_acquire(self, request: SlotRequest) -> AcquireResult:
        result = super().try_acquire(request)
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
