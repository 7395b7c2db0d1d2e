"""Step messages the coordinator did not send, pushed onto a real broker for a real
worker: a forged copy of a real message for a finished run, a replay of a real one,
messages naming a made-up run (one with a 10 kB run id), and an item that is not JSON.
None of them runs a step, writes to Redis or stops the worker."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from celery_app.app import make_app
from celery_app.queues import DEFAULT_QUEUE, STEP_QUEUES, redis_queue_keys
from celery_app.settings import CelerySettings
from celery_app.step_task import STEP_TASK_NAME
from coreexec import RunStatus, execute_job
from coreexec.instance import Instance
from coreexec.io_managers import OutputKey
from coreexec.redis_clients import redis_client
from coreexec.transport.redis_events import RedisEventStream
from tests.jobs.submission_jobs import runs_of, wait_until
from tests.support.processes import CeleryWorkerProcess

CHAIN = "tests.jobs.submission_jobs:chain"
WorkerFactory = Callable[..., CeleryWorkerProcess]


@pytest.fixture
def client(env: Path, redis_url: str) -> Iterator[redis.Redis]:
    client = redis_client(redis_url)
    yield client
    client.close()


def _send(run_id: str, step_key: str, number: int, attempt_id: str) -> None:
    app = make_app(CelerySettings.from_env(), set_as_current=False)
    app.send_task(
        STEP_TASK_NAME,
        args=[run_id, step_key, number, attempt_id, CHAIN],
        task_id=attempt_id,
        queue=DEFAULT_QUEUE,
        ignore_result=True,
    )


def _served(worker: CeleryWorkerProcess, attempt_id: str) -> None:
    """Wait until the worker has finished with the task of ``attempt_id``."""
    wait_until(
        lambda: any(
            attempt_id in line and ("succeeded" in line or "refus" in line)
            for line in worker.read_log().splitlines()
        ),
        60,
        f"the worker to serve {attempt_id}",
    )


def _keys_without_ttl(client: redis.Redis, pattern: str) -> list[bytes]:
    return [key for key in client.scan_iter(match=pattern) if client.ttl(key) == -1]


def test_a_forged_or_replayed_message_of_a_finished_run_runs_and_writes_nothing(
    env: Path, client: redis.Redis, celery_worker_factory: WorkerFactory
) -> None:
    worker = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=1)
    result = execute_job(CHAIN)
    assert result.success
    instance = Instance.from_env()
    stored = instance.storage.events(result.run_id)
    stream = RedisEventStream(client, result.run_id)
    entries = len(stream.history())
    output = instance.io_manager().load(OutputKey(result.run_id, "second", "result"))
    real = next(e for e in result.events if e.step_key == "second" and e.attempt_id)
    assert real.attempt_id is not None

    forged = uuid.uuid4().hex
    _send(result.run_id, "second", 1, forged)  # a copy of the real message, new ids
    _send(result.run_id, "second", 1, real.attempt_id)  # the real message once more
    _served(worker, forged)
    _served(worker, real.attempt_id)

    assert runs_of("second") == 1
    assert instance.io_manager().load(OutputKey(result.run_id, "second", "result")) == output
    assert instance.storage.events(result.run_id) == stored
    assert len(stream.history()) == entries
    assert instance.storage.get_run(result.run_id).status is RunStatus.SUCCESS
    assert f"refusing attempt {forged}" in worker.read_log()


def test_messages_for_unknown_runs_leave_no_key_behind(
    env: Path, client: redis.Redis, celery_worker_factory: WorkerFactory
) -> None:
    worker = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=1)
    made_up = f"madeup{uuid.uuid4().hex}"
    huge = "h" * 10_000
    _send(made_up, "first", 1, "attempt-of-nobody")
    _send(huge, "first", 1, "attempt-of-a-huge-run")
    _served(worker, "attempt-of-nobody")
    wait_until(lambda: "must be a string of 1 to 128" in worker.read_log(), 60, "the refusal")

    assert list(client.scan_iter(match=f"*{made_up}*")) == []
    assert list(client.scan_iter(match="*hhhhhhhhhh*")) == []
    assert _keys_without_ttl(client, "coreexec:run:*") == []
    assert _keys_without_ttl(client, "coreexec:attempt:*") == []


def test_an_item_that_is_not_json_is_dropped_and_the_queue_keeps_flowing(
    env: Path, client: redis.Redis, celery_worker_factory: WorkerFactory
) -> None:
    worker = celery_worker_factory(queues=list(STEP_QUEUES), concurrency=1)
    client.lpush(redis_queue_keys(DEFAULT_QUEUE)[0], b"\x00not json{")
    wait_until(lambda: client.llen(redis_queue_keys(DEFAULT_QUEUE)[0]) == 0, 30, "the pop")

    assert execute_job(CHAIN).success
    assert worker.is_running(), worker.log_tail()
    assert "not a kombu JSON message" in worker.read_log()
