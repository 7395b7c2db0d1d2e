"""``@job``: a named DAG of steps, wired by calling steps in the job body."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, overload

from coreexec.composition import JobNode, building
from coreexec.errors import DefinitionError
from coreexec.tags import TagValue, normalize_tags

if TYPE_CHECKING:
    from coreexec.executors.base import ExecutorDefinition
    from coreexec.instance import Instance
    from coreexec.result import ExecutionResult


@dataclass(frozen=True)
class JobDefinition:
    """A job: its steps keyed uniquely, in the order the body placed them."""

    name: str
    nodes: Mapping[str, JobNode]
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    executor_def: ExecutorDefinition | None = None
    reference: str | None = None
    """``"package.module:attribute"`` when known; set when loaded by reference."""
    module: str | None = None
    """The module whose body defined the job, to find its reference."""

    def node(self, step_key: str) -> JobNode:
        try:
            return self.nodes[step_key]
        except KeyError:
            raise DefinitionError(
                f"job {self.name!r} has no step {step_key!r}; its steps are: "
                f"{', '.join(list(self.nodes)[:20])}"
            ) from None

    def with_reference(self, reference: str) -> JobDefinition:
        return replace(self, reference=reference)

    def with_executor_def(self, executor_def: ExecutorDefinition) -> JobDefinition:
        return replace(self, executor_def=executor_def)

    def execute_in_process(
        self,
        run_config: Mapping[str, Any] | None = None,
        *,
        raise_on_error: bool = True,
        tags: Mapping[str, TagValue] | None = None,
        instance: Instance | None = None,
    ) -> ExecutionResult:
        """Run every step serially in this process, outputs kept in memory.

        Always uses the in-process executor whatever ``executor_def`` says. With
        ``raise_on_error`` a failed step raises :class:`~coreexec.errors.StepExecutionError`
        carrying the user's exception as its cause.
        """
        from coreexec.runs.in_process import execute_in_process

        return execute_in_process(
            self, run_config=run_config, raise_on_error=raise_on_error, tags=tags, instance=instance
        )


@overload
def job(fn: Callable[[], Any], /) -> JobDefinition: ...


@overload
def job(
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, TagValue] | None = None,
    executor_def: ExecutorDefinition | None = None,
) -> Callable[[Callable[[], Any]], JobDefinition]: ...


def job(
    fn: Callable[[], Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, TagValue] | None = None,
    executor_def: ExecutorDefinition | None = None,
) -> JobDefinition | Callable[[Callable[[], Any]], JobDefinition]:
    """Define a job: the body calls steps, and those calls wire the DAG."""

    def decorate(body: Callable[[], Any]) -> JobDefinition:
        job_name = name or body.__name__
        if inspect.signature(body).parameters:
            raise DefinitionError(f"job {job_name!r}: the job body takes no parameters")
        with building(job_name) as builder:
            body()
        if not builder.nodes:
            raise DefinitionError(f"job {job_name!r} places no steps; call steps in its body")
        return JobDefinition(
            name=job_name,
            nodes=dict(builder.nodes),
            description=description or inspect.getdoc(body),
            tags=normalize_tags(tags, owner=f"job {job_name!r}"),
            executor_def=executor_def,
            module=body.__module__,
        )

    if fn is not None:
        return decorate(fn)
    return decorate
