"""Asking a run to stop, from any process.

The request is durable first and fast second: the run storage gets status CANCELING and
a RUN_CANCELING event (a coordinator checks the storage about once a second, and checks
for such an event when it starts, so a request made while it was starting is not lost);
then, when a Redis URL is known, a ``wake``=``cancel`` entry on the run's stream ends the
coordinator's blocking read at once. A run still QUEUED has no coordinator yet and goes
straight to CANCELED, so the coordinator that later receives it does nothing. A run
whose coordinator died is canceled here: its queued attempts are fenced and the ones a
worker had taken are terminated through the run launcher (the celery launcher revokes
them with SIGTERM, as a live coordinator would).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import RedisError, redis_client
from coreexec.redis_urls import safe_url
from coreexec.runs.launcher import AttemptTerminator, terminator_for
from coreexec.runs.resume_prep import OpenAttempt, open_attempts
from coreexec.storage.base import RunStatus
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.coordinator_heartbeat import CoordinatorState, coordinator_status
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)

CANCEL_WAKE = "cancel"
"""The ``wake`` reason a coordinator treats as a cancel request for its run."""

_ACTIVE = (RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING)


@dataclass(frozen=True)
class CancelOutcome:
    """What a cancel request did."""

    run_id: str
    before: RunStatus
    after: RunStatus
    message: str
    woke_coordinator: bool = False


def _event(run_id: str, kind: EventKind, message: str, **data: object) -> Event:
    return Event(kind=kind, run_id=run_id, timestamp=time.time(), message=message, data=data)


def _wake(run_id: str, redis_url: str | None) -> tuple[bool, str]:
    """Publish the cancel wake-up; (done, why not)."""
    if redis_url is None:
        return False, "no Redis URL is configured (COREEXEC_REDIS_URL)"
    try:
        client = redis_client(redis_url)
    except CoreExecError as exc:
        log.warning("cancel of run %s: %s", run_id, exc)
        return False, f"Redis at {safe_url(redis_url)} is unreachable"
    try:
        RedisEventStream(client, run_id, url=redis_url).publish_wake(CANCEL_WAKE)
        return True, ""
    except CoreExecError as exc:
        log.warning("cancel of run %s: %s", run_id, exc)
        return False, f"waking it through Redis failed: {exc}"
    finally:
        client.close()


FindTerminator = Callable[[], AttemptTerminator | None]
"""Finds the launcher that stops taken attempts of an orphaned run (called only then)."""


def _cancel_orphan(
    instance: Instance, run_id: str, redis_url: str | None, find_terminator: FindTerminator
) -> str | None:
    """Cancel a CANCELING run whose coordinator is dead; a message, or None when the run
    has a live coordinator (or nobody can tell) and is left to it."""
    if redis_url is None:
        return None
    try:
        client = redis_client(redis_url)
    except CoreExecError:
        return None
    open_ones: list[OpenAttempt] = []
    fenced: list[bool] = []
    try:
        if coordinator_status(client, run_id).state is not CoordinatorState.DEAD:
            return None
        storage = instance.storage
        if not storage.set_status(run_id, RunStatus.CANCELED, expected=(RunStatus.CANCELING,)):
            return None
        # Messages of attempts nobody started yet must never run: fence them.
        open_ones = open_attempts(event for _, event in storage.events(run_id))
        fenced = AttemptClaims(client, url=redis_url).fence(
            run_id, [attempt.attempt_id for attempt in open_ones], "run canceled"
        )
    except (RedisError, CoreExecError) as exc:
        log.warning("cancel of run %s: cannot settle its dead coordinator's work: %s", run_id, exc)
        if not instance.storage.get_run(run_id).status.is_finished:
            return None
    finally:
        client.close()
    taken = [a for a, was_fenced in zip(open_ones, fenced, strict=False) if not was_fenced]
    message = (
        f"run {run_id} has no live coordinator (its heartbeat stopped), so it was marked "
        f"CANCELED here; {sum(fenced)} queued step attempts will not start"
    )
    if taken:
        message += "; " + _terminate_taken(run_id, taken, find_terminator)
    instance.storage.append_events(run_id, [_event(run_id, EventKind.RUN_CANCELED, message)])
    return message


def _terminate_taken(
    run_id: str, taken: Sequence[OpenAttempt], find_terminator: FindTerminator
) -> str:
    """Stop the attempts a worker had taken, through the run launcher; what was done."""
    steps = ", ".join(sorted({a.step_key for a in taken}))
    terminator = find_terminator()
    if terminator is None:
        return (
            f"steps a worker had taken ({steps}) are not stopped: the run launcher cannot "
            "terminate attempts"
        )
    try:
        terminator.terminate_attempts(run_id, [a.attempt_id for a in taken])
    except CoreExecError as exc:
        log.warning("cancel of run %s: %s", run_id, exc)
        return f"steps a worker had taken ({steps}) are not stopped: {exc}"
    return f"steps a worker had taken ({steps}) were told to stop"


def request_cancel(
    instance: Instance,
    run_id: str,
    redis_url: str | None,
    *,
    find_terminator: FindTerminator = terminator_for,
) -> CancelOutcome:
    """Ask run ``run_id`` to stop; returns what happened (never waits for the run).

    Raises :class:`~coreexec.errors.RunNotFoundError` for an unknown id. A finished run
    is left as it is. A running run whose coordinator is known dead (its heartbeat
    lapsed) is marked CANCELED here, since nobody else would: its queued attempts are
    fenced, and those a worker had taken are terminated through the run launcher that
    ``find_terminator`` gives (see :class:`~coreexec.runs.launcher.AttemptTerminator`).
    """
    storage = instance.storage
    before = storage.get_run(run_id).status
    if before.is_finished:
        return CancelOutcome(run_id, before, before, f"run {run_id} already ended: {before}")
    if before is RunStatus.QUEUED and storage.set_status(
        run_id, RunStatus.CANCELED, expected=(RunStatus.QUEUED,)
    ):
        storage.append_events(
            run_id, [_event(run_id, EventKind.RUN_CANCELED, "canceled before it started")]
        )
        # Wakes anyone waiting on the run; no coordinator reads the stream yet.
        woke, _ = _wake(run_id, redis_url)
        return CancelOutcome(
            run_id, before, RunStatus.CANCELED, f"run {run_id} canceled before it started", woke
        )
    changed = storage.set_status(run_id, RunStatus.CANCELING, expected=_ACTIVE)
    now = storage.get_run(run_id).status
    if not changed:
        # It ended (or was canceled) between our two reads.
        return CancelOutcome(run_id, before, now, f"run {run_id} already ended: {now}")
    if before is not RunStatus.CANCELING:
        storage.append_events(run_id, [_event(run_id, EventKind.RUN_CANCELING, "cancel requested")])
    orphan_message = _cancel_orphan(instance, run_id, redis_url, find_terminator)
    if orphan_message is not None:
        woke, _ = _wake(run_id, redis_url)
        return CancelOutcome(run_id, before, RunStatus.CANCELED, orphan_message, woke)
    woke, why_not = _wake(run_id, redis_url)
    if woke:
        message = (
            f"run {run_id}: cancel requested; its coordinator was woken, stops dispatching "
            "and terminates running steps"
        )
    else:
        message = (
            f"run {run_id}: cancel requested in the run storage ({why_not}); its coordinator "
            "notices within about a second, stops dispatching and terminates running steps"
        )
    return CancelOutcome(run_id, before, RunStatus.CANCELING, message, woke)
