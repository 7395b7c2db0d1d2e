"""What ``docker_executor`` and ``k8s_job_executor`` share: the coordinator launches one
container or Kubernetes Job per step itself (no Celery).

The coordinator keeps the run's state and limits as for every executor; the dispatcher
(:class:`LaunchDispatcher`) supervises up to ``max_concurrent`` launches at once, each
from a thread of its own (:func:`workers.supervisor.supervise` with the run's default
launcher), and hears the steps' events on the run's Redis stream with blocking reads.
The launched steps' entrypoint reports on that Redis too: ``redis_url`` (default
``COREEXEC_REDIS_URL``).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
from abc import abstractmethod
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from coreexec.active_execution import StepAttempt
from coreexec.attempt_runner import AttemptIds, AttemptResult, PreparedAttempt
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.context import EventSink
from coreexec.errors import ConfigError, CoreExecError
from coreexec.execution.dispatcher import STREAMED_STORAGE_FLUSH_S, LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import DispatchingExecutor, InitExecutorContext, RetriesConfig
from coreexec.instance import REDIS_URL_ENV
from coreexec.limits.setup import build_limiter
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.transport import keys
from coreexec.transport.redis_events import RedisEventStream
from coreexec.transport.run_settings import RunSettings
from workers.launcher import LaunchRequest, StepLauncher
from workers.registry import launcher_for, steps_launched_by
from workers.supervisor import supervise

log = logging.getLogger(__name__)

READ_COUNT = 1000
MAX_BLOCK_S = 30.0


class LaunchingExecutorConfig(BaseModel):
    """The fields ``docker_executor`` and ``k8s_job_executor`` share."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int = Field(default=4, ge=1)
    """Steps launched at once (containers, Jobs: a wide run does not start them all)."""
    tag_concurrency_limits: list[dict[str, Any]] | None = None
    """Global (shared by every run on the Redis), like the celery executor's."""
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    redis_url: str | None = None
    """Redis of the run's events (default ``COREEXEC_REDIS_URL``)."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)


class LaunchDispatcher(StepDispatcher):
    """Supervises one launch (container, Job) per attempt from a thread pool; hears the
    attempts' events on the run's Redis stream."""

    def __init__(
        self,
        run: RunContext,
        config: LaunchingExecutorConfig,
        runtime: AttemptRuntime,
        *,
        executor_name: str,
        settings: RunSettings,
    ):
        if run.plan.job_reference is None:
            raise ConfigError(
                f"run {run.run_id} has no job reference; containers load the job by it, so "
                "run the job by 'package.module:attribute'"
            )
        self.run = run
        self.config = config
        self.runtime = runtime
        self.max_in_flight = config.max_concurrent
        self.stream = RedisEventStream(runtime.client, run.run_id, url=runtime.redis_url)
        self.wake_key = self.stream.key
        self.storage_flush_interval_s = STREAMED_STORAGE_FLUSH_S
        self._reference = run.plan.job_reference
        self._settings = settings
        self._owner = f"{executor_name}_executor@{socket.gethostname()}:{os.getpid()}"
        self._sink: EventSink | None = None
        self._last_id = "0-0"
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._launchers: dict[str, tuple[StepLauncher, LaunchRequest]] = {}
        self._lost: list[LostAttempt] = []

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        client = self.runtime.client
        key = keys.run_settings(self.run.run_id)
        client.hset(key, mapping=self._settings.to_hash())  # type: ignore[arg-type]
        client.expire(key, keys.FINISHED_RUN_TTL_S * 7)
        self._last_id = self.stream.last_id()
        self._pool = ThreadPoolExecutor(
            self.config.max_concurrent, f"coreexec-{self._settings.default_launcher}"
        )

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        assert self._pool is not None, "start() first"
        ids = AttemptIds(
            self.run.run_id, step.key, attempt.number, attempt.attempt_id, self._reference
        )
        # Only attempts their coordinator issued can be claimed (a forged message runs
        # nothing): record this one before its supervisor claims it.
        self.runtime.claims.issue(self.run.run_id, [attempt])
        future = self._pool.submit(self._supervise, ids)
        future.add_done_callback(lambda done: self._finished(ids, done))

    def _choose(self, runtime: AttemptRuntime, prepared: PreparedAttempt) -> StepLauncher:
        launcher = launcher_for(runtime, prepared)
        with self._lock:
            self._launchers[prepared.ids.attempt_id] = (
                launcher,
                LaunchRequest(prepared, self._owner),
            )
        return launcher

    def _supervise(self, ids: AttemptIds) -> AttemptResult:
        try:
            return supervise(self.runtime, ids, owner=self._owner, choose=self._choose)
        finally:
            with self._lock:
                self._launchers.pop(ids.attempt_id, None)

    def _finished(self, ids: AttemptIds, done: Future[AttemptResult]) -> None:
        exc = done.exception()
        if exc is None and done.result().status != "dropped":
            return
        why = f"{exc}" if exc is not None else "its attempt was claimed by another process"
        with self._lock:
            self._lost.append(
                LostAttempt(
                    ids.attempt_id,
                    FailureClass.INFRASTRUCTURE,
                    f"supervising the container of step {ids.step_key!r} failed: {why}",
                )
            )
        self.wake()

    def wait(self, timeout_s: float | None) -> None:
        assert self._sink is not None, "start() first"
        limit = MAX_BLOCK_S if timeout_s is None else min(timeout_s, MAX_BLOCK_S)
        with self._lock:
            if self._lost:
                limit = 0.0
        block = math.ceil(limit * 1000) if limit > 0.0005 else None
        entries = self.stream.read(self._last_id, block, READ_COUNT)
        while True:
            for entry in entries:
                self._last_id = entry.entry_id
                if entry.wake == "cancel":
                    self.run.cancel_requested.set()
                if entry.event is not None:
                    self._sink(entry.event)
            if len(entries) < READ_COUNT:
                return
            entries = self.stream.read(self._last_id, None, READ_COUNT)

    def lost_attempts(self) -> Sequence[LostAttempt]:
        with self._lock:
            lost, self._lost = self._lost, []
        return lost

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        for attempt in attempts:
            with self._lock:
                found = self._launchers.get(attempt.attempt_id)
            if found is None:
                continue
            launcher, request = found
            try:
                launch = launcher.find(request)
                if launch is not None:
                    launcher.terminate(launch)
            except CoreExecError as exc:
                log.warning("cannot stop the container of %s: %s", attempt.step_key, exc)

    def wake(self) -> None:
        try:
            self.stream.publish_wake("wake")
        except CoreExecError as exc:
            log.warning("could not wake the coordinator of run %s: %s", self.run.run_id, exc)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        try:
            self.stream.expire()
        except CoreExecError as exc:
            log.warning("could not set the expiry of %s: %s", self.stream.key, exc)


class LaunchingExecutor(DispatchingExecutor):
    """The coordinator launches each step with the ``launcher`` of ``name``_executor."""

    name: ClassVar[str]
    """The executor's name (``docker``, ``k8s_job``): in errors and supervisor names."""
    launcher: ClassVar[str]
    """The launcher of steps without a ``coreexec/launcher`` tag."""
    config_schema: ClassVar[type[LaunchingExecutorConfig]]
    launched: ClassVar[str]
    """What reports on the run's stream (``containers``, ``pods``), for errors."""

    @classmethod
    def from_context(cls, context: InitExecutorContext) -> LaunchingExecutor:
        """The executor of an ``@executor`` factory; its Redis is required."""
        config = context.config_as(cls.config_schema)
        return cls(config, required_redis_url(config.redis_url, cls.name, cls.launched))

    def __init__(self, config: LaunchingExecutorConfig, redis_url: str) -> None:
        self.config = config
        self.redis_url = redis_url
        self.retries_enabled = config.retries.is_enabled
        limits = build_limiter(
            config.tag_concurrency_limits,
            path=f"{self.name}_executor.tag_concurrency_limits",
            redis_url=redis_url,
        )
        self.tag_limiter, self.tag_concurrency_limits = limits.limiter, limits.rules

    @abstractmethod
    def launcher_block(self) -> BaseModel:
        """The launcher's block of the config (``docker``, ``k8s``)."""

    @abstractmethod
    def check_steps(self, run: RunContext, launched: set[str]) -> None:
        """Before the run: every step's tags parse, and the ``launched`` steps (those the
        default launcher runs) have what they need."""

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        self.check_steps(run, steps_launched_by(run.plan.steps, self.launcher, self.launcher))
        settings = RunSettings(
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            default_launcher=self.launcher,
            launcher_config={self.launcher: self.launcher_block().model_dump(mode="json")},
        )
        return LaunchDispatcher(
            run,
            self.config,
            AttemptRuntime(self.redis_url),
            executor_name=self.name,
            settings=settings,
        )


def required_redis_url(configured: str | None, executor_name: str, who: str) -> str:
    """The Redis of an executor whose launched steps (``who``: containers, pods) report
    on the run's stream: its ``redis_url``, else ``COREEXEC_REDIS_URL``, else an error
    saying how to set one."""
    redis_url = configured or os.environ.get(REDIS_URL_ENV)
    if not redis_url:
        raise ConfigError(
            f"{executor_name}_executor: the {who} report on a Redis stream; set redis_url "
            f"in the executor config or {REDIS_URL_ENV}",
            path=f"{executor_name}_executor.redis_url",
        )
    return redis_url
