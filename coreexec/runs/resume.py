"""Resuming a run: re-execute a failed, canceled or orphaned run without re-running the
steps that already succeeded.

:func:`check_resumable` says whether a run may resume now (it FAILED or was CANCELED, or
its status says it runs but its coordinator is dead, see
:mod:`coreexec.transport.coordinator_heartbeat`). :func:`resume_run` claims it and
coordinates it again, in this process by default or handed to the run launcher. What the
resumed run re-runs is decided in :mod:`coreexec.runs.resume_prep`: attempts the old
coordinator left in flight are settled, the stream is drained into storage, and
:func:`~coreexec.runs.resume_prep.done_steps` (the steps with a STEP_SUCCESS) are skipped.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

from coreexec.errors import ResumeError
from coreexec.execution.run_context import EventListener
from coreexec.instance import Instance
from coreexec.redis_clients import Redis, RedisError, client_url, wrap_redis_error
from coreexec.runs.coordinate import (
    CoordinationOutcome,
    coordinate_claimed_run,
    last_event_id,
    redis_client_for,
)
from coreexec.runs.launcher import (
    RunLauncher,
    event_redis_url,
    get_run_launcher,
    mark_launch_failed,
)
from coreexec.runs.resume_prep import DEFAULT_IN_FLIGHT_TIMEOUT_S
from coreexec.storage.base import RunRecord, RunStatus, RunStorage
from coreexec.transport.coordinator_heartbeat import CoordinatorState, coordinator_status

FINISHED = frozenset({RunStatus.FAILURE, RunStatus.CANCELED})


def check_resumable(
    instance: Instance, run_id: str, client: Redis | None, *, force: bool = False
) -> RunRecord:
    """The run, if it may be resumed now; else :class:`ResumeError` saying why.

    ``force`` resumes a run whose status says it runs without proof that its
    coordinator died (no heartbeat was ever recorded, or no Redis to ask).
    """
    record = instance.storage.get_run(run_id)
    status = record.status
    if record.job_reference is None:
        raise ResumeError(
            f"run {run_id} has no job reference, so no process can load its job again; "
            "start a new run of a job defined at module level",
            run_id=run_id,
        )
    if status is RunStatus.SUCCESS:
        raise ResumeError(
            f"run {run_id} already succeeded; there is nothing to resume (start a new run "
            f"with `coreexec submit {record.job_reference}`)",
            run_id=run_id,
        )
    if status in FINISHED or force:
        return record
    _check_coordinator_gone(record, client)
    return record


def _check_coordinator_gone(record: RunRecord, client: Redis | None) -> None:
    """A run whose status says it runs may resume once its heartbeat shows that its
    coordinator died; else :class:`ResumeError` saying what is known of it."""
    run_id, status = record.run_id, record.status
    if client is None:
        raise ResumeError(
            f"run {run_id} is {status} and no Redis is configured (COREEXEC_REDIS_URL) to "
            "tell whether its coordinator is alive; if you know it is gone, use --force",
            run_id=run_id,
        )
    try:
        seen = coordinator_status(client, run_id)
    except RedisError as exc:
        raise wrap_redis_error(
            exc, url=client_url(client), what="read the coordinator heartbeat"
        ) from exc
    if seen.state is CoordinatorState.ALIVE:
        who = seen.info.describe() if seen.info else "a coordinator"
        raise ResumeError(
            f"run {run_id} is {status} and its coordinator {who} is alive; cancel it first "
            f"(`coreexec runs cancel {run_id}`) or let it finish",
            run_id=run_id,
        )
    if seen.state is CoordinatorState.UNKNOWN:
        if status is RunStatus.QUEUED:
            raise ResumeError(
                f"run {run_id} is QUEUED: no coordinator has picked it up yet (does a worker "
                "consume coreexec.runs?); to coordinate it here anyway, use --force",
                run_id=run_id,
            )
        raise ResumeError(
            f"run {run_id} is {status} but no coordinator heartbeat was ever recorded for it "
            "(a run coordinated without Redis, e.g. on the multiprocess executor, has none); "
            "if its coordinator "
            "is gone, resume with --force",
            run_id=run_id,
        )


def resume_run(
    run_id: str,
    *,
    instance: Instance | None = None,
    redis_url: str | None = None,
    force: bool = False,
    submit: bool = False,
    launcher: RunLauncher | None = None,
    listeners: Sequence[EventListener] = (),
    in_flight_timeout_s: float = DEFAULT_IN_FLIGHT_TIMEOUT_S,
    on_resuming: Callable[[RunRecord], None] | None = None,
) -> CoordinationOutcome:
    """Re-execute a failed, canceled or orphaned run without re-running its succeeded steps.

    In this process (until the run ends) by default; with ``submit`` the resume is handed
    to the run launcher and this returns at once. Raises :class:`ResumeError` when the
    run cannot be resumed (it succeeded, or its coordinator is alive, ...).
    ``on_resuming(record)`` is called once the run is checked and claimed, just before
    this process coordinates it (so an announcement is never followed by a refusal).
    """
    chosen_instance = instance or Instance.from_env()
    url = redis_url or event_redis_url(chosen_instance, launcher)
    client = redis_client_for(url)
    try:
        record = check_resumable(chosen_instance, run_id, client, force=force)
        if submit:
            return _hand_to_launcher(chosen_instance, record, launcher or get_run_launcher())
        return _resume_here(
            chosen_instance,
            record,
            client,
            listeners=listeners,
            in_flight_timeout_s=in_flight_timeout_s,
            on_resuming=on_resuming,
        )
    finally:
        if client is not None:
            client.close()


def _claim(storage: RunStorage, record: RunRecord, status: RunStatus) -> None:
    """Move the checked run to ``status``, unless it changed since it was checked."""
    if not storage.set_status(record.run_id, status, expected=(record.status,)):
        raise ResumeError(
            f"run {record.run_id} changed status while being resumed; look at it again",
            run_id=record.run_id,
        )


def _hand_to_launcher(
    instance: Instance, record: RunRecord, launcher: RunLauncher
) -> CoordinationOutcome:
    """Queue the run again and have the run launcher resume it elsewhere."""
    run_id = record.run_id
    _claim(instance.storage, record, RunStatus.QUEUED)
    try:
        launcher.launch(run_id, resume=True)
    except BaseException as exc:
        mark_launch_failed(instance, run_id, launcher.name, exc)
        raise
    return CoordinationOutcome(
        run_id,
        RunStatus.QUEUED,
        False,
        f"resume of run {run_id} handed to the {launcher.name!r} run launcher",
        resumed=True,
    )


def _resume_here(
    instance: Instance,
    record: RunRecord,
    client: Redis | None,
    *,
    listeners: Sequence[EventListener],
    in_flight_timeout_s: float,
    on_resuming: Callable[[RunRecord], None] | None,
) -> CoordinationOutcome:
    """Claim the run for this process and coordinate it until it ends."""
    run_id = record.run_id
    before_claim = last_event_id(instance.storage, run_id)
    _claim(instance.storage, record, RunStatus.STARTING)
    if on_resuming is not None:
        on_resuming(record)
    return coordinate_claimed_run(
        instance,
        run_id,
        client,
        claimed_after_id=before_claim,
        resume=True,
        owner=f"coreexec runs resume (pid {os.getpid()})",
        listeners=listeners,
        in_flight_timeout_s=in_flight_timeout_s,
    )
