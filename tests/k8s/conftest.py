"""Fixtures for the Kubernetes tests: a test cluster and clients through its kubeconfig.

``kube_cluster``   function: a started TestCluster whose kubelet runs containers as
                   local processes (``kube_cluster.kubelet``, ``.controller``,
                   ``.store``, ``.kubeconfig``); stopped, with every container, at
                   teardown.
``kube_client``    function: a ``kubernetes.client.ApiClient`` loaded from that
                   kubeconfig, as a user's code would load it.
``k8s_env``        function: COREEXEC_HOME, COREEXEC_REDIS_URL and the broker exported.
``pod_cluster``    function: a :class:`~tests.support.kube_target.K8sTarget` where pods
                   run the real step entrypoint: a test cluster (``.server``), or, under
                   ``--k8s-cluster``, the session's namespace on a real cluster.
``k8s_block``      function: the executors' ``k8s`` block pointing at ``pod_cluster``.

Under ``--k8s-cluster`` (tests/support/k8s_cluster_plugin.py) ``redis_url`` is the
cluster mode's Redis, and run storage, outputs, marks and gates are at URLs both this
process and the pods reach.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client, config

from tests.jobs.celery_jobs import MARKS_URL_ENV
from tests.support.k8s_cluster_plugin import SETTINGS_SECRET, cluster_settings
from tests.support.kube_api import LocalProcessBackend, TestCluster
from tests.support.kube_target import K8sTarget
from tests.support.processes import child_env
from workers.k8s.pod_watch import NamespaceWatch

STEP_IMAGE = "coreexec-step:test"


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
def redis_url(request: pytest.FixtureRequest) -> str:
    """The session's redis-server (flushed), or in cluster mode the Redis the pods reach
    (its database flushed)."""
    settings = cluster_settings(request.config)
    if settings is None:
        url: str = request.getfixturevalue("redis_server").url
        with redis.Redis.from_url(url) as server:
            server.flushall()
        return url
    with redis.Redis.from_url(settings.redis_url) as shared:
        shared.flushdb()
    return settings.redis_url


@pytest.fixture
def k8s_env(
    request: pytest.FixtureRequest,
    redis_url: str,
    coreexec_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Path:
    """Broker, Redis and home shared by the test, its workers and the pods they start."""
    monkeypatch.setenv("COREEXEC_BROKER_URL", redis_url)
    monkeypatch.setenv("COREEXEC_REDIS_URL", redis_url)
    for name in ("COREEXEC_RESULT_BACKEND", "COREEXEC_CELERY_CONFIG", "COREEXEC_RUN_LAUNCHER"):
        monkeypatch.delenv(name, raising=False)
    settings = cluster_settings(request.config)
    if settings is not None:  # the pods do not share this machine's disk
        monkeypatch.setenv("COREEXEC_STORAGE_URL", settings.storage_url)
        monkeypatch.setenv("COREEXEC_IO_URL", settings.io_url)
        monkeypatch.setenv(MARKS_URL_ENV, redis_url)
    return coreexec_home


@pytest.fixture
def pod_cluster(
    request: pytest.FixtureRequest, tmp_path: Path, k8s_env: Path, redis_url: str
) -> Iterator[K8sTarget]:
    """Where the pods run the step entrypoint: a test cluster running them as local
    processes (this checkout first on PYTHONPATH, memory limits enforced: OOMKilled)
    with the settings Secret ``coreexec-settings``; or the real cluster's namespace."""
    cluster_target: K8sTarget | None = request.getfixturevalue("k8s_cluster_target")
    if cluster_target is not None:
        try:
            yield cluster_target
        finally:
            NamespaceWatch.stop_all()
        return
    backend = LocalProcessBackend(base_env=child_env(), enforce_memory=True, images={STEP_IMAGE})
    with TestCluster(tmp_path / "cluster", backend) as cluster:
        settings = {"COREEXEC_REDIS_URL": redis_url, "COREEXEC_HOME": str(k8s_env)}
        cluster.add_secret(SETTINGS_SECRET, settings)
        target = K8sTarget(
            kubeconfig=str(cluster.kubeconfig),
            namespace="default",
            image=STEP_IMAGE,
            settings_secret=SETTINGS_SECRET,
            command=[sys.executable, "-m", "workers.entrypoint"],
            server=cluster,
        )
        try:
            yield target
        finally:
            target.close()
            NamespaceWatch.stop_all()


@pytest.fixture
def k8s_block(pod_cluster: K8sTarget) -> dict[str, Any]:
    """The executors' ``k8s`` block for ``pod_cluster``."""
    return pod_cluster.block()
