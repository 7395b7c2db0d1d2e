"""Launcher names and how a step picks one: the tag ``coreexec/launcher``.

A step's tag names its launcher (``in_process``, ``docker``, ``k8s``); without the tag it runs
where its executor's default says (``in_process`` under ``celery_executor``,
``docker`` under ``celery_docker_executor`` and ``docker_executor``). Other launchers
(``k8s``) add themselves with :func:`register_launcher`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from coreexec.attempt_runner import PreparedAttempt
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.errors import DefinitionError
from coreexec.plan import PlannedStep
from coreexec.tags import LAUNCHER_TAG
from workers.in_process import IN_PROCESS, InProcessLauncher
from workers.launcher import StepLauncher

DOCKER = "docker"
K8S = "k8s"

LauncherFactory = Callable[[AttemptRuntime, PreparedAttempt], StepLauncher]


def _in_process(runtime: AttemptRuntime, prepared: PreparedAttempt) -> StepLauncher:
    return InProcessLauncher(runtime)


def _docker(runtime: AttemptRuntime, prepared: PreparedAttempt) -> StepLauncher:
    from workers.docker.launcher import docker_launcher_for

    return docker_launcher_for(runtime, prepared)


def _k8s(runtime: AttemptRuntime, prepared: PreparedAttempt) -> StepLauncher:
    from workers.k8s.launcher import k8s_launcher_for

    return k8s_launcher_for(runtime, prepared)


_factories: dict[str, LauncherFactory] = {
    IN_PROCESS: _in_process,
    DOCKER: _docker,
    K8S: _k8s,
}


def register_launcher(name: str, factory: LauncherFactory) -> None:
    """Make ``name`` a valid value of ``coreexec/launcher``."""
    _factories[name] = factory


def launcher_names() -> tuple[str, ...]:
    return tuple(sorted(_factories))


def launcher_name(step: PlannedStep, default: str) -> str:
    """The launcher of ``step``: its tag, else ``default``; a DefinitionError naming the
    step and the valid names when the tag names no launcher."""
    name = step.tags.get(LAUNCHER_TAG) or default
    if name not in _factories:
        raise DefinitionError(
            f"step {step.key!r}: tag {LAUNCHER_TAG}={name!r} names no launcher; valid "
            f"names: {', '.join(launcher_names())}"
        )
    return name


def check_launchers(steps: Iterable[PlannedStep], default: str) -> None:
    """Raise before a run starts when a step names an unknown launcher."""
    for step in steps:
        launcher_name(step, default)


def steps_launched_by(steps: Iterable[PlannedStep], default: str, name: str) -> set[str]:
    """Keys of the steps that run with launcher ``name`` (``default`` where a step has
    no tag); raises like :func:`check_launchers` when a step names an unknown one."""
    return {step.key for step in steps if launcher_name(step, default) == name}


def launcher_for(runtime: AttemptRuntime, prepared: PreparedAttempt) -> StepLauncher:
    """The launcher of a prepared attempt (the run's settings give the default)."""
    name = launcher_name(prepared.step, prepared.info.settings.default_launcher)
    return _factories[name](runtime, prepared)
