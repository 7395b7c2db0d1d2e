"""Running one step attempt in the current process.

Loads the inputs through the IO manager, calls the user's function inside an error
boundary that keeps the user's traceback, stores the outputs and reports every stage
as an event. Every executor runs steps through here, wherever the process is.
"""

from __future__ import annotations

import os
import signal
import socket
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.clock import SYSTEM_CLOCK, Clock
from coreexec.context import EventSink, StepContext, StepLogger
from coreexec.errors import CoreExecError, IOManagerError
from coreexec.events import Event, EventKind
from coreexec.io_managers import IOManager, OutputKey
from coreexec.job import JobDefinition
from coreexec.plan import PlannedStep
from coreexec.retry import Failure, FailureClass, RetryRequested
from coreexec.run_config import step_config

_HOST = socket.gethostname()


@dataclass(frozen=True)
class StepOutcome:
    """How an attempt ended; ``error`` is the user's exception when it raised one, and
    ``error_data`` the error as its failure event reported it (type, message,
    traceback)."""

    success: bool
    error: BaseException | None = None
    error_data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class StepRun:
    """Everything one attempt needs. Built where the step runs, from identifiers."""

    run_id: str
    job: JobDefinition
    step: PlannedStep
    attempt: StepAttempt
    run_config: Mapping[str, Any]
    io_manager: IOManager
    run_tags: Mapping[str, str]
    clock: Clock = SYSTEM_CLOCK


def _error_data(exc: BaseException, *, user_frames_only: bool) -> dict[str, Any]:
    frames = traceback.format_exception(exc)
    if user_frames_only:
        # Drop the runner's own frames so the traceback starts in the user's code.
        cut = next((i for i, line in enumerate(frames) if __file__ in line), None)
        if cut is not None and cut + 1 < len(frames):
            frames = [frames[0], *frames[cut + 1 :]]
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "traceback": "".join(frames),
    }


def _stopped_by(exc: BaseException) -> str:
    """Why a step was interrupted, in words: a pool process exits with ``-(256 - signum)``
    on a terminating signal (how a cancel stops a step), Ctrl-C is KeyboardInterrupt."""
    code = exc.code if isinstance(exc, SystemExit) else None
    if isinstance(code, int) and -255 <= code <= -1:
        try:
            return f"the step was stopped by {signal.Signals(256 + code).name}"
        except ValueError:
            pass
    if isinstance(exc, KeyboardInterrupt):
        return "the step was interrupted (the run was canceled)"
    return f"the step's process was asked to exit ({type(exc).__name__} {code!r})"


class _Reporter:
    def __init__(self, run: StepRun, emit: EventSink) -> None:
        self.run = run
        self.emit = emit

    def __call__(self, kind: EventKind, message: str = "", **data: Any) -> None:
        run = self.run
        self.emit(
            Event(
                kind=kind,
                run_id=run.run_id,
                timestamp=run.clock.now(),
                step_key=run.step.key,
                attempt=run.attempt.number,
                attempt_id=run.attempt.attempt_id,
                message=message,
                data=data,
            )
        )


def _load_inputs(run: StepRun) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for item in run.step.inputs:
        loaded = [
            run.io_manager.load(OutputKey(run.run_id, src.step_key, src.output_name))
            for src in item.sources
        ]
        values[item.name] = loaded if item.fan_in else loaded[0]
    return values


def _outputs_of(run: StepRun, returned: Any) -> dict[str, Any]:
    names = run.step.outputs
    if len(names) == 1:
        return {names[0]: returned}
    if isinstance(returned, Mapping) and set(returned) == set(names):
        return dict(returned)
    if isinstance(returned, tuple) and len(returned) == len(names):
        return dict(zip(names, returned, strict=True))
    raise CoreExecError(
        f"step {run.step.key!r} declares outputs {', '.join(names)} and must return a tuple "
        f"of {len(names)} values in that order (or a dict with those keys); it returned "
        f"{type(returned).__name__}"
    )


