"""The ``StepLauncher`` protocol: where one step attempt runs, and how it is followed.

The dispatcher decides *when* a step starts (coordinator, queues, limits); a launcher
decides *where*: in the worker's own process, in a Docker container, in a Kubernetes
pod. The supervising process (a Celery worker's step task, or the coordinator of the
``docker_executor``) drives a launcher through :func:`workers.supervisor.supervise`:

1. the supervisor claims the attempt and announces its start (or, for a redelivered
   message whose attempt is claimed, asks :meth:`StepLauncher.find` for what an
   earlier process launched, and adopts it);
2. :meth:`StepLauncher.launch` starts the attempt (a container running the step
   entrypoint, ``python -m workers.entrypoint``), first stopping what earlier attempts
   of the same step left running: at most one live container or pod per step;
3. while the supervisor heartbeats for it, :meth:`StepLauncher.follow` blocks until the
   attempt has really ended (Docker's wait, a Kubernetes watch; no sleep loop) and
   returns its :class:`LaunchEnd`: exit code, how it ended, the last lines of its logs;
4. the supervisor publishes the logs and the end: the entrypoint's own report if it
   held one (:mod:`coreexec.transport.attempt_ends`), else an infrastructure failure
   built from the :class:`LaunchEnd`; the coordinator releases the step's slots then;
5. :meth:`StepLauncher.cleanup` removes what was launched (unless kept).

On cancel (SIGTERM to the supervisor) the supervisor calls :meth:`StepLauncher.terminate`
and follows the attempt to its end. A launcher raises
:class:`~coreexec.errors.LauncherError` (or :class:`LaunchError`) naming the image, the
socket or the config key when it cannot start the attempt.

A launcher needs no state between attempts beyond its clients; names and labels are
derived from the attempt alone (:func:`launch_name`), so any process finds what another
launched.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from coreexec.attempt_runner import AttemptIds, AttemptResult, PreparedAttempt
from coreexec.errors import LauncherError

NAME_PREFIX = "coreexec-"
MAX_NAME_LENGTH = 63
"""Container names and Kubernetes object names must fit DNS labels."""


def launch_name(ids: AttemptIds) -> str:
    """The deterministic name of what is launched for an attempt: ``coreexec-<hash>``
    (of run id and attempt id), lowercase, at most 63 characters."""
    digest = hashlib.sha256(f"{ids.run_id}:{ids.attempt_id}".encode()).hexdigest()
    return (NAME_PREFIX + digest[:40])[:MAX_NAME_LENGTH]


class LaunchError(LauncherError):
    """The attempt could not be launched; ``retryable`` when another try (or another
    worker) might succeed: a daemon that is down, an image this host lacks."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class EndReason(StrEnum):
    """How a launched attempt ended, as its launcher saw it."""

    EXITED = "exited"
    """The process exited by itself (its exit code says how)."""
    OOM_KILLED = "oom_killed"
    """Killed for exceeding its memory limit."""
    KILLED = "killed"
    """Killed from outside (``docker kill``, a node lost, a pod evicted)."""
    TERMINATED = "terminated"
    """Stopped by :meth:`StepLauncher.terminate` (a cancel)."""
    GONE = "gone"
    """It vanished before its end could be seen (removed by someone else)."""
    IN_PROCESS = "in_process"
    """It ran in the supervisor's own process and reported its end itself."""


@dataclass(frozen=True)
class LaunchRequest:
    """One attempt to launch: its loaded run and step, and who supervises it."""

    prepared: PreparedAttempt
    owner: str

    @property
    def ids(self) -> AttemptIds:
        return self.prepared.ids


@dataclass(frozen=True)
class LaunchEnd:
    """The end of a launched attempt."""

    reason: EndReason
    exit_code: int | None = None
    detail: str = ""
    """Said in the failure when the entrypoint reported nothing, e.g.
    ``"out of memory (limit 64 MiB)"`` or ``"exit code 137"``."""
    logs: tuple[str, ...] = ()
    """The last lines of the process's output."""
    result: AttemptResult | None = None
    """Set when the attempt's events are on the run's stream already (in-process)."""


@dataclass(frozen=True)
class Launch:
    """What a launcher started (or found) for one attempt."""

    launcher: str
    name: str
    """The deterministic name (:func:`launch_name`), or ``"in-process"``."""
    ids: AttemptIds
    adopted: bool = False
    """True when an earlier process launched it and this one took it over."""
    handle: str = ""
    """The launcher's own id of it (a container id, a pod uid)."""
    end: LaunchEnd | None = field(default=None, compare=False)
    """Already known when it ran in this process."""


class StepLauncher(Protocol):
    """Runs attempts somewhere and follows them; see the module docstring."""

    name: str

    def launch(self, request: LaunchRequest) -> Launch:
        """Start the attempt (stopping what earlier attempts of its step left running);
        adopt what exists already under its name. Raises LaunchError."""
        ...

    def find(self, request: LaunchRequest) -> Launch | None:
        """What an earlier process launched for this attempt, if it still exists."""
        ...

    def follow(self, launch: Launch) -> LaunchEnd:
        """Block until the attempt has ended; never returns while it still runs."""
        ...

    def terminate(self, launch: Launch) -> None:
        """Ask it to stop (SIGTERM, then a kill after the launcher's grace period)."""
        ...

    def cleanup(self, launch: Launch) -> None:
        """Remove what was launched, once its end is published (unless configured to
        keep it)."""
        ...
