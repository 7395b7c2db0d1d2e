"""Executing a stored run in this process: load its job, build its executor, run the
coordinator loop, store how it ended."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from coreexec.errors import (
    ConfigError,
    RunCanceledError,
    RunFailedError,
    StepExecutionError,
)
from coreexec.events import Event, EventKind
from coreexec.execution.run_context import EventListener, RunContext
from coreexec.executors.base import (
    Executor,
    ExecutorDefinition,
    InitExecutorContext,
)
from coreexec.instance import Instance
from coreexec.io_managers import IOManager
from coreexec.job import JobDefinition
from coreexec.plan import ExecutionPlan
from coreexec.reference import load_job
from coreexec.result import ExecutionResult
from coreexec.run_config import execution_config
from coreexec.runs.create import _resolve_job, create_run, resolve_executor_def
from coreexec.runs.resume_prep import done_steps
from coreexec.runs.summary import is_cancelled
from coreexec.storage.base import RunRecord, RunStatus
from coreexec.tags import TagValue


def _run_event(run_id: str, kind: EventKind, message: str = "", **data: Any) -> Event:
    return Event(kind=kind, run_id=run_id, timestamp=time.time(), message=message, data=data)


def _prepare(
    record: RunRecord,
    instance: Instance,
    job: JobDefinition | None,
    executor_def: ExecutorDefinition | None,
) -> tuple[JobDefinition, ExecutorDefinition, Executor, ExecutionPlan]:
    """The job, its executor (created) and plan of a stored run."""
    if job is None:
        if record.job_reference is None:
            raise ConfigError(
                f"run {record.run_id} has no job reference; it cannot be executed here"
            )
        job = load_job(record.job_reference)
    chosen = executor_def or resolve_executor_def(job)
    exec_config = chosen.resolve_config(execution_config(record.run_config))
    executor = chosen.create(InitExecutorContext(job=job, config=exec_config, instance=instance))
    return job, chosen, executor, ExecutionPlan.from_job(job, job_reference=record.job_reference)


def _fail_start(instance: Instance, run_id: str, exc: BaseException) -> None:
    """A run that cannot start ends FAILURE with the reason, rather than stay QUEUED."""
    reason = str(exc) or type(exc).__name__
    instance.storage.append_events(
        run_id,
        [_run_event(run_id, EventKind.RUN_FAILURE, f"the run could not start: {reason}")],
    )
    instance.storage.set_status(run_id, RunStatus.FAILURE)


def execute_run(
    run_id: str,
    *,
    instance: Instance,
    job: JobDefinition | None = None,
    executor_def: ExecutorDefinition | None = None,
    io_manager: IOManager | None = None,
    listeners: list[EventListener] | None = None,
    run_context_hook: Callable[[RunContext], None] | None = None,
    resume: bool = False,
) -> RunContext:
    """Coordinate a stored run in this process until it ends; returns its context.

    With ``resume`` the steps that succeeded before are not run again.
    """
    record = instance.storage.get_run(run_id)
    try:
        job, chosen, executor, plan = _prepare(record, instance, job, executor_def)
    except BaseException as exc:
        _fail_start(instance, run_id, exc)
        raise
    context = _new_context(
        record, instance, job, plan, io_manager=io_manager, listeners=listeners, resume=resume
    )
    if run_context_hook is not None:
        run_context_hook(context)
    _announce_start(context, chosen.name, resume=resume)
    _drive(context, executor)
    _finish(context)
    return context


def _new_context(
    record: RunRecord,
    instance: Instance,
    job: JobDefinition,
    plan: ExecutionPlan,
    *,
    io_manager: IOManager | None,
    listeners: list[EventListener] | None,
    resume: bool,
) -> RunContext:
    """The run's context; a resumed run's knows which steps succeeded before."""
    run_id = record.run_id
    succeeded, attempts = done_steps(instance, run_id) if resume else (frozenset(), {})
    return RunContext(
        run_id=run_id,
        job=job,
        plan=plan,
        run_config=record.run_config,
        run_tags=record.tags,
        instance=instance,
        io_manager=io_manager or instance.io_manager_for(record),
        listeners=list(listeners or []),
        already_succeeded=succeeded,
        attempts_made=attempts,
    )


def _announce_start(context: RunContext, executor_name: str, *, resume: bool) -> None:
    """STARTING then STARTED, each with its event, stored before any step runs."""
    storage, run_id, plan = context.instance.storage, context.run_id, context.plan
    storage.set_status(run_id, RunStatus.STARTING)
    context.record(_run_event(run_id, EventKind.RUN_STARTING, f"executor {executor_name}"))
    storage.set_status(run_id, RunStatus.STARTED)
    context.record(
        _run_event(
            run_id,
            EventKind.RUN_START,
            f"job {context.job.name}, {len(plan)} steps" + (", resumed" if resume else ""),
            steps=len(plan),
            resumed=resume,
        )
    )
    context.flush()


def _drive(context: RunContext, executor: Executor) -> None:
    """Run the executor to its end; an executor that raises ends the run FAILURE."""
    try:
        executor.execute(context)
    except BaseException as exc:
        context.record(
            _run_event(context.run_id, EventKind.RUN_FAILURE, f"executor error: {exc!r}")
        )
        context.flush()
        context.instance.storage.set_status(context.run_id, RunStatus.FAILURE)
        raise
    context.flush()


def _step_outcomes(context: RunContext) -> tuple[bool, list[str]]:
    """Whether every step succeeded, and which failed: from the coordinator when it ran
    the plan, else (an executor that drove the run itself) from the run's events."""
    if context.outcome is not None:
        return context.outcome
    last_step_kind: dict[str, EventKind] = {}
    for _, event in context.instance.storage.events(context.run_id):
        if event.step_key is not None and event.kind in (
            EventKind.STEP_SUCCESS,
            EventKind.STEP_FAILURE,
            EventKind.STEP_SKIPPED,
            EventKind.STEP_UP_FOR_RETRY,
        ):
            last_step_kind[event.step_key] = event.kind
    ok = all(
        last_step_kind.get(key) is EventKind.STEP_SUCCESS or key in context.already_succeeded
        for key in context.plan.keys
    )
    failed = sorted(k for k, v in last_step_kind.items() if v is EventKind.STEP_FAILURE)
    return ok, failed


def _finish(context: RunContext) -> None:
    storage = context.instance.storage
    run_id = context.run_id
    ok, failed = _step_outcomes(context)
    if context.cancel_requested.is_set() and not ok:
        final = _run_event(run_id, EventKind.RUN_CANCELED, "run canceled")
        status = RunStatus.CANCELED
    elif ok:
        final = _run_event(run_id, EventKind.RUN_SUCCESS, "all steps succeeded")
        status = RunStatus.SUCCESS
    else:
        final = _run_event(
            run_id, EventKind.RUN_FAILURE, f"steps failed: {', '.join(failed)}", failed_steps=failed
        )
        status = RunStatus.FAILURE
    context.record(final)
    context.flush()
    storage.set_status(run_id, status)


def result_of(context: RunContext) -> ExecutionResult:
    record = context.instance.storage.get_run(context.run_id)
    events = [event for _, event in context.instance.storage.events(context.run_id)]
    return ExecutionResult(
        run_id=context.run_id, status=record.status, events=events, io_manager=context.io_manager
    )


def raise_for(context: RunContext, result: ExecutionResult) -> None:
    """Raise the error of the first failed step (or the run's), keeping the user's cause;
    a canceled run raises :class:`~coreexec.errors.RunCanceledError`."""
    if result.success:
        return
    if result.status is RunStatus.CANCELED:
        cancelled = [str(e.step_key) for e in result.events if is_cancelled(e)]
        stopped = f"; steps stopped: {', '.join(cancelled)}" if cancelled else ""
        raise RunCanceledError(f"run {result.run_id} was canceled{stopped}", run_id=result.run_id)
    for key in result.failed_steps:
        cause = context.step_errors.get(key)
        failure = next(
            (
                e
                for e in reversed(result.events)
                if e.step_key == key and e.kind is EventKind.STEP_FAILURE
            ),
            None,
        )
        message = failure.message if failure else "failed"
        error = StepExecutionError(
            f"step {key!r} failed: {message}",
            run_id=result.run_id,
            step_key=key,
            attempt=failure.attempt if failure else None,
        )
        if cause is not None:
            raise error from cause
        raise error
    raise RunFailedError(f"run {result.run_id} failed", run_id=result.run_id)


def execute_job(
    job: JobDefinition | str,
    run_config: Mapping[str, Any] | None = None,
    *,
    tags: Mapping[str, TagValue] | None = None,
    instance: Instance | None = None,
    raise_on_error: bool = False,
    listeners: list[EventListener] | None = None,
    run_context_hook: Callable[[RunContext], None] | None = None,
    executor: ExecutorDefinition | None = None,
) -> ExecutionResult:
    """Run a job (an object or a ``"package.module:attribute"`` reference) with this
    process as its coordinator, on the job's executor, or on ``executor`` for this call
    (the run config's ``execution.config`` is then checked against that one).

    With ``raise_on_error`` a failed run raises StepExecutionError (or RunFailedError) and
    a canceled one RunCanceledError.
    """
    chosen_instance = instance or Instance.from_env()
    definition = _resolve_job(job)
    record = create_run(
        definition,
        run_config=run_config,
        tags=tags,
        instance=chosen_instance,
        executor_def=executor,
    )
    context = execute_run(
        record.run_id,
        instance=chosen_instance,
        job=definition,
        executor_def=executor,
        listeners=listeners,
        run_context_hook=run_context_hook,
    )
    result = result_of(context)
    if raise_on_error:
        raise_for(context, result)
    return result
