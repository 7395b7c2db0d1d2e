"""The Dask executor's dispatcher: one Dask future per attempt, and what comes back.

Attempts report on one of two channels, chosen by the executor:

- **the run's Redis stream** (when the executor has a Redis URL): inside the Dask worker
  the attempt runner (:func:`coreexec.attempt_runner.run_attempt`) claims the attempt in
  Redis, runs it and publishes its events, as a Celery worker does; the coordinator
  reads the stream with blocking reads (tag-limit wake-ups arrive on it too);
- **a Dask event topic of the run** (no Redis): the worker publishes each event with
  ``log_event`` and returns them all as the future's result, so none is lost; attempts
  are claimed with files under the shared instance home
  (:func:`coreexec.executors.dask_attempt.claim`).

Either way a Dask worker lost mid-step (the scheduler's ``remove-worker`` event, or the
future failing with ``KilledWorker``) fails the attempt as ``infrastructure`` and its
future is cancelled; a rerun by Dask finds the attempt claimed and runs nothing. Cancel
fences what has not started, cancels the futures and interrupts the running steps on
every worker (:func:`~coreexec.executors.dask_attempt.interrupt_attempts`).

This module imports nothing of Dask: the client is handed in by
:mod:`coreexec.executors.dask`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import ConfigError, CoreExecError, RequirementError
from coreexec.events import STEP_ATTEMPT_ENDINGS, Event, EventKind
from coreexec.execution.dispatcher import LostAttempt, StepDispatcher
from coreexec.execution.run_context import RunContext
from coreexec.executors.dask_attempt import DaskAttempt, claim, drop_claims, interrupt_attempts
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.storage.sqlite import SqliteRunStorage
from coreexec.transport.attempts import AttemptClaims
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0
"""How long an interrupted step may take to report its end before it is given up."""

MAX_BLOCK_S = 5.0
"""Longest single blocking read of the run's stream."""

RESOURCES_TAG = "coreexec-dask/resources"
"""JSON object of Dask resources a step needs, e.g. ``{"GPU": 1}``."""

TaskFunction = Callable[..., Any]


def step_resources(step: PlannedStep) -> dict[str, float] | None:
    """The Dask resources of a step's ``coreexec-dask/resources`` tag."""
    raw = step.tags.get(RESOURCES_TAG)
    if raw is None:
        return None
    path = f"{step.key}.tags.{RESOURCES_TAG}"
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"step {step.key!r}: tag {RESOURCES_TAG} must be a JSON object such as "
            f'{{"GPU": 1}}, got {raw!r} ({exc.msg})',
            path=path,
        ) from None
    if not isinstance(parsed, dict) or not all(
        isinstance(k, str) and isinstance(v, int | float) and not isinstance(v, bool)
        for k, v in parsed.items()
    ):
        raise ConfigError(
            f"step {step.key!r}: tag {RESOURCES_TAG} must map resource names to numbers, "
            f'such as {{"GPU": 1}}; got {raw!r}',
            path=path,
        )
    return {key: float(value) for key, value in parsed.items()}


@dataclass
class _Submitted:
    attempt: StepAttempt
    future: Any
    key: str
    next_seq: int = 0
    started: bool = False


@dataclass(frozen=True)
class RedisChannel:
    """The run's Redis stream and attempt claims (the attempt runner's channel)."""

    url: str
    stream: RedisEventStream
    claims: AttemptClaims


