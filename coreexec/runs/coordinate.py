"""Coordinating a stored run in this process: for a run launcher, or to resume a run.

A launched coordinator (the Celery task ``coreexec.coordinate_run`` calls
:func:`coordinate_launched_run`) first claims the run: QUEUED → STARTING, a compare-and-set
in the run storage, so a duplicate delivery of its message, or a message for a run
canceled while queued, does nothing. A message redelivered after its coordinator died
(the run still says STARTED, its heartbeat is dead) resumes the run. While it
coordinates it keeps a heartbeat in Redis; at the end it announces the run's final
event on the run's stream, which wakes every :meth:`RunHandle.wait`.

:func:`~coreexec.runs.resume.resume_run` is the same with a resume first
(``coreexec runs resume``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.execution.run_context import EventListener, RunContext
from coreexec.instance import Instance
from coreexec.redis_clients import Redis, RedisError, redis_client
from coreexec.runs.execute import execute_run
from coreexec.runs.resume_prep import DEFAULT_IN_FLIGHT_TIMEOUT_S, ResumePreparation, prepare_resume
from coreexec.storage.base import RunStatus, RunStorage
from coreexec.transport import keys
from coreexec.transport.coordinator_heartbeat import (
    COORDINATOR_TTL_MS,
    CoordinatorHeartbeat,
    CoordinatorState,
    coordinator_status,
)
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)

RUN_ENDINGS = frozenset({EventKind.RUN_SUCCESS, EventKind.RUN_FAILURE, EventKind.RUN_CANCELED})
_RUNNING = (RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING)


@dataclass(frozen=True)
class CoordinationOutcome:
    """What one coordinator (or resume) call did with a run."""

    run_id: str
    status: RunStatus
    coordinated: bool
    """False when this call ran nothing (duplicate message, canceled before start, ...)."""
    message: str
    resumed: bool = False
    preparation: ResumePreparation | None = None


class _RunWatch:
    """A listener that keeps the run's final event and closes a cancel race.

    ``execute_run`` sets the status to STARTED after the claim; a cancel request made in
    between set CANCELING, which that overwrites. The request also stored a RUN_CANCELING
    event, so once the run has started, one look for such an event after the claim is
    enough not to lose it.
    """

    def __init__(self, storage: RunStorage, run_id: str, claimed_after_id: int) -> None:
        self.storage = storage
        self.run_id = run_id
        self.claimed_after_id = claimed_after_id
        self.context: RunContext | None = None
        self.final_event: Event | None = None

    def bind(self, context: RunContext) -> None:
        self.context = context

    def __call__(self, event: Event) -> None:
        if event.kind in RUN_ENDINGS:
            self.final_event = event
        elif event.kind is EventKind.RUN_START and self.context is not None:
            later = self.storage.events(self.run_id, after=self.claimed_after_id)
            if any(item.kind is EventKind.RUN_CANCELING for _, item in later):
                self.context.cancel_requested.set()


def last_event_id(storage: RunStorage, run_id: str) -> int:
    stored = storage.events(run_id)
    return stored[-1][0] if stored else 0


def _fail_unfinished(storage: RunStorage, run_id: str, exc: BaseException) -> None:
    """A coordinator that stops on an error leaves no run looking alive."""
    if storage.get_run(run_id).status.is_finished:
        return
    storage.append_events(
        run_id,
        [
            Event(
                kind=EventKind.RUN_FAILURE,
                run_id=run_id,
                timestamp=time.time(),
                message=f"coordinator error: {exc}",
                data={"reason": "coordinator_error", "error": type(exc).__name__},
            )
        ],
    )
    storage.set_status(run_id, RunStatus.FAILURE, expected=(RunStatus.QUEUED, *_RUNNING))


def _announce_end(stream: RedisEventStream, run_id: str, final: Event | None) -> None:
    try:
        if final is not None:
            stream.publish(final)
        else:
            stream.publish_wake("run_end")
        stream.expire()
    except CoreExecError as exc:
        log.warning("could not announce the end of run %s: %s", run_id, exc)


def coordinate_claimed_run(
    instance: Instance,
    run_id: str,
    client: Redis | None,
    *,
    claimed_after_id: int,
    resume: bool,
    owner: str,
    listeners: Sequence[EventListener],
    in_flight_timeout_s: float,
    launched: bool = False,
) -> CoordinationOutcome:
    """Coordinate a run this process has just claimed (status STARTING).

    ``claimed_after_id`` is the run's last stored event id read before the claim: a
    cancel request stored after it was made after the claim.
    """
    storage = instance.storage
    watch = _RunWatch(storage, run_id, claimed_after_id)
    stream = RedisEventStream(client, run_id) if client is not None else None
    heartbeat = (
        CoordinatorHeartbeat(client, run_id, owner=owner, launched=launched)
        if client is not None
        else None
    )
    preparation: ResumePreparation | None = None
    error: str | None = None
    try:
        if heartbeat is not None:
            heartbeat.start()
        if resume:
            preparation = prepare_resume(
                instance, run_id, stream, in_flight_timeout_s=in_flight_timeout_s
            )
        execute_run(
            run_id,
            instance=instance,
            resume=resume,
            listeners=[watch, *listeners],
            run_context_hook=watch.bind,
        )
    except Exception as exc:
        _fail_unfinished(storage, run_id, exc)
        if not isinstance(exc, CoreExecError):
            raise
        error = str(exc)
    finally:
        if heartbeat is not None:
            heartbeat.stop()
        if stream is not None:
            _announce_end(stream, run_id, watch.final_event)
    status = storage.get_run(run_id).status
    verb = "resumed" if resume else "coordinated"
    message = f"run {run_id} {verb}: {status}" + (f" ({error})" if error else "")
    return CoordinationOutcome(run_id, status, True, message, resume, preparation)


def _coordinator_dead(client: Redis, run_id: str) -> bool:
    """Whether the run's coordinator is dead, waiting out its heartbeat's TTL once.

    A coordinator's task comes back to the queue when its process dies; on another host
    its heartbeat key lives on until its TTL lapses, so one wait of that TTL tells a
    dead coordinator from a live one whose message was merely delivered again.
    """
    try:
        state = coordinator_status(client, run_id).state
        if state is CoordinatorState.ALIVE:
            ttl_ms = client.pttl(keys.run_coordinator(run_id))
            if 0 < ttl_ms <= COORDINATOR_TTL_MS:
                time.sleep(ttl_ms / 1000 + 0.05)
                state = coordinator_status(client, run_id).state
    except RedisError as exc:
        log.warning("cannot tell whether run %s has a live coordinator: %s", run_id, exc)
        return False
    return state is CoordinatorState.DEAD


def redis_client_for(redis_url: str | None) -> Redis | None:
    return redis_client(redis_url) if redis_url else None


def coordinate_launched_run(
    run_id: str,
    *,
    instance: Instance,
    redis_url: str | None,
    resume: bool = False,
    owner: str = "launched coordinator",
    listeners: Sequence[EventListener] = (),
    in_flight_timeout_s: float = DEFAULT_IN_FLIGHT_TIMEOUT_S,
) -> CoordinationOutcome:
    """Coordinate a run a launcher handed over, until it ends; never raises for a run
    that cannot start (a user error is stored in the run as its RUN_FAILURE).

    Raises :class:`~coreexec.errors.RunNotFoundError` for an unknown run and
    :class:`~coreexec.errors.BrokerConnectionError` when Redis is unreachable.
    """
    storage = instance.storage
    client = redis_client_for(redis_url)
    try:
        before_claim = last_event_id(storage, run_id)
        claimed = storage.set_status(run_id, RunStatus.STARTING, expected=(RunStatus.QUEUED,))
        if not claimed:
            status = storage.get_run(run_id).status
            if status in _RUNNING and client is not None and _coordinator_dead(client, run_id):
                # Our message came back after its coordinator died: take the run over.
                claimed = storage.set_status(run_id, RunStatus.STARTING, expected=(status,))
                resume = claimed or resume
                if claimed:
                    log.warning("run %s lost its coordinator; resuming it", run_id)
            if not claimed:
                return CoordinationOutcome(
                    run_id,
                    status,
                    False,
                    f"run {run_id} is {status}: nothing for this coordinator to do",
                )
        return coordinate_claimed_run(
            instance,
            run_id,
            client,
            claimed_after_id=before_claim,
            resume=resume,
            owner=owner,
            listeners=listeners,
            in_flight_timeout_s=in_flight_timeout_s,
            launched=True,
        )
    finally:
        if client is not None:
            client.close()
