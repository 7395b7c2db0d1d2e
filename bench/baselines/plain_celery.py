"""Plain Celery baseline: the same workloads as bare canvas primitives, no engine at all.

W1 = root, then a chord of N ``leaf`` tasks with a ``join`` callback (chain(root, chord));
W2 = a chain of 20 tasks; W3 = a group of 16 tasks sleeping 0.5 s on a worker of
concurrency 4; W4 = 20 tasks sleeping 0.2 s on their own queue, whose only worker has
concurrency 2 (Celery has no tag limits: a dedicated queue is how users cap them).

Two systems share the canvases. ``plain-celery`` runs them with Celery's defaults (early
acknowledgement, four messages reserved per process, no task events): the floor.
``plain-celery-reliable`` runs them with the settings coreexec's app needs so that nothing
is lost when a worker dies and Flower sees every task (late acknowledgement, re-delivery
on a lost worker, one message reserved per process, worker task events): the same Celery work
coreexec's workers do, without the engine.

The worker processes import this module (``celery -A bench.baselines.plain_celery``, or
``...:reliable_app``); the broker URL comes from ``$BENCH_CELERY_BROKER_URL``. JSON only.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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

RELIABLE_SETTINGS = {
    "task_acks_late": True,
    "task_reject_on_worker_lost": True,
    "worker_prefetch_multiplier": 1,
    "worker_send_task_events": True,
}
"""What coreexec's Celery app sets so that nothing is lost when a worker dies and Flower
sees every task; ``plain-celery-reliable`` runs the same canvas with these."""


@dataclass(frozen=True)
class PlainTasks:
    """One Celery app with the bench's four tasks."""

    app: Celery
    root: Any
    leaf: Any
    join: Any
    nap: Any


def _make_app(name: str, settings: Mapping[str, Any]) -> PlainTasks:
    app = Celery(name)
    app.conf.update(
        broker_url=os.environ.get(BROKER_URL_ENV, "redis://127.0.0.1:6379/0"),
        result_backend=os.environ.get(BROKER_URL_ENV, "redis://127.0.0.1:6379/0"),
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_default_queue=DEFAULT_QUEUE,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        **settings,
    )

    @app.task(name="bench.root", shared=False)  # type: ignore[untyped-decorator]
    def root() -> int:
        return 1

    @app.task(name="bench.leaf", shared=False)  # type: ignore[untyped-decorator]
    def leaf(x: int) -> int:
        return x + 1

    @app.task(name="bench.join", shared=False)  # type: ignore[untyped-decorator]
    def join(xs: list[int]) -> int:
        return sum(xs)

    @app.task(name="bench.nap", shared=False)  # type: ignore[untyped-decorator]
    def nap(seconds: float) -> list[float]:
        """Sleep and say when: the harness derives the largest concurrency from these."""
        started = time.time()
        time.sleep(seconds)
        return [started, time.time()]

    return PlainTasks(app, root, leaf, join, nap)


_DEFAULT = _make_app("bench_plain_celery", {})
_RELIABLE = _make_app("bench_plain_celery_reliable", RELIABLE_SETTINGS)
app = _DEFAULT.app
"""``celery -A bench.baselines.plain_celery``: Celery's defaults."""
reliable_app = _RELIABLE.app
"""``celery -A bench.baselines.plain_celery:reliable_app``: coreexec's reliability settings."""


def _w1(tasks: PlainTasks, width: int) -> Mapping[str, float]:
    canvas = chain(tasks.root.s(), chord([tasks.leaf.s() for _ in range(width)], tasks.join.s()))
    total = canvas.apply_async().get(timeout=RESULT_TIMEOUT_S)
    if total != 2 * width:
        raise BenchError(f"plain Celery W1 joined {total}, expected {2 * width}")
    return {}


def _w2(tasks: PlainTasks) -> Mapping[str, float]:
    canvas = chain(tasks.root.s(), *[tasks.leaf.s() for _ in range(W2_STEPS - 1)])
    last = canvas.apply_async().get(timeout=RESULT_TIMEOUT_S)
    if last != W2_STEPS:
        raise BenchError(f"plain Celery W2 ended at {last}, expected {W2_STEPS}")
    return {}


def _sleepers(tasks: PlainTasks, count: int, seconds: float, queue: str) -> Mapping[str, float]:
    result = group(tasks.nap.s(seconds).set(queue=queue) for _ in range(count)).apply_async()
    intervals = [(start, end) for start, end in result.get(timeout=RESULT_TIMEOUT_S)]
    return {"max_concurrency": max_overlap(intervals)}


def _ready(tasks: PlainTasks) -> None:
    """Both queues answer a round trip: the workers are up and consuming."""
    for queue in (DEFAULT_QUEUE, WAREHOUSE_QUEUE):
        tasks.root.apply_async(queue=queue).get(timeout=60)


@contextmanager
def cluster(tasks: PlainTasks, app_ref: str) -> Iterator[RedisServer]:
    """A private redis-server and the two workers, up before any timing starts."""
    with redis_server() as server:
        tasks.app.conf.broker_url = server.url
        tasks.app.conf.result_backend = server.url
        host = socket.gethostname()
        name = tasks.app.main.replace("_", "-")
        specs = [
            WorkerSpec(app_ref, [DEFAULT_QUEUE], DEFAULT_CONCURRENCY, f"{name}-default@{host}"),
            WorkerSpec(
                app_ref, [WAREHOUSE_QUEUE], WAREHOUSE_CONCURRENCY, f"{name}-warehouse@{host}"
            ),
        ]
        with celery_workers(specs, env={BROKER_URL_ENV: server.url}, ready=lambda: _ready(tasks)):
            yield server


def _run(tasks: PlainTasks, app_ref: str, workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    ctx.resource(app_ref, lambda: cluster(tasks, app_ref))
    if workload.base == "W1":
        width = workload.width or 0
        return ctx.measure(lambda: _w1(tasks, width))
    if workload.base == "W2":
        return ctx.measure(lambda: _w2(tasks))
    if workload.base == "W3":
        return ctx.measure(lambda: _sleepers(tasks, W3_STEPS, W3_SLEEP_S, DEFAULT_QUEUE))
    if workload.base == "W4":
        return ctx.measure(lambda: _sleepers(tasks, W4_STEPS, W4_SLEEP_S, WAREHOUSE_QUEUE))
    raise SystemUnavailable(f"plain Celery has no {workload.name}")


def run(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """Plain Celery with its defaults; workers are started once for the whole bench."""
    return _run(_DEFAULT, __name__, workload, ctx)


def run_reliable(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """Plain Celery with coreexec's reliability settings (:data:`RELIABLE_SETTINGS`)."""
    return _run(_RELIABLE, f"{__name__}:reliable_app", workload, ctx)
