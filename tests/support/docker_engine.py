"""A Docker engine for tests: ``dockerd`` started, shared and stopped by pid.

Tests need a real engine, and several checkouts on one machine may run their tests at
the same time. So there is one *shared* engine per machine, on a well-known socket with
a persistent data root (images built once stay cached between runs):

- :func:`shared_engine` takes a lock, starts ``dockerd`` if nothing answers on the shared
  socket, and registers the calling process as a user of it. On exit it unregisters and,
  if no live user is left and a test session started it, stops it by its pid. An engine
  started by ``scripts/docker_engine.sh start`` is never stopped by tests.
- :class:`DockerdProcess` is one ``dockerd`` on its own socket, data root, exec root and
  pidfile (overlay2 or vfs storage, no iptables, no bridge: containers use the host network or
  none), stopped by pid; tests of the engine itself start private ones.

Paths default to ``/run/coreexec-docker`` (socket, exec root, pidfile, users) and
``/var/cache/coreexec/docker`` (data root); ``COREEXEC_DOCKER_STATE_DIR`` and
``COREEXEC_CACHE_DIR`` move them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.support.processes import pid_alive
from tests.support.waiting import holds_within

STATE_DIR = Path(os.environ.get("COREEXEC_DOCKER_STATE_DIR", "/run/coreexec-docker"))
CACHE_DIR = Path(os.environ.get("COREEXEC_CACHE_DIR", "/var/cache/coreexec"))
DOCKERD_FLAGS = ("--iptables=false", "--bridge=none")
# overlay2 first where the kernel and the data root's filesystem allow it: a container
# of the step image starts in ~0.3 s on it against ~10 s on vfs (which copies the whole
# image per container). vfs works everywhere. COREEXEC_DOCKER_STORAGE_DRIVER picks one.
STORAGE_DRIVERS = ("overlay2", "vfs")
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
# Who started the shared engine: tests stop only an engine a test session started.
_STARTED_BY_TESTS = "tests"
_STARTED_BY_SCRIPT = "script"
# A shared dockerd may outlive the session that started it and be stopped by another;
# its Popen is kept here so it is never collected (and warned about) while running.
_CHILDREN: list[subprocess.Popen[bytes]] = []


class EngineUnavailableError(RuntimeError):
    """No Docker engine can run here; the message says why and what to install."""


@dataclass(frozen=True)
class EnginePaths:
    """Where one ``dockerd`` keeps its socket, state and images."""

    socket: Path
    data_root: Path
    exec_root: Path
    pidfile: Path
    log: Path

    @classmethod
    def under(cls, state_dir: Path, data_root: Path) -> EnginePaths:
        return cls(
            socket=state_dir / "docker.sock",
            data_root=data_root,
            exec_root=state_dir / "exec",
            pidfile=state_dir / "docker.pid",
            log=state_dir / "dockerd.log",
        )

    @property
    def base_url(self) -> str:
        return f"unix://{self.socket}"


SHARED_PATHS = EnginePaths.under(STATE_DIR, CACHE_DIR / "docker")


def unavailable_reason() -> str | None:
    """Why no engine can be started here, or None if one might."""
    if shutil.which("dockerd") is None:
        return "dockerd is not installed; run `bash scripts/setup.sh` (Debian's docker.io)"
    if os.geteuid() != 0:
        return "dockerd needs root; run the tests as root"
    return None


def answers(base_url: str, timeout_s: float = 2.0) -> bool:
    """True if a Docker engine answers ``GET /_ping`` on the unix socket of ``base_url``."""
    path = base_url.removeprefix("unix://")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(timeout_s)
            conn.connect(path)
            conn.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
    except OSError:
        return False
    return reply.startswith(b"HTTP/1.") and b" 200 " in reply.split(b"\r\n", 1)[0]


def read_pid(pidfile: Path) -> int | None:
    """The pid in ``pidfile`` if that process is alive."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


