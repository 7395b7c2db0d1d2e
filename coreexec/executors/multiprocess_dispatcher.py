"""The multiprocess executor's dispatcher: it drives a :class:`ProcessPool` for a run.

Step attempts go to idle workers (the pool grows on demand up to ``max_concurrent``);
what workers report comes back through :meth:`MultiprocessDispatcher.wait`, which also
runs the steps tagged ``coreexec/executor: in_process`` in the coordinating process and
passes on what the run's async steps, on their event loop in this process, reported. A
worker that dies mid-step loses that attempt as an infrastructure failure.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing import connection as mp_connection
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import ConfigError, LauncherError, RequirementError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.async_lane import (
    DEFAULT_MAX_CONCURRENT_ASYNC,
    AsyncStepLane,
    async_step_keys,
)
from coreexec.executors.process_pool import (
    PoolSpec,
    ProcessPool,
    WorkerExited,
    WorkerHandle,
    WorkerMessage,
)
from coreexec.executors.step_worker import WorkerInit, step_worker_main
from coreexec.limits.wake_listener import RedisWakeListener
from coreexec.plan import ExecutionPlan, PlannedStep
from coreexec.retry import FailureClass
from coreexec.tags import EXECUTOR_TAG

logger = logging.getLogger(__name__)

TERMINATE_GRACE_S = 5.0
"""How long a cancelled step may clean up after SIGTERM before it is killed."""

MAX_START_FAILURES = 3
"""Workers in a row that die before they are ready before the pool gives up."""

IN_PROCESS = "in_process"
MULTIPROCESS = "multiprocess"


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


def widest_level(
    plan: ExecutionPlan, done: frozenset[str], elsewhere: frozenset[str] = frozenset()
) -> int:
    """Most worker steps (not yet done, not ``elsewhere``) at one depth of the plan: how
    many workers to start with. The pool grows on demand when a plan's shape runs more
    at once."""
    depth: dict[str, int] = {}
    per_depth: dict[int, int] = {}
    for step in plan.steps:  # upstream steps come first
        level = 1 + max((depth[key] for key in step.upstream_keys), default=0)
        depth[step.key] = level
        if step.key not in done and step.key not in elsewhere and not runs_in_process(step):
            per_depth[level] = per_depth.get(level, 0) + 1
    return max(per_depth.values(), default=0)


class MultiprocessDispatcher(StepDispatcher):
    """Hands step attempts to a :class:`ProcessPool` and relays what the workers report."""

    def __init__(
        self,
        run: RunContext,
        *,
        max_concurrent: int,
        pool_spec: PoolSpec,
        wake_listener: RedisWakeListener | None = None,
        max_concurrent_async: int = DEFAULT_MAX_CONCURRENT_ASYNC,
    ) -> None:
        self.run = run
        self.max_in_flight = max_concurrent
        keys = async_step_keys(run)
        self._lane = AsyncStepLane(run, keys, self.wake) if keys else None
        if keys:
            self.async_keys = keys
            self.max_async_in_flight = max_concurrent_async
        self._max_concurrent = max_concurrent
        self._pool_spec = pool_spec
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
            width = widest_level(self.run.plan, self.run.already_succeeded, self.async_keys)
            self._target = min(self._max_concurrent, width)
            if self._target:
                self._pool = ProcessPool(
                    step_worker_main,
                    self._worker_init(),
                    spec=self._pool_spec,
                    name=f"coreexec-{self.run.run_id[:8]}",
                )
                # One now; the rest in the first wait(), once the first steps are on their way.
                self._fill_pool(limit=1)
            if self._wake_listener is not None:
                self._wake_listener.start(self.wake)
            if self._lane is not None:
                self._lane.start()
        except BaseException:
            self.close()
            raise

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        if self._lane is not None and self._lane.runs(step):
            self._lane.submit(step, attempt)
            return
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
        if self._lane is not None and self._lane.drain(self._sink):
            timeout_s = 0.0
        if self._local:
            self._pump(0.0)
            step, attempt = self._local.popleft()
            self._run_here(step, attempt)
            return
        self._pump(timeout_s)
        if self._lane is not None:
            self._lane.drain(self._sink)

    def lost_attempts(self) -> Sequence[LostAttempt]:
        lost, self._lost = self._lost, []
        if self._lane is not None:
            lost.extend(self._lane.lost_attempts())
        return lost

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        self._canceling = True
        ids = {attempt.attempt_id for attempt in attempts}
        if self._lane is not None:
            self._lane.terminate(ids)
        for queue in (self._local, self._pending):
            for item in [item for item in queue if item[1].attempt_id in ids]:
                queue.remove(item)
                self._lose(
                    item[1],
                    FailureClass.CANCELLED,
                    "cancelled: run canceled before the step started",
                )
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
            if self._lane is not None:
                self._lane.close()
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
                    task,
                    FailureClass.CANCELLED,
                    f"cancelled: step stopped, run canceled ({worker.name})",
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
        self.run.run_step_here(step, attempt, self._sink)
