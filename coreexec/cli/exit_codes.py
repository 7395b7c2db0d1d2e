"""The exit status of every ``coreexec`` command, in one table (the README repeats it).

A command that follows a run to its end exits by the run's status; every command exits
2 for bad input, whatever the input was (a job reference, a config value or file, a tag,
a run id, a limit target).
"""

from __future__ import annotations

import click

from coreexec.errors import (
    ConfigError,
    CoreExecError,
    DefinitionError,
    JobReferenceError,
    PlanError,
    RequirementError,
    RunNotFoundError,
)
from coreexec.storage.base import RunStatus

EXIT_SUCCESS = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELED = 130

EXIT_CODES: dict[int, str] = {
    EXIT_SUCCESS: "done: the run succeeded (or the command did what it was asked)",
    EXIT_FAILURE: "the run failed or could not start, or the command could not do it (the "
    "run had already ended, its coordinator died, a wait timed out, Redis or the broker "
    "cannot be reached)",
    EXIT_BAD_INPUT: "bad input: job reference, run config (file, YAML or value), tag, "
    "option, unknown run id or limit",
    EXIT_CANCELED: "the run was canceled (Ctrl-C or SIGTERM cancel a `coreexec run`)",
}
"""Every exit status a command uses, with its meaning."""

_BAD_INPUT = (
    RunNotFoundError,
    JobReferenceError,
    ConfigError,
    RequirementError,
    DefinitionError,
    PlanError,
)

_EXIT_BY_STATUS = {
    RunStatus.SUCCESS: EXIT_SUCCESS,
    RunStatus.FAILURE: EXIT_FAILURE,
    RunStatus.CANCELED: EXIT_CANCELED,
}


class BadInput(click.ClickException):
    """An error in what the user gave (exit status 2)."""

    exit_code = EXIT_BAD_INPUT


def fail(exc: CoreExecError) -> click.ClickException:
    """The click error for ``exc``: status 2 for bad input, else 1."""
    if isinstance(exc, _BAD_INPUT):
        return BadInput(str(exc))
    return click.ClickException(str(exc))


def exit_code_for(status: RunStatus) -> int:
    """The exit status of a command that followed a run until it ended ``status``."""
    return _EXIT_BY_STATUS.get(status, EXIT_FAILURE)


def exit_codes_help() -> str:
    """The table for ``--help`` (click keeps lines after a ``\\b`` line as they are)."""
    rows = [f"  {code:>3}  {meaning}" for code, meaning in EXIT_CODES.items()]
    return "\b\nExit status (every command):\n" + "\n".join(rows)
