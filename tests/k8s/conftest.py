"""Fixtures for the Kubernetes tests: a test cluster and clients through its kubeconfig.

``kube_cluster``   function: a started TestCluster whose kubelet runs containers as
                   local processes (``kube_cluster.kubelet``, ``.controller``,
                   ``.store``, ``.kubeconfig``); stopped, with every container, at
                   teardown.
``kube_client``    function: a ``kubernetes.client.ApiClient`` loaded from that
                   kubeconfig, as a user's code would load it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config

from tests.support.kube_api import LocalProcessBackend, TestCluster


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
