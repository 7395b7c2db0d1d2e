"""Fixtures for the Kubernetes tests: a test cluster and clients through its kubeconfig.

``kube_cluster``   function: a started TestCluster whose kubelet runs containers as
                   local processes (``kube_cluster.kubelet``, ``.controller``,
                   ``.store``, ``.kubeconfig``); stopped, with every container, at
                   teardown.
``kube_client``    function: a ``kubernetes.client.ApiClient`` loaded from that
                   kubeconfig, as a user's code would load it.
``k8s_env``        function: COREEXEC_HOME, COREEXEC_REDIS_URL and the broker exported.
``pod_cluster``    function: a test cluster whose pods run the real step entrypoint.
``k8s_block``      function: the executors' ``k8s`` block pointing at ``pod_cluster``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from tests.support.kube_api import LocalProcessBackend, TestCluster
from tests.support.processes import child_env
from workers.k8s.pod_watch import NamespaceWatch

STEP_IMAGE = "coreexec-step:test"
SETTINGS_SECRET = "coreexec-settings"


@pytest.fixture
def kube_cluster(tmp_path: Path) -> Iterator[TestCluster]:
    backend = LocalProcessBackend(entrypoints={"python:3.11": [sys.executable]})
    with TestCluster(tmp_path, backend) as cluster:
        yield cluster


@pytest.fixture
def kube_client(kube_cluster: TestCluster) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    with api_client:
        yield api_client


@pytest.fixture
def k8s_env(celery_env: str, coreexec_home: Path) -> Path:
    """The shared Celery environment (tests/conftest.py), which the pods get too; its home."""
    return coreexec_home


@pytest.fixture
def pod_cluster(tmp_path: Path, k8s_env: Path, redis_url: str) -> Iterator[TestCluster]:
    """A test cluster whose pods run the step entrypoint as local processes (this
    checkout first on PYTHONPATH), with the settings Secret ``coreexec-settings`` the
    pods read Redis and home from, and memory limits enforced (OOMKilled)."""
    backend = LocalProcessBackend(base_env=child_env(), enforce_memory=True)
    with TestCluster(tmp_path / "cluster", backend) as cluster:
        cluster.kubelet.secrets = {
            SETTINGS_SECRET: {"COREEXEC_REDIS_URL": redis_url, "COREEXEC_HOME": str(k8s_env)}
        }
        try:
            yield cluster
        finally:
            NamespaceWatch.stop_all()


@pytest.fixture
def k8s_block(pod_cluster: TestCluster) -> dict[str, Any]:
    """The executors' ``k8s`` block for the test cluster."""
    return {
        "job_image": STEP_IMAGE,
        "kubeconfig_file": str(pod_cluster.kubeconfig),
        "env_secrets": [SETTINGS_SECRET],
        "command": [sys.executable, "-m", "workers.entrypoint"],
        "termination_grace_period_s": 5,
    }
