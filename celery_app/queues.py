"""The Celery queues of coreexec and how each broker is told about priorities.

Queues: ``coreexec.high``, ``coreexec.default``, ``coreexec.low`` (steps, by priority
band; see :mod:`celery_app.routing`) and ``coreexec.runs`` (run coordinators). Each is
declared with ``x-max-priority`` for RabbitMQ. On Redis, kombu emulates priorities with
one list per priority step; we give it ten steps (0..9), and its BRPOP asks the lists
of every consumed queue step by step, **lowest number first**. With
``queue_order_strategy: priority`` a worker consuming several queues asks them in the
order given to ``-Q``, within each step.
"""

from __future__ import annotations

from typing import Any

from kombu.entity import Exchange, Queue

HIGH_QUEUE = "coreexec.high"
DEFAULT_QUEUE = "coreexec.default"
LOW_QUEUE = "coreexec.low"
RUNS_QUEUE = "coreexec.runs"
STEP_QUEUES = (HIGH_QUEUE, DEFAULT_QUEUE, LOW_QUEUE)
ALL_QUEUES = (*STEP_QUEUES, RUNS_QUEUE)

PRIORITY_LEVELS = 10
"""Message priority levels a broker is asked to keep: 0..9."""

REDIS_PRIORITY_STEPS = list(range(PRIORITY_LEVELS))
"""kombu Redis: one list per level, so no two levels share a list."""


def declare_queue(name: str) -> Queue:
    """A durable direct queue of ``name`` with priority support."""
    return Queue(  # type: ignore[no-untyped-call]
        name,
        Exchange(name, type="direct"),  # type: ignore[no-untyped-call]
        routing_key=name,
        max_priority=PRIORITY_LEVELS,
    )


def declared_queues() -> tuple[Queue, ...]:
    return tuple(declare_queue(name) for name in ALL_QUEUES)


def redis_transport_options() -> dict[str, Any]:
    """``broker_transport_options`` for kombu's Redis transport."""
    return {
        "priority_steps": REDIS_PRIORITY_STEPS,
        "queue_order_strategy": "priority",
    }


def redis_queue_keys(queue: str) -> tuple[str, ...]:
    """The Redis lists that hold ``queue``'s messages, one per priority step (kombu's
    default separator); for tests and tools that look at raw messages."""
    sep = "\x06\x16"
    return tuple(queue if level == 0 else f"{queue}{sep}{level}" for level in REDIS_PRIORITY_STEPS)
