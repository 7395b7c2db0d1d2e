"""The in-process executor: every step, one at a time, in the coordinating process.

``async def`` steps are the exception: they run side by side on an event loop in a
thread of this process (:mod:`coreexec.executors.async_lane`), up to
``max_concurrent_async`` at once, while sync steps run one at a time in the coordinating
thread beside them.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coreexec.active_execution import StepAttempt
from coreexec.clock import SystemClock
from coreexec.context import EventSink
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.async_lane import (
    DEFAULT_MAX_CONCURRENT_ASYNC,
    AsyncStepLane,
    async_step_keys,
)
from coreexec.executors.base import (
    DispatchingExecutor,
    Executor,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.limits.setup import NO_LIMITS, RunLimits, build_limiter
from coreexec.plan import PlannedStep


class InProcessConfig(BaseModel):
    """Config of ``in_process_executor``."""

    model_config = ConfigDict(extra="forbid")

    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    tag_concurrency_limits: list[dict[str, Any]] | None = None
    redis_url: str | None = None
    """Makes the tag limits global: shared with every run using this Redis."""
    max_concurrent_async: int = Field(default=DEFAULT_MAX_CONCURRENT_ASYNC, ge=1)
    """``async def`` steps running at once on the run's event loop."""


class InProcessDispatcher(StepDispatcher):
    """Runs each dispatched sync attempt inside :meth:`wait`, so events stream as they
    happen; async attempts go to the run's event loop."""

    max_in_flight = 1

    def __init__(
        self, run: RunContext, *, max_concurrent_async: int = DEFAULT_MAX_CONCURRENT_ASYNC
    ) -> None:
        self.run = run
        self._queue: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self._sink: EventSink | None = None
        self._woken = threading.Event()
        self._turn_given = False
        """The last wait passed async news on although a sync step was waiting."""
        keys = async_step_keys(run)
        self._lane = AsyncStepLane(run, keys, self._woken.set) if keys else None
        if keys:
            self.async_keys = keys
            self.max_async_in_flight = max_concurrent_async

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        if self._lane is not None:
            self._lane.start()

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        if self._lane is not None and self._lane.runs(step):
            self._lane.submit(step, attempt)
        else:
            self._queue.append((step, attempt))

    def wait(self, timeout_s: float | None) -> None:
        assert self._sink is not None, "start() first"
        heard = self._lane is not None and self._lane.drain(self._sink)
        # Async steps reported: let the coordinator start what they made ready, but not
        # twice in a row ahead of a waiting sync step.
        if heard and (not self._queue or not self._turn_given):
            self._turn_given = bool(self._queue)
            return
        self._turn_given = False
        if self._queue:
            step, attempt = self._queue.popleft()
            self.run.run_step_here(step, attempt, self._sink)
            return
        self._idle(timeout_s)

    def _idle(self, timeout_s: float | None) -> None:
        """Nothing to run here: wait for a retry to come due, async news or a cancel."""
        assert self._sink is not None
        if not isinstance(self.run.clock, SystemClock):
            self.run.clock.sleep(timeout_s or 0.0)
        elif self._lane is None:
            self.run.cancel_requested.wait(timeout_s)
        else:
            self._woken.clear()
            if not self._lane.has_news:
                self._woken.wait(timeout_s)
            self._lane.drain(self._sink)

    def lost_attempts(self) -> Sequence[LostAttempt]:
        return self._lane.lost_attempts() if self._lane is not None else ()

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        if self._lane is not None:
            self._lane.terminate(attempt.attempt_id for attempt in attempts)

    def wake(self) -> None:
        if self._lane is None:
            self.run.cancel_requested.set()
        else:
            self._woken.set()

    def close(self) -> None:
        if self._lane is not None:
            self._lane.close()


class InProcessExecutor(DispatchingExecutor):
    def __init__(
        self,
        *,
        retries_enabled: bool,
        limits: RunLimits = NO_LIMITS,
        max_concurrent_async: int = DEFAULT_MAX_CONCURRENT_ASYNC,
    ) -> None:
        self.retries_enabled = retries_enabled
        self.tag_limiter, self.tag_concurrency_limits = limits.limiter, limits.rules
        self.max_concurrent_async = max_concurrent_async

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        return InProcessDispatcher(run, max_concurrent_async=self.max_concurrent_async)


@executor(name="in_process", config_schema=InProcessConfig)
def in_process_executor(context: InitExecutorContext) -> Executor:
    """Runs every step serially in the coordinating process (async steps side by side
    on an event loop beside the sync ones)."""
    config = context.config_as(InProcessConfig)
    return InProcessExecutor(
        retries_enabled=config.retries.is_enabled,
        limits=build_limiter(
            config.tag_concurrency_limits,
            path="run_config.execution.config.tag_concurrency_limits",
            redis_url=config.redis_url,
        ),
        max_concurrent_async=config.max_concurrent_async,
    )
