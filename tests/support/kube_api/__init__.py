"""A Kubernetes API server for tests: Jobs, Pods, pods/log and Events over real HTTP.

The real ``kubernetes`` client talks to it through the kubeconfig that
:class:`TestCluster` writes. A Job controller stand-in creates each Job's pod, and a
kubelet stand-in runs it through a container backend (local processes, or the local
Docker engine). See cluster.py for switches that make pods unschedulable, image pulls
fail, pod creation fail, or watches expire.
"""

from tests.support.kube_api.backends import ContainerExit, LocalProcessBackend
from tests.support.kube_api.cluster import CONTEXT, TestCluster

__all__ = ["CONTEXT", "ContainerExit", "LocalProcessBackend", "TestCluster"]
