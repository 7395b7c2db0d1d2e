"""The launcher's API calls against an overloaded or refusing test API server: 429 and
5xx are retried with backoff, honouring Retry-After, a refusal is not, errors name the
call, and Job creation is capped per second."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.kube_api import TestCluster
from workers.k8s.api import ApiCallError, KubeApi
from workers.k8s.config import K8sConfig
from workers.launcher import LaunchError

# Overload and refusals are the test server's switches (fail_next) and timings.
pytestmark = pytest.mark.k8s_test_server


def api_for(cluster: TestCluster, **config: Any) -> KubeApi:
    return KubeApi(K8sConfig(kubeconfig_file=str(cluster.kubeconfig), **config))


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name},
        "spec": {
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{"name": "c", "image": "i:1", "command": ["true"]}],
                }
            }
        },
    }


def test_429_is_retried_after_the_servers_retry_after(kube_cluster: TestCluster) -> None:
    api = api_for(kube_cluster, api_retries=3)
    kube_cluster.server.fail_next(2, code=429, retry_after_s=1)

    assert api.list_jobs("default", "") == []
    times = kube_cluster.store.request_times
    assert kube_cluster.requests()["rejected 429"] == 2
    assert times[("list", "jobs")][0] - times[("rejected", "429")][0] >= 1.9  # 2 x Retry-After


def test_a_5xx_that_lasts_gives_up_naming_the_call(kube_cluster: TestCluster) -> None:
    api = api_for(kube_cluster, api_retries=2)
    kube_cluster.server.fail_next(10, code=503, retry_after_s=None)

    with pytest.raises(ApiCallError) as failed:
        api.list_jobs("default", "")
    assert failed.value.status == 503 and failed.value.retryable
    assert "list Jobs in default failed: HTTP 503" in str(failed.value)
    assert kube_cluster.requests()["rejected 503"] == 3  # the try and two retries


def test_a_refusal_is_not_retried_and_names_the_field(kube_cluster: TestCluster) -> None:
    api = api_for(kube_cluster, api_retries=3)
    bad = job("UPPER")

    with pytest.raises(LaunchError) as refused:
        api.create_job("default", bad)
    assert "HTTP 422" in str(refused.value) and "metadata.name" in str(refused.value)
    assert not refused.value.retryable
    assert kube_cluster.requests()["create jobs"] == 1
    assert api.read_job("default", "missing") is None


def test_job_creation_is_capped_per_second(kube_cluster: TestCluster) -> None:
    api = api_for(kube_cluster, pod_creations_per_s=4)
    for index in range(5):
        api.create_job("default", job(f"capped-{index}"))

    times = kube_cluster.store.request_times[("create", "jobs")]
    assert len(times) == 5
    assert times[-1] - times[0] >= 0.9  # four intervals of at least 1/4 s each
