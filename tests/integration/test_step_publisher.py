"""Step publishing: straight onto Redis's lists exactly as kombu writes, kombu otherwise."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery.signals import before_task_publish

from celery_app.app import CoreexecApp, make_app
from celery_app.queues import DEFAULT_QUEUE, HIGH_QUEUE, redis_queue_keys
from celery_app.settings import CelerySettings
from celery_app.step_publisher import (
    OutgoingStep,
    RedisListPublisher,
    growing_batches,
    redis_list_publisher_for,
)
from celery_app.step_task import STEP_TASK_NAME
from coreexec.redis_clients import redis_client

pytestmark = pytest.mark.integration


@pytest.fixture
def app(redis_url: str) -> CoreexecApp:
    return make_app(CelerySettings(broker_url=redis_url), set_as_current=False)


@pytest.fixture
def producer(app: CoreexecApp) -> Iterator[Any]:
    with app.producer_pool.acquire(block=True) as producer:
        yield producer


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)
    yield client
    client.close()


def task_message(app: CoreexecApp, attempt_id: str) -> Any:
    args = ["run-1", "load", 1, attempt_id, "pkg.jobs:etl"]
    return app.amqp.create_task_message(
        attempt_id, STEP_TASK_NAME, args, {}, shadow="etl.load", ignore_result=True
    )


def take_one(client: redis.Redis, queue: str) -> tuple[str, dict[str, Any]]:
    """The only message on ``queue``'s lists: the list it was on and the message."""
    found = [(key, raw) for key in redis_queue_keys(queue) for raw in client.lrange(key, 0, -1)]
    assert len(found) == 1, found
    key, raw = found[0]
    client.delete(key)
    message = json.loads(raw)
    del message["properties"]["delivery_tag"]  # a fresh uuid per publish
    return key, message


@pytest.mark.parametrize(("queue", "priority"), [(DEFAULT_QUEUE, 0), (HIGH_QUEUE, 2), ("x.q", 9)])
def test_a_message_is_the_one_kombu_would_send(
    app: CoreexecApp, producer: Any, client: redis.Redis, queue: str, priority: int
) -> None:
    app.amqp.send_task_message(
        producer, STEP_TASK_NAME, task_message(app, "a-1"), queue=queue, priority=priority
    )
    by_kombu = take_one(client, queue)

    publisher = redis_list_publisher_for(app, producer)
    assert isinstance(publisher, RedisListPublisher)
    publisher.publish([OutgoingStep(task_message(app, "a-1"), queue, priority)])

    assert take_one(client, queue) == by_kombu


def test_a_batch_keeps_its_order(app: CoreexecApp, producer: Any, client: redis.Redis) -> None:
    publisher = redis_list_publisher_for(app, producer)
    assert publisher is not None
    ids = [f"a-{n}" for n in range(5)]
    publisher.publish([OutgoingStep(task_message(app, i), DEFAULT_QUEUE, 0) for i in ids])
    # kombu's consumers BRPOP: the first pushed is the first taken.
    taken = [
        json.loads(raw)["headers"]["id"] for raw in reversed(client.lrange(DEFAULT_QUEUE, 0, -1))
    ]
    assert taken == ids


def test_kombu_publishes_when_task_sent_events_are_on(redis_url: str) -> None:
    settings = CelerySettings(broker_url=redis_url, celery_config={"task_send_sent_event": True})
    app = make_app(settings, set_as_current=False)
    with app.producer_pool.acquire(block=True) as producer:
        assert redis_list_publisher_for(app, producer) is None


def test_kombu_publishes_when_someone_listens_to_publish_signals(
    app: CoreexecApp, producer: Any
) -> None:
    def listener(**_: Any) -> None:
        pass

    before_task_publish.connect(listener, weak=False)
    try:
        assert redis_list_publisher_for(app, producer) is None
    finally:
        before_task_publish.disconnect(listener)
    assert redis_list_publisher_for(app, producer) is not None


def test_batches_grow_from_one_and_cover_everything_once() -> None:
    items = list(range(20))
    batches = list(growing_batches(items, cap=4))
    assert [len(batch) for _, batch in batches] == [1, 2, 4, 4, 4, 4, 1]
    assert [start for start, _ in batches] == [0, 1, 3, 7, 11, 15, 19]
    assert [item for _, batch in batches for item in batch] == items
