"""Cluster mode: the tests of tests/k8s against a real Kubernetes cluster.

Asked for with ``--k8s-cluster`` (or ``COREEXEC_K8S_CLUSTER=1``); without it nothing
changes and the tests run against the test API server of tests/support/kube_api. In
cluster mode the ``pod_cluster`` fixture yields a :class:`~tests.support.kube_target.
K8sTarget` for the cluster instead of starting the test server, and these settings say
where everything is (a missing required one is a usage error that names it):

=================================== =====================================================
``KUBECONFIG``                      required: the cluster (its current context, or
                                    ``COREEXEC_K8S_TEST_CONTEXT``)
``COREEXEC_K8S_TEST_IMAGE``         required: the step image with this checkout's
                                    ``tests`` package (tests/k8s/Dockerfile.cluster),
                                    pullable by the cluster's nodes
``COREEXEC_K8S_TEST_REDIS_URL``     required: a Redis for the tests alone (each test
                                    flushes its database), reached from here
``COREEXEC_K8S_TEST_STORAGE_URL``   required: run storage both here and the pods reach
                                    (``postgresql://...``)
``COREEXEC_K8S_TEST_IO_URL``        required: step outputs both reach (``s3://...``)
``COREEXEC_K8S_TEST_POD_REDIS_URL`` the same Redis as the pods reach it (default: the
``..._POD_STORAGE_URL``,            URL above), e.g. a Service name when this side goes
``..._POD_IO_URL``                  through ``kubectl port-forward``
``COREEXEC_K8S_TEST_POD_ENV``       more of the pods' environment, comma-separated
                                    ``NAME`` (copied from here) or ``NAME=value``
                                    (object store credentials, say)
=================================== =====================================================

The session creates a namespace ``coreexec-test-<random>``, waits for its ``default``
ServiceAccount, creates the Secret ``coreexec-settings`` the pods read the URLs from,
and deletes the namespace at the end. Tests marked ``k8s_test_server`` need the test
server's switches, counters or kubelet: they are deselected and listed in the summary,
never counted as passed.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import pytest
from kubernetes import client, config

from tests.support.kube_api.waits import wait_for
from tests.support.kube_target import K8sTarget

SWITCH_ENV = "COREEXEC_K8S_CLUSTER"
SERVER_ONLY = "k8s_test_server"
SETTINGS_SECRET = "coreexec-settings"
REQUIRED = (
    "KUBECONFIG",
    "COREEXEC_K8S_TEST_IMAGE",
    "COREEXEC_K8S_TEST_REDIS_URL",
    "COREEXEC_K8S_TEST_STORAGE_URL",
    "COREEXEC_K8S_TEST_IO_URL",
)
NAMESPACE_READY_S = 60.0
_SETTINGS = pytest.StashKey["ClusterSettings | None"]()
_DESELECTED = pytest.StashKey[list[str]]()
_NAMESPACE = pytest.StashKey[str]()


@dataclass(frozen=True)
class ClusterSettings:
    """Cluster mode's settings, read from the environment once per session."""

    kubeconfig: str
    context: str | None
    image: str
    redis_url: str
    storage_url: str
    io_url: str
    pod_redis_url: str
    pod_storage_url: str
    pod_io_url: str
    pod_env: dict[str, str]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ClusterSettings:
        missing = [name for name in REQUIRED if not env.get(name)]
        if missing:
            raise pytest.UsageError(
                f"--k8s-cluster ({SWITCH_ENV}=1) runs tests/k8s against a real cluster and "
                f"needs {', '.join(missing)} set: see the README's Kubernetes section "
                "(without the switch the tests use the test API server)"
            )
        redis_url = env["COREEXEC_K8S_TEST_REDIS_URL"]
        storage_url = env["COREEXEC_K8S_TEST_STORAGE_URL"]
        io_url = env["COREEXEC_K8S_TEST_IO_URL"]
        return cls(
            kubeconfig=env["KUBECONFIG"],
            context=env.get("COREEXEC_K8S_TEST_CONTEXT") or None,
            image=env["COREEXEC_K8S_TEST_IMAGE"],
            redis_url=redis_url,
            storage_url=storage_url,
            io_url=io_url,
            pod_redis_url=env.get("COREEXEC_K8S_TEST_POD_REDIS_URL") or redis_url,
            pod_storage_url=env.get("COREEXEC_K8S_TEST_POD_STORAGE_URL") or storage_url,
            pod_io_url=env.get("COREEXEC_K8S_TEST_POD_IO_URL") or io_url,
            pod_env=_pod_env(env.get("COREEXEC_K8S_TEST_POD_ENV") or "", env),
        )

    def pod_settings(self) -> dict[str, str]:
        """The keys of the settings Secret: what a step pod needs to find everything."""
        return {
            **self.pod_env,
            "COREEXEC_REDIS_URL": self.pod_redis_url,
            "COREEXEC_STORAGE_URL": self.pod_storage_url,
            "COREEXEC_IO_URL": self.pod_io_url,
            "COREEXEC_TEST_MARKS_URL": self.pod_redis_url,
        }


