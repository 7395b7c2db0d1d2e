"""Heartbeats of running step attempts, from one thread per process (a Celery worker
process, a Dask worker, the supervisor of a container).

While an attempt runs, a STEP_HEARTBEAT event (transient: it drives the coordinator and
is not kept in the run's history) goes to its run's stream every ``interval_s``. One
daemon thread serves every attempt of the process, so a step shorter than its interval
costs no heartbeat at all and starting a step starts no thread.
"""

from __future__ import annotations

import heapq
import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)


@dataclass(order=True)
class _Beat:
    due: float
    attempt_id: str = field(compare=False)
    interval_s: float = field(compare=False)
    stream: RedisEventStream = field(compare=False)
    step_key: str = field(compare=False)
    attempt: int = field(compare=False)


class Heartbeats:
    """Sends heartbeats for the attempts registered with :meth:`beating`."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[_Beat] = []
        self._live: set[str] = set()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def _ensure_thread(self) -> None:
        # A forked pool process inherits the object but not the thread.
        if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
            self._pid = os.getpid()
            self._cond = threading.Condition()
            self._heap = []
            self._live = set()
            self._thread = threading.Thread(
                target=self._loop, name="coreexec-heartbeats", daemon=True
            )
            self._thread.start()

    @contextmanager
    def beating(
        self,
        stream: RedisEventStream,
        *,
        step_key: str,
        attempt: int,
        attempt_id: str,
        interval_s: float,
    ) -> Iterator[None]:
        """Heartbeat for this attempt until the block exits."""
        self._ensure_thread()
        beat = _Beat(
            time.monotonic() + interval_s, attempt_id, interval_s, stream, step_key, attempt
        )
        with self._cond:
            self._live.add(attempt_id)
            heapq.heappush(self._heap, beat)
            self._cond.notify()
        try:
            yield
        finally:
            with self._cond:
                self._live.discard(attempt_id)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while True:
                    while self._heap and self._heap[0].attempt_id not in self._live:
                        heapq.heappop(self._heap)
                    if not self._heap:
                        self._cond.wait()
                        continue
                    wait_s = self._heap[0].due - time.monotonic()
                    if wait_s <= 0:
                        break
                    self._cond.wait(wait_s)
                beat = heapq.heappop(self._heap)
                beat.due = max(beat.due + beat.interval_s, time.monotonic())
                heapq.heappush(self._heap, beat)
            self._send(beat)

    def _send(self, beat: _Beat) -> None:
        try:
            beat.stream.publish(
                Event(
                    kind=EventKind.STEP_HEARTBEAT,
                    run_id=beat.stream.run_id,
                    timestamp=time.time(),
                    step_key=beat.step_key,
                    attempt=beat.attempt,
                    attempt_id=beat.attempt_id,
                    data={"pid": os.getpid()},
                )
            )
        except CoreExecError as exc:
            # The next beat tries again; the coordinator only fails the attempt when the
            # beats stay away for its whole heartbeat timeout.
            log.warning("heartbeat of attempt %s failed: %s", beat.attempt_id, exc)
