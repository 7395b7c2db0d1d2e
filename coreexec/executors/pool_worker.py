"""The worker's side of a :class:`~coreexec.executors.process_pool.ProcessPool`.

Every pool worker process starts in :func:`bootstrap_worker`, which ties the worker's
life to its parent, turns SIGTERM into ``KeyboardInterrupt`` at a safe point and hands
the pool's target a :class:`WorkerChannel` (the worker's end of its pipe).
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from types import FrameType
from typing import Any

logger = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


class WorkerChannel:
    """A worker's end of its pipe.

    SIGTERM (how the coordinator stops a running step) raises ``KeyboardInterrupt`` in
    the worker's main thread, but never in the middle of a send, so the coordinator
    never reads half a message from a worker it asked to stop.
    """

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._lock = threading.Lock()
        self._main = threading.main_thread().ident
        self._main_sending = False
        self._stop_pending = False

    def recv(self) -> Any:
        """The next message from the coordinator; None once the coordinator is gone."""
        try:
            return self._conn.recv()
        except (EOFError, OSError):
            return None

    def send(self, body: Any) -> None:
        """Send a message; safe from any thread (steps may log from their own threads)."""
        in_main = threading.get_ident() == self._main
        with self._lock:
            if in_main:
                self._main_sending = True
            try:
                self._conn.send(body)
            finally:
                if in_main:
                    self._main_sending = False
        if in_main and self._stop_pending:
            self._stop_pending = False
            raise KeyboardInterrupt

    def on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self._main_sending:
            self._stop_pending = True
            return
        raise KeyboardInterrupt


WorkerTarget = Callable[[WorkerChannel, Any], None]
"""A worker's main function; module-level in an importable module (not ``__main__``,
which workers do not import), so a new process can import it by name."""


def _die_with_parent() -> None:
    # Linux only: the kernel kills this worker when its parent (the fork server, which
    # itself exits with the coordinator) dies, so a coordinator killed with SIGKILL
    # leaves no worker running a step behind.
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return


def bootstrap_worker(target: WorkerTarget, conn: Connection, payload: Any) -> None:
    """Entry point of every worker process."""
    _die_with_parent()
    # Ctrl-C in a terminal reaches the whole process group: the coordinator turns it into
    # a cancellation and stops the workers itself, with SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    channel = WorkerChannel(conn)
    signal.signal(signal.SIGTERM, channel.on_sigterm)
    code = 0
    try:
        target(channel, payload)
    except (KeyboardInterrupt, BrokenPipeError, ConnectionResetError, EOFError):
        code = 0  # stopped, or the coordinator is gone: nothing to report to anyone
    except BaseException:
        logger.exception("worker process %d failed", os.getpid())
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    # Skip interpreter teardown (hundreds of ms for a spawned worker): nothing is left
    # to flush, and the coordinator is waiting for this process to be gone.
    os._exit(code)
