"""The step task (``coreexec.step``): one step attempt, run in the worker's process.

Arguments are identifiers only, ``[run_id, step_key, attempt_number, attempt_id,
job_reference]``; the task id is the attempt id. The worker

1. claims the attempt and announces its start, in one round trip (a second delivery of
   it, or a message the coordinator has given up on, is dropped and logged);
2. loads the job by reference, its plan and the run record from caches (run config
   comes from the run storage, never from the message);
3. runs the step with :func:`coreexec.step_runner.run_step`, events going to the run's
   Redis stream, heartbeating meanwhile;
4. returns a small status dict (Flower shows it), never output values.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Any

from celery.exceptions import Reject

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import BrokerConnectionError, CoreExecError
from coreexec.events import Event, EventKind
from coreexec.retry import FailureClass
from coreexec.step_runner import StepRun, run_step, start_event
from coreexec.transport.redis_events import RedisEventStream

if TYPE_CHECKING:
    from celery_app.app import CoreexecApp
    from celery_app.worker_runtime import WorkerRuntime

STEP_TASK_NAME = "coreexec.step"

CLAIM_RETRY_DELAY_S = 1.0
"""Pause before a message that could not be claimed (Redis unreachable) goes back."""

log = logging.getLogger(__name__)


class _BufferedSink:
    """Publishes events as they come, except STEP_OUTPUT, which rides with the event
    after it (always the attempt's end): one round trip less per output."""

    def __init__(self, stream: RedisEventStream) -> None:
        self.stream = stream
        self._held: list[Event] = []

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.STEP_OUTPUT:
            self._held.append(event)
            return
        if self._held:
            batch, self._held = [*self._held, event], []
            self.stream.publish_many(batch)
        else:
            self.stream.publish(event)


def _report(
    stream: RedisEventStream,
    kind: EventKind,
    message: str,
    *,
    step_key: str,
    attempt: StepAttempt,
    **data: Any,
) -> None:
    stream.publish(
        Event(
            kind=kind,
            run_id=stream.run_id,
            timestamp=time.time(),
            step_key=step_key,
            attempt=attempt.number,
            attempt_id=attempt.attempt_id,
            message=message,
            data=data,
        )
    )


def _status(status: str, step_key: str, attempt: StepAttempt, **extra: Any) -> dict[str, Any]:
    return {"status": status, "step": step_key, "attempt": attempt.number, **extra}


def run_attempt(
    runtime: WorkerRuntime,
    *,
    worker: str,
    run_id: str,
    step_key: str,
    attempt_number: int,
    attempt_id: str,
    job_reference: str,
) -> dict[str, Any]:
    """Claim and run one attempt; returns the task's status dict."""
    attempt = StepAttempt(step_key, attempt_number, attempt_id)
    owner = f"{worker}:{os.getpid()}"
    try:
        # The start is announced with the claim (one round trip), and only if it is won.
        claim = runtime.claims.claim_and_start(
            run_id, attempt_id, owner, start_event(run_id, step_key, attempt)
        )
    except BrokerConnectionError as exc:
        # Nothing ran and nobody knows of this delivery: give the message back rather
        # than let it be acknowledged and lost.
        log.error("cannot claim attempt %s, returning its message: %s", attempt_id, exc)
        time.sleep(CLAIM_RETRY_DELAY_S)  # back off: the broker redelivers at once
        raise Reject(str(exc), requeue=True) from exc
    if not claim.claimed:
        why = "the coordinator gave it up" if claim.fenced else f"already claimed by {claim.holder}"
        log.warning(
            "dropping delivery of attempt %s (step %s of run %s): %s",
            attempt_id,
            step_key,
            run_id,
            why,
        )
        _report(
            runtime.stream(run_id),
            EventKind.STEP_LOG,
            f"a second delivery of attempt {attempt_number} reached {owner} and was dropped: {why}",
            step_key=step_key,
            attempt=attempt,
            level="WARNING",
            dropped_by=owner,
            holder=claim.holder,
        )
        return _status("dropped", step_key, attempt, holder=claim.holder)
    try:
        info = runtime.run(run_id)
        if info.record.job_reference not in (None, job_reference):
            raise CoreExecError(
                f"the message names job {job_reference!r} but run {run_id} is of job "
                f"{info.record.job_reference!r}; the message was not made by coreexec"
            )
        job = runtime.job(job_reference)
        planned = runtime.plan(job_reference, job).step(step_key)
    except CoreExecError as exc:
        # This worker cannot even start the step (no such run in its storage, job not
        # importable here): an infrastructure failure, which another worker may not have.
        _report(
            runtime.stream(run_id),
            EventKind.STEP_FAILURE,
            f"worker {owner} cannot run step {step_key!r}: {exc}",
            step_key=step_key,
            attempt=attempt,
            failure_class=FailureClass.INFRASTRUCTURE.value,
            retryable=True,
            error={"type": type(exc).__name__, "message": str(exc), "traceback": ""},
        )
        return _status("failure", step_key, attempt, error=type(exc).__name__)
    sink: EventSink = _BufferedSink(info.stream)
    with runtime.heartbeats.beating(
        info.stream,
        step_key=step_key,
        attempt=attempt_number,
        attempt_id=attempt_id,
        interval_s=info.settings.heartbeat_interval_s,
    ):
        outcome = run_step(
            StepRun(
                run_id=run_id,
                job=job,
                step=planned,
                attempt=attempt,
                run_config=info.record.run_config,
                io_manager=runtime.instance.io_manager_for(info.record),
                run_tags=info.record.tags,
            ),
            sink,
            announce_start=False,
        )
    return _status("success" if outcome.success else "failure", step_key, attempt)


def register_step_task(app: CoreexecApp) -> Any:
    """Add ``coreexec.step`` to ``app``; returns the task."""
    from celery_app.worker_runtime import runtime_for

    @app.task(  # type: ignore[untyped-decorator]
        name=STEP_TASK_NAME,
        bind=True,
        # Registered on this app only: every make_app() call builds its own callable.
        shared=False,
        acks_late=True,
        reject_on_worker_lost=True,
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
        return run_attempt(
            runtime_for(self.app.settings),
            worker=self.request.hostname or "worker",
            run_id=run_id,
            step_key=step_key,
            attempt_number=int(attempt_number),
            attempt_id=attempt_id,
            job_reference=job_reference,
        )

    return step
