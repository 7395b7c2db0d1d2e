"""What runs a single step where it runs: the launch layer.

- :mod:`workers.launcher`: the :class:`~workers.launcher.StepLauncher` protocol;
- :mod:`workers.supervisor`: claim, launch or adopt, heartbeat, follow, publish the end;
- :mod:`workers.in_process` and :mod:`workers.docker`: the ``in_process`` and
  ``docker`` launchers; :mod:`workers.registry`: the tag ``coreexec/launcher``;
- :mod:`workers.entrypoint`: the step entrypoint of containers and pods
  (``python -m workers.entrypoint``, ``coreexec-step``);
- ``docker_executor``: the coordinator launches containers itself (no Celery).

Nothing here imports Celery.
"""

from workers.docker.executor import DockerExecutorConfig, docker_executor
from workers.launcher import Launch, LaunchEnd, LaunchRequest, StepLauncher

__all__ = [
    "DockerExecutorConfig",
    "Launch",
    "LaunchEnd",
    "LaunchRequest",
    "StepLauncher",
    "docker_executor",
]
