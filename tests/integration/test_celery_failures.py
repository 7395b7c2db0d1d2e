"""Failures on the celery executor with real workers: a worker process killed with -9,
a message delivered twice, a queue nobody consumes, a busy queue, cancellation."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from celery_app.queues import STEP_QUEUES
from celery_app.step_task import STEP_TASK_NAME
from coreexec import Event, EventKind, Instance
from coreexec.redis_clients import redis_client, text
from coreexec.runs.cancel import request_cancel
from coreexec.storage.base import RunStatus
from coreexec.transport.redis_events import RedisEventStream
from tests.jobs import celery_jobs
from tests.jobs.celery_jobs import RunWatcher, marks, open_gate
from tests.support.processes import CeleryWorkerProcess, pid_alive

REF = "tests.jobs.celery_jobs"
HEARTBEAT_TIMEOUT_S = 1.0
FAST = {
    "heartbeat_interval_s": 0.2,
    "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
    "queued_timeout_s": 30.0,
}
WorkerFactory = Callable[..., CeleryWorkerProcess]


def run_config(**overrides: Any) -> dict[str, Any]:
    return {"execution": {"config": {**FAST, **overrides}}}


@pytest.fixture
def celery_env(redis_url: str, coreexec_home: object, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    for name in ("COREEXEC_REDIS_URL", "COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return redis_url


def wait_until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s}s")
        time.sleep(0.02)


def stream_events(redis_url: str, run_id: str) -> list[Event]:
    stream = RedisEventStream(redis_client(redis_url), run_id)
    return [entry.event for entry in stream.history() if entry.event is not None]


def dropped_deliveries(events: list[Event], attempt_id: str) -> list[Event]:
    return [
        e
        for e in events
        if e.kind is EventKind.STEP_LOG and e.attempt_id == attempt_id and "dropped_by" in e.data
    ]


def publish_again(app_url: str, start: Event, reference: str) -> None:
    """Publish the attempt's message once more, as a broker redelivery would."""
    from celery_app.executor import CeleryExecutorConfig, _app_for, settings_for

    app = _app_for(settings_for(CeleryExecutorConfig(broker=app_url)))
    assert start.step_key is not None and start.attempt is not None
    app.send_task(
        STEP_TASK_NAME,
        args=[start.run_id, start.step_key, start.attempt, start.attempt_id, reference],
        task_id=start.attempt_id,
        queue="coreexec.default",
        ignore_result=True,
    )


