"""The job of the kill-storm test (``tests.jobs.storm_jobs:storm``): 30 steps, a root,
28 parallel steps and a join, each retried on infrastructure failures (a worker killed
under it). Each execution appends ``<step key>:<attempt number>`` to
``$COREEXEC_HOME/marks/<run>``, so a test can tell an attempt that ran twice from a retry
(a new attempt number)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from coreexec import RetryPolicy, StepContext, job, step
from coreexec.executors import ExecutorDefinition
from coreexec.retry import FailureClass

WIDTH = 28
STEP_S = 0.3
"""Each step works this long, so kills land in the middle of steps."""

RETRIED = RetryPolicy(max_retries=8, retry_on=frozenset({FailureClass.INFRASTRUCTURE}))


def marks_of(run_id: str) -> list[str]:
    """``<step key>:<attempt>`` of every execution of the run's steps, in order."""
    path = Path(os.environ["COREEXEC_HOME"]) / "marks" / run_id
    return path.read_text().split() if path.exists() else []


def _work(context: StepContext) -> None:
    path = Path(os.environ["COREEXEC_HOME"]) / "marks" / context.run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as marks:
        marks.write(f"{context.step_key}:{context.attempt}\n")
    time.sleep(STEP_S)  # the work a kill interrupts


@step(retry_policy=RETRIED)
def root(context: StepContext) -> int:
    _work(context)
    return 1


@step(retry_policy=RETRIED)
def branch(context: StepContext, value: int) -> int:
    _work(context)
    return value


@step(retry_policy=RETRIED)
def gather(context: StepContext, values: list[int]) -> int:
    _work(context)
    return sum(values)


def _executor() -> ExecutorDefinition:
    from celery_app import celery_executor

    return celery_executor.configured(
        {"heartbeat_interval_s": 0.25, "heartbeat_timeout_s": 1.5, "queued_timeout_s": 120.0}
    )


@job(executor_def=_executor())
def storm() -> None:
    value = root()
    gather([branch.alias(f"branch_{i}")(value) for i in range(WIDTH)])
