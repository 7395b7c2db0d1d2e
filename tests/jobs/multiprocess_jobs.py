"""Jobs the executor tests load by reference (``tests.jobs.multiprocess_jobs:<name>``).

Steps that tests need to steer read run tags: ``pid_dir`` (write ``<step_key>.<attempt>``
holding the worker's pid there) and ``sleep_s`` (how long a sleeping step sleeps).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from coreexec import Definitions, RetryPolicy, StepContext, job, step
from coreexec.executors import in_process_executor, multiprocess_executor
from coreexec.tags import EXECUTOR_TAG


def _write_pid(context: StepContext) -> None:
    pid_dir = context.run_tags.get("pid_dir")
    if pid_dir:
        target = Path(pid_dir) / f"{context.step_key}.{context.attempt}"
        tmp = target.with_suffix(".tmp")
        tmp.write_text(str(os.getpid()))
        tmp.rename(target)  # the test sees a complete file or none


@step
def one() -> int:
    return 1


@step
def add_one(x: int) -> int:
    return x + 1


@step
def gather(values: list[int]) -> int:
    return sum(values)


@step
def where(context: StepContext) -> int:
    """The pid of the process running the step."""
    return os.getpid()


@step
def nap(context: StepContext) -> int:
    _write_pid(context)
    time.sleep(float(context.run_tags.get("sleep_s", "0.2")))
    return os.getpid()


@step
def block(context: StepContext) -> int:
    """Writes its pid, then sleeps long enough that only a kill or a cancel ends it."""
    _write_pid(context)
    time.sleep(60)
    return os.getpid()


@step(retry_policy=RetryPolicy(max_retries=2))
def dies_first_time(context: StepContext, x: int) -> int:
    """Attempt 1 writes its pid and waits to be killed; attempt 2 succeeds."""
    _write_pid(context)
    if context.attempt == 1:
        time.sleep(60)
    return x * 10


@step(retry_policy=RetryPolicy(max_retries=1))
def segfaults_first_time(context: StepContext) -> int:
    if context.attempt == 1:
        os.kill(os.getpid(), signal.SIGSEGV)
    return 7


@step
def dies_always(context: StepContext) -> int:
    os.kill(os.getpid(), signal.SIGKILL)
    return 0


@job
def chain() -> None:
    value = one()
    for i in range(4):
        value = add_one.alias(f"add_{i}")(value)


@job
def fanout() -> None:
    root = one()
    gather([add_one.alias(f"leaf_{i}")(root) for i in range(8)])


@job
def pids() -> None:
    where()
    where.with_tags({EXECUTOR_TAG: "in_process"}).alias("where_here")()


@job
def naps() -> None:
    for i in range(6):
        nap.alias(f"nap_{i}")()


@job
def tagged_naps() -> None:
    for i in range(4):
        nap.with_tags({"database": "warehouse"}).alias(f"warehouse_{i}")()
    for i in range(2):
        nap.alias(f"free_{i}")()


@job
def team_naps() -> None:
    for team in ("a", "b"):
        for i in range(3):
            nap.with_tags({"team": team}).alias(f"team_{team}_{i}")()


@job
def gpu_naps() -> None:
    for i in range(3):
        nap.with_tags({"gpu": f"card{i}"}).alias(f"gpu_{i}")()


@job
def killed_then_retried() -> None:
    dies_first_time(one())


@job
def segfault_then_retried() -> None:
    segfaults_first_time()


@job
def always_killed() -> None:
    dies_always()
    one()


@job
def blockers() -> None:
    for i in range(3):
        block.alias(f"block_{i}")()
    for i in range(3):
        # Never start while the blockers run, at max_concurrent 3.
        one.alias(f"later_{i}")()


@job
def bad_executor_tag() -> None:
    one.with_tags({EXECUTOR_TAG: "on_the_moon"})()


@job(executor_def=in_process_executor)
def pinned_in_process() -> None:
    where()


@job
def unpinned() -> None:
    where()


defs_multiprocess = Definitions(jobs=[pinned_in_process, unpinned], executor=multiprocess_executor)
defs_in_process = Definitions(jobs=[unpinned], executor=in_process_executor)
