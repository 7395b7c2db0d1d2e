"""The kubelet stand-in's Docker backend: each pod's container on the local Docker engine.

The container gets the pod's image, ``command`` as the entrypoint and ``args`` as the
command (as the kubelet maps them), the resolved environment, and
``resources.limits.memory`` as its memory limit (swap off), so an allocation past it is
killed by the kernel and reported ``OOMKilled`` from the container's state. An image
counts as present when the engine has it: no registry is reachable here, so a missing
image is an image pull error, as on a node whose registry is down. ``base_kwargs`` are
the test's run arguments (network, user, mounts, labels of the test session).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping
from typing import Any

import docker
import docker.errors
import requests

from tests.support.kube_api.backends import (
    ContainerExit,
    ContainerHandle,
    ContainerStartError,
    memory_limit_bytes,
)
from tests.support.kube_api.store import Obj, now_rfc3339

POD_LABEL = "io.kubernetes.pod.name"
POD_UID_LABEL = "io.kubernetes.pod.uid"


def _stamp(value: str | None) -> str:
    """Docker's nanosecond timestamps as the API's seconds."""
    return value[:19] + "Z" if value and not value.startswith("0001") else now_rfc3339()


class _DockerContainer:
    def __init__(self, container: Any) -> None:
        self._container = container
        self.container_id = f"docker://{container.id}"
        container.reload()
        self.started_at = _stamp(container.attrs["State"].get("StartedAt"))
        self._exit: ContainerExit | None = None
        self._lock = threading.Lock()

    def wait(self, timeout_s: float | None) -> ContainerExit | None:
        with self._lock:
            if self._exit is not None:
                return self._exit
        if timeout_s is not None and timeout_s <= 0:
            self._container.reload()
            if self._container.status in ("created", "running", "restarting"):
                return None
            timeout_s = 10
        try:
            self._container.wait(timeout=timeout_s if timeout_s is not None else 86400)
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return None
        self._container.reload()
        state = self._container.attrs["State"]
        result = ContainerExit(
            int(state.get("ExitCode", -1)),
            bool(state.get("OOMKilled")),
            _stamp(state.get("StartedAt")),
            _stamp(state.get("FinishedAt")),
        )
        with self._lock:
            self._exit = self._exit or result
            return self._exit

    def stop(self, grace_s: float) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._container.stop(timeout=max(0, round(grace_s)))

    def read_logs(self, offset: int) -> bytes:
        try:
            data: bytes = self._container.logs(stdout=True, stderr=True)
        except docker.errors.NotFound:
            return b""
        return data[offset:]

    def remove(self) -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self._container.remove(force=True)


class DockerBackend:
    """Runs pod containers on ``client``'s engine with ``base_kwargs`` under them."""

    def __init__(self, client: docker.DockerClient, base_kwargs: Mapping[str, Any]) -> None:
        self.client = client
        self.base_kwargs = dict(base_kwargs)

    def has_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
        except docker.errors.ImageNotFound:
            return False
        return True

    def run(self, pod: Obj, container: Obj, env: Mapping[str, str]) -> ContainerHandle:
        meta = pod["metadata"]
        kwargs = dict(self.base_kwargs)
        kwargs.pop("image", None)
        kwargs["environment"] = {**kwargs.get("environment", {}), **env}
        kwargs["labels"] = {
            **kwargs.get("labels", {}),
            POD_LABEL: meta["name"],
            POD_UID_LABEL: meta["uid"],
        }
        if container.get("command"):
            kwargs["entrypoint"] = list(container["command"])
        if container.get("args"):
            kwargs["command"] = list(container["args"])
        limit = memory_limit_bytes(container)
        if limit is not None:
            kwargs.update(mem_limit=limit, memswap_limit=limit)
        name = f"k8s_{container['name']}_{meta['name']}_{meta['namespace']}_{meta['uid'][:8]}"
        try:
            created = self.client.containers.run(
                container["image"], name=name, detach=True, **kwargs
            )
        except docker.errors.ImageNotFound as exc:
            raise ContainerStartError("ErrImagePull", str(exc)) from exc
        except docker.errors.APIError as exc:
            raise ContainerStartError("StartError", exc.explanation or str(exc)) from exc
        return _DockerContainer(created)
