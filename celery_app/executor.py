"""``celery_executor``: a job's steps as Celery tasks on a ``celery worker`` fleet.

The coordinating process (``execute_job`` here, or a coordinator task after
``submit_job``) keeps the run's state and publishes each ready step to a queue chosen by
its priority (:mod:`celery_app.routing`); workers run the steps in-process
(:mod:`celery_app.step_task`) and report on the run's Redis stream
(:mod:`celery_app.dispatcher`). Tag concurrency limits hold across every run sharing the
Redis (the Redis tag limiter; lease ids are attempt ids).
"""

from __future__ import annotations

import json
import threading
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from celery_app.app import CoreexecApp, check_json_only, make_app
from celery_app.attempt_watch import DispatchTimings
from celery_app.dispatcher import CeleryDispatcher
from celery_app.queue_presence import QueuePresence
from celery_app.queues import DEFAULT_QUEUE
from celery_app.routing import DEFAULT_BANDS, BrokerKind, PriorityBand, StepRouter
from celery_app.settings import CelerySettings
from coreexec.errors import ConfigError
from coreexec.execution.dispatcher import StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.base import (
    OUT_OF_PROCESS_REQUIREMENTS,
    DispatchingExecutor,
    Executor,
    InitExecutorContext,
    RetriesConfig,
    executor,
)
from coreexec.limits.base import DEFAULT_LEASE_TTL_MS
from coreexec.limits.keys import DEFAULT_NAMESPACE
from coreexec.limits.setup import NO_LIMITS, RunLimits, build_limiter
from coreexec.redis_clients import Redis, redis_client
from coreexec.transport.outage import DEFAULT_OUTAGE_TOLERANCE_S
from coreexec.transport.run_settings import RunSettings
from workers.docker.config import DockerConfig, check_steps
from workers.in_process import IN_PROCESS
from workers.registry import DOCKER, steps_launched_by

CONFIG_PATH = "celery_executor"


