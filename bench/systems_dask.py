"""coreexec's Dask executor on W1-W4, on a ``distributed.LocalCluster`` of 4 worker
processes of one thread each, started once before the timings (as the celery worker is).

``run`` reports on a Dask event topic (no Redis); ``run_redis`` gives the executor a
Redis URL, so the Dask workers run the attempt runner (claims and events on the run's
Redis stream, as Celery workers do). Each timed run is a whole ``execute_job`` against
the running cluster; W4 adds the ``database=warehouse`` limit of 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from bench.harness import (
    W4_LIMIT,
    IntervalCapture,
    Measurement,
    RunContext,
    SystemUnavailable,
    WorkloadSpec,
)
from bench.workloads import (
    MAX_CONCURRENT,
    W1_DEFAULT_WIDTH,
    check_result,
    durable_instance,
    expected_intervals,
    job_attribute,
    w1_fanout,
    w2_chain,
    w3_sleepy,
    w4_tag_limited,
)
from coreexec.runs.execute import execute_job

try:
    import distributed

    from coreexec.executors.dask import dask_executor
except ImportError:  # pragma: no cover - the dask extra is missing
    dask_executor = None

if dask_executor is not None:
    w1_fanout = w1_fanout.with_executor_def(dask_executor)
    w2_chain = w2_chain.with_executor_def(dask_executor)
    w3_sleepy = w3_sleepy.with_executor_def(dask_executor)
    w4_tag_limited = w4_tag_limited.with_executor_def(dask_executor)


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    cluster = distributed.LocalCluster(
        n_workers=MAX_CONCURRENT, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield cluster
    finally:
        cluster.close()


def run_config(workload: WorkloadSpec, address: str, redis_url: str | None) -> dict[str, Any]:
    config: dict[str, Any] = {"cluster": {"existing": {"address": address}}}
    if redis_url is not None:
        config["redis_url"] = redis_url
    if workload.base == "W4":
        config["tag_concurrency_limits"] = [
            {"key": "database", "value": "warehouse", "limit": W4_LIMIT}
        ]
    return {"execution": {"config": config}}


def _measure(workload: WorkloadSpec, ctx: RunContext, *, with_redis: bool) -> Measurement:
    if dask_executor is None:
        raise SystemUnavailable("dask.distributed is not installed: pip install 'coreexec[dask]'")
    if workload.base not in ("W1", "W2", "W3", "W4") or (
        workload.base == "W1" and (workload.width or W1_DEFAULT_WIDTH) != W1_DEFAULT_WIDTH
    ):
        raise SystemUnavailable(f"{workload.name} is not a Dask bench workload")
    redis_url = None
    if with_redis:
        from bench.baselines.processes import redis_server

        redis_url = ctx.resource("redis", redis_server).url
    cluster = ctx.resource("dask-local-cluster", local_cluster)
    instance = ctx.resource("coreexec-home", durable_instance)
    reference = f"{__name__}:{job_attribute(workload)}"
    config = run_config(workload, cluster.scheduler_address, redis_url)
    expected = expected_intervals(workload)

    def run_once() -> Mapping[str, float]:
        with IntervalCapture() as capture:
            result = execute_job(reference, config, instance=instance)
        check_result(workload, result)
        if expected:
            return {"max_concurrency": float(capture.max_concurrency(expected=expected))}
        return {}

    return ctx.measure(run_once)


def run(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """The Dask executor reporting on a Dask topic."""
    return _measure(workload, ctx, with_redis=False)


def run_redis(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """The Dask executor with the attempt runner on a Redis stream."""
    return _measure(workload, ctx, with_redis=True)
