"""What a process that runs step attempts keeps between them, so a step costs no rebuilding.

Per process (a forked child makes its own): one Redis client, the instance (run
storage, IO manager), the heartbeat thread, and caches of plans (per job reference: the
plan of a job never changes while its module is loaded) and of runs (per run id: run
config, tags and settings are fixed when the run is created). Jobs themselves are cached
by :func:`coreexec.reference.load_job`. A Celery worker, a Dask worker and the step
entrypoint inside a container each hold one.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

from coreexec.errors import ConfigError
from coreexec.heartbeats import Heartbeats
from coreexec.instance import HOME_ENV, Instance
from coreexec.io_managers import IOManager
from coreexec.job import JobDefinition
from coreexec.plan import ExecutionPlan
from coreexec.redis_clients import Redis, RedisError, redis_client, wrap_redis_error
from coreexec.reference import load_job
from coreexec.settings import Settings
from coreexec.storage.base import RunRecord
from coreexec.transport import keys
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.redis_events import RedisEventStream
from coreexec.transport.run_settings import RunSettings

RUN_CACHE_SIZE = 256
"""Runs remembered per process (a run's record is read once per process)."""


@dataclass(frozen=True)
class RunInfo:
    """One run as a process running its steps needs it."""

    record: RunRecord
    settings: RunSettings
    stream: RedisEventStream


class AttemptRuntime:
    """Per-process state for running attempts of any run on one Redis.

    ``home`` (when given) becomes ``COREEXEC_HOME`` unless that is set already; the
    instance is the durable one of :meth:`coreexec.Instance.from_env`.
    """

    def __init__(
        self, redis_url: str, *, home: str | None = None, settings: Settings | None = None
    ) -> None:
        self.pid = os.getpid()
        self.redis_url = redis_url
        self.home = home
        self.core_settings = settings
        self._client: Redis | None = None
        self._instance: Instance | None = None
        self._io_manager: IOManager | None = None
        self._claims: AttemptClaims | None = None
        self.heartbeats = Heartbeats()
        self._plans: dict[str, ExecutionPlan] = {}
        self._runs: OrderedDict[str, RunInfo] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def client(self) -> Redis:
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
            if self.core_settings is not None:
                instance = Instance.from_settings(self.core_settings)
            else:
                if self.home:
                    os.environ.setdefault(HOME_ENV, self.home)
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
        except RedisError as exc:
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
