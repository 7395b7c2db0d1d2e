"""kombu's Redis transport, made to survive an item on a queue that is not a message.

kombu's Redis channel pops an item off a queue list (BRPOP) and decodes it as JSON in
the worker's event loop: an item that is not JSON (or not a kombu message) raises out
of the loop and stops the worker, plain Celery's too. Anyone who can LPUSH onto the
broker could stop every worker that way. This channel logs and drops such an item (it
has left the list already) and the worker serves the next message.

Used for ``redis://`` brokers (``broker_transport`` in :func:`celery_app.app.base_config`).
"""

from __future__ import annotations

import logging
from queue import Empty
from typing import Any

from kombu.transport import redis as kombu_redis

log = logging.getLogger(__name__)

TRANSPORT = "celery_app.broker_transport:Transport"
"""The ``broker_transport`` setting naming this transport."""

_UNDELIVERABLE = (ValueError, TypeError, KeyError, AttributeError)
"""What decoding an item that is not a kombu JSON message raises."""


class Channel(kombu_redis.Channel):
    """A Redis channel that drops (and logs) queue items it cannot decode."""

    def _brpop_read(self, **options: Any) -> bool:
        try:
            return bool(super()._brpop_read(**options))  # type: ignore[no-untyped-call]
        except _UNDELIVERABLE as exc:
            log.error(
                "dropped an item of a coreexec queue that is not a kombu JSON message "
                "(%s: %s); something other than coreexec or Celery pushed it onto the broker",
                type(exc).__name__,
                str(exc)[:200],
            )
            raise Empty() from exc


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel
