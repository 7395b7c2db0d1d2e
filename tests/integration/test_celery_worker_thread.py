"""The step task, routing by priority and the Celery states of an attempt's end, against
a Celery worker running in a thread of the test process (``celery.contrib.testing``'s
``start_worker``, with the classic ``celery_app`` fixture pytest-celery provides replaced
by the coreexec app) on the session's real redis-server as broker.

Fast: no worker process to start. What needs a process of its own (a killed worker, a
redelivery after a crash, a terminated step) stays in test_celery_failures.py,
test_celery_execution.py and test_flower.py.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from celery.signals import task_failure, task_postrun

from celery_app.app import CoreexecApp, make_app
from celery_app.queues import DEFAULT_QUEUE, HIGH_QUEUE, LOW_QUEUE, STEP_QUEUES, redis_queue_keys
from celery_app.settings import CelerySettings
from celery_app.step_task import STEP_TASK_NAME
from coreexec import EventKind
from coreexec.instance import Instance
from coreexec.runs.cancel import request_cancel
from coreexec.storage.base import RunStatus
from tests.jobs import celery_jobs
from tests.jobs.celery_jobs import RunWatcher
from tests.support.celery_env import publish_attempt_again
from tests.support.waiting import wait_until

REF = "tests.jobs.celery_jobs"
FAST = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 5.0, "queued_timeout_s": 30.0}
WAIT_S = 30.0


def run_config() -> dict[str, Any]:
    return {"execution": {"config": FAST}}


@pytest.fixture
def celery_app(celery_env: str) -> Iterator[CoreexecApp]:
    """The coreexec app on this test's broker, in place of the classic fixture's app."""
    app = make_app(CelerySettings.from_env(), set_as_current=False)
    with app:
        yield app


@contextmanager
def worker_thread(app: CoreexecApp, queues: Sequence[str] = STEP_QUEUES) -> Iterator[Any]:
    """A worker of ``app`` in a thread of this process, consuming ``queues``; stopped on
    exit. (pytest-celery 1.x names its container-based worker ``celery_worker``; this is
    the thread worker of celery.contrib.testing.)"""
    # No ping: the ping task needs a result backend, which coreexec does not use.
    with start_worker(app, pool="solo", perform_ping_check=False, queues=list(queues)) as w:
        yield w


# -- the step task --------------------------------------------------------------------------


def test_the_step_task_runs_a_job_on_a_worker_thread(celery_app: CoreexecApp) -> None:
    with worker_thread(celery_app):
        watcher = RunWatcher(f"{REF}:fanout_job", run_config()).start()
        result = watcher.join()

    assert result.status is RunStatus.SUCCESS, watcher.summary()
    width = celery_jobs.FANOUT_WIDTH
    assert result.output_for("join") == sum(v * v for v in range(1, width + 1))
    starts = [e for e in result.events if e.kind is EventKind.STEP_START]
    assert len(starts) == width + 2
    # Every attempt ran in this process: on the worker thread, not in a worker process.
    assert {int(e.data["pid"]) for e in starts} == {os.getpid()}


# -- routing by priority --------------------------------------------------------------------


def queued_steps(client: redis.Redis, queue: str) -> list[str]:
    """The step names (Flower's task names, ``job.step``) of messages waiting on ``queue``."""
    names = []
    for key in redis_queue_keys(queue):
        for raw in client.lrange(key, 0, -1):
            headers = json.loads(raw)["headers"]
            assert headers["task"] == STEP_TASK_NAME
            names.append(headers["shadow"])
    return names


def test_priority_picks_the_queue_a_step_waits_on_and_a_worker_takes_only_its_queues(
    celery_app: CoreexecApp, redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    watcher = RunWatcher(f"{REF}:priority_job", run_config()).start()
    # Before any worker: each step waits on the queue of its priority band.
    expected = {
        HIGH_QUEUE: ["priority_job.urgent"],
        DEFAULT_QUEUE: ["priority_job.normal"],
        LOW_QUEUE: ["priority_job.background"],
    }
    wait_until(
        lambda: {q: queued_steps(client, q) for q in STEP_QUEUES} == expected,
        "one message on each step queue",
        WAIT_S,
        show=lambda: {q: queued_steps(client, q) for q in STEP_QUEUES},
    )

    with worker_thread(celery_app, [HIGH_QUEUE]):
        watcher.event(EventKind.STEP_SUCCESS, "urgent")
    # The worker of the high queue left the others where they were.
    assert {q: queued_steps(client, q) for q in (DEFAULT_QUEUE, LOW_QUEUE)} == {
        DEFAULT_QUEUE: ["priority_job.normal"],
        LOW_QUEUE: ["priority_job.background"],
    }
    assert not [
        e for e in watcher.events if e.kind is EventKind.STEP_START and e.step_key != "urgent"
    ]

    with worker_thread(celery_app, [DEFAULT_QUEUE, LOW_QUEUE]):
        result = watcher.join()
    assert result.status is RunStatus.SUCCESS, watcher.summary()
    starts = [e.step_key for e in result.events if e.kind is EventKind.STEP_START]
    assert starts == ["urgent", "normal", "background"]


# -- how an attempt's end reads to Celery ---------------------------------------------------


class TaskEnds:
    """The Celery states of the step tasks this process's worker thread ran (its
    ``task_postrun`` signal) and the failures it reported (``task_failure``)."""

    def __init__(self) -> None:
        self.states: list[tuple[str, str]] = []
        self.failures: dict[str, tuple[BaseException, str]] = {}
        self._lock = threading.Lock()

    def on_postrun(self, task_id: str, state: str, **_: Any) -> None:
        with self._lock:
            self.states.append((task_id, state))

    def on_failure(self, task_id: str, exception: BaseException, einfo: Any, **_: Any) -> None:
        with self._lock:
            self.failures[task_id] = (exception, str(einfo.traceback))

    def of(self, task_id: str | None) -> list[str]:
        with self._lock:
            return [state for tid, state in self.states if tid == task_id]


@pytest.fixture
def task_ends() -> Iterator[TaskEnds]:
    ends = TaskEnds()
    task_postrun.connect(ends.on_postrun, weak=False)
    task_failure.connect(ends.on_failure, weak=False)
    try:
        yield ends
    finally:
        task_postrun.disconnect(ends.on_postrun)
        task_failure.disconnect(ends.on_failure)


class EventsSeen:
    """Celery's task events from the broker (what Flower reads), from a receiver thread."""

    def __init__(self, app: CoreexecApp) -> None:
        self.app = app
        self.events: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._connection = app.connection_for_read()
        self._receiver = app.events.Receiver(self._connection, handlers={"*": self._on})
        self._thread = threading.Thread(target=self._capture, daemon=True)

    def _on(self, event: dict[str, Any]) -> None:
        with self._lock:
            self.events.append(event)

    def _capture(self) -> None:
        self._receiver.capture(limit=None, timeout=None, wakeup=False)

    def of(self, kind: str, task_id: str | None = None) -> list[dict[str, Any]]:
        with self._lock:
            return [
                e
                for e in self.events
                if e.get("type") == kind and (task_id is None or e.get("uuid") == task_id)
            ]

    def __enter__(self) -> EventsSeen:
        self._thread.start()
        # Listening once an event sent after the start arrives (no sleep).
        with self.app.events.default_dispatcher() as dispatcher:
            wait_until(
                lambda: dispatcher.send("task-test-ready") or self.of("task-test-ready"),
                "the event receiver to listen",
                WAIT_S,
                interval_s=0.1,
            )
        return self

    def __exit__(self, *exc: object) -> None:
        self._receiver.should_stop = True
        self._thread.join(WAIT_S)
        self._connection.release()


def test_success_failure_and_a_dropped_copy_end_as_celery_states(
    celery_app: CoreexecApp, celery_env: str, task_ends: TaskEnds
) -> None:
    with worker_thread(celery_app):
        watcher = RunWatcher(f"{REF}:flower_states_job", run_config()).start()
        fine = watcher.event(EventKind.STEP_SUCCESS, "fine")
        broken = watcher.event(EventKind.STEP_FAILURE, "broken")
        wait_until(lambda: task_ends.of(broken.attempt_id), "the failed task to end", WAIT_S)
        assert task_ends.of(fine.attempt_id) == ["SUCCESS"]
        assert task_ends.of(broken.attempt_id) == ["FAILURE"]
        exception, traceback = task_ends.failures[broken.attempt_id or ""]
        # The step's own error and traceback, not the machinery that reported it.
        assert repr(exception) == "StepBroke('the warehouse said no')"
        assert "in broken" in traceback
        assert "celery/app/trace.py" not in traceback
        assert "step_task.py" not in traceback

        watcher.event(EventKind.STEP_START, "gated")
        celery_jobs.open_gate(watcher.run_id, "go")
        result = watcher.join()
        assert result.status is RunStatus.FAILURE
        gated = next(
            e for e in result.events if e.kind is EventKind.STEP_SUCCESS and e.step_key == "gated"
        )
        assert task_ends.of(gated.attempt_id) == ["SUCCESS"]
        failed = [e.step_key for e in result.events if e.kind is EventKind.STEP_FAILURE]
        assert failed == ["broken"]

        # A second delivery of the attempt that succeeded is dropped: Ignore, so no
        # state of its own over the first delivery's.
        start = next(
            e for e in result.events if e.kind is EventKind.STEP_START and e.step_key == "fine"
        )
        publish_attempt_again(celery_env, start, f"{REF}:flower_states_job")
        wait_until(lambda: len(task_ends.of(fine.attempt_id)) == 2, "the copy to end", WAIT_S)
    assert task_ends.of(fine.attempt_id) == ["SUCCESS", "IGNORED"]
    assert task_ends.of(broken.attempt_id) == ["FAILURE"]


def test_a_fenced_delivery_is_revoked_and_ignored(
    celery_app: CoreexecApp, celery_env: str, task_ends: TaskEnds
) -> None:
    # No worker yet: the step waits in its queue; the cancel fences its attempt, so the
    # worker that starts later finds it fenced.
    watcher = RunWatcher(f"{REF}:gated_job").start()
    queued = watcher.event(EventKind.STEP_QUEUED, "gated")
    request_cancel(Instance.from_env(), watcher.run_id, celery_env)
    assert watcher.join().status is RunStatus.CANCELED

    with EventsSeen(celery_app) as seen, worker_thread(celery_app):
        wait_until(lambda: task_ends.of(queued.attempt_id), "the fenced task to end", WAIT_S)
        wait_until(lambda: seen.of("task-revoked", queued.attempt_id), "its task-revoked", WAIT_S)
    assert task_ends.of(queued.attempt_id) == ["IGNORED"]
    assert seen.of("task-succeeded", queued.attempt_id) == []
    assert seen.of("task-failed", queued.attempt_id) == []
    assert celery_jobs.marks(watcher.run_id, "gated") == []
