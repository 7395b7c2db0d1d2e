"""The Celery run launcher: a submitted run's coordinator becomes a task on ``coreexec.runs``.

Found by ``coreexec.runs.launcher.get_run_launcher`` through the entry point
``coreexec.run_launchers: celery``. The message carries the run id only (and whether to
resume); its task id is the run id, so a second launch of the same run is the same task.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
from kombu.exceptions import KombuError, OperationalError

from celery_app.app import COORDINATOR_TASK_NAME
from celery_app.queue_presence import QueuePresence
from celery_app.queues import RUNS_QUEUE
from coreexec.errors import BrokerConnectionError, ConfigError, CoreExecError, LauncherError
from coreexec.redis_clients import redis_client
from coreexec.redis_urls import safe_url

if TYPE_CHECKING:
    from celery_app.app import CoreexecApp

log = logging.getLogger(__name__)

PUBLISH_RETRY_POLICY: dict[str, Any] = {
    "max_retries": 2,
    "interval_start": 0.0,
    "interval_step": 0.2,
    "interval_max": 0.5,
}
"""A broker that is down fails the launch in about a second, not after Celery's default
retries; the caller marks the run failed and says how to fix it."""


def coordinator_task_id(run_id: str, *, resume: bool) -> str:
    """The run id; a resume gets its own id, since the first task may still be known."""
    return f"{run_id}:resume:{uuid.uuid4().hex[:8]}" if resume else run_id


class CeleryRunLauncher:
    """Sends ``coreexec.coordinate_run`` to the ``coreexec.runs`` queue of the app."""

    name = "celery"

    def __init__(self, app: CoreexecApp | None = None) -> None:
        if app is None:
            from celery_app import app as default_app

            app = default_app
        self.app = app

    @property
    def broker_url(self) -> str:
        return self.app.settings.broker_url

    @property
    def redis_url(self) -> str | None:
        """The Redis of the run event streams, where run handles wait."""
        try:
            return self.app.settings.events_redis_url
        except ConfigError:
            return None

    def launch(self, run_id: str, *, resume: bool = False) -> None:
        """Publish the coordinator task; BrokerConnectionError when the broker is down."""
        url = safe_url(self.broker_url)
        try:
            self.app.send_task(
                COORDINATOR_TASK_NAME,
                args=[run_id],
                kwargs={"resume": resume},
                queue=RUNS_QUEUE,
                task_id=coordinator_task_id(run_id, resume=resume),
                # Run handles read the run storage; the result backend is not needed, and
                # asking it to watch the task would make a broker outage hang here.
                ignore_result=True,
                retry=True,
                retry_policy=PUBLISH_RETRY_POLICY,
            )
        except (OperationalError, redis.ConnectionError, ConnectionError, TimeoutError) as exc:
            raise BrokerConnectionError(
                f"cannot reach the broker at {url} to hand run {run_id} to a coordinator "
                f"({exc}); start redis-server there, or set COREEXEC_BROKER_URL to a running "
                "broker",
                url=url,
            ) from exc
        except KombuError as exc:
            raise LauncherError(
                f"the broker at {url} refused the coordinator task of run {run_id}: {exc}"
            ) from exc
        self._warn_without_consumers(run_id)

    def terminate_attempts(self, run_id: str, attempt_ids: Sequence[str]) -> None:
        """Revoke the attempts (their task ids) with SIGTERM to the processes running
        them, as a live coordinator's cancel does; BrokerConnectionError when the broker
        cannot take the broadcast."""
        if not attempt_ids:
            return
        url = safe_url(self.broker_url)
        try:
            self.app.control.revoke(list(attempt_ids), terminate=True, signal="SIGTERM")
        except (OperationalError, redis.RedisError, OSError, KombuError) as exc:
            raise BrokerConnectionError(
                f"cannot ask the workers through the broker at {url} to stop "
                f"{len(attempt_ids)} attempts of run {run_id} ({exc}); they run to their end",
                url=url,
            ) from exc

    def _warn_without_consumers(self, run_id: str) -> None:
        """Say so when no live worker consumes ``coreexec.runs``: the run would wait."""
        redis_url = self.redis_url
        if redis_url is None:
            return
        try:
            client = redis_client(redis_url)
        except CoreExecError:
            return
        try:
            consumers = QueuePresence(client, url=redis_url).consumers(RUNS_QUEUE)
        except CoreExecError:
            return
        finally:
            client.close()
        if not consumers:
            log.warning(
                "run %s waits in queue %s, which no worker consumes right now; start one "
                "with `coreexec worker -Q %s`",
                run_id,
                RUNS_QUEUE,
                RUNS_QUEUE,
            )
