"""Container backends of the kubelet stand-in: where a pod's container really runs.

:class:`LocalProcessBackend` runs the container's ``command`` + ``args`` as a local
process (its own session, stopped by pid), for API tests that need no Docker engine; an
image without a command runs the argv its ``entrypoints`` mapping gives, the way an
image's ENTRYPOINT would. It enforces no memory limit, so an OOM kill needs the Docker
backend, or the local backend's stand-in for the kernel's OOM killer: with
``enforce_memory=True`` a watcher reads the process's resident memory from /proc and
kills it with SIGKILL once it passes the container's ``resources.limits.memory``,
reporting ``OOMKilled`` as the container runtime would.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tests.support.kube_api.objects import parse_quantity
from tests.support.kube_api.store import Obj, now_rfc3339


@dataclass(frozen=True)
class ContainerExit:
    """How a container ended."""

    exit_code: int
    oom_killed: bool
    started_at: str
    finished_at: str


class ContainerStartError(Exception):
    """The container could not be created or started (``reason`` as the kubelet says)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class ContainerHandle(Protocol):
    container_id: str
    started_at: str

    def wait(self, timeout_s: float | None) -> ContainerExit | None: ...

    def stop(self, grace_s: float) -> None: ...

    def read_logs(self, offset: int) -> bytes: ...

    def remove(self) -> None: ...


class ContainerBackend(Protocol):
    def has_image(self, image: str) -> bool: ...

    def run(self, pod: Obj, container: Obj, env: Mapping[str, str]) -> ContainerHandle: ...


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class _LocalProcess:
    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        workdir: Path,
        memory_limit: int | None = None,
    ) -> None:
        self._log_path = workdir / "container.log"
        with self._log_path.open("wb") as log:
            self._proc = subprocess.Popen(
                list(argv),
                env=dict(env),
                cwd=workdir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.container_id = f"local://{self._proc.pid}"
        self.started_at = now_rfc3339()
        self._exit: ContainerExit | None = None
        self._lock = threading.Lock()
        self._oom_killed = False
        if memory_limit is not None:
            threading.Thread(target=self._watch_memory, args=(memory_limit,), daemon=True).start()

    def _watch_memory(self, limit: int) -> None:
        """The OOM killer's stand-in: SIGKILL once resident memory passes the limit."""
        while self._proc.poll() is None:
            if _rss_bytes(self._proc.pid) > limit:
                self._oom_killed = True
                self._signal(signal.SIGKILL)
                return
            time.sleep(0.02)

    def wait(self, timeout_s: float | None) -> ContainerExit | None:
        try:
            code = self._proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None
        with self._lock:
            if self._exit is None:
                # A process killed by signal N exits 128+N inside a container.
                status = code if code >= 0 else 128 - code
                self._exit = ContainerExit(status, self._oom_killed, self.started_at, now_rfc3339())
            return self._exit

    def stop(self, grace_s: float) -> None:
        if self._proc.poll() is not None:
            return
        self._signal(signal.SIGTERM)
        if self.wait(grace_s) is None:
            self._signal(signal.SIGKILL)
            self.wait(None)

    def _signal(self, signum: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._proc.pid, signum)

    def read_logs(self, offset: int) -> bytes:
        with self._log_path.open("rb") as log:
            log.seek(offset)
            return log.read()

    def remove(self) -> None:
        self.stop(0)
        self._log_path.unlink(missing_ok=True)
        self._log_path.parent.rmdir()


def memory_limit_bytes(container: Obj) -> int | None:
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    return None if limit is None else int(parse_quantity(limit))


class LocalProcessBackend:
    """Runs containers as local processes. With ``images``, only those are present and
    any other cannot be pulled (as from a registry that does not have it); without it,
    every image counts as present."""

    def __init__(
        self,
        entrypoints: Mapping[str, Sequence[str]] | None = None,
        base_env: Mapping[str, str] | None = None,
        *,
        enforce_memory: bool = False,
        images: Iterable[str] | None = None,
    ) -> None:
        self.entrypoints = dict(entrypoints or {})
        self.base_env = dict(base_env if base_env is not None else os.environ)
        self.enforce_memory = enforce_memory
        self.images = None if images is None else frozenset(images)

    def has_image(self, image: str) -> bool:
        return self.images is None or image in self.images

    def _limit(self, container: Obj) -> int | None:
        return memory_limit_bytes(container) if self.enforce_memory else None

    def run(self, pod: Obj, container: Obj, env: Mapping[str, str]) -> ContainerHandle:
        argv = list(container.get("command") or self.entrypoints.get(container["image"], []))
        argv += list(container.get("args") or [])
        if not argv:
            raise ContainerStartError(
                "RunContainerError", f'no command specified for image "{container["image"]}"'
            )
        workdir = Path(tempfile.mkdtemp(prefix=f"kubelet-{pod['metadata']['name']}-"))
        try:
            return _LocalProcess(argv, {**self.base_env, **env}, workdir, self._limit(container))
        except OSError as exc:
            workdir.rmdir()
            raise ContainerStartError(
                "StartError", f"failed to create containerd task: exec: {argv[0]!r}: {exc}"
            ) from exc
