"""``CeleryDispatcher``: the coordinator's side of the celery executor.

It publishes one message per step attempt (task id = attempt id, arguments = identifiers,
Flower name ``<job>.<step_key>``) and hears back on the run's Redis stream with blocking
XREAD: no sleep-and-poll loop. Two of its parts have modules of their own: publishing
(:mod:`celery_app.step_publisher`, a pass's steps in growing batches) and noticing
attempts that went quiet (:mod:`celery_app.attempt_watch`: heartbeat loss, queued
timeout, terminated attempts).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

import redis
from kombu.exceptions import KombuError, OperationalError

from celery_app.app import CoreexecApp
from celery_app.attempt_watch import AttemptWatch, DispatchTimings
from celery_app.queue_presence import QueuePresence
from celery_app.routing import StepRouter
from celery_app.step_publisher import PUBLISH_ERRORS, OutgoingStep, StepPublisher, growing_batches
from celery_app.step_task import STEP_TASK_NAME
from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import BrokerConnectionError, CoreExecError
from coreexec.events import STEP_ATTEMPT_ENDINGS
from coreexec.execution.dispatcher import STREAMED_STORAGE_FLUSH_S, LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.plan import PlannedStep
from coreexec.redis_urls import safe_url, same_redis
from coreexec.retry import FailureClass
from coreexec.transport import keys
from coreexec.transport.attempts import (
    DEFAULT_CLAIM_TTL_S,
    AttemptClaims,
    add_finish_commands,
    add_issue_commands,
    add_reopen_commands,
)
from coreexec.transport.coordinator_heartbeat import CoordinatorHeartbeat, is_beating
from coreexec.transport.outage import Outage
from coreexec.transport.redis_events import RedisEventStream, StreamEntry
from coreexec.transport.run_settings import RunSettings

log = logging.getLogger(__name__)

READ_COUNT = 1000
"""Stream entries read per XREAD."""

MAX_BLOCK_S = 30.0
"""Longest single blocking read (the coordinator's own timers are usually shorter)."""


OUTAGE_ERRORS = (
    redis.ConnectionError,
    redis.TimeoutError,
    OperationalError,
    ConnectionError,
    BrokerConnectionError,
)
"""What a publish raises while the broker is unreachable: retried through the outage."""


@dataclass(frozen=True)
class _Unsent:
    attempt: StepAttempt
    outgoing: OutgoingStep


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
        launch: RunSettings | None = None,
    ) -> None:
        if run.plan.job_reference is None:
            raise CoreExecError(
                f"run {run.run_id} has no job reference; the celery executor sends "
                "workers the reference, so run the job by 'package.module:attribute'"
            )
        self.run = run
        self.app = app
        self.launch = launch or RunSettings()
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
        self.watch = AttemptWatch(run.run_id, timings, self.claims, presence)
        self._lost: list[LostAttempt] = []
        self._unsent: list[_Unsent] = []
        self._redis_url = redis_url
        self._issue_in_publish = False
        self._issued_ttl: int | None = DEFAULT_CLAIM_TTL_S
        """The TTL the issued hash still needs (set with the first batch only)."""
        self._heartbeat: CoordinatorHeartbeat | None = None
        self.outage = Outage(timings.outage_tolerance_s, f"coordinator of run {run.run_id}")

    # -- lifecycle --------------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        settings = replace(
            self.launch,
            heartbeat_interval_s=self.timings.heartbeat_interval_s,
            outage_tolerance_s=self.timings.outage_tolerance_s,
        )
        key = keys.run_settings(self.run.run_id)
        try:
            with self._client.pipeline(transaction=False) as pipe:
                for name, value in settings.to_hash().items():
                    pipe.hset(key, name, value)
                pipe.expire(key, keys.FINISHED_RUN_TTL_S * 7)
                add_reopen_commands(pipe, self.run.run_id)
                pipe.execute()
        except redis.RedisError as exc:
            raise BrokerConnectionError(
                f"cannot write the settings of run {self.run.run_id} to Redis: {exc}",
                url=self.stream.url,
            ) from exc
        # Only what happens from now on: a resumed run's stream holds its past too.
        self._last_id = self.stream.last_id()
        if not is_beating(self.run.run_id):
            # A run coordinated here (``coreexec run``, ``execute_job``) beats too, so a
            # coordinator that dies is seen as lost and reaped (see coreexec.runs.orphans).
            heartbeat = CoordinatorHeartbeat(
                self._client, self.run.run_id, owner=f"coordinator pid {os.getpid()}"
            )
            try:
                self._heartbeat = heartbeat.start()
            except redis.RedisError as exc:
                log.warning("run %s has no coordinator heartbeat: %s", self.run.run_id, exc)
        self._publisher = StepPublisher(self.app)
        # Issued attempts ride in the publish pipeline when the broker is this Redis.
        self._issue_in_publish = self._publisher.lists is not None and same_redis(
            str(self.app.conf.broker_url), self._redis_url
        )

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        if self._publisher is not None:
            self._publisher.close()
            self._publisher = None
        # One round trip: no attempt of the run is claimed any more, its keys lapse.
        try:
            with self._client.pipeline(transaction=False) as pipe:
                add_finish_commands(pipe, self.run.run_id)
                pipe.expire(self.stream.key, keys.FINISHED_RUN_TTL_S)
                pipe.expire(keys.run_settings(self.run.run_id), keys.FINISHED_RUN_TTL_S)
                pipe.execute()
        except redis.RedisError as exc:
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
                self._publish_through_outage(batch)
            except (*PUBLISH_ERRORS, CoreExecError) as exc:
                return self._unpublished(unsent[start:], exc)
            now = time.monotonic()
            for item in batch:
                self.watch.published(item.attempt, item.outgoing.queue, now)
        return ()

    def _publish_through_outage(self, batch: Sequence[_Unsent]) -> None:
        """Publish the batch, tried again with backoff while the broker is unreachable, up
        to the outage tolerance (then the error is raised, naming it). Sending a batch
        twice is safe: a second delivery of an attempt is dropped by its claim. The
        outage stays open until the next stream read, which then reconciles: a Redis that
        lost its data in it lost the messages of attempts still queued too."""
        while True:
            try:
                self._publish(batch)
                return
            except OUTAGE_ERRORS as exc:
                if isinstance(exc, BrokerConnectionError):
                    error = exc
                else:
                    what = f"cannot publish {len(batch)} step messages to {self._broker}: {exc}"
                    error = BrokerConnectionError(what, url=self._broker)
                time.sleep(self.outage.failed(error, time.monotonic()))

    def _publish(self, batch: Sequence[_Unsent]) -> None:
        """Record the batch's attempts as issued (workers claim no other), then send it."""
        assert self._publisher is not None, "start() first"
        run_id, attempts = self.run.run_id, [item.attempt for item in batch]
        if self._issue_in_publish:
            ttl_s = self._issued_ttl
            hook = partial(add_issue_commands, run_id=run_id, attempts=attempts, ttl_s=ttl_s)
            self._publisher.publish([item.outgoing for item in batch], hook)
            self._issued_ttl = None
            return
        self.claims.issue(run_id, attempts)
        self._publisher.publish([item.outgoing for item in batch])

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
                self.watch.running(attempt, queue, now)
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
        ridden = self.outages_ridden
        while True:
            until = end
            deadline = self.watch.next_deadline()
            if deadline is not None:
                until = min(until, deadline)
            block_s = until - time.monotonic()
            entries = self._read(None if block_s <= 0.0005 else math.ceil(block_s * 1000))
            acted = self._take(entries)
            while len(entries) >= READ_COUNT:
                entries = self._read(None)
                acted = self._take(entries) or acted
            if acted or ridden != self.outages_ridden or time.monotonic() >= until - 0.0005:
                return

    def _read(self, block_ms: int | None) -> list[StreamEntry]:
        """The stream's next entries, read on from the last one taken through a Redis
        outage shorter than the tolerance (then the error fails the run)."""
        while True:
            try:
                entries = self.stream.read(self._last_id, block_ms, READ_COUNT)
            except BrokerConnectionError as exc:
                time.sleep(self.outage.failed(exc, time.monotonic()))
                continue
            lasted_s = self.outage.recovered(time.monotonic())
            if lasted_s is not None:
                self.outages_ridden += 1
                self._reconcile(lasted_s)
            return entries

    def _reconcile(self, lasted_s: float) -> None:
        """After an outage: heartbeats could not arrive, so the watch's clocks restart;
        a queued attempt no worker has claimed may have lost its message with a Redis
        that restarted without persistence, so it is published again (a second
        delivery of one that survived is dropped by the claim)."""
        queued = self.watch.outage_ended(time.monotonic(), lasted_s)
        if not queued:
            return
        try:
            holders = self.claims.holders(self.run.run_id, [q[0] for q in queued])
        except CoreExecError as exc:
            log.warning("cannot check the claims of %d queued attempts: %s", len(queued), exc)
            return
        again = [q for q, holder in zip(queued, holders, strict=True) if holder is None]
        for attempt_id, step_key, number in again:
            self.dispatch(self.run.plan.step(step_key), StepAttempt(step_key, number, attempt_id))
        log.warning(
            "run %s: Redis was unreachable for %.1fs; published %d queued attempts again",
            self.run.run_id,
            lasted_s,
            len(again),
        )
        self._lost.extend(self.flush())

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
                self.watch.track(event, time.monotonic())
                self._sink(event)
                acted = acted or event.kind in STEP_ATTEMPT_ENDINGS or event.step_key is None
        return acted

    # -- lost attempts ----------------------------------------------------------------

    def lost_attempts(self) -> Sequence[LostAttempt]:
        lost, self._lost = self._lost, []
        lost.extend(self.watch.lost(time.monotonic()))
        return lost

    # -- cancellation -----------------------------------------------------------------

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        ids = [a.attempt_id for a in attempts]
        if not ids:
            return
        fenced = self.claims.fence(self.run.run_id, ids, "run canceled")
        now = time.monotonic()
        for attempt, was_fenced in zip(attempts, fenced, strict=True):
            if self.watch.terminating(attempt, was_fenced, now):
                self._lost.append(
                    LostAttempt(
                        attempt.attempt_id,
                        FailureClass.CANCELLED,
                        "cancelled: run canceled before a worker started step "
                        f"{attempt.step_key!r}",
                    )
                )
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
