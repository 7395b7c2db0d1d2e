"""Running one step attempt in the current process.

Loads the inputs through the IO manager, calls the user's function inside an error
boundary that keeps the user's traceback, stores the outputs and reports every stage
as an event. Every executor runs steps through here, wherever the process is.

An ``async def`` step is awaited: :func:`run_step_async` runs it on the caller's event
loop (the in-process and multiprocess executors run a run's async steps side by side on
one loop), and :func:`run_step` runs it to its end on an event loop of its own, so a
celery worker, a Dask worker or a step container runs async steps with no change of its own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
import traceback
from collections.abc import Callable, Coroutine, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coreexec.active_execution import StepAttempt
from coreexec.clock import SYSTEM_CLOCK, Clock
from coreexec.context import EventSink, StepContext, StepLogger
from coreexec.errors import CoreExecError, Failure, IOManagerError, RetryRequested
from coreexec.events import Event, EventKind
from coreexec.io_managers import IOManager, OutputKey
from coreexec.job import JobDefinition
from coreexec.plan import PlannedStep
from coreexec.retry import FailureClass
from coreexec.run_config import step_config

_HOST = socket.gethostname()
_ASYNCIO_DIR = str(Path(asyncio.__file__).parent)


@dataclass(frozen=True)
class StepOutcome:
    """How an attempt ended; ``error`` is the user's exception when it raised one."""

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
        # Drop the runner's own frames (and the event loop's under them, for an async
        # step run by run_step) so the traceback starts in the user's code.
        cut = next((i for i, line in enumerate(frames) if __file__ in line), None)
        if cut is not None:
            while cut + 1 < len(frames) and _ASYNCIO_DIR in frames[cut + 1]:
                cut += 1
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
    # 128 + signum: how the step entrypoint exits on a signal, as a shell reports it.
    signum = 256 + code if isinstance(code, int) and -255 <= code <= -1 else None
    if isinstance(code, int) and 129 <= code <= 128 + 64:
        signum = code - 128
    if signum is not None:
        try:
            return f"the step was stopped by {signal.Signals(signum).name}"
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


CANCEL_REPORTED = "coreexec: the step runner reported this cancel"
"""A note on an interrupt whose cancel :func:`run_step` already reported."""


class _Attempt:
    """One attempt on its way: its reporter, its clock, the user's call and its end."""

    def __init__(self, run: StepRun, emit: EventSink, *, announce_start: bool) -> None:
        self.run = run
        self.emit = emit
        self.report = _Reporter(run, emit)
        self.started = time.perf_counter()
        if announce_start:
            emit(start_event(run.run_id, run.step.key, run.attempt, run.clock))
        self.step = run.job.node(run.step.key).step

    def failed(
        self,
        exc: BaseException,
        failure_class: FailureClass,
        retryable: bool,
        *,
        user: bool,
        message: str | None = None,
        error: Mapping[str, Any] | None = None,
    ) -> StepOutcome:
        error = error or _error_data(exc, user_frames_only=user)
        self.report(
            EventKind.STEP_FAILURE,
            message or f"{type(exc).__name__}: {exc}",
            failure_class=failure_class.value,
            retryable=retryable,
            error=error,
            duration_s=time.perf_counter() - self.started,
        )
        return StepOutcome(False, exc, error)

    def cancelled(self, exc: BaseException) -> StepOutcome:
        """Report a step stopped by a signal or by the cancellation of its task: it reads
        "cancelled" with the reason, never as the interpreter's exit exception."""
        if isinstance(exc, asyncio.CancelledError):
            reason = "the step's task was cancelled (asyncio.CancelledError)"
        else:
            reason = _stopped_by(exc)
        # No traceback: it would show where the signal landed (the pool's exit handler),
        # which reads as a crash; the step was cancelled, not broken.
        error = {"type": "Cancelled", "message": reason, "traceback": ""}
        exc.add_note(CANCEL_REPORTED)  # whoever catches it next need not report it
        return self.failed(
            exc,
            FailureClass.CANCELLED,
            False,
            user=True,
            message=f"cancelled: {reason}",
            error=error,
        )

    def prepare(self) -> tuple[list[Any], dict[str, Any]] | StepOutcome:
        """The call's positional arguments (the context) and inputs, or how it failed."""
        run = self.run
        try:
            inputs = _load_inputs(run)
            config = step_config(run.job, run.step.key, run.run_config)
        except IOManagerError as exc:
            return self.failed(exc, FailureClass.INFRASTRUCTURE, True, user=False)
        except CoreExecError as exc:
            return self.failed(exc, FailureClass.USER_ERROR, False, user=False)
        if not self.step.takes_context:
            return [], inputs
        logger = StepLogger(
            run_id=run.run_id,
            step_key=run.step.key,
            attempt=run.attempt.number,
            attempt_id=run.attempt.attempt_id,
            emit=self.emit,
            now=run.clock.now,
        )
        context = StepContext(
            run_id=run.run_id,
            step_key=run.step.key,
            attempt=run.attempt.number,
            job_name=run.job.name,
            tags=run.step.tags,
            config=config,
            log=logger,
            run_tags=run.run_tags,
        )
        return [context], inputs

    def raised(self, exc: Exception) -> StepOutcome:
        """The end of an attempt whose user code raised ``exc``."""
        if isinstance(exc, RetryRequested):
            self.report(
                EventKind.STEP_RETRY_REQUESTED,
                str(exc),
                max_retries=exc.max_retries,
                seconds_to_wait=exc.seconds_to_wait,
                duration_s=time.perf_counter() - self.started,
            )
            return StepOutcome(
                False, exc, {"type": "RetryRequested", "message": str(exc), "traceback": ""}
            )
        if isinstance(exc, Failure):
            return self.failed(exc, FailureClass.USER_ERROR, exc.allow_retries, user=True)
        return self.failed(exc, FailureClass.USER_ERROR, True, user=True)

    def returned(self, value: Any) -> StepOutcome:
        """Store what the user's code returned and report success."""
        run = self.run
        try:
            outputs = _outputs_of(run, value)
            for name, output in outputs.items():
                run.io_manager.store(OutputKey(run.run_id, run.step.key, name), output)
                self.report(
                    EventKind.STEP_OUTPUT, name, output_name=name, type=type(output).__name__
                )
        except CoreExecError as exc:
            return self.failed(exc, FailureClass.USER_ERROR, False, user=False)
        elapsed = time.perf_counter() - self.started
        self.report(EventKind.STEP_SUCCESS, f"succeeded in {elapsed:.3f}s", duration_s=elapsed)
        return StepOutcome(True)


