"""The one exception tree of coreexec.

Every error raised by coreexec derives from :class:`CoreExecError`. Errors carry the
name of the thing that went wrong as structured fields and say how to fix it.
"""

from __future__ import annotations


class CoreExecError(Exception):
    """Root of every error coreexec raises."""


class ConfigError(CoreExecError):
    """A configuration value is invalid; ``path`` names the field (``a.b.c``)."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class DefinitionError(CoreExecError):
    """A step, job or Definitions object is defined wrongly."""


class JobReferenceError(CoreExecError):
    """A ``"package.module:attribute"`` job reference cannot be resolved."""

    def __init__(self, message: str, *, reference: str) -> None:
        super().__init__(message)
        self.reference = reference


class PlanError(CoreExecError):
    """An execution plan is malformed (bad wiring, cycles, unknown steps)."""

    def __init__(self, message: str, *, step_key: str | None = None) -> None:
        super().__init__(message)
        self.step_key = step_key


class RequirementError(CoreExecError):
    """An executor's requirement is not met by the job or the instance."""


class StepExecutionError(CoreExecError):
    """A step failed; raised by ``execute_in_process(raise_on_error=True)``."""

    def __init__(
        self, message: str, *, run_id: str, step_key: str, attempt: int | None = None
    ) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.step_key = step_key
        self.attempt = attempt


class RunFailedError(CoreExecError):
    """A run ended in failure."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class IOManagerError(CoreExecError):
    """An output could not be stored or an input could not be loaded."""

    def __init__(self, message: str, *, step_key: str, output_name: str) -> None:
        super().__init__(message)
        self.step_key = step_key
        self.output_name = output_name


class StorageError(CoreExecError):
    """The run storage cannot be reached or holds no such run."""


class RunNotFoundError(StorageError):
    """No run with this id exists in the run storage."""

    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"no run with id {run_id!r} in the run storage; `coreexec runs ls` lists runs"
        )
        self.run_id = run_id


class LimiterError(CoreExecError):
    """The tag-concurrency limiter failed or was given a bad rule."""


class LauncherError(CoreExecError):
    """A step launcher could not start, watch or stop a step."""


class BrokerConnectionError(CoreExecError):
    """The message broker or Redis cannot be reached."""

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message)
        self.url = url


class RunCanceledError(CoreExecError):
    """A run was canceled; raised by ``raise_on_error=True`` for a canceled run."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class TransportError(CoreExecError):
    """Redis answered, but refused a command of the event transport."""


class ResumeError(CoreExecError):
    """A run cannot be resumed now; the message says why and what to do."""

    def __init__(self, message: str, *, run_id: str) -> None:
        super().__init__(message)
        self.run_id = run_id


class RunWaitTimeout(CoreExecError, TimeoutError):
    """A run did not end within the time given to :meth:`RunHandle.wait`; ``status`` is
    the run's :class:`~coreexec.storage.base.RunStatus` when the wait gave up."""

    def __init__(self, message: str, *, run_id: str, status: str) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.status = status
