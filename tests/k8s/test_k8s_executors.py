"""``k8s_job_executor`` (the coordinator creates the Jobs) and ``celery_k8s_job_executor``
(real celery workers create them) against the test API server, pods running the real
step entrypoint as local processes, or against a real cluster under ``--k8s-cluster``
(where the request counts and the kubelet's count of running pods are not there to
read)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_app.queues import STEP_QUEUES
from coreexec import RunStatus
from coreexec.events import EventKind
from tests.jobs.celery_jobs import RunWatcher, marks
from tests.jobs.k8s_jobs import IN_POD
from tests.support.kube_target import K8sTarget, RunningPods
from tests.support.processes import CeleryWorkerProcess

REF = "tests.jobs.k8s_jobs"
WorkerFactory = Callable[..., CeleryWorkerProcess]
CELERY_FAST = {"heartbeat_interval_s": 0.3, "heartbeat_timeout_s": 5.0}


@pytest.fixture
def workers(k8s_env: Path, celery_worker_factory: WorkerFactory) -> Iterator[WorkerFactory]:
    yield lambda **kw: celery_worker_factory(queues=list(STEP_QUEUES), **kw)


def direct(block: dict[str, Any], **config: Any) -> dict[str, Any]:
    return {"execution": {"config": {"k8s": block, "heartbeat_interval_s": 0.3, **config}}}


def through_celery(block: dict[str, Any]) -> dict[str, Any]:
    return {"execution": {"config": {**CELERY_FAST, "k8s": block}}}


def test_k8s_job_executor_with_max_concurrent_2_never_runs_more_than_2_pods(
    pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    with RunningPods(pod_cluster, "coreexec.io/job=wide_job") as pods:
        result = RunWatcher(f"{REF}:wide_job", direct(k8s_block, max_concurrent=2))
        result = result.start().join(timeout_s=240)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    assert result.output_for("count") == 6
    assert len(pods.seen) == 7 and pods.max_running <= 2  # as the API showed them
    counts = pod_cluster.requests()
    if pod_cluster.server is not None and counts is not None:
        assert pod_cluster.server.kubelet.max_running <= 2  # containers, as the node ran them
        assert counts["create jobs"] == 7
        # One watch, not one per step (besides the census's own).
        assert counts["watch pods"] - pods.watches <= 3


def test_an_oom_killed_step_is_retried_under_its_policy_and_fails_as_out_of_memory(
    pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    block = {**k8s_block, "resources": {"limits": {"memory": "160Mi"}}}
    result = RunWatcher(f"{REF}:hog_job", direct(block)).start().join(timeout_s=180)

    assert result.status is RunStatus.FAILURE
    assert len(marks(result.run_id, "hog")) == 2  # the first try and its one retry
    failures = [e for e in result.events if e.kind is EventKind.STEP_FAILURE]
    assert failures and "out of memory (limit 160Mi)" in failures[-1].message


def test_celery_workers_run_steps_as_jobs_with_correct_outputs(
    workers: WorkerFactory, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    workers(concurrency=2)
    result = RunWatcher(f"{REF}:sum_job", through_celery(k8s_block)).start().join(timeout_s=180)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    assert result.output_for("total") == 6
    counts = pod_cluster.requests()
    if counts is not None:
        assert counts["create jobs"] == 2


def test_a_mixed_job_runs_light_steps_on_the_worker_and_heavy_ones_as_jobs(
    workers: WorkerFactory, pod_cluster: K8sTarget, k8s_block: dict[str, Any]
) -> None:
    worker = workers(concurrency=1)
    result = RunWatcher(f"{REF}:mixed_job", through_celery(k8s_block)).start().join(timeout_s=180)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    light, heavy = result.output_for("heavy")
    assert heavy == IN_POD
    assert int(light.split()[-1]) in worker.group_pids()
    counts = pod_cluster.requests()
    if counts is not None:
        assert counts["create jobs"] == 1
