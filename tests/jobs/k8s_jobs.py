"""Jobs the Kubernetes tests run by reference (``tests.jobs.k8s_jobs:<name>``).

The executor's ``k8s`` block comes from the run config (the test cluster's kubeconfig
differs per test). Steps that must show where they ran read ``WHERE``, which the pods'
``container_config`` sets.
"""

from __future__ import annotations

import os
import time

from celery_app import celery_k8s_job_executor
from coreexec import RetryPolicy, StepContext, job, step
from coreexec.retry import FailureClass
from coreexec.tags import LAUNCHER_TAG
from tests.jobs.celery_jobs import mark, wait_for_gate
from tests.jobs.launcher_jobs import noisy_failure
from workers import k8s_job_executor

IN_POD = "pod"
POD_TAGS = {
    "coreexec-k8s/config": '{"container_config": {"env": [{"name": "WHERE", "value": "pod"}]}}'
}


def where() -> str:
    return os.environ.get("WHERE", f"process {os.getpid()}")


@step
def numbers() -> list[int]:
    return [1, 2, 3]


@step
def total(rows: list[int]) -> int:
    return sum(rows)


@job(executor_def=celery_k8s_job_executor)
def sum_job() -> None:
    total(numbers())


@job(executor_def=k8s_job_executor)
def direct_sum_job() -> None:
    total(numbers())


@step(tags={LAUNCHER_TAG: "in_process"})
def light() -> str:
    return where()


@step(tags=POD_TAGS)
def heavy(on: str) -> tuple[str, str]:
    return on, where()


@job(executor_def=celery_k8s_job_executor)
def mixed_job() -> None:
    heavy(light())


@step
def nap(context: StepContext) -> int:
    mark(context)
    time.sleep(0.3)
    return 1


@step
def count(values: list[int]) -> int:
    return sum(values)


@job(executor_def=k8s_job_executor)
def wide_job() -> None:
    count([nap.alias(f"nap_{i}")() for i in range(6)])


@step
def held(context: StepContext) -> str:
    mark(context)
    wait_for_gate(context.run_id, "go")
    return "done"


@job(executor_def=k8s_job_executor)
def held_job() -> None:
    held()


@step(retry_policy=RetryPolicy(max_retries=1, retry_on=frozenset({FailureClass.INFRASTRUCTURE})))
def hog(context: StepContext) -> int:
    """Allocates 256 MiB, far more than a 160Mi limit, on every attempt."""
    mark(context)
    blocks = [bytearray(16 * 1024 * 1024) for _ in range(16)]
    return len(blocks)


@job(executor_def=k8s_job_executor)
def hog_job() -> None:
    hog()


@job(executor_def=k8s_job_executor)
def noisy_job() -> None:
    noisy_failure()


@step(tags={LAUNCHER_TAG: "docker"})
def boxed(on: str) -> tuple[str, str]:
    return on, "in a container" if os.getpid() == 1 else f"process {os.getpid()}"


@step(tags=POD_TAGS)
def podded(before: tuple[str, str]) -> tuple[str, str, str]:
    return before[0], before[1], where()


@job(executor_def=celery_k8s_job_executor)
def three_launchers_job() -> None:
    """One step on the worker, one in a container, one as a Kubernetes Job."""
    podded(boxed(light()))
