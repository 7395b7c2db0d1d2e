"""The multiprocess executor: steps run in a pool of worker processes kept for the run.

Each worker loads the job once by reference and then runs step after step; the
coordinator sends it identifiers and the planned step, never code, and values travel
through the run's IO manager (files under the instance's storage directory). Step events
come back over the worker's pipe as they happen and reach the coordinator's sink only
from :meth:`MultiprocessDispatcher.wait`.

A worker that dies mid-step (SIGKILL, segfault, the out-of-memory killer) fails that
attempt as an infrastructure failure, its retry policy decides, and the pool starts a
replacement. A step tagged ``coreexec/executor: in_process`` runs in the coordinating
process instead, inside ``wait``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
import threading
import traceback
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import ConfigError, CoreExecError, LauncherError, RequirementError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    DispatchingExecutor,
    Executor,
    ExecutorRequirement,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.executors.process_pool import (
    PoolSpec,
    ProcessPool,
    StartMethod,
    WorkerChannel,
    WorkerExited,
    WorkerHandle,
    WorkerMessage,
)
from coreexec.io_managers import IOManager
from coreexec.limits.base import TagLimiter
from coreexec.limits.keys import PREFIX
from coreexec.limits.rules import TagConcurrencyLimit
from coreexec.plan import ExecutionPlan, PlannedStep
from coreexec.reference import load_job
from coreexec.retry import FailureClass
from coreexec.step_runner import StepRun, run_step
from coreexec.tags import EXECUTOR_TAG

if TYPE_CHECKING:
    from coreexec.limits.redis_limiter import RedisTagLimiter

logger = logging.getLogger(__name__)

TERMINATE_GRACE_S = 5.0
"""How long a cancelled step may clean up after SIGTERM before it is killed."""

MAX_START_FAILURES = 3
"""Workers in a row that die before they are ready before the pool gives up."""

WAKE_BLOCK_S = 5.0
"""Longest blocking read of the Redis wake-up stream (stop() ends it at once)."""

IN_PROCESS = "in_process"
MULTIPROCESS = "multiprocess"
MULTIPROCESS_REQUIREMENTS = frozenset(
    {
        ExecutorRequirement.RECONSTRUCTABLE_JOB,
        ExecutorRequirement.NON_EPHEMERAL_INSTANCE,
        ExecutorRequirement.PERSISTENT_OUTPUTS,
    }
)


# -- config ---------------------------------------------------------------------------


def _null_means_selected(value: Any) -> Any:
    # YAML ``spawn:`` with nothing after it is None, and means "spawn with defaults".
    if isinstance(value, dict):
        return {key: ({} if item is None else item) for key, item in value.items()}
    return value


class ForkserverConfig(BaseModel):
    """``forkserver: {preload_modules: [...]}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    preload_modules: list[str] | None = None
    """Modules the fork server imports once for every worker. Default: coreexec's
    worker and the job's own module."""


class StartMethodConfig(BaseModel):
    """``start_method: {forkserver: {...}}`` (the default) or ``{spawn: {}}``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    forkserver: ForkserverConfig | None = None
    spawn: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _selected(cls, value: Any) -> Any:
        return _null_means_selected(value)

    @model_validator(mode="after")
    def _one_of(self) -> StartMethodConfig:
        if self.forkserver is not None and self.spawn is not None:
            raise ValueError("give either forkserver: {...} or spawn: {}, not both")
        if self.spawn:
            raise ValueError("spawn takes no options; write spawn: {}")
        return self

    @property
    def method(self) -> StartMethod:
        return StartMethod.SPAWN if self.spawn is not None else StartMethod.FORKSERVER


class MultiprocessConfig(BaseModel):
    """Config of ``multiprocess_executor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int | None = Field(default=None, ge=0)
    """Steps running at once (worker processes); None or 0: the number of usable CPUs."""
    tag_concurrency_limits: list[TagConcurrencyLimit] | None = None
    """Rules such as ``{key: database, value: warehouse, limit: 2}``; per run unless
    ``redis_url`` is given, then shared by every run using that Redis."""
    redis_url: str | None = None
    """Redis holding the tag limiter's slots, so the limits hold across runs."""
    limiter_namespace: str = Field(default="default", min_length=1)
    """Runs share limits only within one namespace of one Redis."""
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


# -- the worker process ---------------------------------------------------------------


@dataclass(frozen=True)
class WorkerInit:
    """What every worker of a run gets once, when it starts."""

    run_id: str
    job_reference: str
    run_config: dict[str, Any]
    run_tags: dict[str, str]
    io_manager: IOManager
    environ: dict[str, str]
    """The coordinator's environment: a forked worker would otherwise see the fork
    server's, as it was when the server started."""


