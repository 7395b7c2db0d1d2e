"""``CeleryDispatcher``: the coordinator's side of the celery executor.

It publishes one message per step attempt (task id = attempt id, arguments = identifiers,
Flower name ``<job>.<step_key>``) and hears back on the run's Redis stream with blocking
XREAD: no sleep-and-poll loop. It also notices attempts that went quiet:

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
* **Termination.** Cancelled attempts that no worker has claimed are fenced and end
  CANCELLED at once; running ones are revoked with ``terminate=True`` and end when the
  worker reports the cancellation (or, failing that, when their heartbeats stop).
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import redis
from kombu.exceptions import KombuError

from celery_app.app import CoreexecApp
from celery_app.queue_presence import QueuePresence
from celery_app.routing import StepRouter
from celery_app.step_publisher import PUBLISH_ERRORS, OutgoingStep, StepPublisher, growing_batches
from celery_app.step_task import STEP_TASK_NAME
from celery_app.worker_runtime import RunSettings
from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import BrokerConnectionError, CoreExecError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event, EventKind
from coreexec.execution.dispatcher import STREAMED_STORAGE_FLUSH_S, LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.plan import PlannedStep
from coreexec.redis_urls import safe_url
from coreexec.retry import FailureClass
from coreexec.transport import keys
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.redis_events import RedisEventStream, StreamEntry

log = logging.getLogger(__name__)

READ_COUNT = 1000
"""Stream entries read per XREAD."""

MAX_BLOCK_S = 30.0
"""Longest single blocking read (the coordinator's own timers are usually shorter)."""

CONSUMER_CHECK_TTL_S = 1.0
"""How long one answer to "does queue Q have live consumers?" is reused."""


@dataclass(frozen=True)
class DispatchTimings:
    """The executor's timers, in seconds."""

    queued_timeout_s: float
    heartbeat_interval_s: float
    heartbeat_timeout_s: float


@dataclass
class _Queued:
    step_key: str
    number: int
    queue: str
    deadline: float


@dataclass(frozen=True)
class _Unsent:
    attempt: StepAttempt
    outgoing: OutgoingStep


@dataclass
class _Running:
    step_key: str
    number: int
    queue: str
    last_seen: float
    pid: int | None = None
    host: str | None = None


class CeleryDispatcher(StepDispatcher):
    """Dispatches one run's attempts as Celery tasks; see the module docstring."""

    def __init__(
        self,
        run: RunContext,
        app: CoreexecApp,
        client: redis.Redis,
        router: StepRouter,
        timings: DispatchTimings,
        *,
        redis_url: str,
        presence: QueuePresence,
    ) -> None:
        if run.plan.job_reference is None:
            raise CoreExecError(
                f"run {run.run_id} has no job reference; the celery executor sends "
                "workers the reference, so run the job by 'package.module:attribute'"
            )
        self.run = run
        self.app = app
        self.router = router
        self.timings = timings
        self.stream = RedisEventStream(client, run.run_id, url=redis_url)
        self.wake_key = self.stream.key
        # The run's stream keeps every event for a resume, and a SQLite commit per pass
        # competes with the steps for the CPU: events reach the storage in batches.
        self.storage_flush_interval_s = STREAMED_STORAGE_FLUSH_S
        self.claims = AttemptClaims(client, url=redis_url)
        self.presence = presence
        self._client = client
        self._job_reference = run.plan.job_reference
        self._shadow_prefix = f"{run.job.name}."
        self._broker = safe_url(str(app.conf.broker_url))
        self._sent_events = bool(app.conf.task_send_sent_event)
        self._sink: EventSink | None = None
        self._last_id = "0-0"
        self._publisher: StepPublisher | None = None
        self._queued: OrderedDict[str, _Queued] = OrderedDict()
        self._running: dict[str, _Running] = {}
        self._terminating: set[str] = set()
        self._lost: list[LostAttempt] = []
        self._unsent: list[_Unsent] = []
        self._consumers_seen: dict[str, tuple[float, bool]] = {}

    # -- lifecycle --------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        settings = RunSettings(heartbeat_interval_s=self.timings.heartbeat_interval_s)
        key = keys.run_settings(self.run.run_id)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for name, value in settings.to_hash().items():
                    pipe.hset(key, name, value)
                pipe.expire(key, keys.FINISHED_RUN_TTL_S * 7)
                pipe.execute()
        except redis.RedisError as exc:
            raise BrokerConnectionError(
                f"cannot write the settings of run {self.run.run_id} to Redis: {exc}",
                url=self.stream.url,
            ) from exc
        # Only what happens from now on: a resumed run's stream holds its past too.
        self._last_id = self.stream.last_id()
        self._publisher = StepPublisher(self.app)

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        try:
            self.stream.expire()
        except CoreExecError as exc:
            log.warning("could not set the expiry of %s: %s", self.stream.key, exc)

    # -- dispatch ---------------------------------------------------------------------

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        """Build the attempt's message; :meth:`flush` sends it with the rest of the pass."""
        route = self.router.route(step)
        shadow = self._shadow_prefix + step.key
        args = [self.run.run_id, step.key, attempt.number, attempt.attempt_id, self._job_reference]
        # The first half of ``app.send_task`` without its per-call routing work, so the
        # task-sent event can carry the Flower name too.
        message = self.app.amqp.create_task_message(
            attempt.attempt_id,
            STEP_TASK_NAME,
            args,
            {},
            create_sent_event=self._sent_events,
            shadow=shadow,
            ignore_result=True,
            # What Flower shows: identifiers only, so plain repr (Celery's saferepr,
            # made for arbitrary values, costs ~90 µs a message).
            argsrepr=repr(args),
            kwargsrepr="{}",
        )
        if message.sent_event is not None:
            message.sent_event["name"] = shadow
        outgoing = OutgoingStep(message, route.queue, route.message_priority)
        self._unsent.append(_Unsent(attempt, outgoing))

    def flush(self) -> Sequence[LostAttempt]:
        """Publish the pass's messages in growing batches (see
        :mod:`celery_app.step_publisher`); the attempts of a batch that failed, and of
        every batch after it, come back lost."""
        assert self._publisher is not None, "start() first"
        unsent, self._unsent = self._unsent, []
        for start, batch in growing_batches(unsent):
            try:
                self._publisher.publish([item.outgoing for item in batch])
            except PUBLISH_ERRORS as exc:
                return self._unpublished(unsent[start:], exc)
            deadline = time.monotonic() + self.timings.queued_timeout_s
            for item in batch:
                attempt = item.attempt
                self._queued[attempt.attempt_id] = _Queued(
                    attempt.step_key, attempt.number, item.outgoing.queue, deadline
                )
        return ()

    def _unpublished(self, unsent: Sequence[_Unsent], exc: BaseException) -> list[LostAttempt]:
        """The attempts from a batch that failed on. Each is fenced, so that a message
        which did reach the broker is dropped by its worker, and reported lost; one that a
        worker claimed already is running after all."""
        ids = [item.attempt.attempt_id for item in unsent]
        try:
            fenced = self.claims.fence(self.run.run_id, ids, "message not published")
        except CoreExecError as fence_exc:
            log.warning("cannot fence %d unpublished attempts: %s", len(ids), fence_exc)
            fenced = [True] * len(ids)
        lost = []
        now = time.monotonic()
        for item, was_fenced in zip(unsent, fenced, strict=True):
            attempt, queue = item.attempt, item.outgoing.queue
            if not was_fenced:
                self._running[attempt.attempt_id] = _Running(
                    attempt.step_key, attempt.number, queue, now
                )
                continue
            lost.append(
                LostAttempt(
                    attempt.attempt_id,
                    FailureClass.INFRASTRUCTURE,
                    f"cannot publish step {attempt.step_key!r} to queue {queue!r} on broker "
                    f"{self._broker}: {exc}; check that the broker runs and the URL is right",
                )
            )
        return lost

    # -- hearing back -----------------------------------------------------------------

    def wait(self, timeout_s: float | None) -> None:
        """Block on the stream until something the coordinator acts on arrives (an
        attempt ended, a wake-up), a timer of ours is due, or ``timeout_s`` passed.

        Other events (a step started, logged, heartbeat) are handed to the sink as they
        come without ending the wait, so the coordinator makes one pass per change of
        state rather than one per event.
        """
        end = time.monotonic() + (MAX_BLOCK_S if timeout_s is None else min(timeout_s, MAX_BLOCK_S))
        while True:
            until = end
            deadline = self._next_deadline()
            if deadline is not None:
                until = min(until, deadline)
            block_s = until - time.monotonic()
            if block_s <= 0.0005:
                entries = self.stream.read(self._last_id, None, READ_COUNT)
            else:
                entries = self.stream.read(self._last_id, math.ceil(block_s * 1000), READ_COUNT)
            acted = self._take(entries)
            while len(entries) >= READ_COUNT:
                entries = self.stream.read(self._last_id, None, READ_COUNT)
                acted = self._take(entries) or acted
            if acted or time.monotonic() >= until - 0.0005:
                return

    def _take(self, entries: Sequence[StreamEntry]) -> bool:
        """Pass events to the sink; True when one of them calls for a coordinator pass."""
        assert self._sink is not None, "start() first"
        acted = False
        for entry in entries:
            self._last_id = entry.entry_id
            if entry.wake is not None:
                acted = True
                if entry.wake == "cancel":
                    self.run.cancel_requested.set()
            event = entry.event
            if event is not None:
                self._track(event)
                self._sink(event)
                acted = acted or event.kind in STEP_ATTEMPT_ENDINGS or event.step_key is None
        return acted

    def _track(self, event: Event) -> None:
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
        now = time.monotonic()
        running = self._running.get(attempt_id)
        if running is None:
            queued = self._queued.pop(attempt_id, None)
            if queued is None:
                return  # not ours: an attempt of an earlier coordinator of this run
            running = _Running(queued.step_key, queued.number, queued.queue, now)
            self._running[attempt_id] = running
        running.last_seen = now
        if event.kind is EventKind.STEP_START:
            pid = event.data.get("pid")
            running.pid = int(pid) if pid is not None else None
            host = event.data.get("host")
            running.host = str(host) if host is not None else None

    # -- lost attempts ----------------------------------------------------------------

    def _next_deadline(self) -> float | None:
        deadlines = []
        if self._queued:
            deadlines.append(next(iter(self._queued.values())).deadline)
        if self._running:
            oldest = min(r.last_seen for r in self._running.values())
            deadlines.append(oldest + self.timings.heartbeat_timeout_s)
        return min(deadlines) if deadlines else None

    def lost_attempts(self) -> Sequence[LostAttempt]:
        now = time.monotonic()
        lost, self._lost = self._lost, []
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
                        f"step {running.step_key!r} attempt {running.number} was terminated "
                        "(run canceled); its worker has gone silent",
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
            self.run.run_id, [attempt_id for attempt_id, _ in dead], "no consumer on queue"
        )
        lost = []
        for (attempt_id, queued), was_fenced in zip(dead, fenced, strict=True):
            if not was_fenced:
                # A worker claimed it just now: it is starting after all.
                self._running[attempt_id] = _Running(
                    queued.step_key, queued.number, queued.queue, now
                )
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

    # -- cancellation -----------------------------------------------------------------

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        ids = [a.attempt_id for a in attempts]
        if not ids:
            return
        fenced = self.claims.fence(self.run.run_id, ids, "run canceled")
        now = time.monotonic()
        for attempt, was_fenced in zip(attempts, fenced, strict=True):
            queued = self._queued.pop(attempt.attempt_id, None)
            if was_fenced:
                self._running.pop(attempt.attempt_id, None)
                self._lost.append(
                    LostAttempt(
                        attempt.attempt_id,
                        FailureClass.CANCELLED,
                        f"run canceled before a worker started step {attempt.step_key!r}",
                    )
                )
                continue
            if queued is not None:
                self._running[attempt.attempt_id] = _Running(
                    queued.step_key, queued.number, queued.queue, now
                )
            self._terminating.add(attempt.attempt_id)
        try:
            # Revoked ids are discarded by workers on receipt; the running ones get SIGTERM,
            # which the step runner reports as a cancelled attempt.
            self.app.control.revoke(ids, terminate=True, signal="SIGTERM")
        except (KombuError, OSError, redis.RedisError) as exc:
            log.warning("revoking %d attempts of run %s failed: %s", len(ids), self.run.run_id, exc)

    def wake(self) -> None:
        try:
            self.stream.publish_wake("wake")
        except CoreExecError as exc:
            log.warning("could not wake the coordinator of run %s: %s", self.run.run_id, exc)
