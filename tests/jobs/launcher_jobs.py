"""Jobs the launcher tests run by reference (``tests.jobs.launcher_jobs:<name>``).

Steps write marks and wait on gates under ``$COREEXEC_HOME`` like the Celery test jobs
(:mod:`tests.jobs.celery_jobs`), so a test can hold a step while it acts on its process.
"""

from __future__ import annotations

import sys
import time

from coreexec import RetryPolicy, StepContext, job, step
from coreexec.retry import FailureClass
from coreexec.tags import LAUNCHER_TAG
from tests.jobs.celery_jobs import mark, wait_for_gate


@step
def numbers() -> list[int]:
    return [1, 2, 3]


@step
def total(rows: list[int]) -> int:
    return sum(rows)


@job
def sum_job() -> None:
    total(numbers())


@step(tags={LAUNCHER_TAG: "in_process"})
def light() -> list[int]:
    return [4, 5, 6]


@step(tags={LAUNCHER_TAG: "docker"})
def heavy(rows: list[int]) -> int:
    return sum(rows) * 10


@job
def mixed_job() -> None:
    heavy(light())


@step
def held(context: StepContext) -> str:
    """Marks each attempt, then holds until the test opens gate 'go'."""
    mark(context)
    wait_for_gate(context.run_id, "go")
    return "done"


@job
def held_job() -> None:
    held()


@step(retry_policy=RetryPolicy(max_retries=1, retry_on=frozenset({FailureClass.INFRASTRUCTURE})))
def killed_once(context: StepContext) -> int:
    """The first attempt holds until its process is killed; the retry returns."""
    mark(context)
    if context.attempt == 1:
        time.sleep(120)
    return context.attempt


@job
def killed_once_job() -> None:
    killed_once()


@step
def noisy_failure() -> None:
    for number in range(1, 31):
        print(f"noisy line {number}", flush=True)
    print("the last words of noisy_failure", file=sys.stderr, flush=True)
    raise ValueError("noisy_failure fails on purpose")


@job
def noisy_job() -> None:
    noisy_failure()


@step
def hog() -> int:
    """Allocates far more than a small container's memory limit."""
    blocks = [bytearray(16 * 1024 * 1024) for _ in range(64)]
    return len(blocks)


@job
def hog_job() -> None:
    hog()


@step(tags={LAUNCHER_TAG: "nowhere"})
def misplaced() -> int:
    return 1


@job
def unknown_launcher_job() -> None:
    misplaced()
