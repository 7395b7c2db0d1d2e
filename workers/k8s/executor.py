"""``k8s_job_executor``: the coordinator launches one Kubernetes Job per step itself.

No Celery: the coordinator keeps the run's state and limits as for every executor, and
its dispatcher supervises up to ``max_concurrent`` Jobs at once, each from a thread of
its own (:func:`workers.supervisor.supervise` with the ``k8s`` launcher), as
``docker_executor`` does with containers. The pods' entrypoint reports on the run's
Redis stream: the pods need ``COREEXEC_REDIS_URL`` (and the storage settings) through
``k8s.env_secrets`` / ``k8s.env_config_maps`` / ``k8s.env_vars``.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from coreexec.attempt_runtime import AttemptRuntime
from coreexec.context import EventSink
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    DispatchingExecutor,
    Executor,
    ExecutorRequirement,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.limits.setup import build_limiter
from coreexec.transport import keys
from coreexec.transport.run_settings import RunSettings
from workers.docker.executor import DockerDispatcher, DockerExecutorConfig, required_redis_url
from workers.k8s.config import K8sConfig
from workers.k8s.steps import check_steps
from workers.registry import K8S, check_launchers, launcher_name


class K8sJobExecutorConfig(BaseModel):
    """Config of ``k8s_job_executor``: the ``k8s`` block and the coordinator's limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    k8s: K8sConfig = Field(default_factory=K8sConfig)
    max_concurrent: int = Field(default=4, ge=1)
    """Jobs running at once (so pods of a wide run are not all created at once)."""
    tag_concurrency_limits: list[dict[str, Any]] | None = None
    """Global (shared by every run on the Redis), like the celery executor's."""
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    redis_url: str | None = None
    """Redis of the run's events (default ``COREEXEC_REDIS_URL``)."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)


def launch_settings(config: K8sConfig, heartbeat_interval_s: float) -> RunSettings:
    """The run's settings: the ``k8s`` launcher by default, with the block."""
    return RunSettings(
        heartbeat_interval_s=heartbeat_interval_s,
        default_launcher=K8S,
        launcher_config={K8S: config.model_dump(mode="json")},
    )


class K8sDispatcher(DockerDispatcher):
    """DockerDispatcher's thread pool of supervisors, with the ``k8s`` launcher."""

    def __init__(self, run: RunContext, config: K8sJobExecutorConfig, runtime: AttemptRuntime):
        pool_config = DockerExecutorConfig(
            max_concurrent=config.max_concurrent,
            heartbeat_interval_s=config.heartbeat_interval_s,
        )
        super().__init__(run, pool_config, runtime)
        self.k8s = config.k8s
        self._owner = f"k8s_job_executor@{socket.gethostname()}:{os.getpid()}"

    def start(self, sink: EventSink) -> None:
        super().start(sink)
        # The pool's settings named the docker launcher; the run's are the k8s block.
        settings = launch_settings(self.k8s, self.config.heartbeat_interval_s)
        key = keys.run_settings(self.run.run_id)
        self.runtime.client.hset(key, mapping=settings.to_hash())  # type: ignore[arg-type]


class K8sJobExecutor(DispatchingExecutor):
    def __init__(self, config: K8sJobExecutorConfig, redis_url: str) -> None:
        self.config = config
        self.redis_url = redis_url
        self.retries_enabled = config.retries.is_enabled
        self.tag_limiter, self.tag_concurrency_limits = build_limiter(
            config.tag_concurrency_limits,
            path="k8s_job_executor.tag_concurrency_limits",
            redis_url=redis_url,
        )

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        steps = list(run.plan.steps)
        check_launchers(steps, K8S)
        k8s_steps = {step.key for step in steps if launcher_name(step, K8S) == K8S}
        check_steps(run.job, steps, self.config.k8s, k8s_steps)
        return K8sDispatcher(run, self.config, AttemptRuntime(self.redis_url))


@executor(
    name="k8s_job",
    config_schema=K8sJobExecutorConfig,
    requirements=(
        ExecutorRequirement.RECONSTRUCTABLE_JOB,
        ExecutorRequirement.NON_EPHEMERAL_INSTANCE,
        ExecutorRequirement.PERSISTENT_OUTPUTS,
    ),
)
def k8s_job_executor(context: InitExecutorContext) -> Executor:
    """Runs each step as a Kubernetes Job the coordinator creates, up to max_concurrent."""
    config = context.config
    assert isinstance(config, K8sJobExecutorConfig)
    return K8sJobExecutor(config, required_redis_url(config.redis_url, "k8s_job", "pods"))
