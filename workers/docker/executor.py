"""``docker_executor``: the coordinator launches one container per step itself (no Celery).

The coordinator keeps the run's state and limits as for every executor; its dispatcher
(:class:`~workers.launching_executor.LaunchDispatcher`) supervises up to
``max_concurrent`` containers at once, each from a thread of its own
(:func:`workers.supervisor.supervise` with the ``docker`` launcher), and hears the steps'
events on the run's Redis stream with blocking reads. The containers' entrypoint needs
that Redis too: ``redis_url`` (default ``COREEXEC_REDIS_URL``), which the launcher
passes into each container.
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
from workers.docker.config import DockerConfig, check_steps
from workers.launching_executor import LaunchingExecutor, LaunchingExecutorConfig
from workers.registry import DOCKER


class DockerExecutorConfig(LaunchingExecutorConfig):
    """Config of ``docker_executor``: the ``docker`` block and the coordinator's limits."""

    docker: DockerConfig = Field(default_factory=DockerConfig)


class DockerExecutor(LaunchingExecutor):
    name = "docker"
    launcher = DOCKER
    config_schema = DockerExecutorConfig
    launched = "containers"

    def launcher_block(self) -> DockerConfig:
        assert isinstance(self.config, DockerExecutorConfig)
        return self.config.docker

    def check_steps(self, run: RunContext, launched: set[str]) -> None:
        check_steps(list(run.plan.steps), self.launcher_block(), launched)


@executor(
    name="docker", config_schema=DockerExecutorConfig, requirements=OUT_OF_PROCESS_REQUIREMENTS
)
def docker_executor(context: InitExecutorContext) -> Executor:
    """Runs each step in a container the coordinator starts, up to max_concurrent."""
    return DockerExecutor.from_context(context)
