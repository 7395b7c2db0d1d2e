"""Counting how many holders of a limited resource overlap, with the limit reached by
construction: the first ``limit`` holders wait for each other while they hold it.

A limiter that lets ``limit`` in at once passes that barrier whatever the threads'
timing; one that serves them one at a time leaves the first waiting until the barrier
breaks (``threading.BrokenBarrierError``), so ``peak == limit`` is a check that can fail.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class Overlap:
    """``with overlap.holding():`` around the time a holder holds the resource."""

    def __init__(self, limit: int, timeout_s: float) -> None:
        self.limit = limit
        self.peak = 0
        self._running = 0
        self._entered = 0
        self._lock = threading.Lock()
        self._first_in = threading.Barrier(limit, timeout=timeout_s)

    @contextmanager
    def holding(self) -> Iterator[None]:
        with self._lock:
            self._running += 1
            self.peak = max(self.peak, self._running)
            self._entered += 1
            first = self._entered <= self.limit
        try:
            if first:
                self._first_in.wait()
            yield
        finally:
            with self._lock:
                self._running -= 1