def step_worker_main(channel: WorkerChannel, init: WorkerInit) -> None:
    """A worker's life: load the job, then run each step attempt it is sent.

    Messages to the coordinator: ``("ready", pid)``, ``("init_failed", text)``,
    ``("event", Event)`` and ``("crashed", attempt_id, text)`` when the runner itself
    failed. Messages from it: ``("run", PlannedStep, StepAttempt)`` and ``("stop",)``.
    """
    if os.environ != init.environ:
        os.environ.clear()
        os.environ.update(init.environ)
    try:
        job = load_job(init.job_reference)
    except Exception as exc:
        channel.send(("init_failed", f"loading job {init.job_reference!r} failed: {exc}"))
        return
    channel.send(("ready", os.getpid()))

    def emit(event: Event) -> None:
        channel.send(("event", event))

    while True:
        message = channel.recv()
        if message is None or message[0] != "run":
            return
        planned: PlannedStep = message[1]
        attempt: StepAttempt = message[2]
        try:
            run_step(
                StepRun(
                    run_id=init.run_id,
                    job=job,
                    step=planned,
                    attempt=attempt,
                    run_config=init.run_config,
                    io_manager=init.io_manager,
                    run_tags=init.run_tags,
                ),
                emit,
            )
        except Exception:
            channel.send(("crashed", attempt.attempt_id, traceback.format_exc()))


# -- wake-ups from the Redis limiter --------------------------------------------------


