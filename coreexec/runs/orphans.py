"""Runs whose coordinator died: seen as lost, then reaped.

A coordinator beats in Redis while it runs (:mod:`coreexec.transport.coordinator_heartbeat`).
A run still STARTING, STARTED or CANCELING whose coordinator stopped beating is *lost*:
``coreexec runs ls`` and ``runs show`` say so (:func:`lost_note`). After a grace period
an :class:`OrphanReaper` acts on it: a run a launcher started (a Celery coordinator
task) is resumed through the launcher; any other is marked FAILURE with the reason, its
steps end with it, and its Redis keys expire like any finished run's. Every Celery
worker runs a reaper (:class:`ReaperLoop`); a lock in Redis lets one sweep at a time.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import Redis, RedisError
from coreexec.runs.launcher import RunLauncher
from coreexec.runs.resume import resume_run
from coreexec.runs.resume_prep import missing_step_events
from coreexec.storage.base import RunRecord, RunStatus
from coreexec.transport import keys
from coreexec.transport.attempts import add_finish_commands
from coreexec.transport.coordinator_heartbeat import CoordinatorState, coordinator_status, silence_s
from coreexec.transport.redis_events import RedisEventStream

log = logging.getLogger(__name__)

DEFAULT_GRACE_S = 300.0
"""How long a lost run waits before it is reaped (``COREEXEC_ORPHAN_GRACE_S``)."""

RUNNING = (RunStatus.STARTING, RunStatus.STARTED, RunStatus.CANCELING)


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def lost_note(client: Redis, record: RunRecord) -> str | None:
    """ "coordinator lost 5 min ago; `coreexec runs resume ID`" for a running run whose
    coordinator stopped beating, else None (also when Redis cannot say)."""
    if record.status not in RUNNING:
        return None
    try:
        if coordinator_status(client, record.run_id).state is not CoordinatorState.DEAD:
            return None
        silent = silence_s(client, record.run_id)
    except RedisError:
        return None
    when = _ago(silent) if silent is not None else "some time ago"
    return f"coordinator lost {when}; `coreexec runs resume {record.run_id}`"


@dataclass(frozen=True)
class Reaped:
    """What a sweep did to one lost run: ``resumed`` or ``failed``, and why."""

    run_id: str
    action: str
    message: str


class OrphanReaper:
    """Reaps lost runs older than ``grace_s``; see the module docstring."""

    def __init__(
        self,
        instance: Instance,
        client: Redis,
        *,
        redis_url: str,
        grace_s: float = DEFAULT_GRACE_S,
        launcher: RunLauncher | None = None,
        lock_ttl_s: float = 60.0,
    ) -> None:
        self.instance = instance
        self.client = client
        self.redis_url = redis_url
        self.grace_s = grace_s
        self.launcher = launcher
        self.lock_ttl_s = lock_ttl_s

    def sweep(self) -> list[Reaped]:
        """One pass over the running runs, unless another reaper is sweeping now."""
        lock = self.client.lock(keys.ORPHAN_REAPER_LOCK, timeout=self.lock_ttl_s, blocking=False)
        if not lock.acquire():
            return []
        try:
            reaped = []
            for record in self.instance.storage.list_runs(limit=10_000, statuses=set(RUNNING)):
                done = self._reap(record)
                if done is not None:
                    log.warning("reaped run %s (%s): %s", done.run_id, done.action, done.message)
                    reaped.append(done)
            return reaped
        finally:
            try:
                lock.release()
            except RedisError as exc:
                log.debug("releasing the reaper lock: %r", exc)

    def _reap(self, record: RunRecord) -> Reaped | None:
        status = coordinator_status(self.client, record.run_id)
        if status.state is not CoordinatorState.DEAD:
            return None
        silent = silence_s(self.client, record.run_id)
        if silent is None or silent < self.grace_s:
            return None
        who = status.info.describe() if status.info is not None else "its coordinator"
        reason = f"coordinator lost: nothing from {who} for {silent:.0f}s"
        if status.info is not None and status.info.launched and self.launcher is not None:
            try:
                outcome = resume_run(
                    record.run_id,
                    instance=self.instance,
                    redis_url=self.redis_url,
                    submit=True,
                    launcher=self.launcher,
                )
            except CoreExecError as exc:
                log.warning("cannot resume lost run %s: %s", record.run_id, exc)
                return None
            return Reaped(record.run_id, "resumed", f"{reason}; {outcome.message}")
        return self._fail(record, reason)

    def _fail(self, record: RunRecord, reason: str) -> Reaped | None:
        message = (
            f"{reason} (reaped after {self.grace_s:g}s); `coreexec runs resume "
            f"{record.run_id}` runs what did not succeed"
        )
        storage = self.instance.storage
        stream = RedisEventStream(self.client, record.run_id, url=self.redis_url)
        self._save_unsaved(record.run_id, stream)
        if not storage.set_status(record.run_id, RunStatus.FAILURE, expected=RUNNING):
            return None
        event = Event(
            kind=EventKind.RUN_FAILURE,
            run_id=record.run_id,
            timestamp=time.time(),
            message=message,
            data={"reason": "coordinator_lost"},
        )
        storage.append_events(record.run_id, [event])
        try:
            with self.client.pipeline(transaction=False) as pipe:
                add_finish_commands(pipe, record.run_id)
                pipe.execute()
            stream.expire()
        except (RedisError, CoreExecError) as exc:
            log.warning("could not let the keys of run %s expire: %s", record.run_id, exc)
        return Reaped(record.run_id, "failed", message)

    def _save_unsaved(self, run_id: str, stream: RedisEventStream) -> None:
        """Store the step events the dead coordinator heard but had not written yet, so
        the run's steps show where they got to."""

        try:
            entries = stream.history()
        except CoreExecError as exc:
            log.warning("cannot read the stream of lost run %s: %s", run_id, exc)
            return
        stored = [event for _, event in self.instance.storage.events(run_id)]
        missing = missing_step_events(stored, entries)
        if missing:
            self.instance.storage.append_events(run_id, missing)


class ReaperLoop:
    """A daemon thread that sweeps every ``interval_s`` until stopped."""

    def __init__(self, reaper: OrphanReaper, *, interval_s: float | None = None) -> None:
        self.reaper = reaper
        self.interval_s = interval_s or min(30.0, max(0.5, reaper.grace_s / 2))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="coreexec-reaper", daemon=True)

    def start(self) -> ReaperLoop:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.reaper.sweep()
            except (RedisError, CoreExecError) as exc:
                log.warning("sweeping for lost runs failed: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s * 2)
