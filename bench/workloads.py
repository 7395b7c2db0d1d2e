"""The workloads as coreexec jobs, and the coreexec systems that run them.

Every job is a module-level attribute, so cross-process executors can load it by
reference (``bench.workloads:w1_fanout``). Wider fanouts come from
:func:`make_fanout_job`, and ``bench.workloads:w1_fanout_1000`` (any width) resolves
through the module's ``__getattr__``, so they are loadable by reference too.

Adding a coreexec system: write ``def run_x(workload, ctx) -> Measurement`` here (see
:func:`run_multiprocess`) and name it in :data:`bench.harness.SYSTEMS`.
"""

from __future__ import annotations

import contextlib
import importlib
import re
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bench.harness import (
    L1_PAIRS,
    W1_DEFAULT_WIDTH,
    W2_STEPS,
    W3_SLEEP_S,
    W3_STEPS,
    W4_LIMIT,
    W4_SLEEP_S,
    W4_STEPS,
    W5_STEPS,
    BenchError,
    IntervalCapture,
    Measurement,
    RunContext,
    Sample,
    SystemUnavailable,
    WorkloadSpec,
    record_interval,
)
from coreexec import ExecutionPlan, ExecutionResult, Instance, JobDefinition, job, step
from coreexec.runs.execute import execute_job

MODULE = __name__
MAX_CONCURRENT = 4

# ----------------------------------------------------------------------------- steps


@step
def root() -> int:
    return 1


@step
def leaf(x: int) -> int:
    return x + 1


@step
def join(xs: list[int]) -> int:
    return sum(xs)


@step
def nap() -> float:
    """W3: sleep, and record when, so the harness can check the parallelism."""
    started = time.time()
    time.sleep(W3_SLEEP_S)
    ended = time.time()
    record_interval(started, ended)
    return ended - started


@step(tags={"database": "warehouse"})
def warehouse_nap() -> float:
    """W4: a step the ``database=warehouse`` limit applies to."""
    started = time.time()
    time.sleep(W4_SLEEP_S)
    ended = time.time()
    record_interval(started, ended)
    return ended - started


# ------------------------------------------------------------------------------ jobs


def make_fanout_job(width: int, *, name: str | None = None) -> JobDefinition:
    """W1 of any width: 1 root -> ``width`` leaves -> 1 join (``width + 2`` steps)."""

    def fanout() -> None:
        r = root()
        join([leaf.alias(f"leaf_{i}")(r) for i in range(width)])

    return job(name=name or f"w1_fanout_{width}")(fanout)


w1_fanout = make_fanout_job(W1_DEFAULT_WIDTH, name="w1_fanout")


@job
def w2_chain() -> None:
    x = root()
    for i in range(W2_STEPS - 1):
        x = leaf.alias(f"leaf_{i}")(x)


@job
def w3_sleepy() -> None:
    for i in range(W3_STEPS):
        nap.alias(f"nap_{i}")()


@job
def w4_tag_limited() -> None:
    for i in range(W4_STEPS):
        warehouse_nap.alias(f"warehouse_nap_{i}")()


_WIDE_FANOUT = re.compile(r"^w1_fanout_(\d+)$")
_wide_fanouts: dict[str, JobDefinition] = {}


def __getattr__(name: str) -> JobDefinition:
    """``w1_fanout_<width>``: built on first use, so any width is loadable by reference."""
    match = _WIDE_FANOUT.match(name)
    if match is None:
        raise AttributeError(f"module {MODULE!r} has no attribute {name!r}")
    if name not in _wide_fanouts:
        _wide_fanouts[name] = make_fanout_job(int(match.group(1)))
    return _wide_fanouts[name]


def job_attribute(workload: WorkloadSpec) -> str:
    """The module attribute holding a workload's job."""
    if workload.base == "W1":
        width = workload.width or W1_DEFAULT_WIDTH
        return "w1_fanout" if width == W1_DEFAULT_WIDTH else f"w1_fanout_{width}"
    names = {"W2": "w2_chain", "W3": "w3_sleepy", "W4": "w4_tag_limited"}
    if workload.base not in names:
        raise BenchError(f"{workload.name} is not a job workload")
    return names[workload.base]


def job_reference(workload: WorkloadSpec) -> str:
    """``bench.workloads:<attribute>``: what cross-process executors load."""
    return f"{MODULE}:{job_attribute(workload)}"


