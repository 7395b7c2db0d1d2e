"""The Dask executor: each step attempt is one Dask future on a ``dask.distributed`` cluster.

Needs the ``dask`` extra (``pip install 'coreexec[dask]'``); nothing else in coreexec
imports Dask. The coordinator keeps the run's state, priorities, retries and tag limits
as for every executor; Dask runs what it is given:

- one future per attempt, keyed ``<job>.<step_key>.<attempt>-<run id>`` (the dashboard
  names tasks by the part before the run id), submitted with the step's priority, the
  Dask resources of its ``coreexec-dask/resources`` tag and no Dask retries;
- inside the Dask worker, :func:`coreexec.executors.dask_attempt.run_attempt_here` runs
  the attempt from identifiers (run record from the run storage, values through the IO
  manager); events come back live on a Dask event topic of the run, and again as the
  future's result, so none is lost;
- a Dask worker lost mid-step (the scheduler's ``remove-worker`` event, or
  ``KilledWorker``) fails the attempt as ``infrastructure``; its future is cancelled and
  the attempt fenced (:func:`~coreexec.executors.dask_attempt.claim`), so a rerun by Dask
  runs nothing: the retry policy decides;
- cancel cancels the futures and interrupts the running steps on the workers;
- a cluster the executor started (``local`` or ``cluster_class``) is closed when the run
  ends; an ``existing`` one never is.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import ConfigError, RequirementError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event, EventKind
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    DispatchingExecutor,
    Executor,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.executors.dask_attempt import (
    DaskAttempt,
    claim,
    drop_claims,
    interrupt_attempts,
    run_attempt_here,
)
from coreexec.executors.multiprocess import MULTIPROCESS_REQUIREMENTS
from coreexec.limits.base import DEFAULT_LEASE_TTL_MS, TagLimiter
from coreexec.limits.rules import TagConcurrencyLimit
from coreexec.limits.setup import build_limiter
from coreexec.limits.wake_listener import RedisWakeListener
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.storage.sqlite import SqliteRunStorage

try:
    import distributed
except ImportError as exc:  # pragma: no cover - depends on the installation
    raise RequirementError(
        "the dask executor needs dask.distributed: pip install 'coreexec[dask]'"
    ) from exc

logger = logging.getLogger(__name__)

RESOURCES_TAG = "coreexec-dask/resources"
"""JSON object of Dask resources a step needs, e.g. ``{"GPU": 1}``."""

CANCEL_GRACE_S = 5.0
"""How long an interrupted step may take to report its end before it is given up."""


# -- config ---------------------------------------------------------------------------


def _null_means_selected(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: ({} if item is None else item) for key, item in value.items()}
    return value


class ExistingCluster(BaseModel):
    """``existing: {address: tcp://host:8786}``: a running scheduler, never closed."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(min_length=1)


class LocalClusterConfig(BaseModel):
    """``local: {n_workers, threads_per_worker, processes, ...}``: a
    ``distributed.LocalCluster`` started for the run; other keys go to it as they are."""

    model_config = ConfigDict(extra="allow", frozen=True)

    n_workers: int | None = Field(default=None, ge=1)
    threads_per_worker: int | None = Field(default=None, ge=1)
    processes: bool = True


class ClusterConfig(BaseModel):
    """One of ``existing``, ``local`` (the default) or ``cluster_class`` (+ ``kwargs``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    existing: ExistingCluster | None = None
    local: LocalClusterConfig | None = None
    cluster_class: str | None = None
    """Import path of any Dask cluster class, e.g. ``dask_kubernetes.KubeCluster``."""
    kwargs: dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _selected(cls, value: Any) -> Any:
        return _null_means_selected(value)

    @model_validator(mode="after")
    def _one_of(self) -> ClusterConfig:
        chosen = [n for n in ("existing", "local", "cluster_class") if getattr(self, n)]
        if self.local is not None and "local" not in chosen:
            chosen.append("local")
        if len(chosen) > 1:
            raise ValueError(f"give one of existing, local or cluster_class, not {chosen}")
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


class DaskConfig(BaseModel):
    """Config of ``dask_executor``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    adapt: AdaptConfig | None = None
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    max_concurrent: int | None = Field(default=None, ge=1)
    """Attempts submitted at once; None: every ready step (Dask's scheduler queues them
    by priority)."""
    tag_concurrency_limits: list[TagConcurrencyLimit] | None = None
    redis_url: str | None = None
    """Makes the tag limits global: shared with every run using this Redis."""
    limiter_namespace: str = Field(default="default", min_length=1)
    slot_lease_ttl_s: float = Field(default=DEFAULT_LEASE_TTL_MS / 1000, gt=0)

    @model_validator(mode="after")
    def _adapt_needs_own_cluster(self) -> DaskConfig:
        if self.adapt is not None and self.cluster.existing is not None:
            raise ValueError(
                "adapt scales a cluster the executor starts; an existing cluster is scaled "
                "by whoever runs it"
            )
        return self


def step_resources(step: PlannedStep) -> dict[str, float] | None:
    """The Dask resources of a step's ``coreexec-dask/resources`` tag."""
    raw = step.tags.get(RESOURCES_TAG)
    if raw is None:
        return None
    path = f"{step.key}.tags.{RESOURCES_TAG}"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"step {step.key!r}: tag {RESOURCES_TAG} must be a JSON object such as "
            f'{{"GPU": 1}}, got {raw!r} ({exc.msg})',
            path=path,
        ) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in parsed.items()
    ):
        raise ConfigError(
            f"step {step.key!r}: tag {RESOURCES_TAG} must map resource names to numbers, "
            f'such as {{"GPU": 1}}; got {raw!r}',
            path=path,
        )
    return {key: float(value) for key, value in parsed.items()}


