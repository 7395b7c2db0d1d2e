"""What a worker process keeps between step attempts, so a step costs no rebuilding.

Per worker process (a prefork child makes its own after the fork): one Redis client,
the instance (run storage, IO manager), the heartbeat thread, and caches of plans (per
job reference: the plan of a job never changes while its module is loaded) and of runs
(per run id: run config and tags are fixed when the run is created). Jobs themselves are
cached by :func:`coreexec.reference.load_job`.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from celery_app.heartbeats import Heartbeats
from celery_app.settings import CelerySettings
from coreexec.errors import ConfigError
from coreexec.instance import Instance
from coreexec.io_managers import IOManager
from coreexec.job import JobDefinition
from coreexec.plan import ExecutionPlan
from coreexec.reference import load_job
from coreexec.storage.base import RunRecord
from coreexec.transport import keys
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.redis_events import RedisEventStream, redis_client, wrap_redis_error

RUN_CACHE_SIZE = 256
"""Runs remembered per worker process (a run's record is read once per process)."""

DEFAULT_HEARTBEAT_INTERVAL_S = 2.0
"""Used when a run's settings say nothing (a dispatcher older than this worker)."""


@dataclass(frozen=True)
class RunSettings:
    """What the dispatcher wrote for the run's workers (``coreexec:run:{id}:settings``)."""

    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S

    @classmethod
    def from_hash(cls, raw: Mapping[Any, Any]) -> RunSettings:
        values = {
            (k.decode() if isinstance(k, bytes) else str(k)): (
                v.decode() if isinstance(v, bytes) else str(v)
            )
            for k, v in raw.items()
        }
        interval = values.get("heartbeat_interval_s")
        try:
            return cls(heartbeat_interval_s=float(interval)) if interval else cls()
        except ValueError:
            return cls()

    def to_hash(self) -> dict[str, str]:
        return {"heartbeat_interval_s": repr(self.heartbeat_interval_s)}


@dataclass(frozen=True)
class RunInfo:
    """One run as a worker needs it."""

    record: RunRecord
    settings: RunSettings
    stream: RedisEventStream


class WorkerRuntime:
    """Per-process state of a worker; get it with :func:`runtime_for`."""

    def __init__(self, settings: CelerySettings) -> None:
        self.settings = settings
        self.pid = os.getpid()
        self.redis_url = settings.events_redis_url
        self._client: redis.Redis | None = None
        self._instance: Instance | None = None
        self._io_manager: IOManager | None = None
        self._claims: AttemptClaims | None = None
        self.heartbeats = Heartbeats()
        self._plans: dict[str, ExecutionPlan] = {}
        self._runs: OrderedDict[str, RunInfo] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis_client(self.redis_url)
        return self._client

    @property
    def claims(self) -> AttemptClaims:
        if self._claims is None:
            self._claims = AttemptClaims(self.client, url=self.redis_url)
        return self._claims

    @property
    def instance(self) -> Instance:
        if self._instance is None:
            if self.settings.home:
                os.environ.setdefault("COREEXEC_HOME", self.settings.home)
            instance = Instance.from_env()
            if instance.ephemeral:
                raise ConfigError("workers need a durable instance; set COREEXEC_HOME")
            self._instance = instance
        return self._instance

    @property
    def io_manager(self) -> IOManager:
        if self._io_manager is None:
            self._io_manager = self.instance.io_manager()
        return self._io_manager

    def job(self, reference: str) -> JobDefinition:
        return load_job(reference)

    def plan(self, reference: str, job: JobDefinition) -> ExecutionPlan:
        """The plan of the job at ``reference``, built once per process."""
        plan = self._plans.get(reference)
        if plan is None:
            plan = ExecutionPlan.from_job(job, job_reference=reference)
            self._plans[reference] = plan
        return plan

    def run(self, run_id: str) -> RunInfo:
        """The run's record and settings, read once per process (RunNotFoundError if the
        run storage has no such run)."""
        with self._lock:
            found = self._runs.get(run_id)
            if found is not None:
                self._runs.move_to_end(run_id)
                return found
        record = self.instance.storage.get_run(run_id)
        try:
            raw = self.client.hgetall(keys.run_settings(run_id))
        except redis.RedisError as exc:
            raise wrap_redis_error(exc, url=self.redis_url, what="read run settings") from exc
        info = RunInfo(
            record=record,
            settings=RunSettings.from_hash(raw),
            stream=RedisEventStream(self.client, run_id, url=self.redis_url),
        )
        with self._lock:
            self._runs[run_id] = info
            while len(self._runs) > RUN_CACHE_SIZE:
                self._runs.popitem(last=False)
        return info

    def stream(self, run_id: str) -> RedisEventStream:
        """The run's stream without reading the run (for reports before the run is known)."""
        with self._lock:
            found = self._runs.get(run_id)
        if found is not None:
            return found.stream
        return RedisEventStream(self.client, run_id, url=self.redis_url)


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime_for(settings: CelerySettings) -> WorkerRuntime:
    """This process's runtime (a new one after a fork or when the settings changed)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid() or _runtime.settings is not settings:
            _runtime = WorkerRuntime(settings)
        return _runtime