def _run_to_end(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an async step's coroutine on an event loop of its own and return its result."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    # A loop already runs in this thread (a runner called from async code), and a thread
    # runs one loop at a time: the step gets a thread of its own.
    with ThreadPoolExecutor(1, thread_name_prefix="coreexec-async-step") as pool:
        return pool.submit(asyncio.run, coroutine).result()


def run_step(run: StepRun, emit: EventSink, *, announce_start: bool = True) -> StepOutcome:
    """Run one attempt, reporting through ``emit``; never raises for a step's failure.

    ``announce_start=False`` when the caller has reported the attempt's
    :func:`start_event` itself (a worker does it with its claim, in one round trip).
    KeyboardInterrupt and SystemExit are reported as a cancelled attempt and raised
    again, so the process can stop; an async step sees them as ``asyncio.CancelledError``
    at the ``await`` it was in, as ``asyncio.run`` cancels what it ran.
    """
    attempt = _Attempt(run, emit, announce_start=announce_start)
    call = attempt.prepare()
    if isinstance(call, StepOutcome):
        return call
    args, inputs = call
    fn: Callable[..., Any] = attempt.step.fn
    try:
        returned = fn(*args, **inputs)
        value = _run_to_end(returned) if attempt.step.is_async else returned
    except (KeyboardInterrupt, SystemExit) as exc:
        attempt.cancelled(exc)
        raise
    except asyncio.CancelledError as exc:
        # The step's own code cancelled the task it ran in.
        return attempt.cancelled(exc)
    except Exception as exc:
        return attempt.raised(exc)
    return attempt.returned(value)


async def run_step_async(
    run: StepRun, emit: EventSink, *, announce_start: bool = True
) -> StepOutcome:
    """:func:`run_step` for a caller on an event loop: an ``async def`` step is awaited
    on that loop (a sync step is called in place, blocking it).

    Cancelling the task running this reaches the step as ``asyncio.CancelledError``; the
    attempt is reported as cancelled and the ``CancelledError`` raised again.
    """
    attempt = _Attempt(run, emit, announce_start=announce_start)
    call = attempt.prepare()
    if isinstance(call, StepOutcome):
        return call
    args, inputs = call
    fn: Callable[..., Any] = attempt.step.fn
    try:
        value = await fn(*args, **inputs) if attempt.step.is_async else fn(*args, **inputs)
    except (asyncio.CancelledError, KeyboardInterrupt, SystemExit) as exc:
        attempt.cancelled(exc)
        raise
    except Exception as exc:
        return attempt.raised(exc)
    return attempt.returned(value)
