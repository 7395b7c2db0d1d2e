"""``Definitions``: the jobs of a code location and the executor they share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from coreexec.errors import DefinitionError
from coreexec.job import JobDefinition

if TYPE_CHECKING:
    from coreexec.executors.base import ExecutorDefinition


class Definitions:
    """Jobs by name; ``executor`` applies to every job that names no executor itself."""

    def __init__(
        self,
        jobs: Iterable[JobDefinition] = (),
        *,
        executor: ExecutorDefinition | None = None,
    ) -> None:
        self.executor = executor
        self._jobs: dict[str, JobDefinition] = {}
        for item in jobs:
            if not isinstance(item, JobDefinition):
                raise DefinitionError(
                    f"Definitions(jobs=...) takes @job definitions, got {type(item).__name__}"
                )
            if item.name in self._jobs:
                raise DefinitionError(f"Definitions: two jobs are named {item.name!r}")
            if item.executor_def is None and executor is not None:
                item = item.with_executor_def(executor)
            self._jobs[item.name] = item

    @property
    def job_names(self) -> tuple[str, ...]:
        return tuple(self._jobs)

    def get_job(self, name: str) -> JobDefinition:
        try:
            return self._jobs[name]
        except KeyError:
            raise DefinitionError(
                f"no job named {name!r} in these Definitions; jobs: "
                f"{', '.join(self._jobs) or 'none'}"
            ) from None
