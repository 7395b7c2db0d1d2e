"""A real Flower process sees coreexec's step tasks by ``<job>.<step_key>``."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from celery_app.queues import DEFAULT_QUEUE, STEP_QUEUES
from celery_app.step_task import STEP_TASK_NAME
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.runs.cancel import request_cancel
from coreexec.storage.base import RunStatus
from tests.jobs import celery_jobs
from tests.jobs.celery_jobs import RunWatcher
from tests.support.processes import CeleryWorkerProcess, FlowerProcess

REF = "tests.jobs.celery_jobs"
JOB = "flower_states_job"


@pytest.fixture
def celery_env(redis_url: str, coreexec_home: object, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    for name in ("COREEXEC_REDIS_URL", "COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return redis_url


def _publish_again(broker_url: str, start: Event) -> None:
    """Publish an attempt's message once more, headers and all, as a broker redelivery
    would."""
    from celery_app.executor import CeleryExecutorConfig, _app_for, settings_for

    app = _app_for(settings_for(CeleryExecutorConfig(broker=broker_url)))
    app.send_task(
        STEP_TASK_NAME,
        args=[start.run_id, start.step_key, start.attempt, start.attempt_id, f"{REF}:{JOB}"],
        task_id=start.attempt_id,
        queue=DEFAULT_QUEUE,
        shadow=f"{JOB}.{start.step_key}",
        ignore_result=True,
    )


FINISHED = frozenset({"SUCCESS", "FAILURE", "REVOKED"})


def tasks_named(
    flower: FlowerProcess, names: set[str], timeout_s: float, states: frozenset[str] = FINISHED
) -> dict[str, Any]:
    """Poll Flower's task list (an HTTP API: nothing to block on) until it has ``names``
    in one of ``states`` (finished ones by default)."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks: dict[str, Any] = flower.get_json("/api/tasks")
        by_name = {t.get("name"): t for t in tasks.values() if t.get("state") in states}
        if names <= set(by_name):
            return by_name
        if time.monotonic() > deadline:
            seen = {name: t.get("state") for name, t in by_name.items()}
            raise AssertionError(f"Flower lists {seen}, not all of {names}")
        time.sleep(0.1)


def test_flower_lists_step_tasks_by_job_and_step(
    celery_env: str,
    celery_worker_factory: Callable[..., CeleryWorkerProcess],
    flower_factory: Callable[..., FlowerProcess],
) -> None:
    flower = flower_factory(celery_env, basic_auth="coreexec:s3cret")
    celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    run_config = {"execution": {"config": {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1}}}

    result = RunWatcher(f"{REF}:fanout_job", run_config).start().join()
    assert result.status is RunStatus.SUCCESS

    keys = ["source", "join", *(f"square_{i}" for i in range(celery_jobs.FANOUT_WIDTH))]
    shown = tasks_named(flower, {f"fanout_job.{key}" for key in keys}, timeout_s=15.0)
    assert {task["state"] for task in shown.values()} == {"SUCCESS"}
    square = shown["fanout_job.square_0"]
    # Identifiers in, a small status out: no values, no config.
    assert result.run_id in square["args"]
    assert ast.literal_eval(square["result"]) == {
        "status": "success",
        "step": "square_0",
        "attempt": 1,
    }
    assert json.dumps(shown).count(result.run_id) >= len(keys)

    status, _ = flower.get("/api/tasks", auth=False)
    assert status == 401


def test_flower_shows_failed_steps_as_failure_and_cancelled_ones_as_revoked(
    celery_env: str,
    celery_worker_factory: Callable[..., CeleryWorkerProcess],
    flower_factory: Callable[..., FlowerProcess],
) -> None:
    flower = flower_factory(celery_env, basic_auth="coreexec:s3cret")
    worker = celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    run_config = {"execution": {"config": {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 2}}}
    watcher = RunWatcher(f"{REF}:flower_states_job", run_config).start()
    watcher.event(EventKind.STEP_SUCCESS, "fine")
    watcher.event(EventKind.STEP_FAILURE, "broken")
    watcher.event(EventKind.STEP_START, "gated")
    request_cancel(Instance.from_env(), watcher.run_id, celery_env)
    result = watcher.join()
    assert result.status is RunStatus.CANCELED

    names = {f"flower_states_job.{key}" for key in ("fine", "broken", "gated")}
    shown = tasks_named(flower, names, timeout_s=15.0)
    states = {name: task["state"] for name, task in shown.items()}
    assert states == {
        "flower_states_job.fine": "SUCCESS",
        "flower_states_job.broken": "FAILURE",
        "flower_states_job.gated": "REVOKED",
    }
    broken = shown["flower_states_job.broken"]
    # The step's own error, not the machinery that reported it.
    assert "StepBroke" in broken["exception"]
    assert "the warehouse said no" in broken["exception"]
    assert "in broken" in broken["traceback"]
    assert "celery/app/trace.py" not in broken["traceback"]
    assert "step_task.py" not in broken["traceback"]
    failed = flower.get_json("/api/tasks?state=FAILURE")
    assert [task["name"] for task in failed.values()] == ["flower_states_job.broken"]
    # Acknowledged, not waiting for a redelivery: the coordinator decides about retries.
    unacked = redis.Redis.from_url(celery_env).hvals("unacked")
    assert not [m for m in unacked if broken["uuid"].encode() in m]
    cancelled = next(
        e for e in result.events if e.kind is EventKind.STEP_FAILURE and e.step_key == "gated"
    )
    assert cancelled.message.startswith("cancelled: ")
    assert "SystemExit" not in cancelled.message
    assert "billiard" not in json.dumps(cancelled.data)

    # Late copies of the failed and the succeeded attempts' messages (a broker
    # redelivery) are refused (their run has ended) without changing what Flower shows
    # or counting a failure.
    for key in ("broken", "fine"):
        start = next(
            e for e in result.events if e.kind is EventKind.STEP_START and e.step_key == key
        )
        _publish_again(celery_env, start)
        worker.wait_until(
            lambda start=start: f"refusing attempt {start.attempt_id}" in worker.read_log(),
            15.0,
            f"the copy of {key} to be refused",
        )
    again = tasks_named(flower, names, timeout_s=15.0)
    assert {name: task["state"] for name, task in again.items()} == states
    failed = flower.get_json("/api/tasks?state=FAILURE")
    assert [task["name"] for task in failed.values()] == ["flower_states_job.broken"]


def test_a_step_whose_run_was_canceled_before_a_worker_took_it_shows_revoked(
    celery_env: str,
    celery_worker_factory: Callable[..., CeleryWorkerProcess],
    flower_factory: Callable[..., FlowerProcess],
) -> None:
    flower = flower_factory(celery_env, basic_auth="coreexec:s3cret")
    # No worker yet: the step waits in its queue, and the revoke broadcast of the cancel
    # reaches nobody, so the worker that starts later finds the attempt fenced.
    watcher = RunWatcher(f"{REF}:gated_job").start()
    watcher.event(EventKind.STEP_QUEUED, "gated")
    request_cancel(Instance.from_env(), watcher.run_id, celery_env)
    assert watcher.join().status is RunStatus.CANCELED

    celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    shown = tasks_named(flower, {"gated_job.gated"}, timeout_s=30.0)
    assert shown["gated_job.gated"]["state"] == "REVOKED"
    assert celery_jobs.marks(watcher.run_id, "gated") == []
