"""Running one step attempt from its identifiers: the attempt runner.

Every process that runs a step from a message (a Celery worker, a Dask worker, the step
entrypoint inside a container or pod) gets the same five identifiers,
:class:`AttemptIds`, and runs the attempt through here:

1. :func:`claim_attempt` claims it and announces its start in one round trip (a second
   delivery, or an attempt the coordinator gave up on, is dropped and logged);
2. :func:`prepare_attempt` loads the run record and settings (run storage and the run's
   settings hash, cached per process), the job by reference and its planned step;
3. :func:`run_prepared` runs the step with :func:`coreexec.step_runner.run_step`,
   inputs and outputs through the IO manager, events to the run's Redis stream,
   heartbeating meanwhile.

:func:`run_attempt` is the three in a row, for an attempt that runs in this process.
A supervised attempt (in a container or pod) is claimed and heartbeat by its supervisor;
its entrypoint only verifies the claim, prepares and runs it, and holds its end for the
supervisor (:mod:`coreexec.transport.attempt_ends`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.attempt_runtime import AttemptRuntime, RunInfo
from coreexec.context import EventSink
from coreexec.errors import BrokerConnectionError, ClaimUnavailableError, CoreExecError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event, EventKind
from coreexec.job import JobDefinition
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.step_runner import StepRun, run_step, start_event
from coreexec.transport.attempts import ClaimResult, invalid_attempt_message
from coreexec.transport.outage import call_through_outage
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttemptIds:
    """What a message (or a container's command line) carries: identifiers only."""

    run_id: str
    step_key: str
    attempt_number: int
    attempt_id: str
    job_reference: str

    @property
    def attempt(self) -> StepAttempt:
        return StepAttempt(self.step_key, self.attempt_number, self.attempt_id)


@dataclass(frozen=True)
class AttemptResult:
    """How an attempt ended here: ``success``, ``failure`` or ``dropped``."""

    status: str
    ids: AttemptIds
    holder: str | None = None
    error: Mapping[str, Any] | None = None
    """A failure's error as its event reported it (``type``, ``message``, ``traceback``)."""
    fenced: bool = False
    """A dropped delivery of an attempt the coordinator gave up (a canceled run)."""
    reason: str | None = None
    """Why a ``refused`` message may run nowhere (not issued, run finished, bad ids)."""

    @property
    def success(self) -> bool:
        return self.status == "success"

    def as_status(self) -> dict[str, Any]:
        """The small dict a task returns (Flower shows it): never output values."""
        body: dict[str, Any] = {
            "status": self.status,
            "step": self.ids.step_key,
            "attempt": self.ids.attempt_number,
        }
        if self.holder is not None:
            body["holder"] = self.holder
        if self.error is not None:
            body["error"] = dict(self.error)
        if self.fenced:
            body["fenced"] = True
        if self.reason is not None:
            body["reason"] = self.reason
        return body


@dataclass(frozen=True)
class PreparedAttempt:
    """An attempt whose run, job and planned step are loaded."""

    ids: AttemptIds
    info: RunInfo
    job: JobDefinition
    step: PlannedStep


def report(
    stream: RedisEventStream, kind: EventKind, message: str, *, ids: AttemptIds, **data: Any
) -> None:
    """Publish one event of the attempt."""
    # A report makes no stream: it exists for any run being coordinated.
    stream.publish(attempt_event(stream.run_id, kind, message, ids=ids, **data), create=False)


def attempt_event(
    run_id: str, kind: EventKind, message: str, *, ids: AttemptIds, **data: Any
) -> Event:
    """One event of the attempt, stamped now."""
    return Event(
        kind=kind,
        run_id=run_id,
        timestamp=time.time(),
        step_key=ids.step_key,
        attempt=ids.attempt_number,
        attempt_id=ids.attempt_id,
        message=message,
        data=data,
    )


def failure_event(
    run_id: str,
    message: str,
    *,
    ids: AttemptIds,
    failure_class: FailureClass,
    retryable: bool,
    error_type: str,
    **data: Any,
) -> Event:
    """A STEP_FAILURE reported by whoever runs the attempt (not by the user's code)."""
    return attempt_event(
        run_id,
        EventKind.STEP_FAILURE,
        message,
        ids=ids,
        failure_class=failure_class.value,
        retryable=retryable,
        error={"type": error_type, "message": message, "traceback": ""},
        **data,
    )


def screen_message(ids: AttemptIds) -> AttemptResult | None:
    """A ``refused`` result for identifiers coreexec cannot have made (checked before
    anything is written to Redis, so no key is made from them); None for good ones."""
    invalid = invalid_attempt_message(
        ids.run_id, ids.step_key, ids.attempt_number, ids.attempt_id, ids.job_reference
    )
    if invalid is None:
        return None
    log.error("dropping a step message coreexec did not make: %s", invalid)
    return AttemptResult("refused", ids, reason=invalid)


def refuse_delivery(ids: AttemptIds, claim: ClaimResult) -> AttemptResult:
    """Log a message whose attempt the run's coordinator never issued, or of a finished
    run: nothing of it runs and nothing is written."""
    log.warning(
        "refusing attempt %s (step %s of run %s): %s",
        ids.attempt_id,
        ids.step_key,
        ids.run_id,
        claim.refused,
    )
    return AttemptResult("refused", ids, reason=claim.refused, fenced=claim.fenced)


def claim_attempt(runtime: AttemptRuntime, ids: AttemptIds, owner: str) -> ClaimResult:
    """Claim the attempt for ``owner`` and announce its start, in one round trip.

    Raises :class:`ClaimUnavailableError` when Redis cannot be reached.
    """
    try:
        return runtime.claims.claim_and_start(
            ids.run_id, ids.attempt_id, owner, start_event(ids.run_id, ids.step_key, ids.attempt)
        )
    except BrokerConnectionError as exc:
        raise ClaimUnavailableError(str(exc), url=exc.url) from exc


def drop_delivery(
    runtime: AttemptRuntime, ids: AttemptIds, owner: str, claim: ClaimResult
) -> AttemptResult:
    """Log and report a delivery of an attempt someone else holds (or that was fenced)."""
    why = "the coordinator gave it up" if claim.fenced else f"already claimed by {claim.holder}"
    log.warning(
        "dropping delivery of attempt %s (step %s of run %s): %s",
        ids.attempt_id,
        ids.step_key,
        ids.run_id,
        why,
    )
    report(
        runtime.stream(ids.run_id),
        EventKind.STEP_LOG,
        f"a second delivery of attempt {ids.attempt_number} reached {owner} and was dropped: {why}",
        ids=ids,
        level="WARNING",
        dropped_by=owner,
        holder=claim.holder,
    )
    return AttemptResult("dropped", ids, holder=claim.holder, fenced=claim.fenced)


def prepare_attempt(
    runtime: AttemptRuntime,
    ids: AttemptIds,
    owner: str,
    *,
    report_failure: bool = True,
    emit: EventSink | None = None,
) -> PreparedAttempt | AttemptResult:
    """Load what the attempt needs; when this process cannot (no such run in its
    storage, job not importable here) the attempt fails as an infrastructure failure,
    which another worker may not have, and the failure is returned (and published,
    unless ``report_failure`` is False: the attempt is someone else's). The failure goes
    to ``emit`` when given, else to the run's stream."""
    try:
        info = runtime.run(ids.run_id)
        if info.record.job_reference not in (None, ids.job_reference):
            raise CoreExecError(
                f"the message names job {ids.job_reference!r} but run {ids.run_id} is of job "
                f"{info.record.job_reference!r}; the message was not made by coreexec"
            )
        job = runtime.job(ids.job_reference)
        planned = runtime.plan(ids.job_reference, job).step(ids.step_key)
    except CoreExecError as exc:
        error = {"type": type(exc).__name__, "message": str(exc), "traceback": ""}
        if not report_failure:
            return AttemptResult("failure", ids, error=error)
        (emit or runtime.stream(ids.run_id).publish)(
            failure_event(
                ids.run_id,
                f"worker {owner} cannot run step {ids.step_key!r}: {exc}",
                ids=ids,
                failure_class=FailureClass.INFRASTRUCTURE,
                retryable=True,
                error_type=type(exc).__name__,
            )
        )
        return AttemptResult("failure", ids, error=error)
    return PreparedAttempt(ids, info, job, planned)


class BufferedSink:
    """Publishes events as they come, except STEP_OUTPUT, which rides with the event
    after it (always the attempt's end): one round trip less per output."""

    def __init__(self, stream: RedisEventStream, outage_tolerance_s: float = 0.0) -> None:
        self.stream = stream
        self.outage_tolerance_s = outage_tolerance_s
        self._held: list[Event] = []

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.STEP_OUTPUT:
            self._held.append(event)
            return
        batch, self._held = [*self._held, event], []
        # While Redis is unreachable the events are kept and retried, for up to the
        # run's outage tolerance: a finished step's result is not lost to an outage.
        call_through_outage(
            lambda: self.stream.publish_many(batch),
            tolerance_s=self.outage_tolerance_s,
            what=f"step {event.step_key} of run {self.stream.run_id}",
        )


class HeldEndSink:
    """Publishes events as they come, except the attempt's end (its outputs and the
    event that ends it), which goes to ``hold`` for the supervisor to publish."""

    def __init__(self, stream: RedisEventStream, hold: Callable[[list[Event]], None]) -> None:
        self.stream = stream
        self.hold = hold
        self._held: list[Event] = []

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.STEP_OUTPUT:
            self._held.append(event)
        elif event.kind in STEP_ATTEMPT_ENDINGS:
            batch, self._held = [*self._held, event], []
            self.hold(batch)
        else:
            self.stream.publish(event)


def heartbeat_while_running(
    runtime: AttemptRuntime, prepared: PreparedAttempt
) -> AbstractContextManager[None]:
    """The attempt's heartbeat on its run's stream, at the run's interval, for a block."""
    ids, info = prepared.ids, prepared.info
    return runtime.heartbeats.beating(
        info.stream,
        step_key=ids.step_key,
        attempt=ids.attempt_number,
        attempt_id=ids.attempt_id,
        interval_s=info.settings.heartbeat_interval_s,
    )


def run_prepared(
    runtime: AttemptRuntime,
    prepared: PreparedAttempt,
    sink: EventSink | None = None,
    *,
    heartbeat: bool = True,
) -> AttemptResult:
    """Run a prepared attempt whose start was announced; events to ``sink`` (default:
    the run's stream), heartbeating while it runs unless ``heartbeat`` is False (a
    supervisor heartbeats for it)."""
    ids, info = prepared.ids, prepared.info
    step_run = StepRun(
        run_id=ids.run_id,
        job=prepared.job,
        step=prepared.step,
        attempt=ids.attempt,
        run_config=info.record.run_config,
        io_manager=runtime.instance.io_manager_for(info.record),
        run_tags=info.record.tags,
    )
    emit: EventSink = (
        sink if sink is not None else BufferedSink(info.stream, info.settings.outage_tolerance_s)
    )
    if not heartbeat:
        outcome = run_step(step_run, emit, announce_start=False)
    else:
        with heartbeat_while_running(runtime, prepared):
            outcome = run_step(step_run, emit, announce_start=False)
    if outcome.success:
        return AttemptResult("success", ids)
    return AttemptResult("failure", ids, error=outcome.error_data or {})


def run_attempt(runtime: AttemptRuntime, ids: AttemptIds, *, owner: str) -> AttemptResult:
    """Claim, prepare and run one attempt in this process.

    Raises :class:`ClaimUnavailableError` when the claim could not be made (nothing ran).
    """
    screened = screen_message(ids)
    if screened is not None:
        return screened
    claim = claim_attempt(runtime, ids, owner)
    if claim.refused is not None:
        return refuse_delivery(ids, claim)
    if not claim.claimed:
        return drop_delivery(runtime, ids, owner, claim)
    prepared = prepare_attempt(runtime, ids, owner)
    if isinstance(prepared, AttemptResult):
        return prepared
    return run_prepared(runtime, prepared)
