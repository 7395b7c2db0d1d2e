"""A real Flower process sees coreexec's step tasks by ``<job>.<step_key>``."""

from __future__ import annotations

import ast
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from celery_app.queues import STEP_QUEUES
from coreexec.storage.base import RunStatus
from tests.jobs import celery_jobs
from tests.jobs.celery_jobs import RunWatcher
from tests.support.processes import CeleryWorkerProcess, FlowerProcess

REF = "tests.jobs.celery_jobs"


@pytest.fixture
def celery_env(redis_url: str, coreexec_home: object, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    for name in ("COREEXEC_REDIS_URL", "COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    return redis_url


def tasks_named(flower: FlowerProcess, names: set[str], timeout_s: float) -> dict[str, Any]:
    """Poll Flower's task list (an HTTP API: nothing to block on) until it has ``names``
    in a finished state."""
    deadline = time.monotonic() + timeout_s
    while True:
        tasks: dict[str, Any] = flower.get_json("/api/tasks")
        by_name = {t.get("name"): t for t in tasks.values() if t.get("state") == "SUCCESS"}
        if names <= set(by_name):
            return by_name
        if time.monotonic() > deadline:
            raise AssertionError(f"Flower lists {sorted(map(str, by_name))}, not all of {names}")
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
