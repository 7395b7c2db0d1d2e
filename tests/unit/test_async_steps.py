"""``async def`` steps under the in-process executor and in the step runner itself.

Concurrency is measured from what the steps report: each napping step returns the
moments it entered and left its ``await asyncio.sleep``, and the peak number of steps
inside their sleep at once comes from those intervals.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from coreexec import EventKind, Instance, RunStatus, execute_job, job, step
from coreexec.active_execution import StepAttempt
from coreexec.errors import DefinitionError
from coreexec.events import Event
from coreexec.execution.run_context import RunContext
from coreexec.io_managers import InMemoryIOManager
from coreexec.plan import ExecutionPlan
from coreexec.result import ExecutionResult
from coreexec.step_runner import StepRun, run_step
from tests.jobs import async_jobs
from tests.jobs.async_jobs import WIDTH
from tests.support.waiting import wait_until

JOBS = "tests.jobs.async_jobs"
DEADLINE_S = 30.0


def in_process(**config: Any) -> dict[str, Any]:
    return {"execution": {"config": {"in_process": config}}}


def naps(result: ExecutionResult, count: int = WIDTH) -> list[dict[str, Any]]:
    return [result.output_for(f"nap_{i}") for i in range(count)]


def peak(intervals: Iterable[tuple[float, float]]) -> int:
    """Most intervals open at one moment (one that ends as another starts: not both)."""
    spans = list(intervals)
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    inside = best = 0
    for _, change in edges:
        inside += change
        best = max(best, inside)
    return best


def nap_peak(parts: list[dict[str, Any]]) -> int:
    return peak((part["entered"], part["left"]) for part in parts)


def expected_total(factor: int = 1) -> int:
    return sum(3 * i * factor for i in range(WIDTH))


def test_fifty_async_steps_sleep_at_the_same_time() -> None:
    result = async_jobs.async_fanout.execute_in_process()

    assert result.output_for("total") == expected_total()
    parts = naps(result)
    assert nap_peak(parts) == WIDTH
    # One event loop, in a thread of this process other than the coordinator's.
    assert {part["pid"] for part in parts} == {os.getpid()}
    assert len({part["thread"] for part in parts}) == 1
    assert not any(part["main_thread"] for part in parts)


def test_max_concurrent_async_is_never_exceeded() -> None:
    result = async_jobs.async_fanout.execute_in_process(
        in_process(max_concurrent_async=5), tags={"sleep_s": "0.05"}
    )

    assert result.output_for("total") == expected_total()
    assert nap_peak(naps(result)) == 5


def test_a_sync_step_runs_beside_the_async_ones_without_blocking_their_loop() -> None:
    result = async_jobs.async_beside_sync.execute_in_process()

    assert result.output_for("total") == expected_total() + 3
    parts = naps(result)
    sync = result.output_for("sync_nap")
    assert sync["main_thread"]  # sync in-process steps stay in the coordinating thread
    # The sync step held its thread with time.sleep while every async step slept.
    assert nap_peak([*parts, sync]) == WIDTH + 1


def test_a_full_async_lane_does_not_hold_back_a_sync_step_behind_it() -> None:
    """The sync step comes last in the ready queue, after 50 async steps of which 5 may
    run: the coordinator's pass skips the async ones that cannot start and starts it."""
    result = async_jobs.async_beside_sync.execute_in_process(in_process(max_concurrent_async=5))

    assert result.output_for("total") == expected_total() + 3
    parts = naps(result)
    assert nap_peak(parts) == 5
    assert nap_peak([*parts, result.output_for("sync_nap")]) == 6


def test_async_steps_get_config_context_and_retries() -> None:
    scaled = async_jobs.async_fanout.execute_in_process(
        {"steps": {f"nap_{i}": {"config": {"factor": 2}} for i in range(WIDTH)}},
        tags={"sleep_s": "0"},
    )
    assert scaled.output_for("total") == expected_total(factor=2)

    flaky = async_jobs.async_flaky.execute_in_process()
    assert flaky.output_for("flaky") == 3
    failures = [e for e in flaky.events if e.kind is EventKind.STEP_FAILURE]
    assert [e.attempt for e in failures] == [1, 2]
    # The traceback starts in the user's code, not in the runner or the event loop.
    traceback = failures[0].data["error"]["traceback"]
    assert "async_jobs.py" in traceback
    assert "step_runner.py" not in traceback


def test_a_failing_async_step_raises_the_users_exception() -> None:
    @step
    async def broken() -> int:
        raise ValueError("no luck")

    @job
    def broken_job() -> None:
        broken()

    with pytest.raises(Exception, match="no luck") as info:
        broken_job.execute_in_process()
    assert isinstance(info.value.__cause__, ValueError)


def test_cancel_reaches_running_async_steps_as_cancelled_error(tmp_path: Path) -> None:
    contexts: list[RunContext] = []
    results: list[ExecutionResult] = []
    thread = threading.Thread(
        target=lambda: results.append(
            execute_job(
                f"{JOBS}:async_hangers",
                in_process(),
                instance=Instance.at(tmp_path / "home"),
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
        assert "CancelledError" in failure.message
        kinds = [e.kind for e in result.events if e.step_key == f"after_{i}"]
        assert kinds == [EventKind.STEP_SKIPPED]


def test_run_step_runs_an_async_step_on_a_loop_of_its_own() -> None:
    """What a celery worker, a Dask worker or a step container does with an async step."""
    job_def = async_jobs.async_fanout
    plan = ExecutionPlan.from_job(job_def)
    io = InMemoryIOManager()
    events: list[Event] = []
    seed_run = StepRun("r1", job_def, plan.step("seed"), StepAttempt("seed", 1, "a1"), {}, io, {})
    assert run_step(seed_run, events.append).success
    nap_run = StepRun(
        "r1", job_def, plan.step("nap_7"), StepAttempt("nap_7", 1, "a2"), {}, io, {"sleep_s": "0"}
    )

    assert run_step(nap_run, events.append).success

    kinds = [e.kind for e in events if e.step_key == "nap_7"]
    assert kinds == [EventKind.STEP_START, EventKind.STEP_OUTPUT, EventKind.STEP_SUCCESS]

    async def inside_a_loop() -> bool:
        # Called from code already on an event loop, the runner still runs the step.
        return run_step(nap_run, events.append).success

    assert asyncio.run(inside_a_loop())


def test_generator_steps_are_refused() -> None:
    async def numbers() -> Any:
        yield 1

    with pytest.raises(DefinitionError, match="generator"):
        step(numbers)
