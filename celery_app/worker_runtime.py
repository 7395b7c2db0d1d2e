"""The per-process attempt runtime of a Celery worker, built from its settings.

What a runtime holds is Celery-free and lives in :mod:`coreexec.attempt_runtime`; this
module only keeps one per worker process (a prefork child makes its own after the fork)
and per settings.
"""

from __future__ import annotations

import os
import threading

from celery_app.settings import CelerySettings
from coreexec.attempt_runtime import AttemptRuntime


class WorkerRuntime(AttemptRuntime):
    """An :class:`AttemptRuntime` that remembers the settings it was made from."""

    def __init__(self, settings: CelerySettings) -> None:
        super().__init__(settings.events_redis_url, home=settings.home)
        self.settings = settings


_runtime: WorkerRuntime | None = None
_runtime_lock = threading.Lock()


def runtime_for(settings: CelerySettings) -> WorkerRuntime:
    """This process's runtime (a new one after a fork or when the settings changed)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None or _runtime.pid != os.getpid() or _runtime.settings is not settings:
            _runtime = WorkerRuntime(settings)
        return _runtime
