"""Jobs for the submission, cancel and resume tests (``tests.jobs.submission_jobs:<name>``).

Every step execution appends one line (its pid) to ``$COREEXEC_HOME/marks/<step_key>``,
so a test counts how often a step ran in whatever process ran it. A running step keeps
its pid in ``$COREEXEC_HOME/pids/<step_key>`` while it runs. The step ``gated`` waits until
the file ``$COREEXEC_HOME/gates/gated`` exists, so a test can act while it runs.

Each job exists twice: ``*_local`` on the in-process executor (the coordinator runs the
steps itself), and without suffix on the Celery executor.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from coreexec import StepContext, job, step
from coreexec.executors import ExecutorDefinition, in_process_executor


def _home() -> Path:
    return Path(os.environ["COREEXEC_HOME"])


def mark_path(step_key: str) -> Path:
    return _home() / "marks" / step_key


def pid_path(step_key: str) -> Path:
    return _home() / "pids" / step_key


def gate_path(step_key: str) -> Path:
    return _home() / "gates" / step_key


def runs_of(step_key: str, home: Path | None = None) -> int:
    """How many times ``step_key`` has executed (lines in its mark file)."""
    path = (home or _home()) / "marks" / step_key
    return len(path.read_text().splitlines()) if path.exists() else 0


def _mark(step_key: str) -> None:
    path = mark_path(step_key)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as marks:
        marks.write(f"{os.getpid()}\n")


GATE_POLL_S = 0.02


def _wait_for_gate(step_key: str) -> None:
    pids = pid_path(step_key)
    pids.parent.mkdir(parents=True, exist_ok=True)
    pids.write_text(str(os.getpid()))
    try:
        # The step itself waits here (this is the work being cancelled or outlived);
        # tests never sleep, they wait on the files this writes.
        while not gate_path(step_key).exists():
            time.sleep(GATE_POLL_S)
    finally:
        pids.unlink(missing_ok=True)


@step
def first() -> int:
    _mark("first")
    return 1


@step
def second(value: int) -> int:
    _mark("second")
    return value + 1


@step
def third(value: int) -> int:
    _mark("third")
    return value * 10


@step
def gated(value: int) -> int:
    _mark("gated")
    _wait_for_gate("gated")
    return value + 100


@step
def last(value: int) -> int:
    _mark("last")
    return value * 2


@step
def part(context: StepContext, value: int) -> int:
    _mark(context.step_key)
    return value * 3


@step
def join(values: list[int]) -> int:
    _mark("join")
    return sum(values)


def _chain() -> None:
    third(second(first()))


def _gated_chain() -> None:
    last(gated(first()))


def _fan() -> None:
    root = first()
    join([part.alias(f"part_{index}")(root) for index in range(3)])


chain_local = job(name="chain_local", executor_def=in_process_executor)(_chain)
gated_local = job(name="gated_local", executor_def=in_process_executor)(_gated_chain)
fan_local = job(name="fan_local", executor_def=in_process_executor)(_fan)


@step
def flaky(value: int) -> int:
    """Fails until the file ``$COREEXEC_HOME/flaky-ok`` exists (no retry policy)."""
    _mark("flaky")
    if not (_home() / "flaky-ok").exists():
        raise RuntimeError("flaky fails until flaky-ok exists")
    return value + 1


def _flaky_chain() -> None:
    last(flaky(first()))


flaky_local = job(name="flaky_local", executor_def=in_process_executor)(_flaky_chain)


def _celery_executor() -> ExecutorDefinition:
    from celery_app import celery_executor

    # Short heartbeats, so a lost attempt is noticed within seconds in tests.
    return celery_executor.configured(
        {"heartbeat_interval_s": 0.5, "heartbeat_timeout_s": 3.0, "queued_timeout_s": 30.0}
    )


chain = job(name="chain", executor_def=_celery_executor())(_chain)
gated_chain = job(name="gated_chain", executor_def=_celery_executor())(_gated_chain)
fan = job(name="fan", executor_def=_celery_executor())(_fan)