# -- inside the Dask worker -----------------------------------------------------------


def run_attempt_task(spec: DaskAttempt, topic: str) -> list[dict[str, Any]]:
    """The function of every coreexec Dask task: run the attempt, publish each event on
    the run's topic as it happens, and return them all."""
    worker = distributed.get_worker()
    events: list[dict[str, Any]] = []

    def emit(event: Event) -> None:
        body = {"seq": len(events), "event": event.to_dict()}
        events.append(body)
        worker.log_event(topic, body)

    with contextlib.suppress(KeyboardInterrupt):  # an interrupted step reported itself
        run_attempt_here(spec, emit)
    return events


# -- the coordinator's side -------------------------------------------------------------


@dataclass
class _Submitted:
    step: PlannedStep
    attempt: StepAttempt
    future: Any
    next_seq: int = 0
    started: bool = False
    ended: bool = False


class DaskDispatcher(StepDispatcher):
    """Submits attempts to a Dask client and relays what they report."""

    def __init__(
        self,
        run: RunContext,
        client: distributed.Client,
        *,
        max_concurrent: int | None,
        wake_listener: RedisWakeListener | None = None,
    ) -> None:
        for step in run.plan.steps:
            step_resources(step)  # a bad tag fails before anything is submitted
        reference = run.plan.job_reference or run.job.reference
        if reference is None:
            raise RequirementError(
                f"job {run.job.name!r} has no 'package.module:attribute' reference, so Dask "
                "workers cannot load it; define it at module level and run it by reference"
            )
        self.run = run
        self.client = client
        self.max_in_flight = max_concurrent
        self._reference = reference
        self._wake_listener = wake_listener
        self.wake_key = wake_listener.wake_key if wake_listener is not None else None
        self._topic = f"coreexec-{run.run_id}"
        self._home = _shared_home(run)
        self._sink: EventSink | None = None
        self._woken = threading.Event()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._attempts: dict[str, _Submitted] = {}
        self._by_key: dict[str, str] = {}
        self._lost: list[LostAttempt] = []
        self._give_up_at: dict[str, float] = {}

    # -- StepDispatcher ---------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        self.client.subscribe_topic(self._topic, self._on_topic)
        self.client.subscribe_topic("all", self._on_cluster_event)
        if self._wake_listener is not None:
            self._wake_listener.start(self.wake)

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        spec = DaskAttempt(
            run_id=self.run.run_id,
            step_key=step.key,
            attempt=attempt.number,
            attempt_id=attempt.attempt_id,
            job_reference=self._reference,
            home=self._home,
        )
        key = f"{self.run.job.name}.{step.key}.{attempt.number}-{self.run.run_id}"
        future = self.client.submit(
            run_attempt_task,
            spec,
            self._topic,
            key=key,
            priority=step.priority,
            resources=step_resources(step),
            retries=0,
            pure=False,
        )
        self._attempts[attempt.attempt_id] = _Submitted(step, attempt, future)
        self._by_key[key] = attempt.attempt_id
        future.add_done_callback(lambda done: self._put("done", attempt.attempt_id))

    def wait(self, timeout_s: float | None) -> None:
        assert self._sink is not None, "start() first"
        self._woken.clear()
        if not self._inbox:
            self._woken.wait(timeout_s)
        self._drain()

    def lost_attempts(self) -> Sequence[LostAttempt]:
        now = time.monotonic()
        for attempt_id, at in list(self._give_up_at.items()):
            if at <= now:
                self._lose(
                    attempt_id,
                    FailureClass.CANCELLED,
                    f"the step did not report its end within {CANCEL_GRACE_S:.0f}s of "
                    "being interrupted (it may be blocked in a C call)",
                )
        lost, self._lost = self._lost, []
        return lost

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        ids = [a.attempt_id for a in attempts if a.attempt_id in self._attempts]
        if not ids:
            return
        running = [i for i in ids if self._attempts[i].started]
        if running:
            with contextlib.suppress(Exception):
                self.client.run(interrupt_attempts, running, on_error="return")
        self.client.cancel([self._attempts[i].future for i in ids], force=True)
        for attempt_id in ids:
            if self._attempts[attempt_id].started:
                self._give_up_at.setdefault(attempt_id, time.monotonic() + CANCEL_GRACE_S)
            else:
                self._lose(
                    attempt_id, FailureClass.CANCELLED, "run canceled before the step started"
                )

    def wake(self) -> None:
        self._woken.set()

    def close(self) -> None:
        try:
            if self._wake_listener is not None:
                self._wake_listener.stop()
            drop_claims(self.run.instance.home, self.run.run_id)
        finally:
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic(self._topic)
            with contextlib.suppress(Exception):
                self.client.unsubscribe_topic("all")
            pending = [s.future for s in self._attempts.values() if not s.ended]
            if pending:
                with contextlib.suppress(Exception):
                    self.client.cancel(pending, force=True)
            self._attempts.clear()

    # -- hearing back (client threads put, the coordinator's thread drains) ---------------

    def _put(self, kind: str, body: Any) -> None:
        self._inbox.append((kind, body))
        self._woken.set()

    def _on_topic(self, event: tuple[float, Any]) -> None:
        self._put("event", event[1])

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict) and message.get("action") == "remove-worker":
            self._put("worker-lost", message)

    def _drain(self) -> None:
        while self._inbox:
            kind, body = self._inbox.popleft()
            if kind == "event":
                self._on_event(body)
            elif kind == "done":
                self._on_done(body)
            else:
                self._on_worker_lost(body)

    def _on_event(self, body: dict[str, Any]) -> None:
        assert self._sink is not None
        event = Event.from_dict(body["event"])
        submitted = self._attempts.get(event.attempt_id or "")
        if submitted is None or submitted.ended or body["seq"] < submitted.next_seq:
            return  # already heard (topic and result both carry it) or given up
        submitted.next_seq = body["seq"] + 1
        if event.kind is EventKind.STEP_START:
            submitted.started = True
        if event.kind in STEP_ATTEMPT_ENDINGS:
            self._forget(submitted)
        self._sink(event)

    def _on_done(self, attempt_id: str) -> None:
        submitted = self._attempts.get(attempt_id)
        if submitted is None or submitted.ended:
            return
        future = submitted.future
        if future.status == "finished":
            for body in future.result():  # only what the topic did not bring
                self._on_event(body)
            if not submitted.ended:
                self._lose(
                    attempt_id,
                    FailureClass.INFRASTRUCTURE,
                    "the Dask task ended without the step's report (Dask ran it again after "
                    "its worker was lost, and the attempt had been claimed)",
                )
        elif future.status == "cancelled":
            if not submitted.started:
                self._lose(attempt_id, FailureClass.CANCELLED, "its Dask future was cancelled")
            else:  # an interrupted step reports its own end, within the grace
                self._give_up_at.setdefault(attempt_id, time.monotonic() + CANCEL_GRACE_S)
        else:
            self._lose(attempt_id, FailureClass.INFRASTRUCTURE, _describe(future.exception()))

    def _on_worker_lost(self, message: dict[str, Any]) -> None:
        worker = message.get("worker", "a worker")
        for key in message.get("processing-tasks") or ():
            attempt_id = self._by_key.get(str(key))
            submitted = self._attempts.get(attempt_id or "")
            if submitted is None or submitted.ended or not submitted.started:
                # Not started: Dask gives it to another worker, and it runs there once.
                continue
            step = submitted.attempt
            self._lose(
                submitted.attempt.attempt_id,
                FailureClass.INFRASTRUCTURE,
                f"Dask worker {worker} running step {step.step_key!r} (attempt "
                f"{step.number}) was lost",
            )
            with contextlib.suppress(Exception):
                # Dask would run it again elsewhere; retries are the coordinator's.
                self.client.cancel([submitted.future], force=True)

    def _lose(self, attempt_id: str, failure_class: FailureClass, message: str) -> None:
        submitted = self._attempts.get(attempt_id)
        if submitted is not None:
            self._forget(submitted)
        # A later run of this attempt (Dask's, after a lost worker) must run nothing.
        claim(self.run.instance.home, self.run.run_id, attempt_id)
        self._give_up_at.pop(attempt_id, None)
        self._lost.append(LostAttempt(attempt_id, failure_class, message))

    def _forget(self, submitted: _Submitted) -> None:
        submitted.ended = True
        attempt_id = submitted.attempt.attempt_id
        self._give_up_at.pop(attempt_id, None)
        self._attempts.pop(attempt_id, None)
        self._by_key.pop(str(submitted.future.key), None)


