"""What the ``docker`` and ``k8s`` blocks share: ``env_vars`` and the step entrypoint's
arguments.

An ``env_vars`` entry is ``NAME=value`` (given as it is) or ``NAME`` (forwarded from
the environment of the process that launches the step, left out when it is not set
there). The entrypoint (:mod:`workers.entrypoint`) gets the attempt's identifiers as
arguments, never its code or settings.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Annotated

from pydantic import AfterValidator

from coreexec.attempt_runner import AttemptIds


def check_env_vars(values: list[str]) -> list[str]:
    """Refuse an entry that is not ``NAME`` or ``NAME=value``."""
    for item in values:
        name = item.partition("=")[0]
        if not name or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ValueError(f"{item!r} is not NAME or NAME=value (NAME of letters, digits, _)")
    return values


EnvVars = Annotated[list[str], AfterValidator(check_env_vars)]
"""The type of an ``env_vars`` field."""


def env_var_values(
    env_vars: Iterable[str], environ: Mapping[str, str] | None = None
) -> list[tuple[str, str]]:
    """``(name, value)`` of each entry, in order: literal values as given, forwarded
    names with their value in ``environ`` (default: this process's environment)."""
    env = os.environ if environ is None else environ
    values = []
    for item in env_vars:
        name, sep, value = item.partition("=")
        if sep:
            values.append((name, value))
        elif name in env:
            values.append((name, env[name]))
    return values


def merge_env_vars(base: list[str], extra: list[str]) -> list[str]:
    """``base`` with ``extra`` added; a name in both keeps the entry of ``extra``."""
    names = {item.partition("=")[0] for item in extra}
    return [item for item in base if item.partition("=")[0] not in names] + extra


def entrypoint_args(ids: AttemptIds) -> list[str]:
    """The step entrypoint's arguments for one attempt."""
    return [
        "--run-id", ids.run_id,
        "--step-key", ids.step_key,
        "--attempt", str(ids.attempt_number),
        "--attempt-id", ids.attempt_id,
        "--job", ids.job_reference,
    ]  # fmt: skip
