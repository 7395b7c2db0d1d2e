"""The ``docker`` launcher: one container per attempt, followed to its end.

- ``launch``: adopt the attempt's container if it exists (a redelivered message),
  else stop and remove what earlier attempts of the step left (one live container per
  step), log in to the registry if one is configured, create and start the container.
- ``follow``: Docker's wait (a blocking API call: no polling), then the container's
  state: exit code, ``OOMKilled`` with its memory limit; and the last lines of its logs.
- ``terminate``: ``docker stop`` (SIGTERM, SIGKILL after ``stop_timeout_s``).
- ``cleanup``: remove the container unless ``keep_containers``.

Errors name the image (missing), the socket (daemon unreachable) or the key (a bad
``container_kwargs``).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import docker
import docker.errors
from docker.models.containers import Container

from coreexec.attempt_runner import PreparedAttempt
from coreexec.attempt_runtime import AttemptRuntime
from coreexec.errors import ConfigError
from workers.docker.config import DockerConfig, parse_docker_config
from workers.docker.containers import (
    ATTEMPT_ID_LABEL,
    RUN_LABEL,
    STEP_LABEL,
    ContainerSpec,
    spec_of,
)
from workers.launcher import EndReason, Launch, LaunchEnd, LaunchError, LaunchRequest
from workers.registry import DOCKER

DEFAULT_SOCKET = "unix:///var/run/docker.sock"
API_TIMEOUT_S = 60.0

_clients: dict[tuple[int, str], docker.DockerClient] = {}
_clients_lock = threading.Lock()


def socket_of(config: DockerConfig) -> str:
    return config.docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def client_for(config: DockerConfig) -> docker.DockerClient:
    """One client per daemon per process; a LaunchError naming the socket if the daemon
    does not answer."""
    where = socket_of(config)
    key = (os.getpid(), where)
    with _clients_lock:
        client = _clients.get(key)
    if client is not None:
        return client
    try:
        client = docker.DockerClient(base_url=where, timeout=int(API_TIMEOUT_S))
        client.ping()
    except docker.errors.DockerException as exc:
        raise LaunchError(
            f"cannot reach the Docker daemon at {where} ({exc}); start dockerd there or set "
            "the executor's docker.docker_host (or DOCKER_HOST) to its socket"
        ) from exc
    with _clients_lock:
        return _clients.setdefault(key, client)


def memory_text(limit_bytes: int) -> str:
    """``64 MiB`` for 67108864."""
    value = float(limit_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:g} {unit}"
        value /= 1024
    return f"{limit_bytes} B"  # pragma: no cover


class DockerLauncher:
    """Runs attempts in containers of one daemon; see the module docstring."""

    name = DOCKER

    def __init__(self, config: DockerConfig, *, redis_url: str) -> None:
        self.config = config
        self.redis_url = redis_url
        self._terminated: set[str] = set()

    @property
    def client(self) -> docker.DockerClient:
        return client_for(self.config)

    # -- launch -------------------------------------------------------------------------

    def launch(self, request: LaunchRequest) -> Launch:
        found = self.find(request)
        if found is not None:
            return found
        self.stop_earlier(request)
        spec = spec_of(self.config, request.ids, owner=request.owner, redis_url=self.redis_url)
        self._ensure_image(spec.image)
        container = self._create(spec)
        try:
            for network in self.config.networks:
                self.client.networks.get(network).connect(container)
            container.start()
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"cannot start container {spec.name} of image {spec.image!r}: {exc}"
            ) from exc
        return Launch(self.name, spec.name, request.ids, handle=str(container.id))

    def _ensure_image(self, image: str) -> None:
        """The image on the daemon, pulled from the registry (after a login) when it is
        missing and a registry is configured; else a LaunchError naming the image."""
        try:
            self.client.images.get(image)
            return
        except docker.errors.ImageNotFound:
            pass
        except docker.errors.DockerException as exc:
            raise LaunchError(f"cannot look up image {image!r}: {exc}") from exc
        if self.config.registry is None:
            raise LaunchError(
                f"image {image!r} is not on the Docker daemon at {socket_of(self.config)}; "
                "build or load it there, or configure docker.registry to pull it"
            )
        self._login()
        try:
            self.client.images.pull(image)
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"image {image!r} is not on the Docker daemon at {socket_of(self.config)} "
                f"and pulling it from {self.config.registry.url} failed: {exc}"
            ) from exc

    def _login(self) -> None:
        registry = self.config.registry
        if registry is None:
            return
        password = os.environ.get(registry.password_env)
        if password is None:
            raise LaunchError(
                f"docker.registry.password_env names {registry.password_env}, which is not "
                "set in this worker's environment",
                retryable=False,
            )
        try:
            self.client.login(registry.username, password=password, registry=registry.url)
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"cannot log in to registry {registry.url} as {registry.username}: {exc}"
            ) from exc

    def _create(self, spec: ContainerSpec) -> Container:
        try:
            return self.client.containers.create(spec.image, name=spec.name, **spec.kwargs)
        except docker.errors.ImageNotFound as exc:
            raise LaunchError(
                f"image {spec.image!r} is not on the Docker daemon at {socket_of(self.config)} "
                f"({exc.explanation or exc}); build or pull it there, or fix docker.image"
            ) from exc
        except TypeError as exc:
            raise LaunchError(
                f"docker.container_kwargs: {exc}; remove the key", retryable=False
            ) from exc
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # another supervisor created it a moment ago
                return self.client.containers.get(spec.name)
            keys = ", ".join(sorted(self.config.container_kwargs)) or "none given"
            raise LaunchError(
                f"the Docker daemon refused container {spec.name} of image {spec.image!r}: "
                f"{exc.explanation or exc} (docker.container_kwargs keys: {keys})",
                retryable=exc.status_code is None or exc.status_code >= 500,
            ) from exc
        except docker.errors.DockerException as exc:
            raise LaunchError(f"cannot create a container of image {spec.image!r}: {exc}") from exc

    def stop_earlier(self, request: LaunchRequest) -> list[str]:
        """Stop (and unless kept, remove) containers of earlier attempts of the step."""
        ids = request.ids
        filters = {"label": [f"{RUN_LABEL}={ids.run_id}", f"{STEP_LABEL}={ids.step_key}"]}
        stopped = []
        try:
            # The raw list: the SDK's list() inspects each container and fails on one
            # removed meanwhile.
            for summary in self.client.api.containers(all=True, filters=filters):
                if (summary.get("Labels") or {}).get(ATTEMPT_ID_LABEL) == ids.attempt_id:
                    continue
                try:
                    container = self.client.containers.get(summary["Id"])
                    if container.status in ("running", "restarting", "paused", "created"):
                        container.stop(timeout=round(self.config.stop_timeout_s))
                    if not self.config.keep_containers:
                        container.remove(force=True)
                except docker.errors.NotFound:
                    continue  # it went away meanwhile
                stopped.append(str(container.name))
        except docker.errors.DockerException as exc:
            raise LaunchError(
                f"cannot stop the earlier containers of step {ids.step_key!r}: {exc}"
            ) from exc
        return stopped

    def find(self, request: LaunchRequest) -> Launch | None:
        spec_name = spec_of(self.config, request.ids, owner="", redis_url="").name
        try:
            container = self.client.containers.get(spec_name)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise LaunchError(f"cannot look for container {spec_name}: {exc}") from exc
        return Launch(self.name, spec_name, request.ids, adopted=True, handle=str(container.id))

    # -- follow -------------------------------------------------------------------------

    def follow(self, launch: Launch) -> LaunchEnd:
        try:
            container = self.client.containers.get(launch.handle or launch.name)
            container.wait()  # blocks until the container has stopped
            container.reload()
        except docker.errors.NotFound:
            return LaunchEnd(EndReason.GONE, detail=f"container {launch.name} was removed")
        except docker.errors.DockerException as exc:
            raise LaunchError(f"lost track of container {launch.name}: {exc}") from exc
        return self._end_of(container, launch)

    def _end_of(self, container: Container, launch: Launch) -> LaunchEnd:
        state: dict[str, Any] = container.attrs.get("State", {})
        code = int(state.get("ExitCode", -1))
        logs = self._logs(container)
        if state.get("OOMKilled"):
            limit = int(container.attrs.get("HostConfig", {}).get("Memory") or 0)
            shown = memory_text(limit) if limit else "the host's memory"
            return LaunchEnd(
                EndReason.OOM_KILLED, code, f"out of memory (limit {shown})", logs=logs
            )
        if launch.handle in self._terminated or launch.name in self._terminated:
            return LaunchEnd(EndReason.TERMINATED, code, f"stopped, exit code {code}", logs=logs)
        if code == 137:
            return LaunchEnd(EndReason.KILLED, code, "exit code 137: killed (SIGKILL)", logs=logs)
        error = str(state.get("Error") or "")
        detail = f"exit code {code}" + (f": {error}" if error else "")
        return LaunchEnd(EndReason.EXITED, code, detail, logs=logs)

    def _logs(self, container: Container) -> tuple[str, ...]:
        if not self.config.log_lines:
            return ()
        try:
            raw = container.logs(stdout=True, stderr=True, tail=self.config.log_lines)
        except docker.errors.DockerException:
            return ()
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return tuple(text.splitlines()[-self.config.log_lines :])

    # -- stop and remove ------------------------------------------------------------------

    def terminate(self, launch: Launch) -> None:
        self._terminated.add(launch.handle or launch.name)
        try:
            container = self.client.containers.get(launch.handle or launch.name)
            container.stop(timeout=round(self.config.stop_timeout_s))
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise LaunchError(f"cannot stop container {launch.name}: {exc}") from exc

    def cleanup(self, launch: Launch) -> None:
        if self.config.keep_containers:
            return
        try:
            self.client.containers.get(launch.handle or launch.name).remove(force=True, v=True)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise LaunchError(f"cannot remove container {launch.name}: {exc}") from exc


def docker_launcher_for(runtime: AttemptRuntime, prepared: PreparedAttempt) -> DockerLauncher:
    """The launcher of a container step: the run's ``docker`` block with the step's tag
    over it."""
    raw = prepared.info.settings.launcher_config.get(DOCKER)
    config = parse_docker_config(raw, path="docker").for_step(prepared.step)
    if not config.image:
        raise ConfigError(
            f"step {prepared.step.key!r} runs in a container but its run sets no image "
            "(docker.image, or the step's tag coreexec-docker/config)",
            path="docker.image",
        )
    return DockerLauncher(config, redis_url=runtime.redis_url)
