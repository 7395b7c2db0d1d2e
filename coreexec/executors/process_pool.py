"""A pool of worker processes that live for a run and are reused from step to step.

Each worker has its own duplex pipe to the coordinator. A pipe per worker, rather than
one shared queue, matters when a worker is killed: a shared ``multiprocessing.Queue``
is guarded by a lock that a process killed while writing never releases (every other
writer then blocks for ever) and its half-written message corrupts the stream for
everyone. A dead worker's pipe is simply dropped.

The coordinator waits on every pipe, every process sentinel and a wake-up file
descriptor at once (:meth:`ProcessPool.poll`), so a message, a death or a wake-up ends
the wait immediately; nothing polls on a timer.

Workers are started by ``forkserver`` (a clean single-threaded server process that
imports the preload modules once and forks a worker in milliseconds) or ``spawn`` (a
fresh interpreter per worker). ``fork`` is not offered: forking a coordinator that runs
threads (the CLI, Redis wake-ups, user listeners) can deadlock the child.

What runs inside a worker process before the pool's target (its end of the pipe, its
signal handling) is in :mod:`coreexec.executors.pool_worker`.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import StrEnum
from multiprocessing import connection as mp_connection
from multiprocessing import spawn
from multiprocessing.connection import Connection
from multiprocessing.context import ForkServerContext, SpawnContext
from multiprocessing.process import BaseProcess
from typing import Any

from coreexec.errors import LauncherError
from coreexec.executors.pool_worker import WorkerTarget, bootstrap_worker

logger = logging.getLogger(__name__)

MAX_MESSAGES_PER_POLL = 256
"""Messages read from one worker per poll, so a chatty worker cannot starve the others."""


class StartMethod(StrEnum):
    """How worker processes are created."""

    FORKSERVER = "forkserver"
    SPAWN = "spawn"


@dataclass(frozen=True)
class PoolSpec:
    """How to start the workers of a pool."""

    start_method: StartMethod = StartMethod.FORKSERVER
    preload_modules: tuple[str, ...] = ()
    """Imported once by the fork server, so forked workers start with them loaded.

    The fork server is shared by the whole coordinating process and keeps the list it
    was first started with.
    """


_MAIN_KEYS = ("init_main_from_name", "init_main_from_path")
_prep_lock = threading.Lock()


@contextlib.contextmanager
def _without_main_module() -> Iterator[None]:
    """Start processes (from this thread) without re-running ``__main__`` in them.

    multiprocessing makes every new process import the parent's main script as
    ``__mp_main__`` (the CLI's entry point, pytest, the user's script). Workers load jobs
    by reference and never need it: skipping it saves milliseconds per worker and keeps a
    script that starts runs at import time from starting them again in every worker.
    Other threads starting processes meanwhile are not affected.
    """
    me = threading.get_ident()
    with _prep_lock:
        original = spawn.get_preparation_data

        def preparation_data(name: str) -> dict[str, Any]:
            data: dict[str, Any] = original(name)
            if threading.get_ident() == me:
                for key in _MAIN_KEYS:
                    data.pop(key, None)
            return data

        spawn.get_preparation_data = preparation_data
        try:
            yield
        finally:
            spawn.get_preparation_data = original


class WorkerHandle:
    """One worker process as the pool's owner sees it.

    ``task`` is free for the owner (what the worker is doing); the pool only reads it to
    tell busy from idle workers when closing.
    """

    def __init__(self, number: int, process: BaseProcess, conn: Connection) -> None:
        self.number = number
        self.process = process
        self.conn: Connection | None = conn
        self.pid: int | None = process.pid
        self.ready = False
        self.task: Any = None
        self.stopping = False
        self.kill_at: float | None = None
        self.exitcode: int | None = None

    @property
    def name(self) -> str:
        return f"worker {self.number} (pid {self.pid})"

    def __repr__(self) -> str:
        return f"WorkerHandle({self.name}, task={self.task!r})"


@dataclass(frozen=True)
class WorkerMessage:
    """A message a worker sent."""

    worker: WorkerHandle
    body: Any


@dataclass(frozen=True)
class WorkerExited:
    """A worker process ended; every message it sent came before this."""

    worker: WorkerHandle
    exitcode: int | None

    @property
    def description(self) -> str:
        return describe_exit(self.exitcode)


PoolItem = WorkerMessage | WorkerExited


def describe_exit(exitcode: int | None) -> str:
    """``killed by SIGKILL`` / ``exited with code 3``, for failure messages."""
    if exitcode is None:
        return "ended for an unknown reason"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the kernel's out-of-memory killer also sends this)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with code {exitcode}"


class ProcessPool:
    """Worker processes running ``target(channel, payload)``, one pipe each."""

    def __init__(
        self, target: WorkerTarget, payload: Any, *, spec: PoolSpec, name: str = "coreexec"
    ) -> None:
        self._target = target
        self._payload = payload
        self._spec = spec
        self._name = name
        self._context: ForkServerContext | SpawnContext
        if spec.start_method is StartMethod.FORKSERVER:
            self._context = multiprocessing.get_context("forkserver")
            # Only takes effect when this process starts its fork server (first use).
            self._context.set_forkserver_preload(list(spec.preload_modules))
        else:
            self._context = multiprocessing.get_context("spawn")
        self._workers: list[WorkerHandle] = []
        self._started = 0
        self._closed = False

    @property
    def workers(self) -> tuple[WorkerHandle, ...]:
        """Workers whose process has not been seen to end."""
        return tuple(self._workers)

    def start_worker(self) -> WorkerHandle:
        """Start one more worker; returns at once (it reports readiness itself)."""
        if self._closed:
            raise LauncherError("the worker pool is closed; no worker can be started")
        parent_end, child_end = self._context.Pipe(duplex=True)
        self._started += 1
        process = self._context.Process(
            target=bootstrap_worker,
            args=(self._target, child_end, self._payload),
            name=f"{self._name}-worker-{self._started}",
            daemon=True,
        )
        try:
            with _without_main_module():
                process.start()
        except Exception as exc:
            parent_end.close()
            raise LauncherError(
                f"could not start a worker process ({self._spec.start_method.value}): {exc!r}"
            ) from exc
        finally:
            # The child holds its own copy now; ours must go so a dead child reads as EOF.
            child_end.close()
        worker = WorkerHandle(self._started, process, parent_end)
        self._workers.append(worker)
        return worker

    def send(self, worker: WorkerHandle, body: Any) -> bool:
        """Send to a worker; False when its pipe is broken (it is dying or dead)."""
        if worker.conn is None:
            return False
        try:
            worker.conn.send(body)
        except (OSError, ValueError):
            self._drop_conn(worker)
            return False
        return True

    def poll(self, timeout_s: float | None, wake_fds: Sequence[int] = ()) -> list[PoolItem]:
        """Wait until a worker sends, a worker ends, a wake fd is readable or ``timeout_s``.

        Returns what happened in order; messages of a worker that ended come before its
        :class:`WorkerExited`. Workers asked to stop that outlive their grace are killed.
        """
        deadlines = [w.kill_at for w in self._workers if w.kill_at is not None]
        if deadlines:
            until_kill = max(0.0, min(deadlines) - time.monotonic())
            timeout_s = until_kill if timeout_s is None else min(timeout_s, until_kill)
        waitables: list[Any] = list(wake_fds)
        for worker in self._workers:
            if worker.conn is not None:
                waitables.append(worker.conn)
            waitables.append(worker.process.sentinel)
        ready = set(mp_connection.wait(waitables, timeout_s))
        items: list[PoolItem] = []
        for worker in list(self._workers):
            if worker.conn is not None and worker.conn in ready:
                items.extend(self._read(worker))
            if worker.process.sentinel in ready:
                items.extend(self._reap(worker))
        self._kill_overdue()
        return items

    def stop(self, worker: WorkerHandle, grace_s: float) -> None:
        """Ask a worker to stop (SIGTERM); it is killed if still alive after ``grace_s``."""
        if worker.stopping or worker not in self._workers:
            return
        worker.stopping = True
        worker.kill_at = time.monotonic() + grace_s
        with contextlib.suppress(OSError, ValueError, AttributeError):
            worker.process.terminate()

    def kill(self, worker: WorkerHandle) -> None:
        """Kill a worker now (SIGKILL); its end is reported by the next :meth:`poll`."""
        worker.stopping = True
        with contextlib.suppress(OSError, ValueError, AttributeError):
            worker.process.kill()

    def close(self, *, stop_message: Any, grace_s: float) -> None:
        """End every worker and wait for each process to be gone.

        Idle workers get ``stop_message``; busy ones (``task`` set) SIGTERM. Whatever is
        still alive after ``grace_s`` is killed. Never raises.
        """
        if self._closed:
            return
        self._closed = True
        for worker in self._workers:
            if worker.task is None and not worker.stopping:
                self.send(worker, stop_message)
            else:
                self.stop(worker, grace_s)
            self._drop_conn(worker)
        deadline = time.monotonic() + grace_s
        for worker in self._workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
        for worker in self._workers:
            if worker.process.exitcode is None:
                logger.warning("%s did not stop within %.1fs; killing it", worker.name, grace_s)
                self.kill(worker)
        for worker in self._workers:
            self._finish(worker, join_timeout_s=10.0)
        self._workers.clear()

    # -- internals --------------------------------------------------------------------

    def _read(self, worker: WorkerHandle) -> list[PoolItem]:
        items: list[PoolItem] = []
        conn = worker.conn
        while conn is not None and len(items) < MAX_MESSAGES_PER_POLL:
            try:
                if not conn.poll():
                    break
                body = conn.recv()
            except (EOFError, OSError):
                self._drop_conn(worker)
                break
            except Exception as exc:
                # Half a message (a worker killed mid-write) or garbage: this worker's
                # pipe is no longer trustworthy; its death is reported by the sentinel.
                logger.warning("unreadable message from %s (%r); stopping it", worker.name, exc)
                self._drop_conn(worker)
                self.kill(worker)
                break
            items.append(WorkerMessage(worker, body))
        return items

    def _reap(self, worker: WorkerHandle) -> list[PoolItem]:
        items = self._read_all(worker)
        self._finish(worker, join_timeout_s=10.0)
        self._workers.remove(worker)
        items.append(WorkerExited(worker, worker.exitcode))
        return items

    def _read_all(self, worker: WorkerHandle) -> list[PoolItem]:
        items: list[PoolItem] = []
        while worker.conn is not None:
            batch = self._read(worker)
            if not batch:
                break
            items.extend(batch)
        self._drop_conn(worker)
        return items

    def _finish(self, worker: WorkerHandle, *, join_timeout_s: float) -> None:
        worker.process.join(join_timeout_s)
        worker.exitcode = worker.process.exitcode
        self._drop_conn(worker)
        if worker.exitcode is not None:
            with contextlib.suppress(ValueError):
                worker.process.close()

    def _kill_overdue(self) -> None:
        now = time.monotonic()
        for worker in self._workers:
            if worker.kill_at is not None and worker.kill_at <= now:
                logger.warning("%s did not stop after SIGTERM; killing it", worker.name)
                worker.kill_at = None
                self.kill(worker)

    @staticmethod
    def _drop_conn(worker: WorkerHandle) -> None:
        if worker.conn is not None:
            with contextlib.suppress(OSError):
                worker.conn.close()
            worker.conn = None
