"""``celery_docker_executor``: the celery executor whose steps run in containers.

Dispatch is the celery executor's (queues, priority, limits, heartbeats); the worker
that takes a step's message starts a container for it from the ``docker`` block
(:mod:`workers.docker.launcher`) and supervises it. A step tagged
``coreexec/launcher: in_process`` runs in the worker's own process instead, so one job
mixes light steps on the worker with heavy steps in containers. The ``docker`` block
reaches workers in the run's settings hash in Redis, never in a message; of the
registry it holds only the name of the password's environment variable.
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
from workers.docker.config import DockerConfig, check_steps
from workers.registry import DOCKER, steps_launched_by


class CeleryDockerExecutorConfig(CeleryExecutorConfig):
    """The celery executor's config plus the ``docker`` block."""

    docker: DockerConfig = Field(default_factory=DockerConfig)


class CeleryDockerExecutor(CeleryExecutor):
    """Celery dispatch; steps in containers unless tagged otherwise."""

    def launch_settings(self, run: RunContext) -> RunSettings:
        assert isinstance(self.config, CeleryDockerExecutorConfig)
        docker = self.config.docker
        docker_steps = steps_launched_by(run.plan.steps, DOCKER, DOCKER)
        check_steps(list(run.plan.steps), docker, docker_steps)
        return RunSettings(
            default_launcher=DOCKER, launcher_config={DOCKER: docker.model_dump(mode="json")}
        )


@executor(
    name="celery_docker",
    config_schema=CeleryDockerExecutorConfig,
    requirements=OUT_OF_PROCESS_REQUIREMENTS,
)
def celery_docker_executor(context: InitExecutorContext) -> Executor:
    """Runs each step as a Celery task whose worker starts a container for it."""
    return build_executor(context.config_as(CeleryDockerExecutorConfig), CeleryDockerExecutor)