def _describe(exc: BaseException | None) -> str:
    if isinstance(exc, distributed.KilledWorker):
        return f"the Dask worker running it died ({exc})"
    return f"the Dask task failed outside the step: {exc!r}"


def _shared_home(run: RunContext) -> str | None:
    """The instance home to send to workers, when the run storage is the default one in
    it (``Instance.at(home)`` on the worker finds the same storage and outputs)."""
    instance = run.instance
    storage = instance.storage
    if isinstance(storage, SqliteRunStorage) and storage.path == instance.home / "runs.db":
        return str(instance.home)
    return None


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
        self._wake_listener: RedisWakeListener | None = None

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        assert self._client is not None, "execute() connects first"
        return DaskDispatcher(
            run,
            self._client,
            max_concurrent=self.config.max_concurrent,
            wake_listener=self._wake_listener,
        )

    def execute(self, run: RunContext) -> None:
        from coreexec.execution.coordinator import Coordinator

        limiter, rules = self._limiter()
        if limiter is not None and self.config.redis_url is not None:
            from coreexec.limits.redis_limiter import RedisTagLimiter

            assert isinstance(limiter, RedisTagLimiter)
            self._wake_listener = RedisWakeListener(
                limiter, run.run_id, self.config.limiter_namespace
            )
        try:
            with connect(self.config) as client:
                self._client = client
                Coordinator(
                    run,
                    self.create_dispatcher(run),
                    retries_enabled=self.retries_enabled,
                    limiter=limiter,
                    limit_rules=rules,
                ).run()
        finally:
            self._client = None
            self._wake_listener = None
            close = getattr(limiter, "close", None)
            if close is not None:
                close()

    def _limiter(self) -> tuple[TagLimiter | None, tuple[TagConcurrencyLimit, ...]]:
        return build_limiter(
            self.config.tag_concurrency_limits,
            path="run_config.execution.config.tag_concurrency_limits",
            redis_url=self.config.redis_url,
            namespace=self.config.limiter_namespace,
            lease_ttl_ms=round(self.config.slot_lease_ttl_s * 1000),
        )


@executor(
    name="dask",
    config_schema=DaskConfig,
    requirements=MULTIPROCESS_REQUIREMENTS,
    description=(
        "Runs each step attempt as a Dask future on an existing, local or any Dask "
        "cluster; the coordinator keeps priorities, retries and tag limits."
    ),
)
def dask_executor(context: InitExecutorContext) -> Executor:
    """Runs steps on a dask.distributed cluster."""
    config = context.config
    assert isinstance(config, DaskConfig)
    return DaskExecutor(config)