class RedisWakeListener:
    """Turns slot wake-ups sent to a Redis stream into dispatcher wake-ups.

    The dispatcher blocks on its workers' pipes and cannot block on Redis as well, so a
    thread does the blocking read of this run's wake-up stream: when a step of another
    run releases a slot this run waits for, the coordinator tries again at once.
    """

    def __init__(self, limiter: RedisTagLimiter, run_id: str, namespace: str) -> None:
        self.limiter = limiter
        self.wake_key = f"{PREFIX}:{namespace}:wake:{run_id}"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_wake: Callable[[], None]) -> None:
        # Taken before any request can wait, so no wake-up is missed.
        cursor = self.limiter.wake_cursor(self.wake_key)
        self._thread = threading.Thread(
            target=self._listen,
            args=(cursor, on_wake),
            name=f"coreexec-wake-{self.wake_key.rpartition(':')[2][:8]}",
            daemon=True,
        )
        self._thread.start()

    def _listen(self, cursor: str, on_wake: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                newest = self.limiter.wait_for_wake(self.wake_key, cursor, WAKE_BLOCK_S)
            except CoreExecError as exc:
                if not self._stop.is_set():
                    logger.warning("slot wake-ups from %s failed: %s", self.wake_key, exc)
                    self._stop.wait(WAKE_BLOCK_S)
                continue
            if newest is not None and not self._stop.is_set():
                cursor = newest
                on_wake()

    def stop(self) -> None:
        """End the thread and delete the stream; never raises."""
        self._stop.set()
        client = self.limiter.client
        try:
            if self._thread is not None:
                client.xadd(self.wake_key, {"stop": "1"})  # ends the blocking read now
                self._thread.join(WAKE_BLOCK_S + 1.0)
            client.delete(self.wake_key)
        except Exception as exc:  # a Redis error must not mask how the run ended
            logger.warning("cleaning up wake-up stream %s failed: %s", self.wake_key, exc)


# -- the dispatcher -------------------------------------------------------------------


@dataclass(frozen=True)
class Assigned:
    """The attempt a worker was sent (``WorkerHandle.task``)."""

    step: PlannedStep
    attempt: StepAttempt


def runs_in_process(step: PlannedStep) -> bool:
    """True for a step tagged ``coreexec/executor: in_process``."""
    value = step.tags.get(EXECUTOR_TAG)
    if value is None or value == MULTIPROCESS:
        return False
    if value == IN_PROCESS:
        return True
    raise ConfigError(
        f"step {step.key!r}: tag {EXECUTOR_TAG}={value!r} is not understood by the "
        f"multiprocess executor; use {IN_PROCESS!r} (run it in the coordinating process) "
        f"or {MULTIPROCESS!r}",
        path=f"{step.key}.tags.{EXECUTOR_TAG}",
    )


def widest_level(plan: ExecutionPlan, done: frozenset[str]) -> int:
    """Most worker steps (not yet done) at one depth of the plan: how many workers to
    start with. The pool grows on demand when a plan's shape runs more at once."""
    depth: dict[str, int] = {}
    per_depth: dict[int, int] = {}
    for step in plan.steps:  # upstream steps come first
        level = 1 + max((depth[key] for key in step.upstream_keys), default=0)
        depth[step.key] = level
        if step.key not in done and not runs_in_process(step):
            per_depth[level] = per_depth.get(level, 0) + 1
    return max(per_depth.values(), default=0)


def default_preload(job_reference: str) -> tuple[str, ...]:
    """This module and the job's module (when it has a module name)."""
    modules = [__name__]
    module = job_reference.rpartition(":")[0]
    if module and not module.endswith(".py") and "/" not in module:
        modules.append(module)
    return tuple(modules)


class MultiprocessDispatcher(StepDispatcher):
    """Hands step attempts to a :class:`ProcessPool` and relays what the workers report."""

    def __init__(
        self,
        run: RunContext,
        *,
        max_concurrent: int,
        start_method: StartMethodConfig,
        wake_listener: RedisWakeListener | None = None,
    ) -> None:
        self.run = run
        self.max_in_flight = max_concurrent
        self._max_concurrent = max_concurrent
        self._start_method = start_method
        self._wake_listener = wake_listener
        self.wake_key = wake_listener.wake_key if wake_listener is not None else None
        self._sink: EventSink | None = None
        self._pool: ProcessPool | None = None
        self._target = 0
        """Workers the pool should have; grows up to ``max_in_flight`` as steps need them."""
        self._local: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self._pending: deque[tuple[PlannedStep, StepAttempt]] = deque()
        self._lost: list[LostAttempt] = []
        self._start_failures = 0
        self._broken: str | None = None
        self._init_error: str | None = None
        self._canceling = False
        self._wake_r: int | None = None
        self._wake_w: int | None = None

    # -- StepDispatcher ---------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        if getattr(multiprocessing.process.current_process(), "_inheriting", False):
            # Another library's child process importing our caller's main module.
            raise RequirementError(
                "a run was started while a new process was importing the main module; "
                "put the code that starts runs under `if __name__ == '__main__':`"
            )
        self._sink = sink
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        # The coordinator calls close() only once start() has returned.
        try:
            width = widest_level(self.run.plan, self.run.already_succeeded)
            self._target = min(self._max_concurrent, width)
            if self._target:
                self._pool = ProcessPool(
                    step_worker_main,
                    self._worker_init(),
                    spec=self._pool_spec(),
                    name=f"coreexec-{self.run.run_id[:8]}",
                )
                # One now; the rest in the first wait(), once the first steps are on their way.
                self._fill_pool(limit=1)
            if self._wake_listener is not None:
                self._wake_listener.start(self.wake)
        except BaseException:
            self.close()
            raise

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        if runs_in_process(step):
            self._local.append((step, attempt))
            return
        if self._broken is not None:
            self._lose(attempt, FailureClass.INFRASTRUCTURE, self._broken)
            return
        self._pending.append((step, attempt))
        self._assign_pending()

    def wait(self, timeout_s: float | None) -> None:
        assert self._sink is not None, "start() first"
        if self._local:
            self._pump(0.0)
            step, attempt = self._local.popleft()
            self._run_here(step, attempt)
            return
        self._pump(timeout_s)

    def lost_attempts(self) -> Sequence[LostAttempt]:
        lost, self._lost = self._lost, []
        return lost

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        self._canceling = True
        ids = {attempt.attempt_id for attempt in attempts}
        for queue in (self._local, self._pending):
            for item in [item for item in queue if item[1].attempt_id in ids]:
                queue.remove(item)
                self._lose(item[1], FailureClass.CANCELLED, "run canceled before the step started")
        if self._pool is None:
            return
        for worker in self._pool.workers:
            if worker.task is not None and worker.task.attempt.attempt_id in ids:
                self._pool.stop(worker, TERMINATE_GRACE_S)

    def wake(self) -> None:
        if self._wake_w is not None:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"\0")

    def close(self) -> None:
        try:
            if self._wake_listener is not None:
                self._wake_listener.stop()
        finally:
            try:
                if self._pool is not None:
                    self._pool.close(stop_message=("stop",), grace_s=TERMINATE_GRACE_S)
            finally:
                for fd in (self._wake_r, self._wake_w):
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                self._wake_r = self._wake_w = None

    # -- workers ------------------------------------------------------------------------

    def _worker_init(self) -> WorkerInit:
        reference = self.run.plan.job_reference or self.run.job.reference
        if reference is None:
            raise RequirementError(
                f"job {self.run.job.name!r} has no 'package.module:attribute' reference, so "
                "worker processes cannot load it; define it at module level and run it by "
                "reference"
            )
        io_manager = self.run.io_manager
        if not getattr(io_manager, "persistent", False):
            raise RequirementError(
                f"the multiprocess executor needs an IO manager other processes can read; "
                f"{type(io_manager).__name__} keeps outputs in this process. Use the "
                "instance's filesystem IO manager (the default of execute_job)"
            )
        init = WorkerInit(
            run_id=self.run.run_id,
            job_reference=reference,
            run_config=dict(self.run.run_config),
            run_tags=dict(self.run.run_tags),
            io_manager=io_manager,
            environ=dict(os.environ),
        )
        try:
            pickle.dumps(init)
        except Exception as exc:
            raise RequirementError(
                f"the run's IO manager or run config cannot be sent to worker processes "
                f"({exc!r}); use picklable values"
            ) from exc
        return init

    def _pool_spec(self) -> PoolSpec:
        method = self._start_method.method
        if method is StartMethod.SPAWN:
            return PoolSpec(start_method=method)
        forkserver = self._start_method.forkserver
        if forkserver is not None and forkserver.preload_modules is not None:
            preload = tuple(forkserver.preload_modules)
        else:
            preload = default_preload(self.run.plan.job_reference or "")
        return PoolSpec(start_method=method, preload_modules=preload)

    def _fill_pool(self, limit: int | None = None) -> None:
        pool = self._pool
        if pool is None or self._canceling or self._broken is not None:
            return
        target = self._target if limit is None else min(limit, self._target)
        try:
            while self._active_workers() < target:
                pool.start_worker()
        except LauncherError as exc:
            self._give_up(str(exc))

    def _active_workers(self) -> int:
        if self._pool is None:
            return 0
        return sum(1 for worker in self._pool.workers if not worker.stopping)

    def _grow(self) -> bool:
        """One more worker, when more steps run at once than the plan's shape suggested."""
        before = self._active_workers()
        if before >= self._max_concurrent:
            return False
        self._target = max(self._target, before + 1)
        self._fill_pool()
        return self._active_workers() > before

    def _assign_pending(self) -> None:
        if self._pool is None:
            while self._pending:
                _, attempt = self._pending.popleft()
                self._lose(attempt, FailureClass.INFRASTRUCTURE, "no worker pool for this run")
            return
        while self._pending:
            idle = [w for w in self._pool.workers if w.task is None and not w.stopping]
            if not idle:
                if not self._grow():
                    return
                continue
            worker = next((w for w in idle if w.ready), idle[0])
            step, attempt = self._pending.popleft()
            worker.task = Assigned(step, attempt)
            if not self._pool.send(worker, ("run", step, attempt)):
                # Its pipe broke: it is dying. Take the step back for another worker.
                worker.task = None
                self._pool.kill(worker)
                self._pending.appendleft((step, attempt))

    # -- hearing back ---------------------------------------------------------------------

    def _pump(self, timeout_s: float | None) -> None:
        assert self._wake_r is not None, "start() first"
        wake_fds = [self._wake_r]
        self._fill_pool()
        if self._pool is None:
            mp_connection.wait(wake_fds, timeout_s)
        else:
            for item in self._pool.poll(timeout_s, wake_fds):
                if isinstance(item, WorkerMessage):
                    self._on_message(item.worker, item.body)
                else:
                    self._on_exit(item)
            self._fill_pool()
            self._assign_pending()
        with contextlib.suppress(OSError):
            while os.read(self._wake_r, 512):
                pass

    def _on_message(self, worker: WorkerHandle, body: Any) -> None:
        assert self._sink is not None
        kind = body[0]
        if kind == "event":
            event: Event = body[1]
            task = worker.task
            if (
                task is not None
                and event.kind in STEP_ATTEMPT_ENDINGS
                and event.attempt_id == task.attempt.attempt_id
            ):
                worker.task = None
            self._sink(event)
        elif kind == "ready":
            worker.ready = True
            self._start_failures = 0
        elif kind == "crashed":
            task = worker.task
            if task is not None and task.attempt.attempt_id == body[1]:
                worker.task = None
                self._lose(
                    task.attempt,
                    FailureClass.INFRASTRUCTURE,
                    f"the step runner failed in {worker.name}: {body[2]}",
                )
        elif kind == "init_failed":
            self._init_error = str(body[1])
        else:
            logger.warning("ignoring unknown message %r from %s", kind, worker.name)

    def _on_exit(self, item: WorkerExited) -> None:
        worker = item.worker
        assigned: Assigned | None = worker.task
        worker.task = None
        if assigned is not None and not worker.ready and not worker.stopping:
            # It died before it could read the step: the step never ran; another takes it.
            self._pending.appendleft((assigned.step, assigned.attempt))
            assigned = None
        if assigned is not None:
            task = assigned.attempt
            if worker.stopping and self._canceling:
                self._lose(
                    task, FailureClass.CANCELLED, f"step stopped: run canceled ({worker.name})"
                )
            else:
                self._lose(
                    task,
                    FailureClass.INFRASTRUCTURE,
                    f"worker process {worker.pid} running step {task.step_key!r} "
                    f"(attempt {task.number}) {item.description}",
                )
        if worker.ready or self._canceling:
            return
        self._start_failures += 1
        if self._start_failures >= MAX_START_FAILURES:
            why = self._init_error or f"each worker process {item.description} before it was ready"
            self._give_up(
                f"worker processes cannot start: {why}; check that the job's module imports "
                "in a fresh process (PYTHONPATH, installed packages)"
            )

    def _give_up(self, why: str) -> None:
        """No more workers: every step waiting for one, and every later one, fails."""
        self._broken = why
        while self._pending:
            _, attempt = self._pending.popleft()
            self._lose(attempt, FailureClass.INFRASTRUCTURE, why)

    def _lose(self, attempt: StepAttempt, failure_class: FailureClass, message: str) -> None:
        self._lost.append(LostAttempt(attempt.attempt_id, failure_class, message))

    # -- in-process steps ---------------------------------------------------------------

    def _run_here(self, step: PlannedStep, attempt: StepAttempt) -> None:
        assert self._sink is not None
        outcome = run_step(
            StepRun(
                run_id=self.run.run_id,
                job=self.run.job,
                step=step,
                attempt=attempt,
                run_config=self.run.run_config,
                io_manager=self.run.io_manager,
                run_tags=self.run.run_tags,
                clock=self.run.clock,
            ),
            self._sink,
        )
        if outcome.error is not None:
            self.run.step_errors[step.key] = outcome.error


