"""``celery_k8s_job_executor``: the celery executor whose steps run as Kubernetes Jobs.

Dispatch is the celery executor's (queues, priority, limits, heartbeats); the worker
that takes a step's message creates a Job for it from the ``k8s`` block
(:mod:`workers.k8s.launcher`) and supervises it: one watch per worker process and
namespace serves every step it follows. A step tagged ``coreexec/launcher: in_process``
runs in the worker's own process and one tagged ``docker`` in a container, so one job
mixes all three. The ``k8s`` block reaches workers in the run's settings hash in Redis,
never in a message; it holds no secrets (the pods get those from ``env_secrets``).
"""

from __future__ import annotations

from pydantic import Field

from celery_app.executor import CeleryExecutor, CeleryExecutorConfig, build_executor
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    OUT_OF_PROCESS_REQUIREMENTS,
    Executor,
    InitExecutorContext,
    executor,
)
from coreexec.transport.run_settings import RunSettings
from workers.docker.config import DockerConfig
from workers.docker.config import check_steps as check_docker_steps
from workers.k8s.config import K8sConfig
from workers.k8s.steps import check_steps
from workers.registry import DOCKER, K8S, steps_launched_by


class CeleryK8sJobExecutorConfig(CeleryExecutorConfig):
    """The celery executor's config plus the ``k8s`` block (and, for steps tagged
    ``coreexec/launcher: docker``, an optional ``docker`` block)."""

    k8s: K8sConfig = Field(default_factory=K8sConfig)
    docker: DockerConfig = Field(default_factory=DockerConfig)


class CeleryK8sJobExecutor(CeleryExecutor):
    """Celery dispatch; steps as Kubernetes Jobs unless tagged otherwise."""

    def launch_settings(self, run: RunContext) -> RunSettings:
        assert isinstance(self.config, CeleryK8sJobExecutorConfig)
        k8s, docker = self.config.k8s, self.config.docker
        steps = list(run.plan.steps)
        check_steps(run.job, steps, k8s, steps_launched_by(steps, K8S, K8S))
        config = {K8S: k8s.model_dump(mode="json")}
        docker_steps = steps_launched_by(steps, K8S, DOCKER)
        if docker_steps:
            check_docker_steps(steps, docker, docker_steps)
            config[DOCKER] = docker.model_dump(mode="json")
        return RunSettings(default_launcher=K8S, launcher_config=config)


@executor(
    name="celery_k8s_job",
    config_schema=CeleryK8sJobExecutorConfig,
    requirements=OUT_OF_PROCESS_REQUIREMENTS,
)
def celery_k8s_job_executor(context: InitExecutorContext) -> Executor:
    """Runs each step as a Celery task whose worker creates a Kubernetes Job for it."""
    return build_executor(context.config_as(CeleryK8sJobExecutorConfig), CeleryK8sJobExecutor)