def job_for(workload: WorkloadSpec) -> JobDefinition:
    definition = getattr(importlib.import_module(MODULE), job_attribute(workload))
    assert isinstance(definition, JobDefinition)
    return definition


def expected_intervals(workload: WorkloadSpec) -> int:
    """How many sleeping steps record an interval (0: the workload has none)."""
    return {"W3": W3_STEPS, "W4": W4_STEPS}.get(workload.base, 0)


def check_result(workload: WorkloadSpec, result: ExecutionResult) -> None:
    """A run that failed or computed the wrong answer must not produce a figure."""
    if not result.success:
        raise BenchError(f"{workload.name} run failed: steps {result.failed_steps}")
    if workload.base == "W1":
        width = workload.width or W1_DEFAULT_WIDTH
        total = result.output_for("join")
        if total != 2 * width:
            raise BenchError(f"{workload.name} joined {total}, expected {2 * width}")


def _timed_run(workload: WorkloadSpec, execute: Any) -> Mapping[str, float]:
    expected = expected_intervals(workload)
    with IntervalCapture() as capture:
        result = execute()
    check_result(workload, result)
    if expected:
        return {"max_concurrency": capture.max_concurrency(expected=expected)}
    return {}


# --------------------------------------------------------------------------- systems


def plan_sample() -> Sample:
    """W5: build a 10,000-step job definition, then its plan; the plan is the figure."""
    started = time.perf_counter()
    definition = make_fanout_job(W5_STEPS - 2, name="w5_plan")
    built = time.perf_counter()
    plan = ExecutionPlan.from_job(definition)
    planned = time.perf_counter()
    if len(plan) != W5_STEPS:
        raise BenchError(f"W5 plan has {len(plan)} steps, expected {W5_STEPS}")
    return Sample(wall_s=planned - built, extras={"job_def_s": built - started})


def run_in_process(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """coreexec ``execute_in_process``: serial, in this process, outputs in memory."""
    if workload.base == "W5":
        for _ in range(ctx.warmups):
            plan_sample()
        samples = tuple(plan_sample() for _ in range(ctx.runs))
        return Measurement(samples=samples, warmups=ctx.warmups)
    definition = job_for(workload)
    return ctx.measure(lambda: _timed_run(workload, definition.execute_in_process))


@contextlib.contextmanager
def durable_instance() -> Iterator[Instance]:
    """A durable instance (SQLite + output files) in a directory removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="bench-coreexec-home-") as home:
        yield Instance.at(Path(home))


def run_multiprocess(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """coreexec multiprocess executor, max_concurrent 4; W4 with the warehouse limit 2."""
    executors = importlib.import_module("coreexec.executors")
    if not hasattr(executors, "multiprocess_executor"):
        raise SystemUnavailable("coreexec.executors.multiprocess_executor not written yet")
    instance = ctx.resource("coreexec-home", durable_instance)
    config: dict[str, Any] = {"max_concurrent": MAX_CONCURRENT}
    if workload.base == "W4":
        config["tag_concurrency_limits"] = [
            {"key": "database", "value": "warehouse", "limit": W4_LIMIT}
        ]
    run_config = {"execution": {"config": {"multiprocess": config}}}
    reference = job_reference(workload)
    return ctx.measure(
        lambda: _timed_run(workload, lambda: execute_job(reference, run_config, instance=instance))
    )


def run_limiter(workload: WorkloadSpec, ctx: RunContext) -> Measurement:
    """L1: acquire+release pairs on the Redis tag limiter (:mod:`bench.limiter_bench`).

    Each timed run is one call of ``run_l1``, which makes its own 1,000-pair warm-up and
    then times ``L1_PAIRS`` pairs; the wall is the time of those pairs, so the table's overhead per
    step is the mean time of one pair.
    """
    from bench.baselines.processes import redis_server
    from bench.limiter_bench import run_l1

    server = ctx.resource("redis", redis_server)
    samples = []
    for _ in range(ctx.runs):
        figures = run_l1(server.url, L1_PAIRS, repeats=1)
        samples.append(
            Sample(
                wall_s=L1_PAIRS / figures["pairs_per_s"],
                extras={name: figures[name] for name in ("pairs_per_s", "p50_us", "p99_us")},
            )
        )
    return Measurement(samples=tuple(samples), warmups=1)