# -- the executor -------------------------------------------------------------------------


class MultiprocessExecutor(DispatchingExecutor):
    """Steps on a reused pool of worker processes, at most ``max_concurrent`` at once."""

    def __init__(self, config: MultiprocessConfig) -> None:
        self.config = config
        self.retries_enabled = config.retries.is_enabled
        self.tag_concurrency_limits = tuple(config.tag_concurrency_limits or ())
        self._wake_listener: RedisWakeListener | None = None

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        for step in run.plan.steps:
            runs_in_process(step)  # a bad executor tag fails before any process starts
        return MultiprocessDispatcher(
            run,
            max_concurrent=self.config.worker_count,
            start_method=self.config.start_method,
            wake_listener=self._wake_listener,
        )

    def execute(self, run: RunContext) -> None:
        from coreexec.execution.coordinator import Coordinator

        limiter, closer = self._make_limiter(run)
        try:
            Coordinator(
                run,
                self.create_dispatcher(run),
                retries_enabled=self.retries_enabled,
                limiter=limiter,
                limit_rules=self.tag_concurrency_limits,
            ).run()
        finally:
            self._wake_listener = None
            if closer is not None:
                closer()

    def _make_limiter(self, run: RunContext) -> tuple[TagLimiter | None, Any]:
        if not self.tag_concurrency_limits:
            return None, None
        if self.config.redis_url is None:
            from coreexec.limits.memory import InMemoryTagLimiter

            return InMemoryTagLimiter(), None
        from coreexec.limits.redis_limiter import RedisTagLimiter

        limiter = RedisTagLimiter.from_url(
            self.config.redis_url, namespace=self.config.limiter_namespace
        )
        self._wake_listener = RedisWakeListener(limiter, run.run_id, self.config.limiter_namespace)
        return limiter, limiter.close


@executor(
    name="multiprocess",
    config_schema=MultiprocessConfig,
    requirements=MULTIPROCESS_REQUIREMENTS,
    description=(
        "Runs steps in a pool of worker processes kept for the run, at most max_concurrent "
        "at once, with per-run or (with redis_url) global tag concurrency limits."
    ),
)
def multiprocess_executor(context: InitExecutorContext) -> Executor:
    """Runs steps in a reused pool of worker processes."""
    config = context.config
    assert isinstance(config, MultiprocessConfig)
    return MultiprocessExecutor(config)