def test_kill_9_of_the_step_process_retries_on_another_process_within_heartbeat_timeout(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    workers = [celery_worker_factory(queues=STEP_QUEUES, concurrency=1) for _ in range(2)]
    watcher = RunWatcher(f"{REF}:kill_job", run_config()).start()
    first = watcher.event(EventKind.STEP_START, "victim", attempt=1)
    killed_pid = int(first.data["pid"])

    os.kill(killed_pid, signal.SIGKILL)
    killed_at = time.monotonic()
    result = watcher.join()

    assert result.status is RunStatus.SUCCESS, watcher.summary()
    # Heartbeat timeout plus a few seconds, not the broker's visibility timeout (1 hour).
    assert watcher.ended_at - killed_at < HEARTBEAT_TIMEOUT_S + 4.0
    assert result.output_for("after_victim") == 20
    second = watcher.event(EventKind.STEP_START, "victim", attempt=2)
    assert int(second.data["pid"]) != killed_pid
    lost = [
        e
        for e in result.events
        if e.kind is EventKind.STEP_FAILURE and e.attempt_id == first.attempt_id
    ]
    assert lost and lost[0].data["failure_class"] == "infrastructure"
    assert "heartbeat" in lost[0].message
    # The killed attempt's message comes back (acks_late + reject_on_worker_lost) and is
    # dropped by its claim (reported on the stream), or refused once the run has ended
    # (logged, nothing written): it never runs again and never reports success.
    killed_id = first.attempt_id
    assert killed_id is not None
    wait_until(
        lambda: (
            bool(dropped_deliveries(stream_events(celery_env, result.run_id), killed_id))
            or any(f"refusing attempt {killed_id}" in w.read_log() for w in workers)
        ),
        10.0,
        "dropped redelivery of the killed attempt",
    )
    for events in (result.events, stream_events(celery_env, result.run_id)):
        assert not [
            e
            for e in events
            if e.kind is EventKind.STEP_SUCCESS and e.attempt_id == first.attempt_id
        ]
    # The kill may land before attempt 1 reached the step's body; attempt 2 ran it once.
    ran = marks(result.run_id, "victim")
    assert ran[-1] == str(second.data["pid"]) and len(ran) <= 2


def test_heartbeats_keep_a_long_step_alive_past_the_heartbeat_timeout(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    assert celery_jobs.LONG_STEP_S > 1.5 * HEARTBEAT_TIMEOUT_S
    result = RunWatcher(f"{REF}:long_step_job", run_config()).start().join()

    assert result.status is RunStatus.SUCCESS
    assert result.output_for("long_step") == 1  # first attempt, never taken for lost
    heartbeats = [
        e
        for e in stream_events(celery_env, result.run_id)
        if e.kind is EventKind.STEP_HEARTBEAT and e.step_key == "long_step"
    ]
    # Every 0.2 s (the run's setting, not the 2 s default) for 2 s.
    assert len(heartbeats) >= 5
    # Transient: they drive the coordinator but stay out of the run's history.
    assert not [e for e in result.events if e.kind is EventKind.STEP_HEARTBEAT]


def test_a_duplicated_message_does_not_run_the_step_twice(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    worker = celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    reference = f"{REF}:gated_job"
    watcher = RunWatcher(reference, run_config()).start()
    start = watcher.event(EventKind.STEP_START, "gated")
    assert start.attempt_id is not None

    # While the attempt runs, the same message arrives again (the worker's second process
    # takes it): it is dropped, not run.
    publish_again(celery_env, start, reference)
    watcher.wait_for(
        lambda events: dropped_deliveries(events, start.attempt_id or ""), 15.0, "a dropped copy"
    )
    open_gate(start.run_id, "go")
    result = watcher.join()
    assert result.status is RunStatus.SUCCESS
    assert len(marks(result.run_id, "gated")) == 1

    # And once more after the run ended (a late redelivery): refused, nothing written.
    entries = len(stream_events(celery_env, result.run_id))
    publish_again(celery_env, start, reference)
    refusal = f"refusing attempt {start.attempt_id} (step gated of run {result.run_id}): the run"
    wait_until(lambda: refusal in worker.read_log(), 15.0, "the late copy refused")
    assert len(marks(result.run_id, "gated")) == 1
    assert len(stream_events(celery_env, result.run_id)) == entries


def test_a_step_on_a_queue_nobody_consumes_fails_after_queued_timeout_naming_the_queue(
    celery_env: str,
) -> None:
    queued_timeout_s = 1.0
    watcher = RunWatcher(f"{REF}:no_worker_job", run_config(queued_timeout_s=queued_timeout_s))
    result = watcher.start().join()

    assert result.status is RunStatus.FAILURE
    failure = next(e for e in result.events if e.kind is EventKind.STEP_FAILURE)
    assert failure.step_key == "stranded"
    assert celery_jobs.NOWHERE_QUEUE in failure.message
    assert failure.data["failure_class"] == "infrastructure"
    assert queued_timeout_s <= watcher.elapsed_s < queued_timeout_s + 3.0


def test_a_busy_queue_with_live_consumers_is_not_taken_for_a_dead_one(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    # Three 0.6 s steps on one process: the last waits ~1.2 s, past the 0.5 s timeout.
    result = RunWatcher(f"{REF}:busy_queue_job", run_config(queued_timeout_s=0.5)).start().join()

    assert result.status is RunStatus.SUCCESS
    assert [e for e in result.events if e.kind is EventKind.STEP_FAILURE] == []


def test_cancel_terminates_the_running_step_and_the_queued_one_never_starts(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    worker = celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    watcher = RunWatcher(f"{REF}:cancel_job", run_config()).start()
    start = watcher.wait_for(
        lambda events: next((e for e in events if e.kind is EventKind.STEP_START), None),
        20.0,
        "a step start",
    )
    queued_key = "sleeper_2" if start.step_key == "sleeper" else "sleeper"
    pid = int(start.data["pid"])

    request_cancel(Instance.from_env(), start.run_id, celery_env)
    result = watcher.join(timeout_s=10.0)

    assert result.status is RunStatus.CANCELED, watcher.summary()
    failures = {e.step_key: e for e in result.events if e.kind is EventKind.STEP_FAILURE}
    assert {e.data["failure_class"] for e in failures.values()} == {"cancelled"}
    # The running one reported it from its own process as it stopped (not from silence);
    # the queued one was fenced before any worker took it.
    running = failures[start.step_key]
    assert running.attempt_id == start.attempt_id and "silent" not in running.message
    assert "before a worker started" in failures[queued_key].message
    assert not [e for e in result.events if e.kind is EventKind.STEP_SUCCESS]
    wait_until(lambda: not pid_alive(pid), 5.0, f"exit of step process {pid}")

    # The queued message still reaches the freed worker, which discards it (revoked),
    # drops it (fenced claim) or refuses it (the run has ended): it never runs.
    queued_attempt = failures[queued_key].attempt_id or ""
    discarded = f"Discarding revoked task: cancel_job.{queued_key}[{queued_attempt}]"
    wait_until(
        lambda: (
            discarded in worker.read_log()
            or f"refusing attempt {queued_attempt}" in worker.read_log()
            or bool(dropped_deliveries(stream_events(celery_env, result.run_id), queued_attempt))
        ),
        10.0,
        "the queued message to be discarded",
    )
    assert marks(result.run_id, queued_key) == []
    assert not [
        e
        for e in stream_events(celery_env, result.run_id)
        if e.kind is EventKind.STEP_START and e.step_key == queued_key
    ]


def test_malformed_entries_on_the_run_stream_are_skipped_not_fatal(
    celery_env: str, celery_worker_factory: WorkerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    watcher = RunWatcher(f"{REF}:gated_job", run_config()).start()
    start = watcher.event(EventKind.STEP_START, "gated")
    client = redis_client(celery_env)
    key = RedisEventStream(client, start.run_id).key
    with caplog.at_level("WARNING", logger="coreexec.transport.redis_events"):
        junk_ids = [
            client.xadd(key, {"junk": "1"}),
            client.xadd(key, {"e": "{not json"}),
            client.xadd(key, {"e": '{"kind": "NO_SUCH_KIND", "run_id": "x", "ts": 1}'}),
        ]
        open_gate(start.run_id, "go")
        result = watcher.join()

    assert result.status is RunStatus.SUCCESS
    warned = "\n".join(record.getMessage() for record in caplog.records)
    for entry_id in junk_ids:
        assert text(entry_id) in warned and key in warned
