"""A run handle: follow a submitted run from any process (status, events, wait, cancel)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator

from coreexec.errors import BrokerConnectionError, RunWaitTimeout
from coreexec.events import Event
from coreexec.execution.dispatcher import STREAMED_STORAGE_FLUSH_S
from coreexec.instance import Instance
from coreexec.redis_clients import RedisError, redis_client, wrap_redis_error
from coreexec.runs.cancel import CancelOutcome, request_cancel
from coreexec.runs.launcher import RunLauncher, terminator_for
from coreexec.storage.base import RunRecord, RunStatus
from coreexec.transport.coordinator_heartbeat import CoordinatorStatus, coordinator_status
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)

MAX_BLOCK_S = 2.0
"""Longest single blocking read while waiting: the storage is read again at least this
often, so a run whose coordinator cannot reach Redis is still seen to end."""


FOLLOW_SETTLE_S = STREAMED_STORAGE_FLUSH_S + 0.1
"""After a stream entry, the coordinator writes its events to storage within
``STREAMED_STORAGE_FLUSH_S``; a follower that found nothing new reads again after at
most this long."""


NO_REDIS_INTERVAL_S = 0.5
"""How often a handle without Redis reads the run storage (the only way it can learn)."""


class RunHandle:
    """A submitted (or any stored) run, seen from any process sharing its instance.

    ``redis_url`` is the Redis holding the run's event stream; without it, waiting
    falls back to reading the run storage every half second.
    """

    def __init__(
        self,
        run_id: str,
        instance: Instance,
        redis_url: str | None,
        launcher: RunLauncher | None = None,
    ) -> None:
        self.run_id = run_id
        self.instance = instance
        self.redis_url = redis_url
        self.launcher = launcher
        """The launcher that started the run (else the configured one is used to stop
        steps of a run whose coordinator died, see :meth:`cancel`)."""
        self._stream: RedisEventStream | None = None

    def __repr__(self) -> str:
        return f"RunHandle(run_id={self.run_id!r})"

    # -- reading the storage ----------------------------------------------------------

    def record(self) -> RunRecord:
        """The run as stored now."""
        return self.instance.storage.get_run(self.run_id)

    def status(self) -> RunStatus:
        """The run's status now."""
        return self.record().status

    def events(self) -> list[Event]:
        """Every event of the run stored so far, in order."""
        return [event for _, event in self.instance.storage.events(self.run_id)]

    def cancel(self) -> CancelOutcome:
        """Ask the run to stop: no more steps start, running steps are terminated (by
        its coordinator; if that died, through the run launcher)."""
        return request_cancel(
            self.instance,
            self.run_id,
            self.redis_url,
            find_terminator=lambda: terminator_for(self.launcher),
        )

    # -- waiting ----------------------------------------------------------------------

    def _events_stream(self) -> RedisEventStream | None:
        if self.redis_url is None:
            return None
        if self._stream is None:
            self._stream = RedisEventStream(
                redis_client(self.redis_url), self.run_id, url=self.redis_url
            )
        return self._stream

    def _block(self, cursor: str | None, timeout_s: float) -> tuple[str | None, bool]:
        """Wait up to ``timeout_s`` for something on the run's stream; (cursor, woke)."""
        stream = self._events_stream()
        if stream is None or cursor is None:
            time.sleep(min(timeout_s, NO_REDIS_INTERVAL_S))
            return cursor, False
        try:
            entries = stream.read(cursor, block_ms=max(1, int(timeout_s * 1000)))
        except BrokerConnectionError as exc:
            # A Redis outage the run may well ride out: the run storage still says when
            # it ends, so look there until Redis answers again.
            log.warning("waiting for run %s without its event stream: %s", self.run_id, exc)
            time.sleep(min(timeout_s, NO_REDIS_INTERVAL_S))
            return cursor, False
        if not entries:
            return cursor, False
        return entries[-1].entry_id, True

    def _arm(self, cursor: str | None) -> tuple[str | None, bool]:
        """(cursor, newly armed): the stream position to block from, taken once.

        It is taken after a first look at the storage (a run that has ended needs no
        Redis) and followed by a second look before blocking: whatever is announced
        after the cursor was taken wakes the block, so no end can be missed.
        """
        if cursor is not None:
            return cursor, False
        try:
            stream = self._events_stream()
            if stream is None:
                return None, False
            return stream.last_id(), True
        except BrokerConnectionError as exc:
            # Redis is away: the run storage tells when the run ends (see _block).
            log.warning("waiting for run %s without its event stream: %s", self.run_id, exc)
            return None, False

    def _remaining_s(
        self, deadline: float | None, timeout: float | None, status: RunStatus
    ) -> float:
        """Seconds left before ``deadline``; raises RunWaitTimeout once none are."""
        if deadline is None:
            return MAX_BLOCK_S
        remaining_s = deadline - time.monotonic()
        if remaining_s <= 0:
            raise RunWaitTimeout(
                f"run {self.run_id} did not end within {timeout:g}s (it is {status}); "
                f"`coreexec runs watch {self.run_id}` follows it",
                run_id=self.run_id,
                status=status,
            )
        return remaining_s

    def wait(self, timeout: float | None = None) -> RunStatus:
        """Block until the run ends; returns SUCCESS, FAILURE or CANCELED.

        Raises :class:`RunWaitTimeout` (a ``TimeoutError``) naming the run when
        ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor: str | None = None
        while True:
            status = self.status()
            if status.is_finished:
                return status
            cursor, armed = self._arm(cursor)
            if armed:
                continue
            remaining_s = self._remaining_s(deadline, timeout, status)
            cursor, _ = self._block(cursor, min(remaining_s, MAX_BLOCK_S))

    def coordinator(self) -> CoordinatorStatus | None:
        """Whether a coordinator beats for this run now (None when no Redis is known)."""
        stream = self._events_stream()
        if stream is None:
            return None
        try:
            return coordinator_status(stream.client, self.run_id)
        except RedisError as exc:
            raise wrap_redis_error(
                exc, url=self.redis_url or "", what="read the coordinator heartbeat"
            ) from exc

    def follow(
        self,
        *,
        after: int = 0,
        timeout: float | None = None,
        on_idle: Callable[[RunStatus], None] | None = None,
    ) -> Iterator[Event]:
        """Yield the run's stored events as they are written, until the run has ended.

        ``after`` is a storage event id to start after (0: from the first event).
        ``on_idle(status)`` is called after a wait in which nothing happened (at most
        every couple of seconds); it may raise to stop following. Raises
        :class:`RunWaitTimeout` when ``timeout`` seconds pass first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        cursor: str | None = None
        last_id = after
        woke = False
        while True:
            finished = self.status()
            # Events are read after the status, so an ended run's last events are yielded.
            fresh = self.instance.storage.events(self.run_id, after=last_id)
            for storage_id, event in fresh:
                last_id = storage_id
                yield event
            if finished.is_finished:
                return
            cursor, armed = self._arm(cursor)
            if armed:
                continue
            remaining_s = self._remaining_s(deadline, timeout, finished)
            block_s = FOLLOW_SETTLE_S if woke and not fresh else MAX_BLOCK_S
            cursor, woke = self._block(cursor, min(remaining_s, block_s))
            if not woke and on_idle is not None:
                on_idle(finished)

    def close(self) -> None:
        """Drop the Redis connection (the handle reconnects if used again)."""
        if self._stream is not None:
            self._stream.client.close()
            self._stream = None
