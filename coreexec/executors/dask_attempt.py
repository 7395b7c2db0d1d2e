"""One step attempt as a Dask worker runs it, without anything of Dask.

:func:`run_attempt_here` takes identifiers (:class:`DaskAttempt`), reads the run record
from the run storage, loads the job by reference (once per process), runs the step
through :func:`coreexec.step_runner.run_step` with its outputs in the instance's IO
manager, and reports every event through ``emit``. It is the one place to swap for the
launch layer's attempt runner once coreexec has it.

An attempt runs at most once: the first run claims it with a file created exclusively
under ``<home>/dask-claims/<run id>/`` (the instance home every worker shares anyway for
outputs), and a second run of the same attempt finds the claim and runs nothing. Dask
runs a task again when the worker running it is lost; the coordinator retries the step
as a new attempt instead, and fences the old one with the same file.

A running attempt can be stopped from another thread of the same process
(:func:`interrupt_attempts`, which the coordinator runs on every Dask worker when a run
is cancelled): ``KeyboardInterrupt`` is raised in the thread running the step at its next
Python instruction, and the runner reports the attempt as cancelled. A step blocked in a
C call (a long ``time.sleep``, a socket read) is stopped when that call returns.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from coreexec.active_execution import StepAttempt
from coreexec.context import EventSink
from coreexec.errors import CoreExecError
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.job import JobDefinition
from coreexec.plan import ExecutionPlan
from coreexec.reference import load_job
from coreexec.retry import FailureClass
from coreexec.step_runner import StepOutcome, StepRun, run_step


@dataclass(frozen=True)
class DaskAttempt:
    """What a Dask task carries: identifiers only (and where the run storage is)."""

    run_id: str
    step_key: str
    attempt: int
    attempt_id: str
    job_reference: str
    home: str | None = None
    """The coordinator's instance home, when its run storage is the default one there;
    else the worker's ``$COREEXEC_HOME`` / ``$COREEXEC_STORAGE_URL`` say where it is."""


_jobs: dict[str, tuple[JobDefinition, ExecutionPlan]] = {}
_instances: dict[str | None, Instance] = {}
_threads: dict[str, int] = {}
_threads_lock = threading.Lock()


def _job(reference: str) -> tuple[JobDefinition, ExecutionPlan]:
    found = _jobs.get(reference)
    if found is None:
        job = load_job(reference)
        found = _jobs[reference] = (job, ExecutionPlan.from_job(job, job_reference=reference))
    return found


def instance_for(home: str | None) -> Instance:
    """The instance at ``home`` (else the one of the environment), one per process."""
    found = _instances.get(home)
    if found is None:
        found = _instances[home] = Instance.at(Path(home)) if home else Instance.from_env()
    return found


def _step_run(spec: DaskAttempt) -> StepRun:
    instance = instance_for(spec.home)
    record = instance.storage.get_run(spec.run_id)
    job, plan = _job(spec.job_reference)
    return StepRun(
        run_id=spec.run_id,
        job=job,
        step=plan.step(spec.step_key),
        attempt=StepAttempt(spec.step_key, spec.attempt, spec.attempt_id),
        run_config=record.run_config,
        io_manager=instance.io_manager(),
        run_tags=record.tags,
    )


def _cannot_start(spec: DaskAttempt, exc: CoreExecError, emit: EventSink) -> StepOutcome:
    message = f"a Dask worker cannot run step {spec.step_key!r}: {exc}"
    emit(
        Event(
            kind=EventKind.STEP_FAILURE,
            run_id=spec.run_id,
            timestamp=time.time(),
            step_key=spec.step_key,
            attempt=spec.attempt,
            attempt_id=spec.attempt_id,
            message=message,
            data={
                "failure_class": FailureClass.INFRASTRUCTURE.value,
                "retryable": True,
                "error": {"type": type(exc).__name__, "message": str(exc), "traceback": ""},
            },
        )
    )
    return StepOutcome(False, exc)


def claims_dir(home: Path, run_id: str) -> Path:
    """Where the attempts of a run are claimed (removed when the run ends)."""
    return home / "dask-claims" / run_id


def claim(home: Path, run_id: str, attempt_id: str) -> bool:
    """Claim an attempt; False when it was claimed (run, or fenced) before."""
    directory = claims_dir(home, run_id)
    directory.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(directory / attempt_id, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def drop_claims(home: Path, run_id: str) -> None:
    shutil.rmtree(claims_dir(home, run_id), ignore_errors=True)


def run_attempt_here(spec: DaskAttempt, emit: EventSink) -> StepOutcome | None:
    """Run one attempt in this process; never raises for the step's own failure.

    Returns None, having run nothing, when the attempt was claimed before (Dask running
    it again after its first worker was lost, or the coordinator fenced it). A run or
    job this process cannot load is reported as an infrastructure failure (another
    worker may have what this one lacks).
    """
    try:
        if not claim(instance_for(spec.home).home, spec.run_id, spec.attempt_id):
            return None
        run = _step_run(spec)
    except CoreExecError as exc:
        return _cannot_start(spec, exc, emit)
    with interruptible(spec.attempt_id):
        return run_step(run, emit)


@contextlib.contextmanager
def interruptible(attempt_id: str) -> Iterator[None]:
    """While inside, :func:`interrupt_attempts` can stop this thread's attempt."""
    with _threads_lock:
        _threads[attempt_id] = threading.get_ident()
    try:
        yield
    finally:
        with _threads_lock:
            _threads.pop(attempt_id, None)


def interrupt_attempts(attempt_ids: Iterable[str]) -> list[str]:
    """Raise ``KeyboardInterrupt`` in the threads of this process running these attempts;
    returns the ids of those found here."""
    found: list[str] = []
    with _threads_lock:
        for attempt_id in attempt_ids:
            thread_id = _threads.get(attempt_id)
            if thread_id is None:
                continue
            ctypes.pythonapi.PyThreadState_SetAsyncExc(
                ctypes.c_ulong(thread_id), ctypes.py_object(KeyboardInterrupt)
            )
            found.append(attempt_id)
    return found
