"""The step task (``coreexec.step``): one step attempt, on the launcher its step picks.

Arguments are identifiers only, ``[run_id, step_key, attempt_number, attempt_id,
job_reference]``; the task id is the attempt id. The task hands them to
:func:`workers.supervisor.supervise`, which claims the attempt, loads the run and step
(:mod:`coreexec.attempt_runner`), and runs it on the launcher named by the step's
``coreexec/launcher`` tag or the run's default: in this worker process
(``in_process``, the default of ``celery_executor``) or in a container the worker
supervises (``docker``, the default of ``celery_docker_executor``). It returns a small
status dict (Flower shows it), never output values; the task turns a failure or a
dropped delivery into the Celery state Flower should show (see
:mod:`celery_app.task_outcome`).
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from celery.exceptions import Ignore, Reject

from celery_app.task_outcome import StepAttemptFailed, StepTask
from coreexec.attempt_runner import AttemptIds
from coreexec.errors import ClaimUnavailableError
from workers.supervisor import supervise

if TYPE_CHECKING:
    from celery_app.app import CoreexecApp
    from coreexec.attempt_runtime import AttemptRuntime

STEP_TASK_NAME = "coreexec.step"

CLAIM_RETRY_DELAY_S = 1.0
"""Pause before a message that could not be claimed (Redis unreachable) goes back."""

log = logging.getLogger(__name__)


def run_attempt(
    runtime: AttemptRuntime,
    *,
    worker: str,
    run_id: str,
    step_key: str,
    attempt_number: int,
    attempt_id: str,
    job_reference: str,
) -> dict[str, Any]:
    """Claim and run one attempt; returns the task's status dict."""
    ids = AttemptIds(run_id, step_key, attempt_number, attempt_id, job_reference)
    try:
        return supervise(runtime, ids, owner=f"{worker}:{os.getpid()}").as_status()
    except ClaimUnavailableError as exc:
        # Nothing ran and nobody knows of this delivery: give the message back rather
        # than let it be acknowledged and lost.
        log.error("cannot claim attempt %s, returning its message: %s", attempt_id, exc)
        time.sleep(CLAIM_RETRY_DELAY_S)  # back off: the broker redelivers at once
        raise Reject(str(exc), requeue=True) from exc


def _end_task(task: Any, status: dict[str, Any]) -> dict[str, Any]:
    """The Celery end of an attempt (see :mod:`celery_app.task_outcome`)."""
    outcome = status["status"]
    if outcome == "success":
        return status
    if outcome == "failure":
        raise StepAttemptFailed.from_error(status.get("error") or {})
    if status.get("fenced"):
        task.send_event("task-revoked", terminated=False, signum=None, expired=False)
    raise Ignore()


def register_step_task(app: CoreexecApp) -> Any:
    """Add ``coreexec.step`` to ``app``; returns the task."""
    from celery_app.worker_runtime import runtime_for

    @app.task(  # type: ignore[untyped-decorator]
        name=STEP_TASK_NAME,
        base=StepTask,
        bind=True,
        # Registered on this app only: every make_app() call builds its own callable.
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
        # A failed attempt's message is acknowledged (Celery's default, made explicit):
        # the coordinator decides about retries, a redelivery would only be dropped.
        acks_on_failure_or_timeout=True,
        ignore_result=True,
        # Retries are the coordinator's business, never Celery's.
        autoretry_for=(),
        max_retries=0,
    )
    def step(
        self: Any,
        run_id: str,
        step_key: str,
        attempt_number: int,
        attempt_id: str,
        job_reference: str,
    ) -> dict[str, Any]:
        status = run_attempt(
            runtime_for(self.app.settings),
            worker=self.request.hostname or "worker",
            run_id=run_id,
            step_key=step_key,
            attempt_number=int(attempt_number),
            attempt_id=attempt_id,
            job_reference=job_reference,
        )
        return _end_task(self, status)

    return step
