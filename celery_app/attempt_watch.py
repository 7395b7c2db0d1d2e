"""Where the celery dispatcher notices attempts that went quiet.

An ``AttemptWatch`` follows one coordinator's attempts from publish to end:

* **Heartbeat loss.** A started attempt from which nothing (not even a heartbeat) came
  for ``heartbeat_timeout_s`` is lost: an infrastructure failure, and the step's retry
  policy decides. The broker's visibility timeout plays no part; a redelivered message
  of the lost attempt is dropped by its claim.
* **Queued timeout.** An attempt that has not started ``queued_timeout_s`` after it was
  published fails, naming its queue, *if no live worker consumes that queue* (see
  :mod:`celery_app.queue_presence`). A queue with live consumers is busy, not dead, so
  its attempts wait another period instead: a large fan-out on a small fleet never
  fails for being queued long. The attempt is fenced first, so a worker that starts
  later drops its message instead of running it.
* **Termination.** A cancelled attempt that a worker holds is watched until the worker
  reports its end, or, failing that, until its heartbeats stop (then it ends CANCELLED).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from celery_app.queue_presence import QueuePresence
from coreexec.active_execution import StepAttempt
from coreexec.errors import CoreExecError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event, EventKind
from coreexec.execution.dispatcher import LostAttempt
from coreexec.retry import FailureClass
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.outage import DEFAULT_OUTAGE_TOLERANCE_S

log = logging.getLogger(__name__)

CONSUMER_CHECK_TTL_S = 1.0
"""How long one answer to "does queue Q have live consumers?" is reused."""


@dataclass(frozen=True)
class DispatchTimings:
    """The executor's timers, in seconds."""

    queued_timeout_s: float
    heartbeat_interval_s: float
    heartbeat_timeout_s: float
    outage_tolerance_s: float = DEFAULT_OUTAGE_TOLERANCE_S


@dataclass
class _Queued:
    step_key: str
    number: int
    queue: str
    deadline: float

    def started(self, now: float) -> _Running:
        """The attempt as running, last heard of ``now``."""
        return _Running(self.step_key, self.number, self.queue, now)


@dataclass
class _Running:
    step_key: str
    number: int
    queue: str
    last_seen: float
    pid: int | None = None
    host: str | None = None


