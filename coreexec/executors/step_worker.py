"""What a multiprocess executor's worker process runs: :func:`step_worker_main`.

A worker loads the job once by reference, then runs each step attempt the coordinator
sends it; events go back over the worker's pipe as they happen. The coordinator's side
is :class:`~coreexec.executors.multiprocess_dispatcher.MultiprocessDispatcher`.
"""

from __future__ import annotations

import os
import traceback
from dataclasses import dataclass
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.events import Event
from coreexec.executors.pool_worker import WorkerChannel
from coreexec.io_managers import IOManager
from coreexec.plan import PlannedStep
from coreexec.reference import load_job
from coreexec.step_runner import StepRun, run_step


@dataclass(frozen=True)
class WorkerInit:
    """What every worker of a run gets once, when it starts."""

    run_id: str
    job_reference: str
    run_config: dict[str, Any]
    run_tags: dict[str, str]
    io_manager: IOManager
    environ: dict[str, str]
    """The coordinator's environment: a forked worker would otherwise see the fork
    server's, as it was when the server started."""


def step_worker_main(channel: WorkerChannel, init: WorkerInit) -> None:
    """A worker's life: load the job, then run each step attempt it is sent.

    Messages to the coordinator: ``("ready", pid)``, ``("init_failed", text)``,
    ``("event", Event)`` and ``("crashed", attempt_id, text)`` when the runner itself
    failed. Messages from it: ``("run", PlannedStep, StepAttempt)`` and ``("stop",)``.
    """
    if os.environ != init.environ:
        os.environ.clear()
        os.environ.update(init.environ)
    try:
        job = load_job(init.job_reference)
    except Exception as exc:
        channel.send(("init_failed", f"loading job {init.job_reference!r} failed: {exc}"))
        return
    channel.send(("ready", os.getpid()))

    def emit(event: Event) -> None:
        channel.send(("event", event))

    while True:
        message = channel.recv()
        if message is None or message[0] != "run":
            return
        planned: PlannedStep = message[1]
        attempt: StepAttempt = message[2]
        try:
            run_step(
                StepRun(
                    run_id=init.run_id,
                    job=job,
                    step=planned,
                    attempt=attempt,
                    run_config=init.run_config,
                    io_manager=init.io_manager,
                    run_tags=init.run_tags,
                ),
                emit,
            )
        except Exception:
            channel.send(("crashed", attempt.attempt_id, traceback.format_exc()))
