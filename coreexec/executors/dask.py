"""The Dask executor: each step attempt is one Dask future on a ``dask.distributed`` cluster.

Needs the ``dask`` extra (``pip install 'coreexec[dask]'``); nothing else in coreexec
imports Dask. The coordinator keeps the run's state, priorities, retries and tag limits
as for every executor; Dask runs what it is given:

- one future per attempt, keyed ``<job>.<step_key>.<attempt>-<run id>`` (the dashboard
  names tasks by the part before the run id), submitted with the step's priority, the
  Dask resources of its ``coreexec-dask/resources`` tag and no Dask retries;
- inside the Dask worker, :func:`run_attempt_task` runs the attempt from identifiers:
  with a Redis URL (``redis_url``, else ``COREEXEC_REDIS_URL``) through the attempt runner
  (:mod:`coreexec.attempt_runner`, claims and events on the run's Redis stream, as on a
  Celery worker), else reporting on a Dask event topic of the run
  (:mod:`coreexec.executors.dask_dispatcher` has both sides);
- a Dask worker lost mid-step fails the attempt as ``infrastructure`` and Dask's rerun of
  it runs nothing: the retry policy decides;
- cancel fences, cancels the futures and interrupts the running steps;
- a cluster the executor started (``local`` or ``cluster_class``) is closed when the run
  ends; an ``existing`` one never is.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coreexec.attempt_runner import AttemptIds, run_attempt
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.errors import AttemptDroppedError, ConfigError, RequirementError
from coreexec.events import Event
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    OUT_OF_PROCESS_REQUIREMENTS,
    DispatchingExecutor,
    Executor,
    InitExecutorContext,
    RetriesConfig,
    TagLimitsConfig,
    executor,
)
from coreexec.executors.dask_attempt import (
    DaskAttempt,
    instance_for,
    interruptible,
    run_attempt_here,
)
from coreexec.executors.dask_dispatcher import RESOURCES_TAG, DaskDispatcher, RedisChannel
from coreexec.executors.one_of import OneOfConfig
from coreexec.instance import Instance
from coreexec.limits.setup import RunLimits
from coreexec.redis_clients import redis_client
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.redis_events import RedisEventStream

try:
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise RequirementError(
        "the dask executor needs dask.distributed: pip install 'coreexec[dask]'"
    ) from exc

logger = logging.getLogger(__name__)

__all__ = ["RESOURCES_TAG", "DaskConfig", "DaskExecutor", "dask_executor", "run_attempt_task"]


# -- config ---------------------------------------------------------------------------


class ExistingCluster(BaseModel):
    """``existing: {address: tcp://host:8786}``: a running scheduler, never closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(min_length=1)


class LocalClusterConfig(BaseModel):
    """``local: {n_workers, threads_per_worker, processes, ...}``: a
    ``distributed.LocalCluster`` started for the run; other keys go to it as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    n_workers: int | None = Field(default=None, ge=0)
    threads_per_worker: int | None = Field(default=None, ge=1)
    processes: bool = True


class ClusterConfig(OneOfConfig):
    """One of ``existing``, ``local`` (the default) or ``cluster_class`` (+ ``kwargs``)."""

    choices = ("existing", "local", "cluster_class")

    existing: ExistingCluster | None = None
    local: LocalClusterConfig | None = None
    cluster_class: str | None = None
    """Import path of any Dask cluster class, e.g. ``dask_kubernetes.KubeCluster``."""
    kwargs: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _kwargs_with_class(self) -> ClusterConfig:
        if self.kwargs is not None and self.cluster_class is None:
            raise ValueError("kwargs go with cluster_class; for local give its keys under local")
        return self


class AdaptConfig(BaseModel):
    """``adapt: {minimum, maximum}``: adaptive scaling of a cluster the executor starts."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    minimum: int = Field(default=0, ge=0)
    maximum: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> AdaptConfig:
        if self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        return self


class DaskConfig(TagLimitsConfig):
    """Config of ``dask_executor``."""

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    adapt: AdaptConfig | None = None
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    max_concurrent: int | None = Field(default=None, ge=1)
    """Attempts submitted at once; None: every ready step (Dask's scheduler queues them
    by priority)."""
    redis_url: str | None = None
    """Redis of the run's events and attempt claims (the attempt runner, as on Celery
    workers) and of global tag limits; default ``COREEXEC_REDIS_URL``. Without one,
    attempts report on a Dask event topic and the tag limits hold per run."""

    @model_validator(mode="after")
    def _adapt_needs_own_cluster(self) -> DaskConfig:
        if self.adapt is not None and self.cluster.existing is not None:
            raise ValueError(
                "adapt scales a cluster the executor starts; an existing cluster is scaled "
                "by whoever runs it"
            )
        return self


# -- inside the Dask worker -----------------------------------------------------------


class _DaskRuntime(AttemptRuntime):
    """The attempt runner's per-process state, for runs of the instance at ``home`` (one
    Dask worker may serve runs of several instances: tests, side-by-side installs)."""

    def __init__(self, redis_url: str, *, home: str | None) -> None:
        super().__init__(redis_url, home=home)
        self._at_home = instance_for(home)

    @property
    def instance(self) -> Instance:
        return self._at_home


_runtimes: dict[tuple[str, str | None], AttemptRuntime] = {}


def run_attempt_task(
    spec: DaskAttempt, topic: str | None, redis_url: str | None
) -> list[dict[str, Any]]:
    """The function of every coreexec Dask task.

    With ``redis_url``: the attempt runner claims, runs and reports the attempt on the
    run's Redis stream, as a Celery worker does. Else each event is published on the
    run's Dask ``topic`` as it happens, and all of them are returned.
    """
    if redis_url is not None:
        _run_reporting_on_redis(spec, redis_url)
        return []
    assert topic is not None, "a topic or a Redis URL"
    worker = distributed.get_worker()
    events: list[dict[str, Any]] = []

    def emit(event: Event) -> None:
        body = {"seq": len(events), "event": event.to_dict()}
        events.append(body)
        worker.log_event(topic, body)

    with contextlib.suppress(KeyboardInterrupt):  # an interrupted step reported itself
        run_attempt_here(spec, emit)
    return events


def _run_reporting_on_redis(spec: DaskAttempt, redis_url: str) -> None:
    runtime = _runtimes.get((redis_url, spec.home))
    if runtime is None:
        runtime = _runtimes[(redis_url, spec.home)] = _DaskRuntime(redis_url, home=spec.home)
    ids = AttemptIds(spec.run_id, spec.step_key, spec.attempt, spec.attempt_id, spec.job_reference)
    owner = f"dask:{distributed.get_worker().address}:{os.getpid()}"
    result = None
    with contextlib.suppress(KeyboardInterrupt), interruptible(spec.attempt_id):
        result = run_attempt(runtime, ids, owner=owner)
    if result is not None and result.status == "dropped":
        raise AttemptDroppedError(
            f"attempt {spec.attempt} of step {spec.step_key!r} was claimed before "
            f"({result.holder}); this run of it did nothing"
        )


# -- clusters -------------------------------------------------------------------------


def _import_class(path: str) -> Any:
    module_name, _, name = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(
            f"cluster.cluster_class {path!r} cannot be imported ({exc}); give a class "
            "such as 'dask_kubernetes.KubeCluster' that is installed here",
            path="cluster.cluster_class",
        ) from None


def _start_cluster(config: DaskConfig) -> Any:
    cluster = config.cluster
    if cluster.cluster_class is not None:
        started = _import_class(cluster.cluster_class)(**(cluster.kwargs or {}))
    else:
        local = (cluster.local or LocalClusterConfig()).model_dump(exclude_none=True)
        local.setdefault("dashboard_address", ":0")
        # A worker lost mid-step is the coordinator's to retry, not Dask's.
        local.setdefault("scheduler_kwargs", {"allowed_failures": 0})
        started = distributed.LocalCluster(**local)
    if config.adapt is not None:
        started.adapt(minimum=config.adapt.minimum, maximum=config.adapt.maximum)
    return started


@contextlib.contextmanager
def connect(config: DaskConfig) -> Iterator[distributed.Client]:
    """A client of the configured cluster; a cluster started here is closed on exit."""
    if config.cluster.existing is not None:
        client = distributed.Client(config.cluster.existing.address, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
        return
    cluster = _start_cluster(config)
    try:
        client = distributed.Client(cluster, set_as_default=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        cluster.close()


# -- the executor -----------------------------------------------------------------------


class DaskExecutor(DispatchingExecutor):
    """Steps as Dask futures; the coordinator keeps state, priorities, retries and limits."""

    def __init__(self, config: DaskConfig) -> None:
        self.config = config
        self.retries_enabled = config.retries.is_enabled
        self._client: distributed.Client | None = None
        self._redis: RedisChannel | None = None

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        assert self._client is not None, "execute() connects first"
        return DaskDispatcher(
            run,
            self._client,
            run_attempt_task,
            max_concurrent=self.config.max_concurrent,
            redis=self._redis,
        )

    @contextlib.contextmanager
    def run_scope(self, run: RunContext) -> Iterator[RunLimits]:
        config = self.config
        redis_url = config.redis_url or run.instance.redis_url
        limits = config.run_limits()
        client = None
        try:
            if redis_url is not None:
                client = redis_client(redis_url)
                self._redis = RedisChannel(
                    redis_url,
                    RedisEventStream(client, run.run_id, url=redis_url),
                    AttemptClaims(client, url=redis_url),
                )
            with connect(config) as dask_client:
                self._client = dask_client
                yield limits
        finally:
            self._client = None
            self._redis = None
            if client is not None:
                client.close()
            limits.close()


@executor(
    name="dask",
    config_schema=DaskConfig,
    requirements=OUT_OF_PROCESS_REQUIREMENTS,
    description=(
        "Runs each step attempt as a Dask future on an existing, local or any Dask "
        "cluster; the coordinator keeps priorities, retries and tag limits."
    ),
)
def dask_executor(context: InitExecutorContext) -> Executor:
    """Runs steps on a dask.distributed cluster."""
    return DaskExecutor(context.config_as(DaskConfig))
