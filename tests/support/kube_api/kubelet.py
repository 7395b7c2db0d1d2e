"""The scheduler and kubelet stand-in of the test cluster.

Each new pod gets a worker thread that moves it as a node would: Pending → scheduled
(``spec.nodeName``, ``PodScheduled``, a ``Scheduled`` event) → image check → container
started through a :class:`ContainerBackend` (``Running``, ``Ready``) → ``Succeeded`` or
``Failed`` with the container's ``terminated`` state (``exitCode``, ``Completed``,
``Error`` or ``OOMKilled``). A pod deleted with a grace period gets SIGTERM, then SIGKILL
after the grace period, and is removed when its container has stopped.

Switches for failure tests (each takes effect for pods that reach that point later):

- ``unschedulable``: a scheduler message; pods stay Pending with ``PodScheduled=False``
  (``Unschedulable``) and a ``FailedScheduling`` Warning until it is cleared.
- ``unpullable_images``: images whose pull fails (``ErrImagePull``, then
  ``ImagePullBackOff``; ``ErrImageNeverPull`` under ``imagePullPolicy: Never``).
- :meth:`Kubelet.evict`: the pod is killed and failed with reason ``Evicted``.

What needs no switch, because a cluster does it too: a pod whose ``nodeSelector`` the
node's ``labels`` do not satisfy stays Pending with the scheduler's message ("0/1 nodes
are available: 1 node(s) didn't match Pod's node affinity/selector. ..."); an image the
backend does not have cannot be pulled (``ErrImagePull``, then ``ImagePullBackOff``), as
from a registry without it; ``valueFrom``/``envFrom`` read the namespace's Secrets and
ConfigMaps from the API, and a missing one is ``CreateContainerConfigError``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

from tests.support.kube_api.cluster_api import ClusterApi
from tests.support.kube_api.control_loop import ControlLoop
from tests.support.kube_api.errors import ApiError, bad_request
from tests.support.kube_api.kubelet_pod import PodWorker
from tests.support.kube_api.store import PODS, Obj

NODE_NAME = "coreexec-test-node"


def node_labels(node_name: str) -> dict[str, str]:
    """The well-known labels a kubelet puts on its Node."""
    return {
        "kubernetes.io/hostname": node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "amd64",
    }


DEFAULT_EVICTION = (
    "The node was low on resource: memory. Threshold quantity: 100Mi, available: 64Mi. "
)


class Kubelet(ControlLoop):
    """Runs every pod of the test cluster on one node through ``backend``."""

    name = "kubelet"

    def __init__(self, api: ClusterApi, backend: Any, node_name: str = NODE_NAME) -> None:
        super().__init__(api)
        self.backend = backend
        self.node_name = node_name
        self.labels = node_labels(node_name)
        """The node's labels, which a pod's ``nodeSelector`` must match."""
        self.cond = threading.Condition()
        self._unschedulable: str | None = None
        self._unpullable: frozenset[str] = frozenset()
        self.image_pull_backoff_s = 1.0
        """How long a failed pull shows ErrImagePull before ImagePullBackOff."""
        self._workers: dict[str, PodWorker] = {}
        self.running = 0
        """Containers running right now; ``max_running`` is the most seen at once."""
        self.max_running = 0

    # ------------------------------------------------------------------ switches
    @property
    def unschedulable(self) -> str | None:
        return self._unschedulable

    @unschedulable.setter
    def unschedulable(self, message: str | None) -> None:
        with self.cond:
            self._unschedulable = message
            self.cond.notify_all()

    @property
    def unpullable_images(self) -> frozenset[str]:
        return self._unpullable

    @unpullable_images.setter
    def unpullable_images(self, images: set[str] | frozenset[str]) -> None:
        with self.cond:
            self._unpullable = frozenset(images)
            self.cond.notify_all()

    def evict(self, namespace: str, pod_name: str, message: str = DEFAULT_EVICTION) -> None:
        """Evict a running pod: its container is killed and the pod fails ``Evicted``."""
        pod = self.api.store.get(PODS, namespace, pod_name)
        worker = self._workers.get(pod["metadata"]["uid"])
        if worker is None:
            raise ValueError(f"pod {namespace}/{pod_name} has no container on this node")
        worker.request_eviction(message)

    # ------------------------------------------------------------------ lifecycle
    def stop(self) -> None:
        """Stop every container at once (SIGKILL) and the kubelet's threads."""
        super().stop()
        for worker in list(self._workers.values()):
            worker.request_stop(0)
        for worker in list(self._workers.values()):
            worker.join(timeout=30)
            worker.cleanup()
        self._workers.clear()

    def reconcile(self) -> None:
        pods = {pod["metadata"]["uid"]: pod for pod in self.api.store.iter_objects(PODS)}
        for uid, pod in pods.items():
            worker = self._workers.get(uid)
            if worker is None and pod["status"].get("phase") == "Pending":
                worker = PodWorker(self, pod)
                self._workers[uid] = worker
                worker.start()
            if worker is not None and pod["metadata"].get("deletionTimestamp"):
                worker.request_stop(int(pod["metadata"].get("deletionGracePeriodSeconds", 30)))
        for uid in [uid for uid in self._workers if uid not in pods]:
            worker = self._workers[uid]
            worker.request_stop(0)
            if not worker.is_alive():
                worker.cleanup()
                del self._workers[uid]

    # ------------------------------------------------------------------ logs
    def read_log(
        self, namespace: str, pod: Obj, container: str, follow: bool, stopped: Callable[[], bool]
    ) -> Iterator[bytes]:
        """The container's output so far; with ``follow``, until the container ends."""
        worker = self._workers.get(pod["metadata"]["uid"])
        handle = worker.handle if worker is not None else None
        if worker is None or handle is None:
            reason = worker.waiting_message if worker is not None else "ContainerCreating"
            raise bad_request(
                f'container "{container}" in pod "{pod["metadata"]["name"]}" is waiting to '
                f"start: {reason}"
            )
        offset = 0
        while True:
            data = handle.read_logs(offset)
            offset += len(data)
            if data:
                yield data
            if not follow or stopped():
                return
            if handle.wait(0.1) is not None:
                rest = handle.read_logs(offset)
                if rest:
                    yield rest
                return

    def note_running(self, delta: int) -> None:
        with self.cond:
            self.running += delta
            self.max_running = max(self.max_running, self.running)

    def record(self, pod: Obj, event_type: str, reason: str, message: str) -> None:
        with contextlib.suppress(ApiError):
            self.api.record_event(pod, event_type, reason, message, "kubelet")
