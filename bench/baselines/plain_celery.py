"""Plain Celery baseline: the same workloads as bare canvas primitives, no engine at all.

W1 = root, then a chord of N ``leaf`` tasks with a ``join`` callback (chain(root, chord));
W2 = a chain of 20 tasks; W3 = a group of 16 tasks sleeping 0.5 s on a worker of
concurrency 4; W4 = 20 tasks sleeping 0.2 s on their own queue, whose only worker has
concurrency 2 (Celery has no tag limits: a dedicated queue is how users cap them).

The worker processes import this module (``celery -A bench.baselines.plain_celery``); the
broker URL comes from ``$BENCH_CELERY_BROKER_URL``. JSON serialisation only.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from celery import Celery, chain, chord, group

from bench.baselines.processes import RedisServer, WorkerSpec, celery_workers, redis_server
from bench.harness import (
    W2_STEPS,
    W3_SLEEP_S,
    W3_STEPS,
    W4_SLEEP_S,
    W4_STEPS,
    BenchError,
    Measurement,
    RunContext,
    SystemUnavailable,
    WorkloadSpec,
    max_overlap,
)

BROKER_URL_ENV = "BENCH_CELERY_BROKER_URL"
DEFAULT_QUEUE = "bench.default"
WAREHOUSE_QUEUE = "bench.warehouse"
DEFAULT_CONCURRENCY = 4
WAREHOUSE_CONCURRENCY = 2
RESULT_TIMEOUT_S = 120.0

app = Celery("bench_plain_celery")
app.conf.update(
    broker_url=os.environ.get(BROKER_URL_ENV, "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get(BROKER_URL_ENV, "redis://127.0.0.1:6379/0"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    task_default_queue=DEFAULT_QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)


@app.task(name="bench.root")  # type: ignore[untyped-decorator]
def root() -> int:
    return 1


@app.task(name="bench.leaf")  # type: ignore[untyped-decorator]
def leaf(x: int) -> int:
    return x + 1


@app.task(name="bench.join")  # type: ignore[untyped-decorator]
def join(xs: list[int]) -> int:
    return sum(xs)


@app.task(name="bench.nap")  # type: ignore[untyped-decorator]
def nap(seconds: float) -> list[float]:
    """Sleep and say when: the harness derives the largest concurrency from these."""
    started = time.time()
    time.sleep(seconds)
    return [started, time.time()]


def _w1(width: int) -> Mapping[str, float]:
    canvas = chain(root.s(), chord([leaf.s() for _ in range(width)], join.s()))
    total = canvas.apply_async().get(timeout=RESULT_TIMEOUT_S)
    if total != 2 * width:
        raise BenchError(f"plain Celery W1 joined {total}, expected {2 * width}")
    return {}


def _w2() -> Mapping[str, float]:
    canvas = chain(root.s(), *[leaf.s() for _ in range(W2_STEPS - 1)])
    last = canvas.apply_async().get(timeout=RESULT_TIMEOUT_S)
    if last != W2_STEPS:
        raise BenchError(f"plain Celery W2 ended at {last}, expected {W2_STEPS}")
    return {}


def _sleepers(count: int, seconds: float, queue: str) -> Mapping[str, float]:
    result = group(nap.s(seconds).set(queue=queue) for _ in range(count)).apply_async()
    intervals = [(start, end) for start, end in result.get(timeout=RESULT_TIMEOUT_S)]
    return {"max_concurrency": max_overlap(intervals)}


def _ready() -> None:
    """Both queues answer a round trip: the workers are up and consuming."""
    for queue in (DEFAULT_QUEUE, WAREHOUSE_QUEUE):
        root.apply_async(queue=queue).get(timeout=60)


@contextmanager
def cluster() -> Iterator[RedisServer]:
    """A private redis-server and the two workers, up before any timing starts."""
    with redis_server() as server:
        app.conf.broker_url = server.url
        app.conf.result_backend = server.url
        host = socket.gethostname()
        specs = [
            WorkerSpec(__name__, [DEFAULT_QUEUE], DEFAULT_CONCURRENCY, f"bench-default@{host}"),
            WorkerSpec(
                __name__, [WAREHOUSE_QUEUE], WAREHOUSE_CONCURRENCY, f"bench-warehouse@{host}"
            ),
        ]
        with celery_workers(specs, env={BROKER_URL_ENV: server.url}, ready=_ready):
            yield server


def run(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """Run a workload on plain Celery; workers are started once for the whole bench."""
    ctx.resource("plain-celery", cluster)
    if workload.base == "W1":
        width = workload.width or 0
        return ctx.measure(lambda: _w1(width))
    if workload.base == "W2":
        return ctx.measure(_w2)
    if workload.base == "W3":
        return ctx.measure(lambda: _sleepers(W3_STEPS, W3_SLEEP_S, DEFAULT_QUEUE))
    if workload.base == "W4":
        return ctx.measure(lambda: _sleepers(W4_STEPS, W4_SLEEP_S, WAREHOUSE_QUEUE))
    raise SystemUnavailable(f"plain Celery has no {workload.name}")
