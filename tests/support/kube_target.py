"""Where the Kubernetes tests create their Jobs: the test API server, or a real cluster.

:class:`K8sTarget` is what the ``pod_cluster`` fixture of tests/k8s yields either way:
the kubeconfig (and context), the namespace, the step image, the Secret the pods read
their settings from, and reads of the launcher's Jobs and pods through the API. On the
test API server ``server`` is the :class:`TestCluster` (its switches, request counters
and kubelet), and the reads go to its store as they always have; on a real cluster
``server`` is None and everything goes through the ``kubernetes`` client.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from kubernetes import client, config, watch

from tests.support.kube_api import TestCluster
from tests.support.kube_api.store import JOBS, PODS

RUN_ID_LABEL = "coreexec.io/run-id"


@dataclass
class K8sTarget:
    """A namespace the launcher may use, and how to look at what it created there."""

    kubeconfig: str | None
    """The kubeconfig file (a ``:``-separated list is fine); None: ``$KUBECONFIG``."""
    namespace: str
    image: str
    settings_secret: str
    context: str | None = None
    command: list[str] | None = None
    """How the image starts the step entrypoint; None: the launcher's default."""
    server: TestCluster | None = None
    _clients: list[client.ApiClient] = field(default_factory=list, repr=False)

    def block(self) -> dict[str, Any]:
        """The executors' ``k8s`` block for this target."""
        block: dict[str, Any] = {
            "job_image": self.image,
            "namespace": self.namespace,
            "env_secrets": [self.settings_secret],
            "termination_grace_period_s": 5,
        }
        if self.kubeconfig is not None:
            block["kubeconfig_file"] = self.kubeconfig
        if self.context is not None:
            block["context"] = self.context
        if self.command is not None:
            block["command"] = list(self.command)
        return block

    # ------------------------------------------------------------------ API
    @cached_property
    def api_client(self) -> client.ApiClient:
        api_client = config.new_client_from_config(
            config_file=self.kubeconfig, context=self.context
        )
        self._clients.append(api_client)
        return api_client

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self.api_client)

    def as_json(self, obj: Any) -> Any:
        """A client model as the API's JSON (camelCase), as the test server stores it."""
        return self.api_client.sanitize_for_serialization(obj)

    def close(self) -> None:
        for api_client in self._clients:
            api_client.close()
        self._clients.clear()

    # ------------------------------------------------------------------ reads
    def jobs_and_pods(self, run_id: str) -> tuple[list[Any], list[Any]]:
        """The run's Jobs and pods in the namespace, as the API's JSON."""
        selector = f"{RUN_ID_LABEL}={run_id}"
        if self.server is not None:
            store = self.server.store

            def mine(obj: dict[str, Any]) -> bool:
                return bool(obj["metadata"].get("labels", {}).get(RUN_ID_LABEL) == run_id)

            return store.list(JOBS, self.namespace, mine)[0], store.list(
                PODS, self.namespace, mine
            )[0]
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector)
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector)
        return self.as_json(jobs.items), self.as_json(pods.items)

    def jobs_version(self) -> str:
        """The resourceVersion of a list of the namespace's Jobs: watch from it to see
        every Job created later, even one deleted before anyone looked."""
        version: str = self.batch.list_namespaced_job(self.namespace).metadata.resource_version
        return version

    def first_job_after(self, version: str, run_id: str, timeout_s: float) -> dict[str, Any]:
        """The run's first Job created after ``version``, from a watch (never missed)."""
        stream = watch.Watch().stream(
            self.batch.list_namespaced_job,
            self.namespace,
            label_selector=f"{RUN_ID_LABEL}={run_id}",
            resource_version=version,
            timeout_seconds=max(1, int(timeout_s)),
        )
        for event in stream:
            if event["type"] == "ADDED":
                stream.close()
                job: dict[str, Any] = self.as_json(event["object"])
                return job
        raise AssertionError(f"no Job of run {run_id} was created within {timeout_s}s")

    def read_job(self, name: str) -> dict[str, Any]:
        if self.server is not None:
            return self.server.store.get(JOBS, self.namespace, name)
        job: dict[str, Any] = self.as_json(self.batch.read_namespaced_job(name, self.namespace))
        return job

    def create_service_account(self, name: str) -> None:
        body = {"metadata": {"name": name}}
        self.core.create_namespaced_service_account(self.namespace, body)

    def requests(self) -> dict[str, int] | None:
        """The test server's request counts (``create jobs``...); None on a real cluster,
        which counts nothing a test can read."""
        return self.server.requests() if self.server is not None else None

    def test_server(self) -> TestCluster:
        """The test cluster, for tests marked ``k8s_test_server`` (never run on a cluster)."""
        assert self.server is not None, "this test needs the test API server"
        return self.server


class RunningPods:
    """How many pods matching a label selector were in phase Running at once, from a
    watch of the namespace's pods (every change in order, on a cluster as on the test
    server). Use as a context manager around the run."""

    def __init__(self, target: K8sTarget, label_selector: str) -> None:
        self.target = target
        self.label_selector = label_selector
        self.max_running = 0
        self.seen: set[str] = set()
        """Names of every matching pod seen Running."""
        self.watches = 0
        """Watch requests this census made (a server counting requests counts them too)."""
        self._running: set[str] = set()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="running-pods", daemon=True)

    def __enter__(self) -> RunningPods:
        self._thread.start()
        self._ready.wait(30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(30)
        if self._error is not None:
            raise self._error

    def _note(self, kind: str, pod: Any) -> None:
        name = pod.metadata.name
        if kind != "DELETED" and pod.status.phase == "Running":
            self._running.add(name)
            self.seen.add(name)
        else:
            self._running.discard(name)
        self.max_running = max(self.max_running, len(self._running))

    def _follow(self) -> None:
        core = self.target.core
        try:
            listed = core.list_namespaced_pod(
                self.target.namespace, label_selector=self.label_selector
            )
            for pod in listed.items:
                self._note("ADDED", pod)
            version = listed.metadata.resource_version
            self._ready.set()
            while not self._stop.is_set():
                self.watches += 1
                stream = watch.Watch().stream(
                    core.list_namespaced_pod,
                    self.target.namespace,
                    label_selector=self.label_selector,
                    resource_version=version,
                    timeout_seconds=1,
                )
                for event in stream:
                    self._note(event["type"], event["object"])
                    version = event["object"].metadata.resource_version
        except BaseException as exc:
            self._error = exc
            self._ready.set()
