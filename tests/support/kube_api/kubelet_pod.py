"""One pod's life on the stand-in node: schedule, pull, start, wait, stop, report.

Status is written the way the scheduler and kubelet write it, so a client sees the same
sequence of conditions, container states and events as on a cluster.
"""

from __future__ import annotations

import base64
import contextlib
import threading
from typing import TYPE_CHECKING, Any

from tests.support.kube_api.backends import ContainerExit, ContainerHandle, ContainerStartError
from tests.support.kube_api.errors import ApiError
from tests.support.kube_api.store import CONFIG_MAPS, PODS, SECRETS, Obj, Resource, now_rfc3339

if TYPE_CHECKING:
    from tests.support.kube_api.kubelet import Kubelet

_CONDITIONS = ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady")
SELECTOR_MISMATCH = (
    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. "
    "preemption: 0/1 nodes are available: 1 Preemption is not helpful for scheduling."
)
"""What kube-scheduler writes when no node's labels satisfy the pod's nodeSelector."""


class _Stopped(Exception):
    """The pod was deleted (or the kubelet stops) before its container ran."""


def _condition(kind: str, status: bool, reason: str = "", message: str = "") -> Obj:
    cond: Obj = {
        "type": kind,
        "status": "True" if status else "False",
        "lastProbeTime": None,
        "lastTransitionTime": now_rfc3339(),
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


class PodWorker(threading.Thread):
    """Moves one pod through its phases; stop and eviction requests interrupt it."""

    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        super().__init__(name=f"pod-{pod['metadata']['name']}", daemon=True)
        self.kubelet = kubelet
        self.pod = pod
        self.namespace = pod["metadata"]["namespace"]
        self.pod_name = pod["metadata"]["name"]
        self.container = pod["spec"]["containers"][0]
        self.handle: ContainerHandle | None = None
        self.waiting_message = "ContainerCreating"
        self._stop_grace: int | None = None
        self._eviction: str | None = None
        self._interrupt = threading.Event()

    # ------------------------------------------------------------------ requests
    def request_stop(self, grace_s: int) -> None:
        with self.kubelet.cond:
            if self._stop_grace is None or grace_s < self._stop_grace:
                self._stop_grace = grace_s
            self.kubelet.cond.notify_all()
        self._interrupt.set()

    def request_eviction(self, message: str) -> None:
        with self.kubelet.cond:
            self._eviction = message
            self.kubelet.cond.notify_all()
        self._interrupt.set()

    def cleanup(self) -> None:
        if self.handle is not None:
            self.handle.remove()
            self.handle = None

    # ------------------------------------------------------------------ life
    def run(self) -> None:
        try:
            self._schedule()
            self._pull_image()
            env = self._resolve_env()
            self._start(env)
            self._wait()
        except _Stopped:
            self._remove()
        except ApiError:
            # The pod is gone from the store: nothing to report, nothing may keep running.
            if self.handle is not None:
                self.handle.stop(0)

    def _blocked(self, blocked: Any, timeout_s: float | None = None) -> None:
        """Wait while ``blocked()`` holds (at most ``timeout_s``); raise _Stopped on a stop."""
        with self.kubelet.cond:
            self.kubelet.cond.wait_for(
                lambda: not blocked() or self._stop_grace is not None, timeout_s
            )
            if self._stop_grace is not None:
                raise _Stopped

    def _update(self, mutate: Any) -> Obj:
        self.pod = self.kubelet.api.store.update(PODS, self.namespace, self.pod_name, mutate)
        return self.pod

    def _fits(self) -> bool:
        selector = self.pod["spec"].get("nodeSelector") or {}
        labels = self.kubelet.labels
        return all(labels.get(key) == value for key, value in selector.items())

    def _schedule(self) -> None:
        message = self.kubelet.unschedulable
        fits = self._fits()
        if not fits:
            message = SELECTOR_MISMATCH
        if message is not None:

            def pending(obj: Obj) -> None:
                obj["status"]["conditions"] = [
                    _condition("PodScheduled", False, "Unschedulable", message)
                ]

            self._update(pending)
            self.kubelet.api.record_event(
                self.pod, "Warning", "FailedScheduling", message, "default-scheduler"
            )
            # The selector is part of the spec: such a pod never fits this node.
            self._blocked(lambda: not fits or self.kubelet.unschedulable is not None)
        if self._stop_grace is not None:
            raise _Stopped
        node = self.kubelet.node_name

        def bind(obj: Obj) -> None:
            obj["spec"]["nodeName"] = node
            obj["status"]["conditions"] = [_condition("PodScheduled", True)]

        self._update(bind)
        self.kubelet.api.record_event(
            self.pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {self.namespace}/{self.pod_name} to {node}",
            "default-scheduler",
        )
        self._set_waiting("ContainerCreating", "")

    def _set_waiting(self, reason: str, message: str) -> None:
        waiting: Obj = {"reason": reason}
        if message:
            waiting["message"] = message

        def mutate(obj: Obj) -> None:
            status = obj["status"]
            status.update(
                {
                    "hostIP": "127.0.0.1",
                    "hostIPs": [{"ip": "127.0.0.1"}],
                    "podIP": "127.0.0.1",
                    "podIPs": [{"ip": "127.0.0.1"}],
                }
            )
            status.setdefault("startTime", now_rfc3339())
            conds = [c for c in status["conditions"] if c["type"] == "PodScheduled"]
            status["conditions"] = [
                _condition("PodReadyToStartContainers", True),
                _condition("Initialized", True),
                _condition(
                    "Ready",
                    False,
                    "ContainersNotReady",
                    f"containers with unready status: [{self.container['name']}]",
                ),
                _condition(
                    "ContainersReady",
                    False,
                    "ContainersNotReady",
                    f"containers with unready status: [{self.container['name']}]",
                ),
                *conds,
            ]
            status["containerStatuses"] = [self._container_status({"waiting": waiting})]

        self._update(mutate)

    def _container_status(self, state: Obj, *, ready: bool = False) -> Obj:
        status: Obj = {
            "name": self.container["name"],
            "state": state,
            "lastState": {},
            "ready": ready,
            "restartCount": 0,
            "image": self.container["image"],
            "imageID": "",
            "started": ready,
        }
        if self.handle is not None:
            status["containerID"] = self.handle.container_id
            status["imageID"] = f"docker-pullable://{self.container['image']}"
        return status

    # ------------------------------------------------------------------ image
    def _pull_image(self) -> None:
        image = self.container["image"]
        policy = self.container.get("imagePullPolicy", "IfNotPresent")
        unpullable = image in self.kubelet.unpullable_images
        present = self.kubelet.backend.has_image(image) and not unpullable
        if policy == "Never" and not present:
            message = f'Container image "{image}" is not present with pull policy of Never'
            self._waiting_forever("ErrImageNeverPull", message, "image can't be pulled")
        if policy == "Always" or not present:
            self.kubelet.record(self.pod, "Normal", "Pulling", f'Pulling image "{image}"')
            if unpullable or not present:
                message = (
                    f'failed to pull and unpack image "{image}": failed to resolve reference '
                    f'"{image}": pull access denied, repository does not exist or may require '
                    "authorization"
                )
                self._set_waiting("ErrImagePull", message)
                self.kubelet.record(
                    self.pod, "Warning", "Failed", f'Failed to pull image "{image}": {message}'
                )
                self.kubelet.record(self.pod, "Warning", "Failed", "Error: ErrImagePull")
                # The kubelet retries the pull after a back-off, reporting the back-off.
                self._blocked(lambda: True, self.kubelet.image_pull_backoff_s)
                self._waiting_forever(
                    "ImagePullBackOff",
                    f'Back-off pulling image "{image}"',
                    "trying and failing to pull image",
                )
            self.kubelet.record(
                self.pod, "Normal", "Pulled", f'Successfully pulled image "{image}"'
            )
        else:
            self.kubelet.record(
                self.pod,
                "Normal",
                "Pulled",
                f'Container image "{image}" already present on machine',
            )

    def _waiting_forever(self, reason: str, message: str, log_reason: str) -> None:
        self.waiting_message = log_reason
        self._set_waiting(reason, message)
        event_type, event_reason = (
            ("Normal", "BackOff") if reason == "ImagePullBackOff" else ("Warning", reason)
        )
        self.kubelet.record(self.pod, event_type, event_reason, message)
        self._blocked(lambda: True)

    # ------------------------------------------------------------------ env
    def _resolve_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        try:
            for source in self.container.get("envFrom") or []:
                env.update(self._lookup_all(source))
            for item in self.container.get("env") or []:
                if "valueFrom" in item:
                    env[item["name"]] = self._lookup(item["valueFrom"])
                else:
                    env[item["name"]] = str(item.get("value", ""))
        except LookupError as missing:
            message = str(missing.args[0])
            self.waiting_message = "CreateContainerConfigError"
            self._set_waiting("CreateContainerConfigError", message)
            self.kubelet.record(self.pod, "Warning", "Failed", f"Error: {message}")
            self._blocked(lambda: True)
        return env

    def _read(self, res: Resource, name: str) -> dict[str, str] | None:
        """The keys of a Secret (decoded) or ConfigMap in the pod's namespace."""
        found = self.kubelet.api.store.find(res, self.namespace, name)
        if found is None:
            return None
        data = dict(found.get("data") or {})
        if res is SECRETS:
            return {key: base64.b64decode(value).decode() for key, value in data.items()}
        return data

    def _lookup_all(self, source: Obj) -> dict[str, str]:
        for key, res, kind in (
            ("secretRef", SECRETS, "secret"),
            ("configMapRef", CONFIG_MAPS, "configmap"),
        ):
            if key in source:
                name = source[key]["name"]
                data = self._read(res, name)
                if data is None:
                    raise LookupError(f'{kind} "{name}" not found')
                return data
        return {}

    def _lookup(self, value_from: Obj) -> str:
        meta = self.pod["metadata"]
        if "fieldRef" in value_from:
            path = value_from["fieldRef"]["fieldPath"]
            fields = {
                "metadata.name": meta["name"],
                "metadata.namespace": meta["namespace"],
                "metadata.uid": meta["uid"],
                "spec.nodeName": self.kubelet.node_name,
                "status.podIP": "127.0.0.1",
            }
            return fields.get(path, "")
        for key, res, kind in (
            ("secretKeyRef", SECRETS, "secret"),
            ("configMapKeyRef", CONFIG_MAPS, "configmap"),
        ):
            if key in value_from:
                ref = value_from[key]
                data = self._read(res, ref["name"])
                if data is None:
                    raise LookupError(f'{kind} "{ref["name"]}" not found')
                if ref["key"] not in data:
                    raise LookupError(f"couldn't find key {ref['key']} in {kind} {ref['name']}")
                return data[ref["key"]]
        return ""

    # ------------------------------------------------------------------ run
    def _start(self, env: dict[str, str]) -> None:
        name = self.container["name"]
        if self._stop_grace is not None:
            raise _Stopped
        try:
            self.handle = self.kubelet.backend.run(self.pod, self.container, env)
        except ContainerStartError as error:
            self.kubelet.record(self.pod, "Warning", "Failed", f"Error: {error.message}")
            stamp = now_rfc3339()
            self._finish(
                ContainerExit(128, False, stamp, stamp), reason=error.reason, message=error.message
            )
            return
        self.kubelet.note_running(+1)
        self.kubelet.record(self.pod, "Normal", "Created", f"Created container: {name}")
        self.kubelet.record(self.pod, "Normal", "Started", f"Started container {name}")
        running = {"running": {"startedAt": self.handle.started_at}}

        def mutate(obj: Obj) -> None:
            status = obj["status"]
            status["phase"] = "Running"
            status["conditions"] = [_condition(kind, True) for kind in _CONDITIONS] + [
                c for c in status["conditions"] if c["type"] == "PodScheduled"
            ]
            status["containerStatuses"] = [self._container_status(running, ready=True)]

        self._update(mutate)

    def _wait(self) -> None:
        handle = self.handle
        if handle is None:
            return  # it failed to start; _start reported it

        def ended() -> None:
            handle.wait(None)
            self.kubelet.note_running(-1)
            self._interrupt.set()

        waiter = threading.Thread(target=ended, name=f"wait-{self.pod_name}", daemon=True)
        waiter.start()
        self._interrupt.wait()
        if self._eviction is not None:
            self._evict(handle, self._eviction)
            return
        if self._stop_grace is not None and handle.wait(0) is None:
            self.kubelet.record(
                self.pod, "Normal", "Killing", f"Stopping container {self.container['name']}"
            )
            handle.stop(self._stop_grace)
            result = handle.wait(None)
            assert result is not None
            self._finish(result)
            raise _Stopped
        result = handle.wait(None)
        assert result is not None
        self._finish(result)

    def _evict(self, handle: ContainerHandle, message: str) -> None:
        handle.stop(0)
        result = handle.wait(None)
        assert result is not None
        self.kubelet.record(self.pod, "Warning", "Evicted", message)
        self._finish(result, phase_reason="Evicted", message=message)

    def _finish(
        self,
        result: ContainerExit,
        *,
        reason: str | None = None,
        message: str = "",
        phase_reason: str | None = None,
    ) -> None:
        if reason is None:
            reason = (
                "OOMKilled"
                if result.oom_killed
                else ("Completed" if result.exit_code == 0 else "Error")
            )
        terminated: Obj = {
            "exitCode": result.exit_code,
            "reason": reason,
            "startedAt": result.started_at,
            "finishedAt": result.finished_at,
        }
        if message and phase_reason is None:
            terminated["message"] = message
        if self.handle is not None:
            terminated["containerID"] = self.handle.container_id
        phase = "Succeeded" if result.exit_code == 0 and phase_reason is None else "Failed"
        pod_reason = "PodCompleted" if phase == "Succeeded" else "PodFailed"

        def mutate(obj: Obj) -> None:
            status = obj["status"]
            status["phase"] = phase
            scheduled = [c for c in status.get("conditions", []) if c["type"] == "PodScheduled"]
            status["conditions"] = [
                _condition("PodReadyToStartContainers", False),
                _condition("Initialized", True, pod_reason),
                _condition("Ready", False, pod_reason),
                _condition("ContainersReady", False, pod_reason),
                *scheduled,
            ]
            if phase_reason is not None:
                status["reason"] = phase_reason
                status["message"] = message
                status["conditions"].append(
                    _condition("DisruptionTarget", True, "TerminationByKubelet", message)
                )
            status["containerStatuses"] = [self._container_status({"terminated": terminated})]

        self._update(mutate)

    def _remove(self) -> None:
        """The container has stopped: the kubelet completes the pod's deletion."""
        with contextlib.suppress(ApiError):
            self.kubelet.api.store.remove(PODS, self.namespace, self.pod_name)
