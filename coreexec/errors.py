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


class RetryRequested(Exception):
    """Raise inside a step to ask for another attempt after ``seconds_to_wait``.

    Logged as information, not as an error: the step is retried while the attempt
    number is within ``max_retries``.
    """

    def __init__(self, max_retries: int = 1, seconds_to_wait: float = 0.0) -> None:
        super().__init__(f"retry requested (max_retries={max_retries}, wait {seconds_to_wait}s)")
        self.max_retries = max_retries
        self.seconds_to_wait = seconds_to_wait


class Failure(Exception):
    """Raise inside a step to fail it with ``description``; retried only if allowed."""

    def __init__(self, description: str = "", *, allow_retries: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.allow_retries = allow_retries


class AttemptDroppedError(CoreExecError):
    """A Dask worker got an attempt that was claimed before (Dask ran it again after its
    first worker was lost, or the coordinator fenced it): nothing ran."""


class ClaimUnavailableError(BrokerConnectionError):
    """The attempt could not be claimed because Redis is unreachable: nothing ran, so
    the message should go back to the broker rather than be acknowledged."""


class InvalidIdError(CoreExecError, ValueError):
    """A run id, attempt id or queue name that cannot name a Redis key (empty, too long,
    braces or control characters); ``what`` says which kind of id it is."""

    def __init__(self, message: str, *, what: str, value: object) -> None:
        super().__init__(message)
        self.what = what
        self.value = value


class MalformedEventError(TransportError, ValueError):
    """A run event that does not decode (a forged or damaged message, or a newer
    coreexec's format); it is reported and skipped, never applied."""
