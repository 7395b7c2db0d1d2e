"""Jobs the Dask executor tests run by reference (``tests.jobs.dask_jobs:<name>``).

Steps that tests steer read run tags: ``mark_dir`` (steps write
``<step_key>.<attempt>.<what>`` files holding their pid there) and ``sleep_s``.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from coreexec import RetryPolicy, StepContext, job, step
from coreexec.executors import dask_executor
from coreexec.executors.dask import RESOURCES_TAG
from coreexec.tags import PRIORITY_TAG

FANOUT_WIDTH = 6


def mark(context: StepContext, what: str) -> None:
    mark_dir = Path(context.run_tags["mark_dir"])
    target = mark_dir / f"{context.step_key}.{context.attempt}.{what}"
    tmp = target.with_suffix(".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(target)  # the test sees a complete file or none


def interval(context: StepContext) -> dict[str, Any]:
    entered = time.monotonic()
    time.sleep(float(context.run_tags.get("sleep_s", "0.2")))
    return {"entered": entered, "left": time.monotonic(), "pid": os.getpid()}


# -- fan-out / fan-in -------------------------------------------------------------------


@step
def source() -> list[int]:
    return list(range(1, FANOUT_WIDTH + 1))


@step
def square(context: StepContext, values: list[int]) -> int:
    return values[int(context.step_key.rsplit("_", 1)[1])] ** 2


@step
def join(parts: list[int]) -> int:
    return sum(parts)


@job(executor_def=dask_executor)
def fanout() -> None:
    values = source()
    join([square.alias(f"square_{i}")(values) for i in range(FANOUT_WIDTH)])


# -- priority -----------------------------------------------------------------------------


@step
def opener() -> int:
    return 0


@step
def ranked(value: int) -> int:
    return value


@job(executor_def=dask_executor)
def prioritized() -> None:
    first = opener()
    for level in (-5, 0, 10):
        for i in range(3):
            ranked.with_tags({PRIORITY_TAG: level}).alias(f"p{level + 5}_{i}")(first)


# -- resources --------------------------------------------------------------------------


@step
def pid_of() -> int:
    return os.getpid()


@job(executor_def=dask_executor)
def gpu_and_plain() -> None:
    gpu = pid_of.with_tags({RESOURCES_TAG: '{"GPU": 1}'})
    for i in range(4):
        gpu.alias(f"gpu_{i}")()
        pid_of.alias(f"plain_{i}")()


# -- worker loss ---------------------------------------------------------------------------


@step(retry_policy=RetryPolicy(max_retries=1))
def dies_first_time(context: StepContext) -> int:
    """Attempt 1 writes its pid and waits to be killed; attempt 2 succeeds."""
    mark(context, "pid")
    if context.attempt == 1:
        time.sleep(60)
    return 10 * context.attempt


@job(executor_def=dask_executor)
def survives_a_lost_worker() -> None:
    join([dies_first_time(), square.alias("square_0")(source())])


# -- cancellation --------------------------------------------------------------------------


@step
def spins(context: StepContext) -> int:
    """Runs until interrupted, then says so."""
    mark(context, "entered")
    try:
        while True:
            time.sleep(0.05)
    except KeyboardInterrupt:
        mark(context, "stopped")
        raise


@step
def after(value: int) -> int:
    return value


@job(executor_def=dask_executor)
def spinners() -> None:
    for i in range(2):
        after.alias(f"after_{i}")(spins.alias(f"spin_{i}")())


# -- tag limits ------------------------------------------------------------------------------


@step(tags={"database": "warehouse"})
def warehouse_nap(context: StepContext) -> dict[str, Any]:
    return interval(context)


@job(executor_def=dask_executor)
def warehouse_naps() -> None:
    for i in range(3):
        warehouse_nap.alias(f"nap_{i}")()


# -- async steps ------------------------------------------------------------------------------


@step
async def square_later(context: StepContext, values: list[int]) -> int:
    await asyncio.sleep(0.01)
    return values[int(context.step_key.rsplit("_", 1)[1])] ** 2


@job(executor_def=dask_executor)
def async_fanout() -> None:
    values = source()
    join([square_later.alias(f"square_{i}")(values) for i in range(FANOUT_WIDTH)])
