"""Hooks into the ``celery worker`` process of a coreexec app: queue presence and the
reaper of runs whose coordinator died.

Connected when :mod:`celery_app.app` is imported; they act only for coreexec apps.
"""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from celery_app.queue_presence import PresenceAnnouncer, QueuePresence
from coreexec.errors import CoreExecError
from coreexec.redis_clients import redis_client
from coreexec.runs.orphans import OrphanReaper, ReaperLoop

log = logging.getLogger(__name__)

_announcers: list[PresenceAnnouncer] = []
_reapers: list[ReaperLoop] = []


def _consumed_queues(consumer: Any) -> list[str]:
    task_consumer = getattr(consumer, "task_consumer", None)
    if task_consumer is not None:
        return [queue.name for queue in task_consumer.queues]
    return sorted(consumer.app.amqp.queues.consume_from or consumer.app.amqp.queues)


@worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
def announce_queues(sender: Any = None, **_: Any) -> None:
    """Start announcing the queues this worker consumes (see :mod:`queue_presence`)."""
    settings = getattr(getattr(sender, "app", None), "settings", None)
    if settings is None:
        return
    try:
        url = settings.events_redis_url
        presence = QueuePresence(redis_client(url), url=url)
    except CoreExecError as exc:
        log.error(
            "this worker cannot announce its queues, so coordinators may fail its "
            "steps as 'no worker on the queue': %s",
            exc,
        )
        return
    announcer = PresenceAnnouncer(presence, sender.hostname, lambda: _consumed_queues(sender))
    announcer.start()
    _announcers.append(announcer)
    log.info("announcing consumer %s on %s", sender.hostname, ", ".join(_consumed_queues(sender)))


@worker_ready.connect(weak=False)  # type: ignore[untyped-decorator]
def start_reaper(sender: Any = None, **_: Any) -> None:
    """Sweep for runs whose coordinator died (see :mod:`coreexec.runs.orphans`)."""
    app: Any = getattr(sender, "app", None)
    settings = getattr(app, "settings", None)
    if settings is None or not settings.orphan_grace_s:
        return
    from celery_app.coordinator_task import coordinator_instance
    from celery_app.run_launcher import CeleryRunLauncher

    try:
        url = settings.events_redis_url
        instance = coordinator_instance(app)
        reaper = OrphanReaper(
            instance,
            redis_client(url),
            redis_url=url,
            grace_s=settings.orphan_grace_s,
            launcher=CeleryRunLauncher(app),
        )
    except CoreExecError as exc:
        log.error("this worker reaps no lost runs: %s", exc)
        return
    _reapers.append(ReaperLoop(reaper).start())


@worker_shutdown.connect(weak=False)  # type: ignore[untyped-decorator]
def withdraw_queues(**_: Any) -> None:
    """Withdraw the announcements at a clean shutdown."""
    while _announcers:
        _announcers.pop().stop()
    while _reapers:
        _reapers.pop().stop()
