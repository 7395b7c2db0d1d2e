"""Every Redis key of the run and attempt machinery, in one place.

Keys of one run carry the cluster hash tag ``{<run_id>}``, so a run's stream, settings
and attempt claims live in one cluster slot and one MULTI or Lua script may touch them::

    coreexec:run:{<run_id>}:events                  STREAM  the run's events and wake-ups
    coreexec:run:{<run_id>}:settings                HASH    what workers need besides the
                                                            message (heartbeat interval, ...;
                                                            ``finished`` once the run ended)
    coreexec:run:{<run_id>}:issued                  HASH    attempt id -> ``<n>:<step key>``
                                                            of every attempt the coordinator
                                                            published (claims check it)
    coreexec:run:{<run_id>}:coordinator             STRING  the coordinator's heartbeat
                                                            (lapses when the beats stop)
    coreexec:run:{<run_id>}:coordinator:seen        STRING  the same, kept for a day
    coreexec:attempt:{<run_id>}:<attempt_id>:claim  STRING  who runs the attempt (SET NX)
    coreexec:attempt:{<run_id>}:<attempt_id>:end    LIST    a supervised attempt's ending
                                                            events, held for its supervisor
    coreexec:attempt:{<run_id>}:<attempt_id>:end:published  STRING  its end was published
    coreexec:queue:{<queue>}:consumers              SET     workers consuming the queue
    coreexec:queue:{<queue>}:consumers:<worker>     STRING  a worker's presence (with TTL)
    coreexec:orphan-reaper:lock                     STRING  held by the one orphan reaper
                                                            at work (a redis-py lock)

Keys of the tag limiter are in :mod:`coreexec.limits.keys`.
"""

from __future__ import annotations

from coreexec.errors import InvalidIdError

PREFIX = "coreexec"
"""First component of every coreexec Redis key."""

EVENT_FIELD = "e"
"""Field of a stream entry holding one event as JSON (``Event.to_dict``)."""

WAKE_FIELD = "wake"
"""Field of a stream entry that only wakes the reader; its value says why."""

EVENT_STREAM_MAXLEN = 200_000
"""Approximate cap (``MAXLEN ~``) of a run's stream: far above what a reader that keeps
up leaves unread, and a bound on memory if nobody reads."""

FINISHED_RUN_TTL_S = 24 * 3600
"""How long a finished run's stream and settings stay in Redis (for late watchers)."""


MAX_ID_LENGTH = 128
"""Longest run id, attempt id or queue name that goes into a key."""


def check_id(value: str, *, what: str) -> str:
    """Return ``value`` or raise :class:`~coreexec.errors.InvalidIdError` when it cannot
    sit inside a key's hash tag (empty, longer than :data:`MAX_ID_LENGTH`, braces or
    control characters)."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_LENGTH:
        raise InvalidIdError(
            f"{what} {str(value)[:40]!r} must be a string of 1 to {MAX_ID_LENGTH} characters",
            what=what,
            value=value,
        )
    if any(ch in value for ch in "{}") or not value.isprintable():
        raise InvalidIdError(
            f"{what} {value[:40]!r} must be printable, without braces", what=what, value=value
        )
    return value


def run_events(run_id: str) -> str:
    """The run's event stream: step events, wake-ups for its coordinator."""
    return f"{PREFIX}:run:{{{check_id(run_id, what='run id')}}}:events"


def run_settings(run_id: str) -> str:
    """The run's settings hash, written by the dispatcher when the run starts."""
    return f"{PREFIX}:run:{{{check_id(run_id, what='run id')}}}:settings"


def run_issued(run_id: str) -> str:
    """The attempts the run's coordinator issued; a worker claims no other."""
    return f"{PREFIX}:run:{{{check_id(run_id, what='run id')}}}:issued"


def run_coordinator(run_id: str) -> str:
    """The liveness key of the run's coordinator: set with a TTL on every beat, so it
    lapses when the beats stop."""
    return f"{PREFIX}:run:{{{check_id(run_id, what='run id')}}}:coordinator"


def run_coordinator_seen(run_id: str) -> str:
    """The long-lived record that a heartbeating coordinator ran the run."""
    return f"{run_coordinator(run_id)}:seen"


def attempt_claim(run_id: str, attempt_id: str) -> str:
    """The claim of one step attempt; set once by the worker that runs it."""
    run = check_id(run_id, what="run id")
    return f"{PREFIX}:attempt:{{{run}}}:{check_id(attempt_id, what='attempt id')}:claim"


def queue_consumers(queue: str) -> str:
    """SET of the workers that said they consume ``queue`` (members: worker names)."""
    return f"{PREFIX}:queue:{{{check_id(queue, what='queue name')}}}:consumers"


def queue_consumer(queue: str, worker: str) -> str:
    """One worker's presence on ``queue``: a key with a TTL the worker keeps refreshing."""
    return f"{queue_consumers(queue)}:{worker}"


def attempt_end(run_id: str, attempt_id: str) -> str:
    """LIST of the events that end an attempt run under a supervisor (its outputs and
    its end), held by the step entrypoint until the supervisor has seen the process end."""
    run = check_id(run_id, what="run id")
    return f"{PREFIX}:attempt:{{{run}}}:{check_id(attempt_id, what='attempt id')}:end"


def attempt_end_published(run_id: str, attempt_id: str) -> str:
    """Set once the end of a supervised attempt is on the run's stream (one supervisor
    publishes it, however many adopted the attempt)."""
    return f"{attempt_end(run_id, attempt_id)}:published"


ORPHAN_REAPER_LOCK = f"{PREFIX}:orphan-reaper:lock"
"""The lock one orphan reaper holds while it looks for runs that lost their coordinator."""
