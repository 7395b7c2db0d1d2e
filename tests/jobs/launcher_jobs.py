"""Jobs the launcher tests run by reference (``tests.jobs.launcher_jobs:<name>``).

Steps write marks and wait on gates under ``$COREEXEC_HOME`` like the Celery test jobs
(:mod:`tests.jobs.celery_jobs`), so a test can hold a step while it acts on its process.
"""

from __future__ import annotations

import os
import sys
import time

from pydantic import BaseModel

from celery_app import celery_docker_executor
from coreexec import RetryPolicy, StepContext, job, step
from coreexec.retry import FailureClass
from coreexec.tags import LAUNCHER_TAG
from tests.jobs.celery_jobs import mark, wait_for_gate
from workers import docker_executor

IN_CONTAINER = "in a container"
"""What ``where()`` says in a step container, whose PID 1 is the step entrypoint."""


@step
def numbers() -> list[int]:
    return [1, 2, 3]


@step
def total(rows: list[int]) -> int:
    return sum(rows)


@job(executor_def=celery_docker_executor)
def sum_job() -> None:
    total(numbers())


def where() -> str:
    return IN_CONTAINER if os.getpid() == 1 else f"in process {os.getpid()}"


@step(tags={LAUNCHER_TAG: "in_process"})
def light() -> str:
    return where()


@step(tags={LAUNCHER_TAG: "docker"})
def heavy(light_ran: str) -> tuple[str, str]:
    return light_ran, where()


@job(executor_def=celery_docker_executor)
def mixed_job() -> None:
    heavy(light())


@job(executor_def=docker_executor)
def docker_mixed_job() -> None:
    heavy(light())


@step
def held(context: StepContext) -> str:
    """Marks each attempt, then holds until the test opens gate 'go'."""
    mark(context)
    wait_for_gate(context.run_id, "go")
    return "done"


@job(executor_def=celery_docker_executor)
def held_job() -> None:
    held()


@step(retry_policy=RetryPolicy(max_retries=1, retry_on=frozenset({FailureClass.INFRASTRUCTURE})))
def killed_once(context: StepContext) -> int:
    """The first attempt holds until its process is killed; the retry returns."""
    mark(context)
    if context.attempt == 1:
        time.sleep(120)
    return context.attempt


@job(executor_def=celery_docker_executor)
def killed_once_job() -> None:
    killed_once()


@step
def noisy_failure() -> None:
    for number in range(1, 31):
        print(f"noisy line {number}", flush=True)
    print("the last words of noisy_failure", file=sys.stderr, flush=True)
    raise ValueError("noisy_failure fails on purpose")


@job(executor_def=celery_docker_executor)
def noisy_job() -> None:
    noisy_failure()


@step
def hog() -> int:
    """Allocates far more than a small container's memory limit."""
    blocks = [bytearray(16 * 1024 * 1024) for _ in range(64)]
    return len(blocks)


@job(executor_def=celery_docker_executor)
def hog_job() -> None:
    hog()


@step(tags={LAUNCHER_TAG: "nowhere"})
def misplaced() -> int:
    return 1


@job(executor_def=celery_docker_executor)
def unknown_launcher_job() -> None:
    misplaced()


class SecretConfig(BaseModel):
    api_key: str


@step(config_schema=SecretConfig)
def use_secret(context: StepContext) -> int:
    config = context.config
    assert isinstance(config, SecretConfig)
    return len(config.api_key)


@job(executor_def=celery_docker_executor)
def secret_job() -> None:
    use_secret()
