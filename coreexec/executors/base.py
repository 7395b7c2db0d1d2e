"""The executor framework: ``@executor`` definitions and the ``Executor`` base class.

An executor decides when the steps of a plan start and where they run. Most executors
are a :class:`DispatchingExecutor`: the shared :class:`~coreexec.execution.coordinator.Coordinator`
keeps the run's state, asks the tag limiter for slots and hands ready steps to the
executor's :class:`~coreexec.execution.dispatcher.StepDispatcher`. To write your own,
either subclass ``DispatchingExecutor`` and return a dispatcher from
``create_dispatcher`` (the usual case), or subclass ``Executor`` and drive the run
yourself in ``execute``: report every step event through ``run.record`` and return when
every step has ended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from coreexec.errors import ConfigError
from coreexec.executors.one_of import OneOfConfig
from coreexec.limits.base import DEFAULT_LEASE_TTL_MS, TagLimiter
from coreexec.limits.keys import DEFAULT_NAMESPACE
from coreexec.limits.rules import TagConcurrencyLimit
from coreexec.limits.setup import RunLimits, build_limiter
from coreexec.run_config import parse_model

if TYPE_CHECKING:
    from coreexec.execution.dispatcher import StepDispatcher
    from coreexec.execution.run_context import RunContext
    from coreexec.instance import Instance
    from coreexec.job import JobDefinition


class ExecutorRequirement(StrEnum):
    """What an executor needs of the job and the instance, checked before a run starts."""

    RECONSTRUCTABLE_JOB = "reconstructable_job"
    """Other processes load the job by ``"package.module:attribute"`` reference."""
    NON_EPHEMERAL_INSTANCE = "non_ephemeral_instance"
    """Run storage other processes can reach (not ``Instance.ephemeral_instance()``)."""
    PERSISTENT_OUTPUTS = "persistent_outputs"
    """Outputs stored where other processes can load them (filesystem IO manager)."""


OUT_OF_PROCESS_REQUIREMENTS = frozenset(
    {
        ExecutorRequirement.RECONSTRUCTABLE_JOB,
        ExecutorRequirement.NON_EPHEMERAL_INSTANCE,
        ExecutorRequirement.PERSISTENT_OUTPUTS,
    }
)
"""What an executor needs whose steps run in other processes (pools, fleets, containers)."""


class RetriesConfig(OneOfConfig):
    """``retries: {enabled: {}}`` (the default) or ``retries: {disabled: {}}``."""

    choices = ("enabled", "disabled")

    enabled: dict[str, Any] | None = None
    disabled: dict[str, Any] | None = None

    @property
    def is_enabled(self) -> bool:
        return self.disabled is None


class TagLimitsConfig(BaseModel):
    """The tag limit fields of an executor config whose coordinator builds its limiter
    for each run (``multiprocess``, ``dask``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tag_concurrency_limits: list[TagConcurrencyLimit] | None = None
    """Rules such as ``{key: database, value: warehouse, limit: 2}``; per run unless
    ``redis_url`` is given, then shared by every run using that Redis."""
    redis_url: str | None = None
    """Redis holding the tag limiter's slots, so the limits hold across runs."""
    limiter_namespace: str = Field(default=DEFAULT_NAMESPACE, min_length=1)
    """Runs share limits only within one namespace of one Redis."""
    slot_lease_ttl_s: float = Field(default=DEFAULT_LEASE_TTL_MS / 1000, gt=0)
    """Slots of a coordinator that stops refreshing them come back after this long."""

    def run_limits(self) -> RunLimits:
        """The limits of one run (its own in-memory limiter, or the global Redis one)."""
        return build_limiter(
            self.tag_concurrency_limits,
            path="run_config.execution.config.tag_concurrency_limits",
            redis_url=self.redis_url,
            namespace=self.limiter_namespace,
            lease_ttl_ms=round(self.slot_lease_ttl_s * 1000),
        )


M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class InitExecutorContext:
    """What an executor factory gets: the job, its parsed config and the instance."""

    job: JobDefinition
    config: BaseModel | None
    instance: Instance

    def config_as(self, schema: type[M]) -> M:
        """The parsed config, which the definition's ``config_schema`` made a ``schema``."""
        config = self.config
        assert isinstance(config, schema), f"{type(config).__name__} is not {schema.__name__}"
        return config


class Executor(ABC):
    """Runs a plan to completion. See the module docstring for how to write one."""

    retries_enabled: bool = True

    @abstractmethod
    def execute(self, run: RunContext) -> None:
        """Run every step of ``run.plan``, reporting events through ``run.record``."""


class DispatchingExecutor(Executor):
    """An executor made of a dispatcher driven by the shared coordinator.

    Limits fixed when the executor is made go in ``tag_limiter`` and
    ``tag_concurrency_limits``; an executor that holds something for one run only (a
    limiter, a connection, a cluster) opens it in :meth:`run_scope` instead.
    """

    tag_limiter: TagLimiter | None = None
    tag_concurrency_limits: tuple[TagConcurrencyLimit, ...] = ()

    @abstractmethod
    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        """A fresh dispatcher for one run (called inside :meth:`run_scope`)."""

    @contextmanager
    def run_scope(self, run: RunContext) -> Iterator[RunLimits]:
        """What the executor holds while ``run`` is coordinated, closed when it ends;
        yields the limits the coordinator enforces."""
        yield RunLimits(self.tag_limiter, self.tag_concurrency_limits)

    def execute(self, run: RunContext) -> None:
        from coreexec.execution.coordinator import Coordinator

        with self.run_scope(run) as limits:
            Coordinator(
                run,
                self.create_dispatcher(run),
                retries_enabled=self.retries_enabled,
                limiter=limits.limiter,
                limit_rules=limits.rules,
            ).run()


ExecutorFactory = Callable[[InitExecutorContext], Executor]
RequirementsFn = Callable[[BaseModel | None], frozenset[ExecutorRequirement]]


@dataclass(frozen=True)
class ExecutorDefinition:
    """A named, configurable way to run a job's steps."""

    name: str
    factory: ExecutorFactory
    config_schema: type[BaseModel] | None = None
    requirements: frozenset[ExecutorRequirement] = field(default_factory=frozenset)
    description: str | None = None
    config: Mapping[str, Any] | None = None
    """Config fixed by :meth:`configured`; run config may not override it."""
    requirements_fn: RequirementsFn | None = None
    """Requirements that depend on the run's config (else ``requirements``)."""
    requirement_hint: str | None = None
    """Another way out, added to requirement errors (e.g. a config that needs less)."""

    def requirements_for(self, config: BaseModel | None) -> frozenset[ExecutorRequirement]:
        """What this executor needs when run with ``config`` (parsed)."""
        if self.requirements_fn is not None:
            return self.requirements_fn(config)
        return self.requirements

    def parse_config(self, raw: Mapping[str, Any] | None, *, path: str) -> BaseModel | None:
        """Validate executor config; errors name the field as ``<path>.<field>``."""
        if self.config_schema is None:
            if raw:
                raise ConfigError(f"{path}: executor {self.name!r} takes no config", path=path)
            return None
        return parse_model(self.config_schema, raw, prefix=path)

    def configured(
        self, config: Mapping[str, Any], description: str | None = None
    ) -> ExecutorDefinition:
        """A copy with ``config`` fixed (validated now, so a typo fails at import)."""
        self.parse_config(config, path=f"{self.name}.configured")
        return replace(self, config=dict(config), description=description or self.description)

    def resolve_config(self, run_config_part: Mapping[str, Any] | None) -> BaseModel | None:
        """The config for a run: the configured one, else the run config's."""
        if self.config is not None:
            if run_config_part:
                raise ConfigError(
                    f"run_config.execution.config: executor {self.name!r} is already "
                    "configured in code; remove the execution section from the run config",
                    path="run_config.execution.config",
                )
            return self.parse_config(self.config, path=f"{self.name}.configured")
        return self.parse_config(run_config_part, path="run_config.execution.config")

    def create(self, context: InitExecutorContext) -> Executor:
        return self.factory(context)


def executor(
    name: str | None = None,
    *,
    config_schema: type[BaseModel] | None = None,
    requirements: Iterable[ExecutorRequirement] = (),
    description: str | None = None,
) -> Callable[[ExecutorFactory], ExecutorDefinition]:
    """Define an executor from a factory ``fn(InitExecutorContext) -> Executor``."""

    def decorate(fn: ExecutorFactory) -> ExecutorDefinition:
        return ExecutorDefinition(
            name=name or fn.__name__,
            factory=fn,
            config_schema=config_schema,
            requirements=frozenset(requirements),
            description=description or fn.__doc__,
        )

    return decorate
