"""``k8s_job_executor``: the coordinator launches one Kubernetes Job per step itself.

No Celery: the coordinator keeps the run's state and limits as for every executor, and
its dispatcher supervises up to ``max_concurrent`` Jobs at once, each from a thread of
its own (:func:`workers.supervisor.supervise` with the ``k8s`` launcher), as
``docker_executor`` does with containers (:mod:`workers.launching_executor`). The pods'
entrypoint reports on the run's Redis stream: the pods need ``COREEXEC_REDIS_URL`` (and
the storage settings) through ``k8s.env_secrets`` / ``k8s.env_config_maps`` /
``k8s.env_vars``.
"""

from __future__ import annotations

from pydantic import Field

from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    OUT_OF_PROCESS_REQUIREMENTS,
    Executor,
    InitExecutorContext,
    executor,
)
from workers.k8s.config import K8sConfig
from workers.k8s.steps import check_steps
from workers.launching_executor import LaunchingExecutor, LaunchingExecutorConfig
from workers.registry import K8S


class K8sJobExecutorConfig(LaunchingExecutorConfig):
    """Config of ``k8s_job_executor``: the ``k8s`` block and the coordinator's limits."""

    k8s: K8sConfig = Field(default_factory=K8sConfig)


class K8sJobExecutor(LaunchingExecutor):
    name = "k8s_job"
    launcher = K8S
    config_schema = K8sJobExecutorConfig
    launched = "pods"

    def launcher_block(self) -> K8sConfig:
        assert isinstance(self.config, K8sJobExecutorConfig)
        return self.config.k8s

    def check_steps(self, run: RunContext, launched: set[str]) -> None:
        check_steps(run.job, run.plan.steps, self.launcher_block(), launched)


@executor(
    name="k8s_job", config_schema=K8sJobExecutorConfig, requirements=OUT_OF_PROCESS_REQUIREMENTS
)
def k8s_job_executor(context: InitExecutorContext) -> Executor:
    """Runs each step as a Kubernetes Job the coordinator creates, up to max_concurrent."""
    return K8sJobExecutor.from_context(context)
