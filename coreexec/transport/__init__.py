"""The event transport: a run's step events travel on a Redis stream to its coordinator.

Redis is a core dependency, so its implementation lives here; nothing in this package
knows about Celery.
"""

from coreexec.errors import TransportError
from coreexec.transport.keys import attempt_claim, run_events, run_settings
from coreexec.transport.redis_events import RedisEventStream, StreamEntry, events_of

__all__ = [
    "RedisEventStream",
    "StreamEntry",
    "TransportError",
    "attempt_claim",
    "events_of",
    "run_events",
    "run_settings",
]
