"""``@step``: a Python function with typed inputs and named outputs, placed in a job's DAG."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar, overload

from pydantic import BaseModel

from coreexec.errors import DefinitionError
from coreexec.retry import RetryPolicy
from coreexec.tags import TagValue, normalize_tags

DEFAULT_OUTPUT = "result"

_NO_DEFAULT = inspect.Parameter.empty


@dataclass(frozen=True)
class Out:
    """Declares one named output of a step (``@step(out={"a": Out(), "b": Out()})``)."""

    description: str | None = None


@dataclass(frozen=True)
class InputDef:
    """One input of a step, read from the function signature."""

    name: str
    annotation: Any
    default: Any = _NO_DEFAULT

    @property
    def has_default(self) -> bool:
        return self.default is not _NO_DEFAULT


@dataclass(frozen=True)
class StepDefinition:
    """A step as defined by ``@step``; call it inside a ``@job`` body to place it."""

    name: str
    fn: Callable[..., Any]
    inputs: tuple[InputDef, ...]
    outputs: tuple[str, ...]
    takes_context: bool
    description: str | None = None
    tags: Mapping[str, str] = field(default_factory=dict)
    retry_policy: RetryPolicy | None = None
    config_schema: type[BaseModel] | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from coreexec.composition import current_builder

        builder = current_builder()
        if builder is None:
            # Outside a job body the step is a plain function, handy in unit tests.
            return self.fn(*args, **kwargs)
        return builder.place(self, alias=None, args=args, kwargs=kwargs)

    def alias(self, name: str) -> StepInvocation:
        """Place this step under another key: ``extract.alias("extract_eu")()``."""
        return StepInvocation(self, name)

    def with_tags(self, tags: Mapping[str, TagValue]) -> StepDefinition:
        """A copy with ``tags`` merged over this step's tags."""
        merged = {**self.tags, **normalize_tags(tags, owner=f"step {self.name!r}")}
        return replace(self, tags=merged)

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(item.name for item in self.inputs)

    @property
    def is_async(self) -> bool:
        """True for an ``async def`` step (run on an event loop, see the step runner)."""
        return inspect.iscoroutinefunction(self.fn)


@dataclass(frozen=True)
class StepInvocation:
    """A step about to be placed under an alias."""

    definition: StepDefinition
    alias: str

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from coreexec.composition import current_builder

        builder = current_builder()
        if builder is None:
            raise DefinitionError(
                f"step {self.definition.name!r} aliased as {self.alias!r} can only be "
                "called inside a @job body"
            )
        return builder.place(self.definition, alias=self.alias, args=args, kwargs=kwargs)


F = TypeVar("F", bound=Callable[..., Any])


def _takes_context(params: list[inspect.Parameter]) -> bool:
    if not params:
        return False
    first = params[0]
    annotation = first.annotation
    if first.name == "context":
        return True
    return bool(getattr(annotation, "__name__", annotation) == "StepContext")


def _check_callable(fn: Callable[..., Any], step_name: str) -> None:
    """A step is named as a Python identifier and returns its outputs once."""
    if not step_name.isidentifier():
        raise DefinitionError(f"step name {step_name!r} must be a Python identifier")
    if inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
        raise DefinitionError(
            f"step {step_name!r} is a generator; a step returns its outputs once: "
            "use `def` or `async def` with `return`"
        )


def _inputs_of(fn: Callable[..., Any], step_name: str) -> tuple[bool, tuple[InputDef, ...]]:
    """Whether ``fn`` takes the step context first, and its inputs: every other
    parameter, each declared by name."""
    signature = inspect.signature(fn)
    try:
        hints = inspect.get_annotations(fn, eval_str=True)
    except Exception:  # annotations naming types only known at type-check time
        hints = {}
    params = list(signature.parameters.values())
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise DefinitionError(
                f"step {step_name!r}: parameter {param.name!r} cannot be *args or **kwargs; "
                "declare each input by name"
            )
    takes_context = _takes_context(params)
    input_params = params[1:] if takes_context else params
    inputs = tuple(
        InputDef(p.name, hints.get(p.name, p.annotation), p.default) for p in input_params
    )
    return takes_context, inputs


def _definition_from(
    fn: Callable[..., Any],
    *,
    name: str | None,
    description: str | None,
    tags: Mapping[str, TagValue] | None,
    retry_policy: RetryPolicy | None,
    config_schema: type[BaseModel] | None,
    out: Mapping[str, Out] | None,
) -> StepDefinition:
    step_name = name or fn.__name__
    _check_callable(fn, step_name)
    takes_context, inputs = _inputs_of(fn, step_name)
    if out is not None and not out:
        raise DefinitionError(f"step {step_name!r}: out= needs at least one output")
    outputs = tuple(out) if out else (DEFAULT_OUTPUT,)
    if config_schema is not None and not (
        isinstance(config_schema, type) and issubclass(config_schema, BaseModel)
    ):
        raise DefinitionError(
            f"step {step_name!r}: config_schema must be a pydantic BaseModel subclass"
        )
    return StepDefinition(
        name=step_name,
        fn=fn,
        inputs=inputs,
        outputs=outputs,
        takes_context=takes_context,
        description=description or inspect.getdoc(fn),
        tags=normalize_tags(tags, owner=f"step {step_name!r}"),
        retry_policy=retry_policy,
        config_schema=config_schema,
    )


@overload
def step(fn: Callable[..., Any], /) -> StepDefinition: ...


@overload
def step(
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, TagValue] | None = None,
    retry_policy: RetryPolicy | None = None,
    config_schema: type[BaseModel] | None = None,
    out: Mapping[str, Out] | None = None,
) -> Callable[[Callable[..., Any]], StepDefinition]: ...


def step(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    description: str | None = None,
    tags: Mapping[str, TagValue] | None = None,
    retry_policy: RetryPolicy | None = None,
    config_schema: type[BaseModel] | None = None,
    out: Mapping[str, Out] | None = None,
) -> StepDefinition | Callable[[Callable[..., Any]], StepDefinition]:
    """Define a step from a function (``def`` or ``async def``).

    Inputs are the function's parameters (type hints kept); an optional first parameter
    ``context`` receives a :class:`StepContext`. One output, ``result``, unless ``out``
    names several, in which case the function returns a tuple in that order. Ready
    ``async def`` steps of a run under the in-process and multiprocess executors run
    concurrently on one event loop in the coordinating process; elsewhere each runs on an
    event loop in the process that runs it.
    """

    def decorate(func: Callable[..., Any]) -> StepDefinition:
        return _definition_from(
            func,
            name=name,
            description=description,
            tags=tags,
            retry_policy=retry_policy,
            config_schema=config_schema,
            out=out,
        )

    if fn is not None:
        return decorate(fn)
    return decorate
