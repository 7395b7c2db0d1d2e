"""The Docker half of the launch layer: one container per step attempt.

- :mod:`workers.docker.config`: the ``docker`` block of the executors' config and the
  per-step tag ``coreexec-docker/config``;
- :mod:`workers.docker.containers`: container names, labels, what a container is given;
- :mod:`workers.docker.launcher`: the ``docker`` :class:`~workers.launcher.StepLauncher`;
- :mod:`workers.docker.executor`: ``docker_executor`` (the coordinator launches
  containers itself, no Celery);
- :mod:`workers.docker.sweep`: removing containers of finished runs by label.

Only the launcher and the sweep import the Docker SDK (the ``docker`` extra).
"""
