"""The celery executor on real ``celery worker`` processes and a real redis-server:
outputs, priority order, queue routing and what travels on the broker."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
import redis

from celery_app.queues import ALL_QUEUES, STEP_QUEUES, redis_queue_keys
from coreexec import EventKind
from coreexec.storage.base import RunStatus
from tests.jobs import celery_jobs
from tests.jobs.celery_jobs import RunWatcher, marks
from tests.support.processes import CeleryWorkerProcess

REF = "tests.jobs.celery_jobs"
FAST = {"heartbeat_interval_s": 0.2, "heartbeat_timeout_s": 1.0, "queued_timeout_s": 30.0}
WorkerFactory = Callable[..., CeleryWorkerProcess]


def run_config(**overrides: Any) -> dict[str, Any]:
    return {"execution": {"config": {**FAST, **overrides}}}


def queued_messages(client: redis.Redis, queue: str) -> list[bytes]:
    """Raw messages waiting on ``queue`` (every priority list of it)."""
    found: list[bytes] = []
    for key in redis_queue_keys(queue):
        found.extend(item for item in client.lrange(key, 0, -1) if isinstance(item, bytes))
    return found


def wait_for_messages(
    watcher: RunWatcher, client: redis.Redis, queues: tuple[str, ...], n: int
) -> None:
    watcher.wait_for(
        lambda _: sum(len(queued_messages(client, q)) for q in queues) >= n,
        20.0,
        f"{n} messages on {', '.join(queues)}",
    )


def start_order(watcher: RunWatcher) -> list[str]:
    return [e.step_key or "" for e in watcher.events if e.kind is EventKind.STEP_START]


def test_fanout_fanin_across_two_workers(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    first = celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    second = celery_worker_factory(queues=STEP_QUEUES, concurrency=1)

    watcher = RunWatcher(f"{REF}:fanout_job", run_config()).start()
    result = watcher.join()

    assert result.status is RunStatus.SUCCESS, watcher.summary()
    width = celery_jobs.FANOUT_WIDTH
    assert result.output_for("join") == sum(i * i for i in range(1, width + 1))
    leaf_pids = {int(pid) for i in range(width) for pid in marks(result.run_id, f"square_{i}")}
    assert leaf_pids & set(first.group_pids()), "the first worker ran no leaf"
    assert leaf_pids & set(second.group_pids()), "the second worker ran no leaf"
    # One attempt per step: nothing ran twice.
    starts = start_order(watcher)
    assert sorted(starts) == sorted(["source", "join", *(f"square_{i}" for i in range(width))])


@pytest.mark.parametrize(
    ("job_name", "queues"),
    [
        ("priority_job", STEP_QUEUES),  # one band each: high, default, low
        ("priority_one_queue_job", (celery_jobs.SAME_QUEUE,)),  # message priority alone
    ],
)
def test_ready_steps_start_in_priority_order(
    celery_env: str, celery_worker_factory: WorkerFactory, job_name: str, queues: tuple[str, ...]
) -> None:
    client = redis.Redis.from_url(celery_env)
    watcher = RunWatcher(f"{REF}:{job_name}", run_config()).start()
    # Everything is queued before any worker exists, so the broker alone picks the order.
    wait_for_messages(watcher, client, queues, 3)
    celery_worker_factory(queues=queues, concurrency=1)
    result = watcher.join()

    assert result.status is RunStatus.SUCCESS, watcher.summary()
    assert start_order(watcher) == ["urgent", "normal", "background"]
    started = [result.output_for(key) for key in ("urgent", "normal", "background")]
    assert started == sorted(started)


def test_step_tagged_with_a_queue_runs_only_where_that_queue_is_consumed(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    general = celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    special = celery_worker_factory(queues=[celery_jobs.SPECIAL_QUEUE], concurrency=1)

    result = RunWatcher(f"{REF}:queue_tag_job", run_config()).start().join()

    assert result.status is RunStatus.SUCCESS
    assert result.output_for("special") in special.group_pids()
    assert result.output_for("ordinary") in general.group_pids()


def _decode(raw: bytes) -> dict[str, Any]:
    message: dict[str, Any] = json.loads(raw)
    return message


def test_broker_messages_carry_identifiers_only(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    secret = "sk-live-7d3c1f0e9b2a4c6d8e1f3a5b7c9d0e2f"
    client = redis.Redis.from_url(celery_env)
    watcher = RunWatcher(
        f"{REF}:secret_job",
        {"steps": {"use_secret": {"config": {"api_key": secret}}}, **run_config()},
    ).start()
    wait_for_messages(watcher, client, STEP_QUEUES, 1)

    raw_messages = [m for q in ALL_QUEUES for m in queued_messages(client, q)]
    assert len(raw_messages) == 1
    raw = raw_messages[0]
    assert secret.encode() not in raw
    message = _decode(raw)
    assert message["content-type"] == "application/json"
    body = base64.b64decode(message["body"])
    assert secret.encode() not in body
    args, kwargs, _embed = json.loads(body)
    queued = watcher.event(EventKind.STEP_QUEUED, "use_secret")
    assert args == [queued.run_id, "use_secret", 1, queued.attempt_id, f"{REF}:secret_job"]
    assert kwargs == {}
    headers = message["headers"]
    assert headers["id"] == queued.attempt_id
    assert headers["task"] == "coreexec.step"
    assert headers["shadow"] == "secret_job.use_secret"
    # Nothing else a worker could need for the run config is published anywhere else
    # either: the run's stream holds only events, and no key in Redis holds the secret.
    for key in client.scan_iter():
        if client.type(key) == b"string":
            assert secret.encode() not in (client.get(key) or b""), key

    celery_worker_factory(queues=STEP_QUEUES, concurrency=1)
    result = watcher.join()
    assert result.status is RunStatus.SUCCESS
    assert result.output_for("use_secret") == len(secret)


def max_overlap(spans: list[tuple[float, float]]) -> int:
    edges = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    best = current = 0
    for _, delta in edges:
        current += delta
        best = max(best, current)
    return best


def test_tag_limit_holds_across_two_concurrent_runs(
    celery_env: str, celery_worker_factory: WorkerFactory
) -> None:
    celery_worker_factory(queues=STEP_QUEUES, concurrency=4)
    limits = [{"key": "database", "value": "warehouse", "limit": 2}]
    config = run_config(tag_concurrency_limits=limits)
    first = RunWatcher(f"{REF}:warehouse_job", config).start()
    second = RunWatcher(f"{REF}:warehouse_job", config).start()
    results = [first.join(), second.join()]

    assert [r.status for r in results] == [RunStatus.SUCCESS, RunStatus.SUCCESS]
    spans = [span for r in results for span in celery_jobs.intervals(r.run_id)]
    assert len(spans) == 2 * celery_jobs.WAREHOUSE_STEPS
    # Four workers' worth of processes, eight steps, one limit of 2 for both runs.
    assert max_overlap(spans) == 2
    waits = [e for r in results for e in r.events if e.kind is EventKind.SLOT_WAIT]
    assert waits and all("database" in e.message for e in waits)
