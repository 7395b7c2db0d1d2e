"""coreexec's multiprocess executor on W1-W4, by start method.

``run`` is the executor as users get it (forkserver, the default); ``run_spawn`` the
same with ``start_method: {spawn: {}}``, to show why forkserver is the default. Both use
``max_concurrent: 4`` and, for W4, the ``database=warehouse`` limit of 2. Each timed run
is a whole ``execute_job``: pool start, every step, and the pool's shutdown. The fork
server itself is started by the warm-up run, like a celery worker started beforehand.

Extras per run: ``max_concurrency`` (W3/W4, from the intervals the sleeping steps
record) and ``workers`` (distinct worker processes that ran steps).
"""

from __future__ import annotations

from collections.abc import Mapping
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
    check_result,
    durable_instance,
    expected_intervals,
    job_reference,
)
from coreexec import EventKind
from coreexec.runs.execute import execute_job


def run_config(workload: WorkloadSpec, start_method: str) -> dict[str, Any]:
    """The run config of one workload: max_concurrent 4, W4's limit, the start method."""
    config: dict[str, Any] = {
        "max_concurrent": MAX_CONCURRENT,
        "start_method": {start_method: {}},
    }
    if workload.base == "W4":
        config["tag_concurrency_limits"] = [
            {"key": "database", "value": "warehouse", "limit": W4_LIMIT}
        ]
    return {"execution": {"config": {"multiprocess": config}}}


def _measure(workload: WorkloadSpec, ctx: RunContext, start_method: str) -> Measurement:
    if workload.base not in ("W1", "W2", "W3", "W4"):
        raise SystemUnavailable(f"{workload.name} is not a multiprocess workload")
    instance = ctx.resource("coreexec-home", durable_instance)
    reference = job_reference(workload)
    config = run_config(workload, start_method)
    expected = expected_intervals(workload)

    def run_once() -> Mapping[str, float]:
        with IntervalCapture() as capture:
            result = execute_job(reference, config, instance=instance)
        check_result(workload, result)
        pids = {
            event.data.get("pid") for event in result.events if event.kind is EventKind.STEP_START
        }
        extras = {"workers": float(len(pids))}
        if expected:
            extras["max_concurrency"] = float(capture.max_concurrency(expected=expected))
        return extras

    return ctx.measure(run_once)


def run(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """The multiprocess executor with its default start method (forkserver)."""
    return _measure(workload, ctx, "forkserver")


def run_spawn(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """The multiprocess executor starting its workers with spawn."""
    return _measure(workload, ctx, "spawn")
