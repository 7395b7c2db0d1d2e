"""``async def`` steps under the multiprocess executor (real worker processes) and on a
real celery worker: the same job, the same outputs.

Under multiprocess, async steps run side by side on an event loop in the coordinating
process (this test process) while sync steps go to the pool; on a celery worker each
async step runs on an event loop in the worker's process.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from celery_app.queues import STEP_QUEUES
from coreexec import EventKind, Instance, RunStatus, execute_job
from coreexec.execution.run_context import RunContext
from coreexec.result import ExecutionResult
from tests.jobs.async_jobs import WIDTH
from tests.support.processes import CeleryWorkerProcess
from tests.support.waiting import wait_until
from tests.unit.test_async_steps import expected_total, nap_peak, naps

JOBS = "tests.jobs.async_jobs"
DEADLINE_S = 30.0


def mp_config(**config: Any) -> dict[str, Any]:
    return {"execution": {"config": {"multiprocess": config}}}


@pytest.fixture
def instance(tmp_path: Path) -> Instance:
    return Instance.at(tmp_path / "home")


def test_fifty_async_steps_sleep_at_the_same_time_under_multiprocess(
    instance: Instance,
) -> None:
    result = execute_job(f"{JOBS}:async_fanout", mp_config(max_concurrent=2), instance=instance)

    assert result.success
    assert result.output_for("total") == expected_total()
    parts = naps(result)
    assert nap_peak(parts) == WIDTH
    assert {part["pid"] for part in parts} == {os.getpid()}  # the coordinating process


def test_max_concurrent_async_holds_under_multiprocess(instance: Instance) -> None:
    result = execute_job(
        f"{JOBS}:async_fanout",
        mp_config(max_concurrent=1, max_concurrent_async=5),
        instance=instance,
        tags={"sleep_s": "0.05"},
    )

    assert result.output_for("total") == expected_total()
    assert nap_peak(naps(result)) == 5


def test_sync_step_in_the_pool_beside_async_steps(instance: Instance) -> None:
    result = execute_job(
        f"{JOBS}:async_beside_sync", mp_config(max_concurrent=1), instance=instance
    )

    assert result.output_for("total") == expected_total() + 3
    sync = result.output_for("sync_nap")
    assert sync["pid"] != os.getpid()  # sync steps still go to the pool
    assert nap_peak([*naps(result), sync]) == WIDTH + 1


def test_cancel_reaches_async_steps_under_multiprocess(instance: Instance, tmp_path: Path) -> None:
    contexts: list[RunContext] = []
    results: list[ExecutionResult] = []
    thread = threading.Thread(
        target=lambda: results.append(
            execute_job(
                f"{JOBS}:async_hangers",
                mp_config(max_concurrent=1),
                instance=instance,
                tags={"mark_dir": str(tmp_path)},
                run_context_hook=contexts.append,
            )
        )
    )
    thread.start()
    wait_until(
        lambda: all((tmp_path / f"hang_{i}.entered").exists() for i in range(3)),
        "the async steps to start",
        DEADLINE_S,
        interval_s=0.01,
    )
    contexts[0].request_cancel()
    thread.join(DEADLINE_S)

    assert not thread.is_alive()
    result = results[0]
    assert result.status is RunStatus.CANCELED
    for i in range(3):
        assert (tmp_path / f"hang_{i}.cancelled").exists()
        failure = next(
            e
            for e in result.events
            if e.step_key == f"hang_{i}" and e.kind is EventKind.STEP_FAILURE
        )
        assert failure.data["failure_class"] == "cancelled"


def test_the_same_job_gives_the_same_outputs_on_a_celery_worker(
    redis_url: str,
    coreexec_home: Path,
    monkeypatch: pytest.MonkeyPatch,
    celery_worker_factory: Callable[..., CeleryWorkerProcess],
) -> None:
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    for name in ("COREEXEC_REDIS_URL", "COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    worker = celery_worker_factory(queues=STEP_QUEUES, concurrency=2)
    fast = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 5.0, "queued_timeout_s": 30.0}

    result = execute_job(
        f"{JOBS}:async_fanout_celery",
        {"execution": {"config": fast}},
        instance=Instance.from_env(),
        tags={"sleep_s": "0.01"},
    )

    assert result.status is RunStatus.SUCCESS
    assert result.output_for("total") == expected_total()
    in_process = execute_job(f"{JOBS}:async_fanout", mp_config(), tags={"sleep_s": "0.01"})
    assert in_process.output_for("total") == result.output_for("total")
    for i in range(WIDTH):
        assert result.output_for(f"nap_{i}")["value"] == in_process.output_for(f"nap_{i}")["value"]
    assert {part["pid"] for part in naps(result)} <= set(worker.group_pids())
