"""The worker's consumer (``worker_consumer``): Celery's, made to survive a broker outage.

Celery 5.7 handles a lost connection by ``collect()``-ing the connection and then
``close()``-ing it. On kombu's Redis transport, a channel that was polling (BRPOP sent,
answer unread) when Redis went away fails its first close while reading that answer,
before it is marked closed; ``collect()`` then detaches the transport from the
connection, and the second close, which now goes through, asks the detached transport
for Redis' address to give back unacknowledged messages: ``AttributeError("'NoneType'
object has no attribute 'hostname'")``, which is no connection error, so the worker
stops (``Unrecoverable error``). It happens whenever a worker with late acks holds a
message (a step or a run's coordinator is running) and has a free process to poll for
more: plain Celery fails the same way.

:class:`CoreexecConsumer` closes that channel itself, while the transport is still
attached, before Celery's handling runs; the messages it held are given back if Redis
answers, and otherwise stay in kombu's unacked index, which restores them after its
visibility timeout (a claim then drops a delivery of an attempt that ran).
"""

from __future__ import annotations

import logging
from typing import Any

from celery.worker.consumer import Consumer

log = logging.getLogger(__name__)

_CLOSE_TRIES = 2
"""The first close may stop at the interrupted BRPOP; the second one completes it."""


class CoreexecConsumer(Consumer):  # type: ignore[misc]  # Celery ships no type information
    """Celery's consumer with the default channel closed before a lost connection is."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        close_default_channel(self.connection)
        super().on_connection_error_after_connected(exc)


def close_default_channel(connection: Any) -> None:
    """Close ``connection``'s default channel, ignoring the broker's connection errors."""
    channel = getattr(connection, "_default_channel", None)
    if channel is None:
        return
    ignored = tuple(connection.connection_errors) + tuple(connection.channel_errors)
    for _ in range(_CLOSE_TRIES):
        if getattr(channel, "closed", True):
            return
        try:
            channel.close()
        except ignored as exc:
            log.debug("closing the channel of a lost broker connection: %r", exc)
