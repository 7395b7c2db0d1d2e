"""A redis-server and celery workers for the bench, started before timing, stopped by pid.

Both are context managers, so :meth:`bench.harness.RunContext.resource` keeps them alive
for the whole bench run and stops them at its end, even when a cell failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import BenchError, SystemUnavailable

REDIS_SERVER = "redis-server"
REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    condition: Callable[[], bool], *, timeout_s: float, what: str, log_path: Path | None = None
) -> None:
    """Poll ``condition`` until it holds; a process start has no event to block on."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    tail = ""
    if log_path is not None and log_path.exists():
        tail = "\n" + "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
    raise BenchError(f"{what} not ready within {timeout_s} s{tail}")


def stop_process(process: subprocess.Popen[bytes], *, timeout_s: float = 20.0) -> None:
    """SIGTERM by pid, then SIGKILL to its process group if it does not exit in time."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        # The worker leads its own session (start_new_session), so its group id is its
        # pid: this reaches its pool children and nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=timeout_s)


@dataclass(frozen=True)
class RedisServer:
    """A running redis-server on a loopback port."""

    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def _redis_pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(*, timeout_s: float = 20.0) -> Iterator[RedisServer]:
    """Start a throwaway redis-server (no persistence) and stop it by pid afterwards."""
    binary = _which(REDIS_SERVER)
    with tempfile.TemporaryDirectory(prefix="bench-redis-") as directory:
        port = free_port()
        log_path = Path(directory) / "redis.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    directory,
                    "--daemonize",
                    "no",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            wait_until(
                lambda: process.poll() is None and _redis_pings(port),
                timeout_s=timeout_s,
                what=f"redis-server on port {port}",
                log_path=log_path,
            )
            yield RedisServer(port=port, pid=process.pid)
        finally:
            stop_process(process)


def _which(name: str) -> str:
    for directory in [*os.environ.get("PATH", "").split(os.pathsep), "/usr/bin", "/usr/sbin"]:
        candidate = Path(directory) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise SystemUnavailable(f"{name} not found on PATH (apt-get install redis-server)")


@dataclass(frozen=True)
class WorkerSpec:
    """One ``celery worker``: app, queues, concurrency, node name."""

    app: str
    queues: Sequence[str]
    concurrency: int
    hostname: str


_WORKER_FLAGS = (
    *("--loglevel", "WARNING", "--pool", "prefork"),
    *("--without-gossip", "--without-mingle", "--without-heartbeat"),
)


def _log_tails(directory: Path, lines: int = 15) -> str:
    return "\n".join(
        f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        for path in sorted(directory.glob("*.log"))
    )


@contextlib.contextmanager
def celery_workers(
    specs: Sequence[WorkerSpec], *, env: Mapping[str, str], ready: Callable[[], None]
) -> Iterator[list[int]]:
    """Start one ``celery worker`` per spec; ``ready()`` must return once all consume.

    Yields the worker pids. Workers are stopped by pid (warm shutdown) on exit.
    """
    processes: list[subprocess.Popen[bytes]] = []
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-celery-")))
        for spec in specs:
            command = [
                sys.executable, "-m", "celery", "-A", spec.app, "worker", *_WORKER_FLAGS,
                "--concurrency", str(spec.concurrency), "--queues", ",".join(spec.queues),
                "--hostname", spec.hostname,
            ]  # fmt: skip
            with open(directory / f"{spec.hostname.split('@')[0]}.log", "wb") as log:
                process = subprocess.Popen(
                    command,
                    cwd=REPO_ROOT,
                    env={**os.environ, **env},
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            processes.append(process)
            stack.callback(stop_process, process)
        try:
            ready()
        except Exception as error:
            # The logs go with the temporary directory: say what they held now.
            raise BenchError(
                f"celery workers not ready: {error}\n{_log_tails(directory)}"
            ) from error
        for process in processes:
            if process.poll() is not None:
                raise BenchError(
                    f"celery worker pid {process.pid} exited early\n{_log_tails(directory)}"
                )
        yield [process.pid for process in processes]