class AttemptWatch:
    """The attempts one coordinator published, queued or running; see the module
    docstring. Times are ``time.monotonic()`` seconds, passed in by the caller."""

    def __init__(
        self,
        run_id: str,
        timings: DispatchTimings,
        claims: AttemptClaims,
        presence: QueuePresence,
    ) -> None:
        self.run_id = run_id
        self.timings = timings
        self.claims = claims
        self.presence = presence
        self._queued: OrderedDict[str, _Queued] = OrderedDict()
        self._running: dict[str, _Running] = {}
        self._terminating: set[str] = set()
        self._consumers_seen: dict[str, tuple[float, bool]] = {}

    # -- what the dispatcher tells it ------------------------------------------------

    def published(self, attempt: StepAttempt, queue: str, now: float) -> None:
        """``attempt``'s message is on ``queue``: it must start within the queued timeout."""
        self._queued[attempt.attempt_id] = _Queued(
            attempt.step_key, attempt.number, queue, now + self.timings.queued_timeout_s
        )

    def running(self, attempt: StepAttempt, queue: str, now: float) -> None:
        """A worker holds ``attempt`` (its claim says so): watch its heartbeats."""
        self._queued.pop(attempt.attempt_id, None)
        self._running[attempt.attempt_id] = _Running(attempt.step_key, attempt.number, queue, now)

    def track(self, event: Event, now: float) -> None:
        """Note what an event of the run's stream says of its attempt."""
        attempt_id = event.attempt_id
        if attempt_id is None:
            return
        if event.kind in STEP_ATTEMPT_ENDINGS:
            self._queued.pop(attempt_id, None)
            self._running.pop(attempt_id, None)
            self._terminating.discard(attempt_id)
            return
        if event.kind is EventKind.STEP_LOG and "dropped_by" in event.data:
            return  # a dropped second delivery says nothing about the attempt itself
        running = self._running.get(attempt_id)
        if running is None:
            queued = self._queued.pop(attempt_id, None)
            if queued is None:
                return  # not ours: an attempt of an earlier coordinator of this run
            running = queued.started(now)
            self._running[attempt_id] = running
        running.last_seen = now
        if event.kind is EventKind.STEP_START:
            pid = event.data.get("pid")
            running.pid = int(pid) if pid is not None else None
            host = event.data.get("host")
            running.host = str(host) if host is not None else None

    def terminating(self, attempt: StepAttempt, was_fenced: bool, now: float) -> bool:
        """A cancelled ``attempt``, fenced (True: it never starts, forget it) or held by a
        worker (watch it until its end is reported or its heartbeats stop)."""
        queued = self._queued.pop(attempt.attempt_id, None)
        if was_fenced:
            self._running.pop(attempt.attempt_id, None)
            return True
        if queued is not None:
            self._running[attempt.attempt_id] = queued.started(now)
        self._terminating.add(attempt.attempt_id)
        return False

    def outage_ended(self, now: float, lasted_s: float) -> list[tuple[str, str, int]]:
        """Redis answers again after ``lasted_s``: nothing could be heard meanwhile, so
        running attempts get a fresh heartbeat timeout and queued ones their time back.
        Returns the queued attempts (id, step key, number), whose messages Redis may have
        lost."""
        for running in self._running.values():
            running.last_seen = max(running.last_seen, now)
        for queued in self._queued.values():
            queued.deadline += lasted_s
        return [(attempt_id, q.step_key, q.number) for attempt_id, q in self._queued.items()]

    # -- what it finds ---------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When the next attempt may be found lost, if nothing is heard of it."""
        deadlines = []
        if self._queued:
            deadlines.append(next(iter(self._queued.values())).deadline)
        if self._running:
            oldest = min(r.last_seen for r in self._running.values())
            deadlines.append(oldest + self.timings.heartbeat_timeout_s)
        return min(deadlines) if deadlines else None

    def lost(self, now: float) -> list[LostAttempt]:
        """Attempts silent past the heartbeat timeout, and queued ones overdue on a queue
        nobody consumes; each is reported once."""
        lost = []
        timeout_s = self.timings.heartbeat_timeout_s
        for attempt_id, running in list(self._running.items()):
            silent_s = now - running.last_seen
            if silent_s <= timeout_s:
                continue
            del self._running[attempt_id]
            if attempt_id in self._terminating:
                self._terminating.discard(attempt_id)
                lost.append(
                    LostAttempt(
                        attempt_id,
                        FailureClass.CANCELLED,
                        f"cancelled: step {running.step_key!r} attempt {running.number} was "
                        "terminated (run canceled); its worker has gone silent",
                    )
                )
                continue
            where = f"pid {running.pid} on {running.host}" if running.pid else "its worker"
            lost.append(
                LostAttempt(
                    attempt_id,
                    FailureClass.INFRASTRUCTURE,
                    f"step {running.step_key!r} attempt {running.number} (queue "
                    f"{running.queue!r}) lost: nothing from {where} for {silent_s:.1f}s "
                    f"(heartbeat timeout {timeout_s:g}s); the worker process died or cannot "
                    "reach Redis",
                )
            )
        if self._queued and next(iter(self._queued.values())).deadline <= now:
            lost.extend(self._overdue(now))
        return lost

    def _queue_alive(self, queue: str, now: float) -> bool:
        seen = self._consumers_seen.get(queue)
        if seen is not None and now - seen[0] < CONSUMER_CHECK_TTL_S:
            return seen[1]
        try:
            alive = bool(self.presence.consumers(queue))
        except CoreExecError as exc:
            log.warning("cannot tell whether queue %s has consumers: %s", queue, exc)
            alive = True  # do not fail steps because the check itself failed
        self._consumers_seen[queue] = (now, alive)
        return alive

    def _overdue(self, now: float) -> list[LostAttempt]:
        overdue: list[tuple[str, _Queued]] = []
        while self._queued:
            attempt_id, queued = next(iter(self._queued.items()))
            if queued.deadline > now:
                break
            del self._queued[attempt_id]
            overdue.append((attempt_id, queued))
        dead: list[tuple[str, _Queued]] = []
        for attempt_id, queued in overdue:
            if self._queue_alive(queued.queue, now):
                # Busy, not dead: wait another period (appended last: deadlines stay sorted).
                queued.deadline = now + self.timings.queued_timeout_s
                self._queued[attempt_id] = queued
            else:
                dead.append((attempt_id, queued))
        if not dead:
            return []
        fenced = self.claims.fence(
            self.run_id, [attempt_id for attempt_id, _ in dead], "no consumer on queue"
        )
        lost = []
        for (attempt_id, queued), was_fenced in zip(dead, fenced, strict=True):
            if not was_fenced:
                # A worker claimed it just now: it is starting after all.
                self._running[attempt_id] = queued.started(now)
                continue
            lost.append(
                LostAttempt(
                    attempt_id,
                    FailureClass.INFRASTRUCTURE,
                    f"step {queued.step_key!r} attempt {queued.number} was not picked up from "
                    f"queue {queued.queue!r} within {self.timings.queued_timeout_s:g}s and no "
                    f"worker consumes {queued.queue!r}; start one with "
                    f"`celery -A celery_app worker -Q {queued.queue}`",
                )
            )
        return lost