class DockerdProcess:
    """One ``dockerd`` on its own socket, data root, exec root and pidfile.

    It runs in its own session (its containerd and shims with it) so it outlives the
    process that started it when the engine is shared; :meth:`stop` signals its pid and
    waits until it and every process of its group are gone.
    """

    def __init__(self, paths: EnginePaths, storage_driver: str = "vfs") -> None:
        self.paths = paths
        self.storage_driver = storage_driver
        self.pid: int | None = None

    def argv(self) -> list[str]:
        return [
            "dockerd",
            f"--storage-driver={self.storage_driver}",
            *DOCKERD_FLAGS,
            f"--host={self.paths.base_url}",
            f"--data-root={self.paths.data_root}",
            f"--exec-root={self.paths.exec_root}",
            f"--pidfile={self.paths.pidfile}",
        ]

    def start(self, ready_timeout_s: float = READY_TIMEOUT_S) -> Self:
        """Start dockerd and wait until it answers; raise EngineUnavailableError if not."""
        reason = unavailable_reason()
        if reason is not None:
            raise EngineUnavailableError(reason)
        for directory in (self.paths.data_root, self.paths.exec_root, self.paths.log.parent):
            directory.mkdir(parents=True, exist_ok=True)
        with self.paths.log.open("ab") as log:
            popen = subprocess.Popen(
                self.argv(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _CHILDREN.append(popen)
        self.pid = popen.pid
        ready = holds_within(
            lambda: popen.poll() is not None or answers(self.paths.base_url),
            ready_timeout_s,
            interval_s=0.2,
        )
        if not ready or popen.poll() is not None:
            self.stop()
            raise EngineUnavailableError(
                f"dockerd (pid {popen.pid}, {self.storage_driver}) did not answer on "
                f"{self.paths.socket} within {ready_timeout_s:g}s (exit code "
                f"{popen.poll()}); last lines of {self.paths.log}:\n{_tail(self.paths.log)}"
            )
        return self

    @classmethod
    def attach(cls, paths: EnginePaths) -> DockerdProcess | None:
        """The dockerd already running for ``paths`` (by its pidfile), if any."""
        pid = read_pid(paths.pidfile)
        if pid is None:
            return None
        process = cls(paths)
        process.pid = pid
        return process

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM the pid (SIGKILL after ``timeout_s``), then its leftover descendants.

        dockerd stops its containers and its containerd on SIGTERM; a containerd that
        outlives it (after a SIGKILL) is stopped by the pid recorded before.
        """
        if self.pid is None:
            return
        pid = self.pid
        family = descendants(pid)
        _signal(pid, signal.SIGTERM)
        if not _wait_gone(pid, timeout_s):
            _signal(pid, signal.SIGKILL)
            if not _wait_gone(pid, 10.0):
                raise RuntimeError(f"dockerd pid {pid} survived SIGKILL")
        for signum in (signal.SIGTERM, signal.SIGKILL):
            left = [child for child in family if pid_alive(child)]
            for child in left:
                _signal(child, signum)
            if all(_wait_gone(child, 10.0) for child in left):
                break
        else:
            raise RuntimeError(f"processes {[c for c in family if pid_alive(c)]} of dockerd "
                               f"{pid} survived SIGKILL")  # fmt: skip
        unmount_under(self.paths.exec_root)

    def __enter__(self) -> Self:
        if self.pid is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def mounts_under(directory: Path) -> list[Path]:
    """Mount points at or below ``directory``, deepest first (from /proc/mounts)."""
    root = directory.resolve()
    found = []
    for line in Path("/proc/mounts").read_text().splitlines():
        # Octal escapes (\040 for a space) as the kernel writes them.
        target = Path(line.split()[1].encode().decode("unicode_escape"))
        if target == root or root in target.parents:
            found.append(target)
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def unmount_under(directory: Path) -> None:
    """Unmount what dockerd left mounted in its exec root (the host network namespace
    it bind-mounts at netns/default once a host-network container ran)."""
    for target in mounts_under(directory):
        subprocess.run(["umount", str(target)], capture_output=True, check=False)


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, their children, ...), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat[stat.rindex(")") + 2 :].split()[1])
            children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if pid_alive(child):
                found.append(child)
                todo.append(child)
    return found


def _wait_gone(pid: int, timeout_s: float) -> bool:
    def gone() -> bool:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        return not pid_alive(pid)

    return holds_within(gone, timeout_s, interval_s=0.05)


# ---------------------------------------------------------------------- the shared engine


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _users_dir(paths: EnginePaths) -> Path:
    return paths.socket.parent / "users"


def _live_users(paths: EnginePaths) -> list[int]:
    users = []
    for entry in _users_dir(paths).glob("*"):
        pid = entry.name.partition("-")[0]
        if pid.isdigit() and pid_alive(int(pid)):
            users.append(int(pid))
        else:
            entry.unlink(missing_ok=True)
    return users


def _starter_file(paths: EnginePaths) -> Path:
    return paths.socket.parent / "started-by"


def _lock_file(paths: EnginePaths) -> Path:
    return paths.socket.parent.with_name(paths.socket.parent.name + ".lock")


def start_shared(paths: EnginePaths = SHARED_PATHS) -> int:
    """Start the shared engine unless it answers already; return its pid.

    From then on test sessions leave it running, even one a test session had started.
    """
    with locked(_lock_file(paths)):
        pid = _ensure_running(paths, _STARTED_BY_SCRIPT)
        _starter_file(paths).write_text(_STARTED_BY_SCRIPT)
        return pid


def _ensure_running(paths: EnginePaths, started_by: str) -> int:
    running = DockerdProcess.attach(paths)
    if running is not None and answers(paths.base_url):
        assert running.pid is not None
        return running.pid
    if running is not None:
        # A dockerd that holds the pidfile but does not answer would keep the data root
        # locked; it is ours (the pidfile is), so stop it before starting afresh.
        running.stop()
    paths.socket.parent.mkdir(parents=True, exist_ok=True)
    process = start_dockerd(paths)
    _starter_file(paths).write_text(started_by)
    assert process.pid is not None
    return process.pid


def storage_drivers() -> tuple[str, ...]:
    """The storage drivers to try, in order."""
    chosen = os.environ.get("COREEXEC_DOCKER_STORAGE_DRIVER", "").strip()
    return (chosen,) if chosen else STORAGE_DRIVERS


def start_dockerd(paths: EnginePaths, ready_timeout_s: float = READY_TIMEOUT_S) -> DockerdProcess:
    """A ready dockerd on the first storage driver of :func:`storage_drivers` that works.

    One data root serves every driver (Docker keeps images per driver inside it).
    """
    failures = []
    for driver in storage_drivers():
        try:
            return DockerdProcess(paths, driver).start(ready_timeout_s)
        except EngineUnavailableError as exc:
            failures.append(str(exc))
    raise EngineUnavailableError("\n\n".join(failures))


def stop_shared(paths: EnginePaths = SHARED_PATHS) -> str:
    """Stop the shared engine by its pid, unless test sessions use it.

    Then it is handed to them: the last one to leave stops it. Returns what happened.
    """
    with locked(_lock_file(paths)):
        running = DockerdProcess.attach(paths)
        if running is None:
            return f"no dockerd was running for {paths.socket}"
        users = _live_users(paths)
        if users:
            _starter_file(paths).write_text(_STARTED_BY_TESTS)
            return (
                f"dockerd pid {running.pid} is in use by test sessions {users}: the last stops it"
            )
        running.stop()
        _starter_file(paths).unlink(missing_ok=True)
        return f"stopped dockerd pid {running.pid}"


@contextlib.contextmanager
def shared_engine(paths: EnginePaths = SHARED_PATHS) -> Iterator[str]:
    """Use the machine's shared engine for the duration; yields its base URL.

    Starts it if needed (raising EngineUnavailableError if it cannot run here). When
    the last user leaves, an engine a test session started is stopped by its pid.
    """
    reason = unavailable_reason()
    if reason is not None:
        raise EngineUnavailableError(reason)
    # One entry per use, named by pid: a crashed user's entry is dropped when seen dead.
    me = _users_dir(paths) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    with locked(_lock_file(paths)):
        _ensure_running(paths, _STARTED_BY_TESTS)
        me.parent.mkdir(parents=True, exist_ok=True)
        me.touch()
    try:
        yield paths.base_url
    finally:
        with locked(_lock_file(paths)):
            me.unlink(missing_ok=True)
            starter = _starter_file(paths)
            started_by = starter.read_text().strip() if starter.exists() else ""
            if not _live_users(paths) and started_by == _STARTED_BY_TESTS:
                running = DockerdProcess.attach(paths)
                if running is not None:
                    running.stop()
                starter.unlink(missing_ok=True)


# ---------------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    """``start`` | ``stop`` | ``env`` for the shared engine (scripts/docker_engine.sh)."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="bash scripts/docker_engine.sh", description="The machine's shared Docker engine."
    )
    parser.add_argument("action", choices=["start", "stop", "env"])
    action = parser.parse_args(argv).action
    if action == "start":
        try:
            pid = start_shared()
        except EngineUnavailableError as exc:
            print(f"docker_engine: {exc}", file=sys.stderr)
            return 1
        print(f"dockerd pid {pid} answers on {SHARED_PATHS.socket}")
    elif action == "stop":
        print(stop_shared())
    else:
        print(f"export DOCKER_HOST={SHARED_PATHS.base_url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
