"""Wiring a DAG by calling steps inside a ``@job`` body."""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from coreexec.errors import DefinitionError

if TYPE_CHECKING:
    from coreexec.step import StepDefinition


@dataclass(frozen=True)
class OutputRef:
    """An output of a placed step; what calling a step inside a job body returns."""

    step_key: str
    output_name: str


@dataclass(frozen=True)
class InputBinding:
    """Where an input's value comes from: one output, or a list of outputs (fan-in)."""

    sources: tuple[OutputRef, ...]
    fan_in: bool = False


@dataclass(frozen=True)
class JobNode:
    """A step placed in a job under a unique key."""

    key: str
    step: StepDefinition
    inputs: Mapping[str, InputBinding]


class JobBuilder:
    """Collects the nodes a job body places, giving each use of a step its own key."""

    def __init__(self, job_name: str) -> None:
        self.job_name = job_name
        self.nodes: dict[str, JobNode] = {}
        self._uses: dict[str, int] = {}

    def _key_for(self, step_name: str, alias: str | None) -> str:
        if alias is not None:
            if not alias.isidentifier():
                raise DefinitionError(
                    f"job {self.job_name!r}: alias {alias!r} must be a Python identifier"
                )
            if alias in self.nodes:
                raise DefinitionError(
                    f"job {self.job_name!r}: two steps use the key {alias!r}; pick another alias"
                )
            return alias
        count = self._uses.get(step_name, 0)
        while True:
            count += 1
            key = step_name if count == 1 else f"{step_name}_{count}"
            if key not in self.nodes:
                self._uses[step_name] = count
                return key

    def _bind(self, key: str, input_name: str, value: Any) -> InputBinding:
        if isinstance(value, OutputRef):
            return InputBinding((value,))
        if (
            isinstance(value, list | tuple)
            and value
            and all(isinstance(item, OutputRef) for item in value)
        ):
            return InputBinding(tuple(value), fan_in=True)
        raise DefinitionError(
            f"job {self.job_name!r}: input {input_name!r} of step {key!r} was given "
            f"{value!r}; inputs must be outputs of other steps (or a list of them for "
            "fan-in). Pass constants through step config or a default in the signature."
        )

    def place(
        self,
        step: StepDefinition,
        *,
        alias: str | None,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> OutputRef | tuple[OutputRef, ...]:
        key = self._key_for(step.name, alias)
        names = step.input_names
        if len(args) > len(names):
            raise DefinitionError(
                f"job {self.job_name!r}: step {key!r} takes {len(names)} inputs "
                f"({', '.join(names) or 'none'}) but got {len(args)} positional arguments"
            )
        given: dict[str, Any] = dict(zip(names, args, strict=False))
        for name, value in kwargs.items():
            if name not in names:
                raise DefinitionError(
                    f"job {self.job_name!r}: step {key!r} has no input {name!r}; "
                    f"its inputs are: {', '.join(names) or 'none'}"
                )
            if name in given:
                raise DefinitionError(
                    f"job {self.job_name!r}: input {name!r} of step {key!r} given twice"
                )
            given[name] = value
        bindings: dict[str, InputBinding] = {}
        for input_def in step.inputs:
            if input_def.name in given:
                bindings[input_def.name] = self._bind(key, input_def.name, given[input_def.name])
            elif not input_def.has_default:
                raise DefinitionError(
                    f"job {self.job_name!r}: input {input_def.name!r} of step {key!r} is not "
                    "wired; pass the output of another step or give the parameter a default"
                )
        self.nodes[key] = JobNode(key=key, step=step, inputs=bindings)
        refs = tuple(OutputRef(key, name) for name in step.outputs)
        return refs[0] if len(refs) == 1 else refs


_builder: contextvars.ContextVar[JobBuilder | None] = contextvars.ContextVar(
    "coreexec_job_builder", default=None
)


def current_builder() -> JobBuilder | None:
    return _builder.get()


@contextmanager
def building(job_name: str) -> Iterator[JobBuilder]:
    builder = JobBuilder(job_name)
    token = _builder.set(builder)
    try:
        yield builder
    finally:
        _builder.reset(token)
