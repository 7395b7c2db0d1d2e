"""The multiprocess executor: steps run in a pool of worker processes kept for the run.

Each worker loads the job once by reference and then runs step after step; the
coordinator sends it identifiers and the planned step, never code, and values travel
through the run's IO manager (files under the instance's storage directory). Step events
come back over the worker's pipe as they happen and reach the coordinator's sink only
from :meth:`~coreexec.executors.multiprocess_dispatcher.MultiprocessDispatcher.wait`.

A worker that dies mid-step (SIGKILL, segfault, the out-of-memory killer) fails that
attempt as an infrastructure failure, its retry policy decides, and the pool starts a
replacement. A step tagged ``coreexec/executor: in_process`` runs in the coordinating
process instead, inside ``wait``. ``async def`` steps run side by side on an event loop
in the coordinating process (:mod:`coreexec.executors.async_lane`), up to
``max_concurrent_async`` of them on top of ``max_concurrent`` sync steps in the pool.

This module holds what users name: the executor definition, its config and the
executor. The dispatcher that drives the pool is in
:mod:`coreexec.executors.multiprocess_dispatcher`, the code a worker process runs in
:mod:`coreexec.executors.step_worker`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.async_lane import DEFAULT_MAX_CONCURRENT_ASYNC
from coreexec.executors.base import (
    OUT_OF_PROCESS_REQUIREMENTS,
    DispatchingExecutor,
    Executor,
    InitExecutorContext,
    RetriesConfig,
    TagLimitsConfig,
    executor,
)
from coreexec.executors.multiprocess_dispatcher import MultiprocessDispatcher, runs_in_process
from coreexec.executors.one_of import OneOfConfig
from coreexec.executors.process_pool import PoolSpec, StartMethod
from coreexec.limits.redis_limiter import RedisTagLimiter
from coreexec.limits.setup import RunLimits
from coreexec.limits.wake_listener import RedisWakeListener

# -- config ---------------------------------------------------------------------------


class ForkserverConfig(BaseModel):
    """``forkserver: {preload_modules: [...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preload_modules: list[str] | None = None
    """Modules the fork server imports once for every worker. Default: coreexec's
    worker and the job's own module."""


class StartMethodConfig(OneOfConfig):
    """``start_method: {forkserver: {...}}`` (the default) or ``{spawn: {}}``."""

    choices = ("forkserver", "spawn")

    forkserver: ForkserverConfig | None = None
    spawn: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _spawn_bare(self) -> StartMethodConfig:
        if self.spawn:
            raise ValueError("spawn takes no options; write spawn: {}")
        return self

    @property
    def method(self) -> StartMethod:
        return StartMethod.SPAWN if self.spawn is not None else StartMethod.FORKSERVER


class MultiprocessConfig(TagLimitsConfig):
    """Config of ``multiprocess_executor``."""

    max_concurrent: int | None = Field(default=None, ge=0)
    """Steps running at once (worker processes); None or 0: the number of usable CPUs."""
    max_concurrent_async: int = Field(default=DEFAULT_MAX_CONCURRENT_ASYNC, ge=1)
    """``async def`` steps running at once on the coordinating process's event loop."""
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    start_method: StartMethodConfig = Field(default_factory=StartMethodConfig)

    @property
    def worker_count(self) -> int:
        if self.max_concurrent:
            return self.max_concurrent
        return usable_cpus()


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def default_preload(job_reference: str) -> tuple[str, ...]:
    """This module (which imports the worker's code) and the job's module (when it has a
    module name)."""
    modules = [__name__]
    module = job_reference.rpartition(":")[0]
    if module and not module.endswith(".py") and "/" not in module:
        modules.append(module)
    return tuple(modules)


# -- the executor -------------------------------------------------------------------------


class MultiprocessExecutor(DispatchingExecutor):
    """Steps on a reused pool of worker processes, at most ``max_concurrent`` at once."""

    def __init__(self, config: MultiprocessConfig) -> None:
        self.config = config
        self.retries_enabled = config.retries.is_enabled
        self._wake_listener: RedisWakeListener | None = None

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        for step in run.plan.steps:
            runs_in_process(step)  # a bad executor tag fails before any process starts
        return MultiprocessDispatcher(
            run,
            max_concurrent=self.config.worker_count,
            max_concurrent_async=self.config.max_concurrent_async,
            pool_spec=self._pool_spec(run),
            wake_listener=self._wake_listener,
        )

    def _pool_spec(self, run: RunContext) -> PoolSpec:
        start_method = self.config.start_method
        method = start_method.method
        if method is StartMethod.SPAWN:
            return PoolSpec(start_method=method)
        forkserver = start_method.forkserver
        if forkserver is not None and forkserver.preload_modules is not None:
            preload = tuple(forkserver.preload_modules)
        else:
            preload = default_preload(run.plan.job_reference or "")
        return PoolSpec(start_method=method, preload_modules=preload)

    @contextmanager
    def run_scope(self, run: RunContext) -> Iterator[RunLimits]:
        limits = self.config.run_limits()
        if isinstance(limits.limiter, RedisTagLimiter):
            self._wake_listener = RedisWakeListener(
                limits.limiter, run.run_id, self.config.limiter_namespace
            )
        try:
            yield limits
        finally:
            self._wake_listener = None
            limits.close()


@executor(
    name="multiprocess",
    config_schema=MultiprocessConfig,
    requirements=OUT_OF_PROCESS_REQUIREMENTS,
    description=(
        "Runs steps in a pool of worker processes kept for the run, at most max_concurrent "
        "at once, with per-run or (with redis_url) global tag concurrency limits."
    ),
)
def multiprocess_executor(context: InitExecutorContext) -> Executor:
    """Runs steps in a reused pool of worker processes."""
    return MultiprocessExecutor(context.config_as(MultiprocessConfig))
