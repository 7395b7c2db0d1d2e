"""The Kubernetes launcher with the kubelet stand-in's Docker backend: each pod's
container runs the step image on the local Docker engine, so memory limits are the
kernel's (OOMKilled from the container's state) and a job mixes steps on the worker, in
containers and as Jobs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from celery_app.queues import STEP_QUEUES
from coreexec import RunStatus
from coreexec.events import EventKind
from tests.jobs.celery_jobs import RunWatcher, marks
from tests.jobs.k8s_jobs import IN_POD
from tests.support.kube_api import TestCluster
from tests.support.kube_api.docker_backend import DockerBackend
from tests.support.processes import REPO_ROOT, CeleryWorkerProcess
from workers.k8s.pod_watch import NamespaceWatch

# The kubelet stand-in's Docker backend is what these show: only the test server has it.
pytestmark = [pytest.mark.docker, pytest.mark.k8s_test_server]

REF = "tests.jobs.k8s_jobs"
SETTINGS_SECRET = "coreexec-settings"
WorkerFactory = Callable[..., CeleryWorkerProcess]


@pytest.fixture
def docker_cluster(
    tmp_path: Path, k8s_env: Path, redis_url: str, docker_engine: Any, step_container: Any
) -> Iterator[TestCluster]:
    backend = DockerBackend(docker_engine.client, step_container.run_kwargs(k8s_env))
    with TestCluster(tmp_path / "cluster", backend) as cluster:
        cluster.add_secret(
            SETTINGS_SECRET, {"COREEXEC_REDIS_URL": redis_url, "COREEXEC_HOME": str(k8s_env)}
        )
        try:
            yield cluster
        finally:
            NamespaceWatch.stop_all()


@pytest.fixture
def block(docker_cluster: TestCluster, step_container: Any) -> dict[str, Any]:
    return {
        "job_image": step_container.image,
        "kubeconfig_file": str(docker_cluster.kubeconfig),
        "env_secrets": [SETTINGS_SECRET],
        "command": ["python", "-m", "workers.entrypoint"],
        "termination_grace_period_s": 5,
    }


def test_an_oom_killed_container_is_out_of_memory_with_its_limit_and_retried(
    docker_cluster: TestCluster, block: dict[str, Any]
) -> None:
    block = {**block, "resources": {"limits": {"memory": "160Mi"}}}
    config = {"execution": {"config": {"k8s": block, "heartbeat_interval_s": 0.3}}}
    result = RunWatcher(f"{REF}:hog_job", config).start().join(timeout_s=240)

    assert result.status is RunStatus.FAILURE
    assert len(marks(result.run_id, "hog")) == 2
    failures = [e for e in result.events if e.kind is EventKind.STEP_FAILURE]
    assert "out of memory (limit 160Mi)" in failures[-1].message


def test_one_job_mixes_steps_on_the_worker_in_a_container_and_as_a_kubernetes_job(
    docker_cluster: TestCluster,
    block: dict[str, Any],
    docker_engine: Any,
    step_container: Any,
    k8s_env: Path,
    celery_worker_factory: WorkerFactory,
) -> None:
    worker = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=1, env=docker_engine.env())
    docker_block = {
        "image": step_container.image,
        "network": "host",
        "volumes": step_container.volumes(k8s_env),
        "env_vars": [f"PYTHONPATH={REPO_ROOT}"],
        "container_kwargs": {
            "user": f"{os.getuid()}:{os.getgid()}",
            "working_dir": str(REPO_ROOT),
            "labels": dict(step_container.labels),
        },
    }
    config = {
        "execution": {
            "config": {
                "heartbeat_interval_s": 0.3,
                "heartbeat_timeout_s": 5.0,
                "k8s": block,
                "docker": docker_block,
            }
        }
    }
    result = RunWatcher(f"{REF}:three_launchers_job", config).start().join(timeout_s=240)

    assert result.status is RunStatus.SUCCESS, result.events[-3:]
    on_worker, in_container, in_pod = result.output_for("podded")
    assert int(on_worker.split()[-1]) in worker.group_pids()
    assert in_container == "in a container"
    assert in_pod == IN_POD
    assert docker_cluster.requests()["create jobs"] == 1
