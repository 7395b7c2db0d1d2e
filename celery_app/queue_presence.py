"""Which queues have live consumers: how a coordinator tells a busy queue from a dead one.

Every worker announces, from its main process, each queue it consumes: a key per
(queue, worker) with a TTL it refreshes every ``PRESENCE_REFRESH_S``, plus the worker's
name in the queue's member set (see :mod:`coreexec.transport.keys`). Redis expires the
keys, so a worker killed with -9 disappears after ``PRESENCE_TTL_S`` without anyone's
clock being involved.

The coordinator asks only about attempts that have waited ``queued_timeout_s`` without
starting: if their queue has a live consumer the queue is merely busy and they wait on;
if it has none, they fail with an error naming the queue.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence

from coreexec.errors import CoreExecError
from coreexec.redis_clients import Redis, RedisError, client_url, text, wrap_redis_error
from coreexec.transport import keys

log = logging.getLogger(__name__)

PRESENCE_REFRESH_S = 1.0
PRESENCE_TTL_S = 5


class QueuePresence:
    """Announcements of queue consumers on one Redis."""

    def __init__(self, client: Redis, *, url: str | None = None) -> None:
        self.client = client
        self._url = url or client_url(client)

    def _fail(self, exc: RedisError, what: str) -> CoreExecError:
        return wrap_redis_error(exc, url=self._url, what=what)

    def announce(self, worker: str, queues: Iterable[str], ttl_s: int = PRESENCE_TTL_S) -> None:
        """Say that ``worker`` consumes ``queues`` for the next ``ttl_s`` seconds."""
        names = list(queues)
        if not names:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in names:
                    pipe.sadd(keys.queue_consumers(queue), worker)
                    pipe.set(keys.queue_consumer(queue, worker), "1", ex=ttl_s)
                pipe.execute()
        except RedisError as exc:
            raise self._fail(exc, f"announce consumer {worker}") from exc

    def withdraw(self, worker: str, queues: Iterable[str]) -> None:
        """``worker`` stops consuming ``queues`` (a clean shutdown)."""
        names = list(queues)
        if not names:
            return
        try:
            with self.client.pipeline(transaction=False) as pipe:
                for queue in names:
                    pipe.srem(keys.queue_consumers(queue), worker)
                    pipe.delete(keys.queue_consumer(queue, worker))
                pipe.execute()
        except RedisError as exc:
            raise self._fail(exc, f"withdraw consumer {worker}") from exc

    def consumers(self, queue: str) -> list[str]:
        """Workers whose announcement for ``queue`` is live (stale members are pruned)."""
        try:
            members = sorted(text(m) for m in self.client.smembers(keys.queue_consumers(queue)))
            if not members:
                return []
            with self.client.pipeline(transaction=False) as pipe:
                for worker in members:
                    pipe.exists(keys.queue_consumer(queue, worker))
                alive = pipe.execute()
            dead = [w for w, ok in zip(members, alive, strict=True) if not ok]
            if dead:
                self.client.srem(keys.queue_consumers(queue), *dead)
        except RedisError as exc:
            raise self._fail(exc, f"list consumers of queue {queue}") from exc
        return [w for w, ok in zip(members, alive, strict=True) if ok]


class PresenceAnnouncer:
    """A daemon thread that keeps announcing a worker's queues until stopped."""

    def __init__(
        self,
        presence: QueuePresence,
        worker: str,
        queues: Callable[[], Sequence[str]],
        *,
        refresh_s: float = PRESENCE_REFRESH_S,
        ttl_s: int = PRESENCE_TTL_S,
    ) -> None:
        self.presence = presence
        self.worker = worker
        self._queues = queues
        self.refresh_s = refresh_s
        self.ttl_s = ttl_s
        self._stop = threading.Event()
        self._announced: set[str] = set()
        self._thread = threading.Thread(
            target=self._loop, name="coreexec-queue-presence", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def _announce_once(self) -> None:
        current = set(self._queues())
        gone = self._announced - current
        if gone:
            self.presence.withdraw(self.worker, gone)
        self.presence.announce(self.worker, current, self.ttl_s)
        self._announced = current

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._announce_once()
            except CoreExecError as exc:
                log.warning("announcing the queues of %s failed: %s", self.worker, exc)
            self._stop.wait(self.refresh_s)

    def stop(self) -> None:
        """Stop announcing and withdraw (a worker shutting down cleanly)."""
        self._stop.set()
        self._thread.join(timeout=self.refresh_s * 2)
        try:
            self.presence.withdraw(self.worker, self._announced)
        except CoreExecError as exc:
            log.warning("withdrawing the queues of %s failed: %s", self.worker, exc)
