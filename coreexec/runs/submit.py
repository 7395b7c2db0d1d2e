"""Programmatic submission: store a run, hand it to a run launcher, follow it by handle.

``submit_job`` returns as soon as the run is handed over; the run's coordinator runs
elsewhere (with the Celery launcher: as a task on the ``coreexec.runs`` queue). The
:class:`RunHandle` reads the run storage for the truth and blocks on the run's Redis
event stream to learn, without polling, when to read it again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from coreexec.errors import CoreExecError, LauncherError, RequirementError
from coreexec.instance import Instance, home_from_env
from coreexec.job import JobDefinition
from coreexec.reference import infer_reference, load_job
from coreexec.runs.create import create_run
from coreexec.runs.handle import RunHandle
from coreexec.runs.launcher import (
    RunLauncher,
    event_redis_url,
    get_run_launcher,
    mark_launch_failed,
)
from coreexec.tags import TagValue

log = logging.getLogger(__name__)


def _reference_of(job: JobDefinition) -> str:
    reference = job.reference or infer_reference(job)
    if reference is None:
        raise RequirementError(
            f"submit_job hands job {job.name!r} to a coordinator in another process, which "
            "loads it by reference: define it at module level in an importable module and "
            "submit it as 'package.module:attribute'"
        )
    return reference


def submit_job(
    ref: JobDefinition | str,
    run_config: Mapping[str, Any] | None = None,
    *,
    tags: Mapping[str, TagValue] | None = None,
    instance: Instance | None = None,
    launcher: RunLauncher | None = None,
) -> RunHandle:
    """Store a run of ``ref`` and hand it to the run launcher; returns its handle at once.

    ``ref`` is a ``"package.module:attribute"`` reference (or a job defined at module
    level, whose reference is found). The run config, tags and job are validated before
    anything is stored. The launcher is ``launcher``, else the configured one
    (``$COREEXEC_RUN_LAUNCHER``, default Celery: the coordinator runs as a task on the
    ``coreexec.runs`` queue). When the hand-over fails (e.g. the broker is down) the
    stored run is marked FAILURE with an event saying why, and the error is raised:
    :class:`~coreexec.errors.BrokerConnectionError` names the broker URL.
    """
    chosen_instance = instance or Instance.from_env()
    if chosen_instance.ephemeral:
        raise RequirementError(
            "submit_job needs run storage the coordinator's process can read; use "
            "Instance.from_env() (COREEXEC_HOME), not an ephemeral instance"
        )
    if Path(chosen_instance.home).resolve() != home_from_env().resolve():
        log.warning(
            "submitting to an instance at %s while COREEXEC_HOME is %s: coordinators read "
            "the instance their own COREEXEC_HOME names",
            chosen_instance.home,
            home_from_env(),
        )
    job = load_job(ref) if isinstance(ref, str) else ref
    _reference_of(job)
    chosen_launcher = launcher or get_run_launcher()
    record = create_run(job, run_config=run_config, tags=tags, instance=chosen_instance)
    try:
        chosen_launcher.launch(record.run_id)
    except BaseException as exc:
        mark_launch_failed(chosen_instance, record.run_id, chosen_launcher.name, exc)
        if isinstance(exc, CoreExecError) or not isinstance(exc, Exception):
            raise
        raise LauncherError(
            f"run launcher {chosen_launcher.name!r} failed to launch run {record.run_id}: {exc!r}"
        ) from exc
    return RunHandle(
        record.run_id,
        chosen_instance,
        event_redis_url(chosen_instance, chosen_launcher),
        chosen_launcher,
    )
