"""Dagster baseline: the workloads as Dagster ops and jobs, run inside bench/.venv-dagster.

Run by :mod:`bench.baselines.dagster_runner` as
``.venv-dagster/bin/python -m bench.baselines.dagster_workloads --workload W1 --width 100
--executor in_process|forkserver|spawn|dask --runs 3 --warmups 1 --out result.json``;
it times the runs itself and writes ``{"dagster_version", "samples": [...]}`` as JSON.
``dask`` starts a ``distributed.LocalCluster`` of 4 worker processes x 1 thread before the
warm-up and points dagster-dask's executor at it (``cluster: {existing: {address}}``).

This module imports Dagster, dagster-dask (only for ``dask``) and the standard library
(plus the stdlib-only :mod:`bench.harness`), because the venv holds nothing else.
"""
# mypy: ignore-errors
# (Dagster is not installed in the project's interpreter, so mypy cannot see its types.)

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import dagster
from dagster import (
    DagsterInstance,
    JobDefinition,
    build_reconstructable_job,
    execute_job,
    job,
    op,
)
from dagster._core.execution.api import create_execution_plan

from bench.harness import (
    W2_STEPS,
    W3_SLEEP_S,
    W3_STEPS,
    W4_LIMIT,
    W4_SLEEP_S,
    W4_STEPS,
    W5_STEPS,
    IntervalCapture,
    record_interval,
)

MODULE = "bench.baselines.dagster_workloads"
MAX_CONCURRENT = 4


@op
def root() -> int:
    return 1


@op
def leaf(x: int) -> int:
    return x + 1


@op
def join(xs: list[int]) -> int:
    return sum(xs)


@op
def nap() -> None:
    started = time.time()
    time.sleep(W3_SLEEP_S)
    record_interval(started, time.time())


@op(tags={"database": "warehouse"})
def warehouse_nap() -> None:
    started = time.time()
    time.sleep(W4_SLEEP_S)
    record_interval(started, time.time())


def make_job(workload: str, width: int = 0, executor_def: Any = None) -> JobDefinition:
    """The job of a workload; also the reconstructor multiprocess children call."""
    maker = _JOB_MAKERS.get(workload)
    if maker is None:
        raise SystemExit(f"dagster_workloads: no workload {workload!r}")
    return maker(width, executor_def)


def _fanout_job(width: int, executor_def: Any) -> JobDefinition:
    @job(name=f"w1_fanout_{width}", executor_def=executor_def)
    def fanout() -> None:
        r = root()
        join([leaf.alias(f"leaf_{i}")(r) for i in range(width)])

    return fanout


def _chain_job(width: int, executor_def: Any) -> JobDefinition:
    @job(name="w2_chain", executor_def=executor_def)
    def chain() -> None:
        x = root()
        for i in range(W2_STEPS - 1):
            x = leaf.alias(f"leaf_{i}")(x)

    return chain


def _sleepy_job(width: int, executor_def: Any) -> JobDefinition:
    @job(name="w3_sleepy", executor_def=executor_def)
    def sleepy() -> None:
        for i in range(W3_STEPS):
            nap.alias(f"nap_{i}")()

    return sleepy


def _tag_limited_job(width: int, executor_def: Any) -> JobDefinition:
    @job(name="w4_tag_limited", executor_def=executor_def)
    def tag_limited() -> None:
        for i in range(W4_STEPS):
            warehouse_nap.alias(f"warehouse_nap_{i}")()

    return tag_limited


_JOB_MAKERS: dict[str, Callable[[int, Any], JobDefinition]] = {
    "W1": _fanout_job,
    "W5": _fanout_job,
    "W2": _chain_job,
    "W3": _sleepy_job,
    "W4": _tag_limited_job,
}


def _check(result: Any, workload: str, width: int) -> None:
    if not result.success:
        raise SystemExit(f"dagster run of {workload} failed")
    if workload == "W1" and result.output_for_node("join") != 2 * width:
        raise SystemExit(f"dagster W1 joined {result.output_for_node('join')}")


def _expected_intervals(workload: str) -> int:
    return {"W3": W3_STEPS, "W4": W4_STEPS}.get(workload, 0)


def in_process_once(workload: str, width: int) -> dict[str, float]:
    job_def = make_job(workload, width)
    with IntervalCapture() as capture:
        result = job_def.execute_in_process()
    _check(result, workload, width)
    expected = _expected_intervals(workload)
    return {"max_concurrency": capture.max_concurrency(expected=expected)} if expected else {}


