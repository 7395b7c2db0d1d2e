"""The coordinator task (``coreexec.coordinate_run``): one submitted run, coordinated in a
worker of the ``coreexec.runs`` queue until it ends.

Arguments: ``[run_id]`` and ``resume`` (a bool); the task id is the run id (a resume's is
``<run_id>:resume:<n>``). Everything else comes from the run storage. The task claims
the run first (see :mod:`coreexec.runs.coordinate`), so a duplicate delivery does nothing,
and a delivery that comes back after its coordinator died resumes the run. It returns a
small status dict (Flower shows it).

The coordinator holds its pool process for the whole run, mostly blocked on Redis; give
``coreexec.runs`` its own worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.process
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from celery_app.app import COORDINATOR_TASK_NAME
from coreexec.errors import CoreExecError, RunNotFoundError
from coreexec.instance import Instance
from coreexec.runs.coordinate import coordinate_launched_run

if TYPE_CHECKING:
    from celery_app.app import CoreexecApp

__all__ = ["COORDINATOR_TASK_NAME", "coordinate", "register_coordinator_task"]

log = logging.getLogger(__name__)


_instances: dict[tuple[int, str], Instance] = {}


def coordinator_instance(app: CoreexecApp) -> Instance:
    """The durable instance of this worker, with the app's Redis for run events: one
    per process and settings, so a PostgreSQL pool serves every run it coordinates."""
    core = app.settings.core()
    key = (os.getpid(), core.model_dump_json())
    instance = _instances.get(key)
    if instance is None:
        instance = Instance.from_settings(core)
        instance.redis_url = core.resolved_redis_url
        _instances[key] = instance
    return instance


@contextmanager
def may_start_processes() -> Iterator[None]:
    """Let the run's executor start processes from this pool process.

    Celery's prefork pool processes are daemonic and carry billiard's authentication
    key, so multiprocessing would refuse to start children (``daemonic processes are
    not allowed to have children``) or to hand them the key, and a job on the (default)
    multiprocess executor could not run here. Its pool processes die with the
    coordinator anyway (they ask the kernel for SIGKILL when their parent dies).
    """
    process = multiprocessing.current_process()
    config = getattr(process, "_config", None)
    if not isinstance(config, dict):
        yield
        return
    saved = dict(config)
    config["daemon"] = False
    # multiprocessing hands its children the key, but billiard's key type refuses to be
    # pickled outside billiard; the same bytes in multiprocessing's own type may be.
    key_type = multiprocessing.process.AuthenticationString  # type: ignore[attr-defined]
    config["authkey"] = key_type(bytes(process.authkey))
    try:
        yield
    finally:
        config.clear()
        config.update(saved)


def coordinate(app: CoreexecApp, run_id: str, *, resume: bool, owner: str) -> dict[str, Any]:
    """What the task does; returns its status dict."""
    try:
        instance = coordinator_instance(app)
        with may_start_processes():
            outcome = coordinate_launched_run(
                run_id,
                instance=instance,
                redis_url=instance.redis_url,
                resume=resume,
                owner=owner,
            )
    except RunNotFoundError as exc:
        # A worker whose COREEXEC_HOME is not the submitter's: nothing it can do.
        log.error(
            "coordinator %s: %s (do the submitter and this worker share "
            "COREEXEC_STORAGE_URL, or COREEXEC_HOME?)",
            owner,
            exc,
        )
        return {"run_id": run_id, "status": "UNKNOWN_RUN", "coordinated": False}
    except CoreExecError as exc:
        log.error("coordinator %s could not coordinate run %s: %s", owner, run_id, exc)
        raise
    log.info("%s", outcome.message)
    return {
        "run_id": run_id,
        "status": outcome.status.value,
        "coordinated": outcome.coordinated,
        "resumed": outcome.resumed,
    }


def register_coordinator_task(app: CoreexecApp) -> Any:
    """Add ``coreexec.coordinate_run`` to ``app``; returns the task."""

    @app.task(  # type: ignore[untyped-decorator]
        name=COORDINATOR_TASK_NAME,
        bind=True,
        shared=False,  # each make_app() registers its own; shared ones clash across apps
        acks_late=True,
        # A coordinator killed with its process comes back to another worker, which
        # resumes the run (or drops the message when a coordinator is alive).
        reject_on_worker_lost=True,
        autoretry_for=(),
        max_retries=0,
        track_started=True,
    )
    def coordinate_run(self: Any, run_id: str, resume: bool = False) -> dict[str, Any]:
        owner = f"{self.request.hostname or 'worker'} pid {os.getpid()} task {self.request.id}"
        return coordinate(self.app, run_id, resume=bool(resume), owner=owner)

    return coordinate_run
