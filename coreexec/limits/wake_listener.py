"""Slot wake-ups from the Redis tag limiter, handed to a run's dispatcher.

A run waiting for a slot held by another run learns that the slot is free from an entry
in its wake-up stream (:meth:`LimiterKeys.wake_stream`); :class:`RedisWakeListener`
reads that stream in a thread and wakes the dispatcher.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from coreexec.errors import CoreExecError
from coreexec.limits.keys import LimiterKeys

if TYPE_CHECKING:
    from coreexec.limits.redis_limiter import RedisTagLimiter

logger = logging.getLogger(__name__)

WAKE_BLOCK_S = 5.0
"""Longest blocking read of the Redis wake-up stream (stop() ends it at once)."""


class RedisWakeListener:
    """Turns slot wake-ups sent to a Redis stream into dispatcher wake-ups.

    The dispatcher blocks on its workers' pipes and cannot block on Redis as well, so a
    thread does the blocking read of this run's wake-up stream: when a step of another
    run releases a slot this run waits for, the coordinator tries again at once.
    """

    def __init__(self, limiter: RedisTagLimiter, run_id: str, namespace: str) -> None:
        self.limiter = limiter
        self.wake_key = LimiterKeys(namespace).wake_stream(run_id)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, on_wake: Callable[[], None]) -> None:
        # Taken before any request can wait, so no wake-up is missed.
        cursor = self.limiter.wake_cursor(self.wake_key)
        self._thread = threading.Thread(
            target=self._listen,
            args=(cursor, on_wake),
            name=f"coreexec-wake-{self.wake_key.rpartition(':')[2][:8]}",
            daemon=True,
        )
        self._thread.start()

    def _listen(self, cursor: str, on_wake: Callable[[], None]) -> None:
        while not self._stop.is_set():
            try:
                newest = self.limiter.wait_for_wake(self.wake_key, cursor, WAKE_BLOCK_S)
            except CoreExecError as exc:
                if not self._stop.is_set():
                    logger.warning("slot wake-ups from %s failed: %s", self.wake_key, exc)
                    self._stop.wait(WAKE_BLOCK_S)
                continue
            if newest is not None and not self._stop.is_set():
                cursor = newest
                on_wake()

    def stop(self) -> None:
        """End the thread and delete the stream; never raises."""
        self._stop.set()
        client = self.limiter.client
        try:
            if self._thread is not None:
                client.xadd(self.wake_key, {"stop": "1"})  # ends the blocking read now
                self._thread.join(WAKE_BLOCK_S + 1.0)
            client.delete(self.wake_key)
        except Exception as exc:  # a Redis error must not mask how the run ended
            logger.warning("cleaning up wake-up stream %s failed: %s", self.wake_key, exc)