def multiprocess_once(
    workload: str, width: int, start_method: str, instance: DagsterInstance
) -> dict[str, float]:
    config: dict[str, Any] = {"max_concurrent": MAX_CONCURRENT, "start_method": {start_method: {}}}
    if workload == "W4":
        config["tag_concurrency_limits"] = [
            {"key": "database", "value": "warehouse", "limit": W4_LIMIT}
        ]
    recon = build_reconstructable_job(MODULE, "make_job", (workload, width))
    with (
        IntervalCapture() as capture,
        execute_job(
            recon, instance=instance, run_config={"execution": {"config": {"multiprocess": config}}}
        ) as result,
    ):
        _check(result, workload, width)
    expected = _expected_intervals(workload)
    return {"max_concurrency": capture.max_concurrency(expected=expected)} if expected else {}


def make_dask_job(workload: str, width: int = 0) -> JobDefinition:
    """The job on dagster-dask's executor; the reconstructor its Dask workers call."""
    from dagster_dask import dask_executor

    return make_job(workload, width, executor_def=dask_executor)


@contextlib.contextmanager
def local_cluster() -> Iterator[Any]:
    """4 worker processes x 1 thread, as coreexec-dask's cluster (``bench/systems_dask.py``)."""
    import distributed

    cluster = distributed.LocalCluster(
        n_workers=MAX_CONCURRENT, threads_per_worker=1, processes=True, dashboard_address=":0"
    )
    try:
        yield cluster
    finally:
        cluster.close()


def dask_once(
    workload: str, width: int, address: str, instance: DagsterInstance
) -> dict[str, float]:
    if workload == "W4":
        # dagster-dask's config has no tag_concurrency_limits: W4 cannot be expressed.
        raise SystemExit("dagster-dask has no tag concurrency limits; W4 is not run")
    recon = build_reconstructable_job(MODULE, "make_dask_job", (workload, width))
    run_config = {"execution": {"config": {"cluster": {"existing": {"address": address}}}}}
    with (
        IntervalCapture() as capture,
        execute_job(recon, instance=instance, run_config=run_config) as result,
    ):
        if workload == "W1":
            # Every Dask task gets the plan's known state of the run's start, so the join's
            # fan-in sees no leaf output as loadable and sums []: the run succeeds with 0
            # (all leaves ran). The value is kept as a note, not a failure, to time the run.
            if not result.success:
                raise SystemExit("dagster run of W1 failed")
            return {"join_value": float(result.output_for_node("join"))}
        _check(result, workload, width)
    expected = _expected_intervals(workload)
    return {"max_concurrency": capture.max_concurrency(expected=expected)} if expected else {}


def plan_sample() -> dict[str, Any]:
    """W5: build a 10,000-step job definition, then its execution plan; time both."""
    started = time.perf_counter()
    job_def = make_job("W5", W5_STEPS - 2)
    built = time.perf_counter()
    plan = create_execution_plan(job_def)
    planned = time.perf_counter()
    if len(plan.step_keys_to_execute) != W5_STEPS:
        raise SystemExit(f"dagster W5 plan has {len(plan.step_keys_to_execute)} steps")
    return {"wall_s": planned - built, "extras": {"job_def_s": built - started}}


def _timed(
    run_once: Callable[[], dict[str, float]], runs: int, warmups: int
) -> list[dict[str, Any]]:
    for _ in range(warmups):
        run_once()
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        extras = run_once()
        samples.append({"wall_s": time.perf_counter() - started, "extras": extras})
    return samples


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", required=True, choices=["W1", "W2", "W3", "W4", "W5"])
    parser.add_argument("--width", type=int, default=100)
    parser.add_argument(
        "--executor", required=True, choices=["in_process", "forkserver", "spawn", "dask"]
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmups", type=int, default=1)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    if args.workload == "W5":
        for _ in range(args.warmups):
            plan_sample()
        samples = [plan_sample() for _ in range(args.runs)]
    elif args.executor == "in_process":
        samples = _timed(
            lambda: in_process_once(args.workload, args.width), args.runs, args.warmups
        )
    elif args.executor == "dask":
        with (
            tempfile.TemporaryDirectory(prefix="bench-dagster-home-") as home,
            DagsterInstance.local_temp(tempdir=home) as instance,
            local_cluster() as cluster,
        ):
            samples = _timed(
                lambda: dask_once(args.workload, args.width, cluster.scheduler_address, instance),
                args.runs,
                args.warmups,
            )
    else:
        with (
            tempfile.TemporaryDirectory(prefix="bench-dagster-home-") as home,
            DagsterInstance.local_temp(tempdir=home) as instance,
        ):
            samples = _timed(
                lambda: multiprocess_once(args.workload, args.width, args.executor, instance),
                args.runs,
                args.warmups,
            )
    with open(args.out, "w", encoding="utf-8") as out:
        json.dump({"dagster_version": dagster.__version__, "samples": samples}, out)


if __name__ == "__main__":
    main()
