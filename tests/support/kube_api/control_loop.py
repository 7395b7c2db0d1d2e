"""The loop every controller of the test API server runs: reconcile, then sleep until the
store changes or the next timer falls due (at most a second)."""

from __future__ import annotations

import threading
import time
from typing import Self

from tests.support.kube_api.cluster_api import ClusterApi


class ControlLoop:
    """A reconcile loop on a daemon thread; subclasses give :meth:`reconcile`."""

    name = "controller"

    def __init__(self, api: ClusterApi) -> None:
        self.api = api
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)

    def reconcile(self) -> float | None:
        """One pass; the earliest time a timer of this controller falls due, if any."""
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.api.store.end_watches()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        store = self.api.store
        while not self._stop.is_set():
            seen = store.resource_version
            next_due = self.reconcile()
            wait_s = 1.0 if next_due is None else max(0.01, min(1.0, next_due - time.time()))
            store.wait_any(seen, wait_s)