class CeleryExecutorConfig(BaseModel):
    """Config of ``celery_executor`` (every field optional)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    broker: str | None = None
    """Broker URL (default: ``COREEXEC_BROKER_URL``)."""
    backend: str | None = None
    """Result backend URL (default: ``COREEXEC_RESULT_BACKEND``, else the broker)."""
    include: list[str] = Field(default_factory=list)
    """Modules the coordinator's Celery app imports."""
    config_source: dict[str, Any] = Field(default_factory=dict)
    """Extra Celery settings (lowercase names); JSON-only settings cannot be changed."""
    retries: RetriesConfig = Field(default_factory=RetriesConfig)
    priority_bands: list[PriorityBand] = Field(default_factory=lambda: list(DEFAULT_BANDS))
    """Priority → queue; the first band holding a step's priority wins."""
    default_queue: str = Field(default=DEFAULT_QUEUE, min_length=1)
    """Queue of steps no band holds."""
    queued_timeout_s: float = Field(default=300.0, gt=0)
    """An attempt not started this long after publishing fails if its queue has no
    live consumer (a busy queue with consumers keeps it waiting)."""
    heartbeat_interval_s: float = Field(default=2.0, gt=0)
    heartbeat_timeout_s: float = Field(default=10.0, gt=0)
    """A started attempt silent this long is lost (infrastructure failure)."""
    redis_outage_tolerance_s: float = Field(default=DEFAULT_OUTAGE_TOLERANCE_S, gt=0)
    """A Redis outage this short fails nothing: the coordinator and workers retry, the
    coordinator reads on from where it was and publishes again what Redis lost. A longer
    one fails the run, naming this setting; ``coreexec runs resume`` finishes it."""
    tag_concurrency_limits: list[dict[str, Any]] | None = None
    limiter_namespace: str = Field(default=DEFAULT_NAMESPACE, min_length=1)
    slot_lease_ttl_s: float = Field(default=DEFAULT_LEASE_TTL_MS / 1000, gt=0)
    """Slots of a coordinator that stops refreshing them come back after this long."""
    redis_url: str | None = None
    """Redis of run events, claims and limits (default: ``COREEXEC_REDIS_URL``, else
    the broker when it is Redis). Workers must use the same one."""
    io_url: str | None = None
    """Step outputs of the run as an fsspec URL, e.g. ``s3://bucket/prefix`` (default:
    ``COREEXEC_IO_URL``, else files under ``COREEXEC_HOME``). Kept with the run (tag
    ``coreexec/io_url``), so its workers and a resume use it whatever their settings."""

    @field_validator("heartbeat_timeout_s")
    @classmethod
    def _timeout_above_interval(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("heartbeat_interval_s")
        if interval is not None and value < 2 * interval:
            raise ValueError(
                f"must be at least twice heartbeat_interval_s ({interval:g}), or one late "
                "heartbeat fails a healthy step"
            )
        return value

    @field_validator("config_source")
    @classmethod
    def _json_only(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            check_json_only(value, path="config_source")
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value


_apps: dict[str, CoreexecApp] = {}
_clients: dict[str, Redis] = {}
_cache_lock = threading.Lock()


def _app_for(settings: CelerySettings) -> CoreexecApp:
    """One app per distinct settings in this process (its producer pool stays warm)."""
    key = json.dumps(settings.model_dump(mode="json"), sort_keys=True, default=repr)
    with _cache_lock:
        app = _apps.get(key)
        if app is None:
            app = make_app(settings, set_as_current=False)
            _apps[key] = app
        return app


def _client_for(url: str) -> Redis:
    with _cache_lock:
        client = _clients.get(url)
    if client is None:
        client = redis_client(url)
        with _cache_lock:
            client = _clients.setdefault(url, client)
    return client


def settings_for(config: CeleryExecutorConfig) -> CelerySettings:
    """Environment settings with the executor config over them."""
    base = CelerySettings.from_env()
    extra = {**base.celery_config, **config.config_source} if config.config_source else None
    return base.merged(
        broker_url=config.broker,
        result_backend=config.backend,
        redis_url=config.redis_url,
        include=tuple(config.include) or None,
        celery_config=extra,
    )


class CeleryExecutor(DispatchingExecutor):
    """Runs steps as Celery tasks; one :class:`CeleryDispatcher` per run."""

    def __init__(
        self,
        config: CeleryExecutorConfig,
        *,
        app: CoreexecApp,
        client: Redis,
        redis_url: str,
        limits: RunLimits = NO_LIMITS,
    ) -> None:
        self.config = config
        self.app = app
        self.client = client
        self.redis_url = redis_url
        self.retries_enabled = config.retries.is_enabled
        self.router = StepRouter(
            config.priority_bands,
            default_queue=config.default_queue,
            broker=BrokerKind.of_url(str(app.conf.broker_url)),
        )
        self.timings = DispatchTimings(
            queued_timeout_s=config.queued_timeout_s,
            heartbeat_interval_s=config.heartbeat_interval_s,
            heartbeat_timeout_s=config.heartbeat_timeout_s,
            outage_tolerance_s=config.redis_outage_tolerance_s,
        )
        self.presence = QueuePresence(client, url=redis_url)
        self.tag_limiter, self.tag_concurrency_limits = limits.limiter, limits.rules

    def launch_settings(self, run: RunContext) -> RunSettings:
        """Where the run's steps run: in the worker's process unless a step's
        ``coreexec/launcher`` tag says otherwise (checked here, before anything runs)."""
        docker_steps = steps_launched_by(run.plan.steps, IN_PROCESS, DOCKER)
        if not docker_steps:
            return RunSettings()
        check_steps(list(run.plan.steps), DockerConfig(), docker_steps)
        return RunSettings(launcher_config={DOCKER: {}})

    def create_dispatcher(self, run: RunContext) -> StepDispatcher:
        return CeleryDispatcher(
            run,
            self.app,
            self.client,
            self.router,
            self.timings,
            redis_url=self.redis_url,
            presence=self.presence,
            launch=self.launch_settings(run),
        )


@executor(
    name="celery",
    config_schema=CeleryExecutorConfig,
    requirements=OUT_OF_PROCESS_REQUIREMENTS,
)
def celery_executor(context: InitExecutorContext) -> Executor:
    """Runs each step as a Celery task on the workers consuming its queue."""
    return build_executor(context.config_as(CeleryExecutorConfig), CeleryExecutor)


def build_executor(
    config: CeleryExecutorConfig, kind: type[CeleryExecutor] = CeleryExecutor
) -> CeleryExecutor:
    """A celery executor (or a subclass) for ``config``, with its app and Redis client
    shared by every executor of the same settings in this process."""
    settings = settings_for(config)
    redis_url = settings.events_redis_url
    client = _client_for(redis_url)
    return kind(
        config,
        app=_app_for(settings),
        client=client,
        redis_url=redis_url,
        limits=build_limiter(
            config.tag_concurrency_limits,
            path=f"{CONFIG_PATH}.tag_concurrency_limits",
            redis_url=redis_url,
            client=client,
            namespace=config.limiter_namespace,
            lease_ttl_ms=round(config.slot_lease_ttl_s * 1000),
        ),
    )
