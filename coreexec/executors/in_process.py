"""The in-process executor: every step, one at a time, in the coordinating process."""

from __future__ import annotations

from collections import deque
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coreexec.active_execution import StepAttempt
from coreexec.clock import SystemClock
from coreexec.context import EventSink
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    DispatchingExecutor,
    Executor,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.limits.base import TagLimiter
from coreexec.limits.rules import TagConcurrencyLimit
from coreexec.limits.setup import build_limiter
from coreexec.plan import PlannedStep


class InProcessConfig(BaseModel):
    """Config of ``in_process_executor``."""

    model_config = ConfigDict(extra="forbid")

    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    tag_concurrency_limits: list[dict[str, Any]] | None = None
    redis_url: str | None = None
    """Makes the tag limits global: shared with every run using this Redis."""


class InProcessDispatcher(StepDispatcher):
    """Runs each dispatched attempt inside :meth:`wait`, so events stream as they happen."""

    max_in_flight = 1

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self._queue: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self._sink: EventSink | None = None

    def start(self, sink: EventSink) -> None:
        self._sink = sink

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        self._queue.append((step, attempt))

    def wait(self, timeout_s: float | None) -> None:
        assert self._sink is not None, "start() first"
        if not self._queue:
            # Nothing to run: wait for a retry to come due or for a cancel request.
            if isinstance(self.run.clock, SystemClock):
                self.run.cancel_requested.wait(timeout_s)
            else:
                self.run.clock.sleep(timeout_s or 0.0)
            return
        step, attempt = self._queue.popleft()
        self.run.run_step_here(step, attempt, self._sink)

    def wake(self) -> None:
        self.run.cancel_requested.set()


class InProcessExecutor(DispatchingExecutor):
    def __init__(
        self,
        *,
        retries_enabled: bool,
        limiter: TagLimiter | None = None,
        limits: tuple[TagConcurrencyLimit, ...] = (),
    ) -> None:
        self.retries_enabled = retries_enabled
        self.tag_limiter = limiter
        self.tag_concurrency_limits = limits

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        return InProcessDispatcher(run)


@executor(name="in_process", config_schema=InProcessConfig)
def in_process_executor(context: InitExecutorContext) -> Executor:
    """Runs every step serially in the coordinating process."""
    config = context.config
    assert isinstance(config, InProcessConfig)
    limiter, rules = build_limiter(
        config.tag_concurrency_limits,
        path="run_config.execution.config.tag_concurrency_limits",
        redis_url=config.redis_url,
    )
    return InProcessExecutor(
        retries_enabled=config.retries.is_enabled, limiter=limiter, limits=rules
    )