class DaskDispatcher(StepDispatcher):
    """Submits attempts to a Dask client and relays what they report."""

    def __init__(
        self,
        run: RunContext,
        client: Any,
        task: TaskFunction,
        *,
        max_concurrent: int | None,
        redis: RedisChannel | None = None,
    ) -> None:
        for step in run.plan.steps:
            step_resources(step)  # a bad tag fails before anything is submitted
        reference = run.plan.job_reference or run.job.reference
        if reference is None:
            raise RequirementError(
                f"job {run.job.name!r} has no 'package.module:attribute' reference, so Dask "
                "workers cannot load it; define it at module level and run it by reference"
            )
        self.run = run
        self.client = client
        self.max_in_flight = max_concurrent
        self._task = task
        self._reference = reference
        self._redis = redis
        if redis is not None:
            # A global tag limiter (on this Redis) wakes the run on its stream.
            self.wake_key = redis.stream.key
        self._topic = f"coreexec-{run.run_id}"
        self._home = _shared_home(run)
        self._sink: EventSink | None = None
        self._woken = threading.Event()
        self._inbox: deque[tuple[str, Any]] = deque()
        self._attempts: dict[str, _Submitted] = {}
        self._by_key: dict[str, str] = {}
        self._lost: list[LostAttempt] = []
        self._give_up_at: dict[str, float] = {}
        self._last_id = "0-0"
        self._unsent: list[tuple[PlannedStep, DaskAttempt]] = []

    # -- StepDispatcher ---------------------------------------------------------------

    def start(self, sink: EventSink) -> None:
        self._sink = sink
        if self._redis is not None:
            self._last_id = self._redis.stream.last_id()
        else:
            self.client.subscribe_topic(self._topic, self._on_topic)
        self.client.subscribe_topic("all", self._on_cluster_event)

    def dispatch(self, step: PlannedStep, attempt: StepAttempt) -> None:
        spec = DaskAttempt(
            run_id=self.run.run_id,
            step_key=step.key,
            attempt=attempt.number,
            attempt_id=attempt.attempt_id,
            job_reference=self._reference,
            home=self._home,
        )
        key = f"{self.run.job.name}.{step.key}.{attempt.number}-{self.run.run_id}"
        self._attempts[attempt.attempt_id] = _Submitted(attempt, None, key)
        self._by_key[key] = attempt.attempt_id
        self._unsent.append((step, spec))

    def flush(self) -> Sequence[LostAttempt]:
        """Submit the pass's attempts: one ``Client.map`` (one message to the scheduler)
        per run of consecutive steps with the same priority and resources."""
        unsent, self._unsent = self._unsent, []
        lost: list[LostAttempt] = []
        start = 0
        while start < len(unsent):
            step = unsent[start][0]
            end = start + 1
            while end < len(unsent) and _same_kind(unsent[end][0], step):
                end += 1
            lost.extend(self._submit([spec for _, spec in unsent[start:end]], step))
            start = end
        return lost

    def _submit(self, specs: list[DaskAttempt], like: PlannedStep) -> list[LostAttempt]:
        submitted = [self._attempts[spec.attempt_id] for spec in specs]
        channel = (None, self._redis.url) if self._redis is not None else (self._topic, None)
        try:
            if self._redis is not None:
                # Only attempts their coordinator issued can be claimed (a forged
                # message runs nothing): record these before a Dask worker claims them.
                self._redis.claims.issue(self.run.run_id, [item.attempt for item in submitted])
            futures = self.client.map(
                self._task,
                specs,
                [channel[0]] * len(specs),
                [channel[1]] * len(specs),
                key=[item.key for item in submitted],
                priority=like.priority,
                resources=step_resources(like),
                retries=0,
                pure=False,
            )
        except Exception as exc:  # the scheduler is gone or refused the graph
            for item in submitted:
                self._forget(item)
            return [
                LostAttempt(
                    spec.attempt_id,
                    FailureClass.INFRASTRUCTURE,
                    f"cannot submit step {spec.step_key!r} to the Dask scheduler: {exc!r}",
                )
                for spec in specs
            ]
        for item, future in zip(submitted, futures, strict=True):
            item.future = future
            attempt_id = item.attempt.attempt_id
            future.add_done_callback(lambda done, a=attempt_id: self._on_future(a, done))
        return []

    def wait(self, timeout_s: float | None) -> None:
        assert self._sink is not None, "start() first"
        if self._redis is not None:
            self._read_stream(0.0 if self._inbox else timeout_s)
        else:
            self._woken.clear()
            if not self._inbox:
                self._woken.wait(timeout_s)
        self._drain()

    def lost_attempts(self) -> Sequence[LostAttempt]:
        now = time.monotonic()
        for attempt_id, at in list(self._give_up_at.items()):
            if at <= now:
                self._lose(
                    attempt_id,
                    FailureClass.CANCELLED,
                    f"the step did not report its end within {CANCEL_GRACE_S:.0f}s of "
                    "being interrupted (it may be blocked in a C call)",
                )
        lost, self._lost = self._lost, []
        return lost

    def terminate(self, attempts: Sequence[StepAttempt]) -> None:
        ids = [a.attempt_id for a in attempts if a.attempt_id in self._attempts]
        if not ids:
            return
        never_started = set(self._fence(ids, "run canceled"))
        with contextlib.suppress(Exception):
            self.client.run(interrupt_attempts, ids, on_error="return")
        futures = [self._attempts[i].future for i in ids if self._attempts[i].future is not None]
        with contextlib.suppress(Exception):
            self.client.cancel(futures, force=True)
        for attempt_id in ids:
            if attempt_id in never_started:
                self._lose(attempt_id, FailureClass.CANCELLED, "canceled before the step started")
            else:
                self._give_up_at.setdefault(attempt_id, time.monotonic() + CANCEL_GRACE_S)

    def wake(self) -> None:
        if self._redis is None:
            self._woken.set()
            return
        try:
            self._redis.stream.publish_wake("wake")
        except CoreExecError as exc:
            log.warning("could not wake the coordinator of run %s: %s", self.run.run_id, exc)

    def close(self) -> None:
        try:
            pending = [s.future for s in self._attempts.values() if s.future is not None]
            if pending:
                with contextlib.suppress(Exception):
                    self.client.cancel(pending, force=True)
            for topic in ("all", self._topic if self._redis is None else None):
                if topic is not None:
                    with contextlib.suppress(Exception):
                        self.client.unsubscribe_topic(topic)
        finally:
            self._attempts.clear()
            if self._redis is not None:
                with contextlib.suppress(CoreExecError):
                    self._redis.stream.expire()
            else:
                drop_claims(self.run.instance.home, self.run.run_id)

    # -- hearing back: Dask's threads put, the coordinator's thread drains ---------------

    def _put(self, kind: str, body: Any, *, urgent: bool = True) -> None:
        self._inbox.append((kind, body))
        if self._redis is None:
            self._woken.set()
        elif urgent:
            self.wake()

    def _on_topic(self, event: tuple[float, Any]) -> None:
        self._put("event", event[1])

    def _on_cluster_event(self, event: tuple[float, Any]) -> None:
        message = event[1]
        if isinstance(message, dict) and message.get("action") == "remove-worker":
            self._put("worker-lost", message)

    def _on_future(self, attempt_id: str, future: Any) -> None:
        # A finished future's end is on the stream already (the stream channel): no need
        # to wake the reader for it.
        urgent = self._redis is None or future.status != "finished"
        self._put("done", attempt_id, urgent=urgent)

    def _read_stream(self, timeout_s: float | None) -> None:
        assert self._redis is not None
        block_s = MAX_BLOCK_S if timeout_s is None else min(timeout_s, MAX_BLOCK_S)
        block_ms = math.ceil(block_s * 1000) if block_s > 0.0005 else None
        entries = self._redis.stream.read(self._last_id, block_ms)
        while entries:
            for entry in entries:
                self._last_id = entry.entry_id
                if entry.wake == "cancel":
                    self.run.cancel_requested.set()
                if entry.event is not None:
                    self._accept(entry.event)
            entries = self._redis.stream.read(self._last_id, None)

    def _drain(self) -> None:
        while self._inbox:
            kind, body = self._inbox.popleft()
            if kind == "event":
                self._on_topic_event(body)
            elif kind == "done":
                self._on_done(body)
            else:
                self._on_worker_lost(body)

    def _accept(self, event: Event) -> None:
        """Pass on an event of a current attempt (or of the run)."""
        assert self._sink is not None
        submitted = self._attempts.get(event.attempt_id or "")
        if event.step_key is not None and submitted is None:
            return  # an attempt given up (lost, fenced): its late reports are not ours
        if submitted is not None:
            if event.kind is EventKind.STEP_START:
                submitted.started = True
            if event.kind in STEP_ATTEMPT_ENDINGS:
                self._forget(submitted)
        self._sink(event)

    def _on_topic_event(self, body: dict[str, Any]) -> None:
        event = Event.from_dict(body["event"])
        submitted = self._attempts.get(event.attempt_id or "")
        if submitted is None or body["seq"] < submitted.next_seq:
            return  # already heard (the topic and the result both carry it)
        submitted.next_seq = body["seq"] + 1
        self._accept(event)

    def _on_done(self, attempt_id: str) -> None:
        submitted = self._attempts.get(attempt_id)
        if submitted is None:
            return
        future = submitted.future
        if future.status == "finished":
            if self._redis is None:
                for body in future.result():  # only what the topic did not bring
                    self._on_topic_event(body)
                if attempt_id in self._attempts:
                    self._lose(attempt_id, FailureClass.INFRASTRUCTURE, _NO_REPORT)
        elif future.status == "cancelled":
            if not submitted.started:
                self._lose(attempt_id, FailureClass.CANCELLED, "its Dask future was cancelled")
            else:  # an interrupted step reports its own end, within the grace
                self._give_up_at.setdefault(attempt_id, time.monotonic() + CANCEL_GRACE_S)
        else:
            self._lose(attempt_id, FailureClass.INFRASTRUCTURE, _describe(future.exception()))

    def _on_worker_lost(self, message: dict[str, Any]) -> None:
        worker = message.get("worker", "a worker")
        for key in message.get("processing-tasks") or ():
            submitted = self._attempts.get(self._by_key.get(str(key), ""))
            if submitted is None or not submitted.started:
                # Not started: Dask gives it to another worker, and it runs there once.
                continue
            attempt = submitted.attempt
            self._lose(
                attempt.attempt_id,
                FailureClass.INFRASTRUCTURE,
                f"Dask worker {worker} running step {attempt.step_key!r} (attempt "
                f"{attempt.number}) was lost",
            )
            with contextlib.suppress(Exception):
                # Dask would run it again elsewhere; retries are the coordinator's.
                self.client.cancel([submitted.future], force=True)

    def _fence(self, attempt_ids: list[str], reason: str) -> list[str]:
        """Claim these attempts for nobody; returns those that had not been claimed."""
        if self._redis is None:
            home = self.run.instance.home
            return [i for i in attempt_ids if claim(home, self.run.run_id, i)]
        try:
            fenced = self._redis.claims.fence(self.run.run_id, attempt_ids, reason)
        except CoreExecError as exc:
            log.warning("cannot fence %d attempts: %s", len(attempt_ids), exc)
            return []
        return [i for i, was_fenced in zip(attempt_ids, fenced, strict=True) if was_fenced]

    def _lose(self, attempt_id: str, failure_class: FailureClass, message: str) -> None:
        submitted = self._attempts.get(attempt_id)
        if submitted is not None:
            self._forget(submitted)
        # A later run of this attempt (Dask's, after a lost worker) must run nothing.
        self._fence([attempt_id], message)
        self._lost.append(LostAttempt(attempt_id, failure_class, message))

    def _forget(self, submitted: _Submitted) -> None:
        attempt_id = submitted.attempt.attempt_id
        self._give_up_at.pop(attempt_id, None)
        self._attempts.pop(attempt_id, None)
        self._by_key.pop(submitted.key, None)


_NO_REPORT = (
    "the Dask task ended without the step's report (Dask ran it again after its worker "
    "was lost, and the attempt had been claimed)"
)


def _same_kind(step: PlannedStep, other: PlannedStep) -> bool:
    """Whether two steps go to Dask with the same priority and resources."""
    return step.priority == other.priority and step.tags.get(RESOURCES_TAG) == other.tags.get(
        RESOURCES_TAG
    )


def _describe(exc: BaseException | None) -> str:
    if type(exc).__name__ == "KilledWorker":
        return f"the Dask worker running it died ({exc})"
    return f"the Dask task failed outside the step: {exc!r}"


def _shared_home(run: RunContext) -> str | None:
    """The instance home to send to workers, when the run storage is the default one in
    it (an instance at that home on the worker finds the same storage and outputs)."""
    instance = run.instance
    storage = instance.storage
    if isinstance(storage, SqliteRunStorage) and storage.path == instance.home / "runs.db":
        return str(instance.home)
    return None
