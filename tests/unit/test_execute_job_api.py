"""``execute_job``: an executor for one call, and ``raise_on_error`` for every way a run
ends."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from coreexec import execute_job
from coreexec.errors import ConfigError, CoreExecError, RunCanceledError, StepExecutionError
from coreexec.events import EventKind
from coreexec.execution.run_context import RunContext
from coreexec.executors import in_process_executor, multiprocess_executor
from coreexec.instance import Instance
from coreexec.storage.base import RunStatus
from tests.jobs import celery_jobs


def _executor_named(events: list[object]) -> str:
    (starting,) = [e for e in events if getattr(e, "kind", None) is EventKind.RUN_STARTING]
    return str(getattr(starting, "message", ""))


def test_an_executor_for_one_call_runs_a_celery_job_in_this_process(coreexec_home: Path) -> None:
    result = execute_job(
        "tests.jobs.celery_jobs:fanout_job", executor=in_process_executor, raise_on_error=True
    )
    assert result.success
    assert result.output_for("join") == sum(i * i for i in range(1, celery_jobs.FANOUT_WIDTH + 1))
    assert _executor_named(list(result.events)) == "executor in_process"
    # Steps ran here: every mark is this process's pid.
    assert set(celery_jobs.marks(result.run_id, "square_0")) == {str(os.getpid())}


def test_the_run_config_is_checked_against_the_executor_of_the_call(coreexec_home: Path) -> None:
    result = execute_job(
        "tests.jobs.core_jobs:scale_job",
        {"execution": {"config": {"max_concurrent": 2}}},
        executor=multiprocess_executor,
    )
    assert result.success and _executor_named(list(result.events)) == "executor multiprocess"
    with pytest.raises(ConfigError, match=r"run_config\.execution\.config\.max_concurrent"):
        execute_job(
            "tests.jobs.core_jobs:scale_job",
            {"execution": {"config": {"max_concurrent": "many"}}},
            executor=multiprocess_executor,
        )


def test_raise_on_error_raises_run_canceled_error_for_a_canceled_run(coreexec_home: Path) -> None:
    def cancel_at_once(context: RunContext) -> None:
        context.request_cancel()

    with pytest.raises(RunCanceledError) as caught:
        execute_job(
            "tests.jobs.core_jobs:scale_job",
            executor=in_process_executor,
            raise_on_error=True,
            run_context_hook=cancel_at_once,
        )
    assert isinstance(caught.value, CoreExecError)
    record = Instance.from_env().storage.get_run(caught.value.run_id)
    assert record.status is RunStatus.CANCELED
    assert f"run {record.run_id} was canceled" in str(caught.value)


def test_raise_on_error_still_raises_the_step_error_for_a_failed_run(coreexec_home: Path) -> None:
    with pytest.raises(StepExecutionError):
        execute_job(
            "tests.jobs.core_jobs:defs.broken_job",
            executor=in_process_executor,
            raise_on_error=True,
        )