def start_event(
    run_id: str, step_key: str, attempt: StepAttempt, clock: Clock = SYSTEM_CLOCK
) -> Event:
    """The STEP_START event of an attempt starting in this process."""
    return Event(
        kind=EventKind.STEP_START,
        run_id=run_id,
        timestamp=clock.now(),
        step_key=step_key,
        attempt=attempt.number,
        attempt_id=attempt.attempt_id,
        message=f"started attempt {attempt.number}",
        data={"pid": os.getpid(), "host": _HOST},
    )


def run_step(run: StepRun, emit: EventSink, *, announce_start: bool = True) -> StepOutcome:
    """Run one attempt, reporting through ``emit``; never raises for a step's failure.

    ``announce_start=False`` when the caller has reported the attempt's
    :func:`start_event` itself (a worker does it with its claim, in one round trip).
    KeyboardInterrupt and SystemExit are reported as a cancelled attempt and raised
    again, so the process can stop.
    """
    report = _Reporter(run, emit)
    started = time.perf_counter()
    if announce_start:
        emit(start_event(run.run_id, run.step.key, run.attempt, run.clock))

    def failed(
        exc: BaseException, failure_class: FailureClass, retryable: bool, *, user: bool
    ) -> StepOutcome:
        error = _error_data(exc, user_frames_only=user)
        report(
            EventKind.STEP_FAILURE,
            f"{type(exc).__name__}: {exc}",
            failure_class=failure_class.value,
            retryable=retryable,
            error=error,
            duration_s=time.perf_counter() - started,
        )
        return StepOutcome(False, exc, error)

    node = run.job.node(run.step.key)
    try:
        inputs = _load_inputs(run)
        config = step_config(run.job, run.step.key, run.run_config)
    except IOManagerError as exc:
        return failed(exc, FailureClass.INFRASTRUCTURE, True, user=False)
    except CoreExecError as exc:
        return failed(exc, FailureClass.USER_ERROR, False, user=False)

    args: list[Any] = []
    if node.step.takes_context:
        logger = StepLogger(
            run_id=run.run_id,
            step_key=run.step.key,
            attempt=run.attempt.number,
            attempt_id=run.attempt.attempt_id,
            emit=emit,
            now=run.clock.now,
        )
        args.append(
            StepContext(
                run_id=run.run_id,
                step_key=run.step.key,
                attempt=run.attempt.number,
                job_name=run.job.name,
                tags=run.step.tags,
                config=config,
                log=logger,
                run_tags=run.run_tags,
            )
        )
    try:
        returned = node.step.fn(*args, **inputs)
    except RetryRequested as exc:
        report(
            EventKind.STEP_RETRY_REQUESTED,
            str(exc),
            max_retries=exc.max_retries,
            seconds_to_wait=exc.seconds_to_wait,
            duration_s=time.perf_counter() - started,
        )
        return StepOutcome(
            False, exc, {"type": "RetryRequested", "message": str(exc), "traceback": ""}
        )
    except Failure as exc:
        return failed(exc, FailureClass.USER_ERROR, exc.allow_retries, user=True)
    except (KeyboardInterrupt, SystemExit) as exc:
        reason = _stopped_by(exc)
        report(
            EventKind.STEP_FAILURE,
            f"cancelled: {reason}",
            failure_class=FailureClass.CANCELLED.value,
            retryable=False,
            # No traceback: it would show where the signal landed (the pool's exit
            # handler), which reads as a crash; the step was cancelled, not broken.
            error={"type": "Cancelled", "message": reason, "traceback": ""},
            duration_s=time.perf_counter() - started,
        )
        raise
    except Exception as exc:
        return failed(exc, FailureClass.USER_ERROR, True, user=True)

    try:
        outputs = _outputs_of(run, returned)
        for name, value in outputs.items():
            run.io_manager.store(OutputKey(run.run_id, run.step.key, name), value)
            report(EventKind.STEP_OUTPUT, name, output_name=name, type=type(value).__name__)
    except CoreExecError as exc:
        return failed(exc, FailureClass.USER_ERROR, False, user=False)
    report(
        EventKind.STEP_SUCCESS,
        f"succeeded in {time.perf_counter() - started:.3f}s",
        duration_s=time.perf_counter() - started,
    )
    return StepOutcome(True)
