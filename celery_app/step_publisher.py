"""Publishing step messages: in growing batches, straight onto a Redis broker's lists
where that sends what kombu would, through kombu's producer otherwise.

``Producer.publish`` costs about 0.2 ms of Python per message on these machines (entity
declaration, retry wrappers, a new Redis client per call) before the one LPUSH that
matters; a coordinator publishing thousands of steps pays it thousands of times. This
publisher does only what kombu's Redis channel does to a message (its own
``prepare_message``, body encoding and ``_q_for_pri``, on a client of the channel's own
connection pool) and sends a batch as one pipeline, so a worker receives exactly what
kombu would have sent.

:class:`RedisListPublisher` is used only where that equivalence holds: a Redis broker
(not Sentinel), no message compression, no per-queue expiry, no task-sent events and
nobody listening to Celery's publish signals (:func:`redis_list_publisher_for`);
everything else goes through kombu's batching producer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from celery.signals import after_task_publish, before_task_publish
from kombu.entity import maybe_delivery_mode
from kombu.exceptions import KombuError
from kombu.serialization import dumps as serialize
from kombu.utils.json import dumps as json_dumps

from celery_app.app import CoreexecApp
from celery_app.step_task import STEP_TASK_NAME

log = logging.getLogger(__name__)

_REDIS_SCHEMES = ("redis", "rediss", "unix")

MAX_BATCH = 512
"""Most step messages sent in one batch."""

PUBLISH_ERRORS = (KombuError, OSError, redis.RedisError)
"""What a publish raises when the broker cannot take a batch."""

T = TypeVar("T")

PipelineHook = Callable[[Any], None]
"""Adds commands to a batch's Redis pipeline (the coordinator's issued attempts)."""


def growing_batches(items: Sequence[T], cap: int = MAX_BATCH) -> Iterator[tuple[int, Sequence[T]]]:
    """``items`` in batches of 1, 2, 4, ... (at most ``cap``), with each batch's start:
    a pass of n steps costs about log2(n) round trips, and the first step is on its
    way before the others are even encoded."""
    start, size = 0, 1
    while start < len(items):
        yield start, items[start : start + size]
        start, size = start + size, min(2 * size, cap)


@dataclass(frozen=True)
class OutgoingStep:
    """One task message of Celery's ``create_task_message`` and where it goes."""

    message: Any
    queue: str
    priority: int


def redis_list_publisher_for(app: CoreexecApp, producer: Any) -> RedisListPublisher | None:
    """A publisher on ``producer``'s channel when it would send what kombu sends; else None."""
    conf = app.conf
    if str(conf.broker_url).split("://", 1)[0].lower() not in _REDIS_SCHEMES:
        return None
    if conf.task_compression or conf.task_send_sent_event:
        return None
    if before_task_publish.receivers or after_task_publish.receivers:
        return None
    channel = producer.channel
    if getattr(channel, "_expires", None) or not hasattr(channel, "_q_for_pri"):
        return None
    return RedisListPublisher(channel, delivery_mode=conf.task_default_delivery_mode)


class StepPublisher:
    """Sends batches of step messages for one coordinator, holding one producer."""

    def __init__(self, app: CoreexecApp) -> None:
        self.app = app
        self.producer = app.producer_pool.acquire(block=True)
        try:
            self.lists = redis_list_publisher_for(app, self.producer)
        except PUBLISH_ERRORS as exc:
            log.warning("publishing through kombu's producer: %s", exc)
            self.lists = None

    def publish(self, steps: Sequence[OutgoingStep], before: PipelineHook | None = None) -> None:
        """One batch (raises one of :data:`PUBLISH_ERRORS` when the broker fails).

        ``before`` adds commands to the batch's pipeline ahead of the messages; only
        where :attr:`lists` publishes (a Redis broker), else it must be None."""
        if self.lists is not None:
            self.lists.publish(steps, before)
            return
        assert before is None, "only a Redis broker's pipeline carries other commands"
        send = self.app.amqp.send_task_message
        with self.producer.batch():
            for step in steps:
                send(
                    self.producer,
                    STEP_TASK_NAME,
                    step.message,
                    queue=step.queue,
                    priority=step.priority,
                )

    def close(self) -> None:
        self.producer.release()


class RedisListPublisher:
    """Publishes batches of step messages on one kombu Redis channel."""

    def __init__(self, channel: Any, *, delivery_mode: str | int = "persistent") -> None:
        self.channel = channel
        self.delivery_mode = maybe_delivery_mode(delivery_mode)  # type: ignore[no-untyped-call]
        # One client for every batch; kombu makes a new one per publish.
        self.client = channel._create_client()

    def encode(self, step: OutgoingStep) -> tuple[str, str]:
        """The list key and payload kombu would LPUSH for ``step``."""
        headers, properties, body, _sent_event = step.message
        content_type, content_encoding, data = serialize(  # type: ignore[no-untyped-call]
            body, serializer="json"
        )
        channel = self.channel
        message = channel.prepare_message(
            data,
            step.priority,
            content_type,
            content_encoding,
            headers,
            {**properties, "delivery_mode": self.delivery_mode, "priority": step.priority},
        )
        # The anonymous exchange: the routing key is the queue, as Celery sends it.
        channel._inplace_augment_message(message, "", step.queue)
        key = channel._q_for_pri(step.queue, channel._get_message_priority(message))
        return key, json_dumps(message)  # type: ignore[no-untyped-call]

    def publish(self, steps: Sequence[OutgoingStep], before: PipelineHook | None = None) -> None:
        """Send ``steps`` in one pipeline, after what ``before`` adds to it (redis-py
        errors are the caller's to handle)."""
        with self.client.pipeline(transaction=False) as pipe:
            if before is not None:
                before(pipe)
            for step in steps:
                key, payload = self.encode(step)
                pipe.lpush(key, payload)
            pipe.execute()