def _pod_env(spec: str, env: Mapping[str, str]) -> dict[str, str]:
    values: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            if name not in env:
                raise pytest.UsageError(
                    f"COREEXEC_K8S_TEST_POD_ENV names {name}, which is not set here"
                )
            value = env[name]
        values[name] = value
    return values


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--k8s-cluster",
        action="store_true",
        default=False,
        help=f"run tests/k8s against the cluster of $KUBECONFIG (also {SWITCH_ENV}=1); "
        "see tests/support/k8s_cluster_plugin.py for the settings it needs",
    )


def cluster_mode(config: pytest.Config) -> bool:
    switch = os.environ.get(SWITCH_ENV, "").strip().lower() in {"1", "true", "yes"}
    return bool(config.getoption("--k8s-cluster")) or switch


def cluster_settings(config: pytest.Config) -> ClusterSettings | None:
    """Cluster mode's settings, or None when the tests use the test API server."""
    return config.stash.get(_SETTINGS, None)


def pytest_configure(config: pytest.Config) -> None:
    settings = ClusterSettings.from_env(os.environ) if cluster_mode(config) else None
    config.stash[_SETTINGS] = settings
    config.stash[_DESELECTED] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In cluster mode, deselect the tests that need the test API server."""
    if cluster_settings(config) is None:
        return
    server_only = [item for item in items if item.get_closest_marker(SERVER_ONLY)]
    if not server_only:
        return
    items[:] = [item for item in items if not item.get_closest_marker(SERVER_ONLY)]
    config.hook.pytest_deselected(items=server_only)
    config.stash[_DESELECTED] = [item.nodeid for item in server_only]


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    settings = cluster_settings(config)
    if settings is None:
        return
    terminalreporter.section("k8s cluster mode", sep="=", bold=True)
    namespace = config.stash.get(_NAMESPACE, None)
    if namespace is not None:
        terminalreporter.line(f"namespace {namespace} (deleted at the end), image {settings.image}")
    deselected = config.stash.get(_DESELECTED, [])
    if deselected:
        terminalreporter.line(
            f"{len(deselected)} test(s) marked {SERVER_ONLY} need the test API server and "
            "were deselected, not run:"
        )
        for nodeid in deselected:
            terminalreporter.line(f"  {nodeid}")


@pytest.fixture(scope="session")
def k8s_cluster_target(request: pytest.FixtureRequest) -> Iterator[K8sTarget | None]:
    """Cluster mode: a namespace of its own with the settings Secret, deleted at the end;
    None without cluster mode."""
    settings = cluster_settings(request.config)
    if settings is None:
        yield None
        return
    namespace = f"coreexec-test-{uuid.uuid4().hex[:8]}"
    api_client = config.new_client_from_config(
        config_file=settings.kubeconfig, context=settings.context
    )
    with contextlib.closing(api_client):
        core = client.CoreV1Api(api_client)
        labels = {"app.kubernetes.io/managed-by": "coreexec-tests"}
        core.create_namespace({"metadata": {"name": namespace, "labels": labels}})
        request.config.stash[_NAMESPACE] = namespace
        target = K8sTarget(
            kubeconfig=settings.kubeconfig,
            context=settings.context,
            namespace=namespace,
            image=settings.image,
            settings_secret=SETTINGS_SECRET,
        )
        try:
            # Pods of a namespace need its default account, which a controller adds later.
            wait_for(
                core.list_namespaced_service_account,
                bool,
                namespace,
                field_selector="metadata.name=default",
                timeout_s=NAMESPACE_READY_S,
            )
            secret = {"metadata": {"name": SETTINGS_SECRET}, "stringData": settings.pod_settings()}
            core.create_namespaced_secret(namespace, secret)
            yield target
        finally:
            target.close()
            core.delete_namespace(namespace, propagation_policy="Background")
