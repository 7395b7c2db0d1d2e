"""``coreexec runs watch|cancel|resume``: follow and control runs from any terminal.

Exit status: see :mod:`coreexec.cli.exit_codes`.
"""

from __future__ import annotations

import sys

import click

from coreexec.cli.exit_codes import (
    EXIT_CANCELED,
    EXIT_FAILURE,
    EXIT_SUCCESS,
    exit_code_for,
    fail,
)
from coreexec.cli.options import instance_from_env
from coreexec.cli.progress import ProgressPrinter
from coreexec.errors import CoreExecError, RunWaitTimeout
from coreexec.events import Event, EventKind
from coreexec.instance import Instance
from coreexec.plan import ExecutionPlan
from coreexec.reference import load_job
from coreexec.runs.cancel import request_cancel
from coreexec.runs.coordinate import CoordinationOutcome
from coreexec.runs.handle import RunHandle
from coreexec.runs.launcher import event_redis_url
from coreexec.runs.resume import resume_run
from coreexec.runs.resume_prep import DEFAULT_IN_FLIGHT_TIMEOUT_S
from coreexec.storage.base import RunStatus
from coreexec.transport.coordinator_heartbeat import CoordinatorState


def handle_for(run_id: str, instance: Instance | None = None) -> RunHandle:
    """A handle on a stored run (its existence checked), with the event Redis if known."""
    chosen = instance or instance_from_env()
    chosen.storage.get_run(run_id)
    return RunHandle(run_id, chosen, event_redis_url(chosen))


class _CoordinatorLost(Exception):
    pass


def _total_steps(job_reference: str | None) -> int:
    if job_reference is None:
        return 0
    try:
        return len(ExecutionPlan.from_job(load_job(job_reference)))
    except CoreExecError:
        # Not importable here: RUN_START says how many steps there are.
        return 0


def succeeded_steps(instance: Instance, run_id: str) -> set[str]:
    return {
        event.step_key
        for _, event in instance.storage.events(run_id)
        if event.kind is EventKind.STEP_SUCCESS and event.step_key is not None
    }


class _Watcher:
    """Feeds followed events to the progress printer, counting resumed runs right."""

    def __init__(self, printer: ProgressPrinter | None, instance: Instance | None = None) -> None:
        self.printer = printer
        self.instance = instance
        """When given, a resumed run's succeeded steps are read from its storage."""
        self.succeeded: set[str] = set()

    def __call__(self, event: Event) -> None:
        if event.kind is EventKind.STEP_SUCCESS and event.step_key is not None:
            self.succeeded.add(event.step_key)
        if self.printer is None:
            return
        if event.kind is EventKind.RUN_START:
            self.printer.total_steps = int(event.data.get("steps") or self.printer.total_steps)
            if event.data.get("resumed"):
                if self.instance is not None:
                    self.succeeded = succeeded_steps(self.instance, event.run_id)
                self.printer.done = len(self.succeeded)
        self.printer(event)


def watch(handle: RunHandle, *, quiet: bool = False, timeout_s: float | None = None) -> int:
    """Print the run's progress until it ends; returns the exit status for its end."""
    record = handle.record()
    click.echo(f"run {record.run_id}  job {record.job_name}  {record.status}")
    printer = None if quiet else ProgressPrinter(total_steps=_total_steps(record.job_reference))
    watcher = _Watcher(printer)
    if record.status is RunStatus.QUEUED:
        click.echo("waiting for a coordinator to pick the run up (a worker on coreexec.runs)")

    def on_idle(status: RunStatus) -> None:
        if status is RunStatus.QUEUED:
            return
        seen = handle.coordinator()
        if seen is not None and seen.state is CoordinatorState.DEAD:
            raise _CoordinatorLost

    try:
        for event in handle.follow(timeout=timeout_s, on_idle=on_idle):
            watcher(event)
    except _CoordinatorLost:
        click.echo(
            f"\nrun {handle.run_id}: its coordinator died (no heartbeat) while the run was "
            f"{handle.status()}; `coreexec runs resume {handle.run_id}` continues it",
            err=True,
        )
        return EXIT_FAILURE
    except RunWaitTimeout as exc:
        click.echo(f"\n{exc}", err=True)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        click.echo(
            f"\nstopped watching; run {handle.run_id} goes on "
            f"(`coreexec runs cancel {handle.run_id}` stops it)",
            err=True,
        )
        return EXIT_CANCELED
    finally:
        handle.close()
    status = handle.status()
    click.echo(f"\nrun {handle.run_id}: {status}")
    return exit_code_for(status)


@click.command("watch")
@click.argument("run_id")
@click.option("--quiet", "-q", is_flag=True, help="No step lines; only the final status.")
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=None,
    help="Stop watching after this many seconds (exit status 1).",
)
def watch_command(run_id: str, quiet: bool, timeout_s: float | None) -> None:
    """Follow run RUN_ID live, from its first event until it ends.

    Prints each step as it starts and ends (events already stored first). Exit status:
    0 when the run succeeded, 1 when it failed or its coordinator died, 130 when it was
    canceled (or Ctrl-C stopped the watching; the run itself goes on), 2 for an unknown
    run id.
    """
    try:
        handle = handle_for(run_id)
        code = watch(handle, quiet=quiet, timeout_s=timeout_s)
    except CoreExecError as exc:
        raise fail(exc) from exc
    sys.exit(code)


@click.command("cancel")
@click.argument("run_id")
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Wait until the run has stopped.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="With --wait: give up after this many seconds (exit status 1).",
)
def cancel_command(run_id: str, wait: bool, timeout_s: float) -> None:
    """Cancel run RUN_ID: start no more steps, revoke queued ones, terminate running ones.

    A run still queued is canceled at once; a running one stops within about a second
    (its coordinator is woken through Redis). A run whose coordinator died is canceled
    here: its queued steps never start and the run launcher terminates the running
    ones. A run that already ended is left as it is. Exit status: 0 when the cancel
    was requested (with --wait: the run ended canceled), 1 otherwise, 2 for an unknown
    run id.
    """
    try:
        instance = instance_from_env()
        handle = handle_for(run_id, instance)
        outcome = request_cancel(instance, run_id, handle.redis_url)
        click.echo(outcome.message)
        if outcome.before.is_finished:
            sys.exit(EXIT_FAILURE)
        if not wait:
            click.echo(f"`coreexec runs watch {run_id}` follows it to its end")
            return
        try:
            status = handle.wait(timeout_s)
        finally:
            handle.close()
    except RunWaitTimeout as exc:
        raise click.ClickException(str(exc)) from exc
    except CoreExecError as exc:
        raise fail(exc) from exc
    click.echo(f"run {run_id}: {status}")
    sys.exit(EXIT_SUCCESS if status is RunStatus.CANCELED else EXIT_FAILURE)


@click.command("resume")
@click.argument("run_id")
@click.option(
    "--submit",
    is_flag=True,
    help="Hand the resume to the run launcher (a coordinator worker) instead of "
    "coordinating it in this process.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Resume a run whose status says it is running although no heartbeat proves "
    "its coordinator died (e.g. one started by `coreexec run` whose terminal is gone).",
)
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="With --submit: follow the resumed run until it ends.",
)
@click.option(
    "--in-flight-timeout",
    "in_flight_timeout_s",
    type=click.FloatRange(min=0),
    default=DEFAULT_IN_FLIGHT_TIMEOUT_S,
    show_default=True,
    help="How long to wait for steps the old coordinator left running on workers.",
)
@click.option("--quiet", "-q", is_flag=True, help="No step lines; only the final status.")
def resume_command(
    run_id: str,
    submit: bool,
    force: bool,
    wait: bool,
    in_flight_timeout_s: float,
    quiet: bool,
) -> None:
    """Resume run RUN_ID: run again what did not succeed, keeping the succeeded steps.

    Works on a run that failed or was canceled, and on one whose coordinator died (its
    status still says it runs, but its heartbeat stopped). Step results that arrived
    while no coordinator listened are recorded first, so they count. Steps still
    running on workers are waited for, never started twice.

    By default this process coordinates the resumed run, showing progress (exit status
    as for `coreexec runs watch`); with --submit a coordinator worker does.
    """
    try:
        instance = instance_from_env()
        outcome = _resume(
            instance,
            run_id,
            force=force,
            submit=submit,
            in_flight_timeout_s=in_flight_timeout_s,
            quiet=quiet,
        )
        if submit:
            _follow_submitted(instance, run_id, outcome, wait=wait, quiet=quiet)
            return
    except CoreExecError as exc:
        raise fail(exc) from exc
    prepared = outcome.preparation
    if prepared is not None and prepared.drained_events:
        click.echo(f"recorded {prepared.drained_events} step events that arrived meanwhile")
    click.echo(f"\n{outcome.message}")
    sys.exit(exit_code_for(outcome.status))


def _resume(
    instance: Instance,
    run_id: str,
    *,
    force: bool,
    submit: bool,
    in_flight_timeout_s: float,
    quiet: bool,
) -> CoordinationOutcome:
    """Resume the run here (showing progress unless ``quiet``), or hand it over."""
    record = instance.storage.get_run(run_id)
    printer = None if quiet else ProgressPrinter(total_steps=0)
    watcher = _Watcher(printer, instance)
    return resume_run(
        run_id,
        instance=instance,
        force=force,
        submit=submit,
        listeners=[watcher] if printer is not None and not submit else [],
        in_flight_timeout_s=in_flight_timeout_s,
        on_resuming=lambda _: click.echo(
            f"resuming run {run_id}  job {record.job_name}  (was {record.status})"
        ),
    )


def _follow_submitted(
    instance: Instance, run_id: str, outcome: CoordinationOutcome, *, wait: bool, quiet: bool
) -> None:
    """Say where a submitted resume went; with ``wait``, watch it and exit as it ends."""
    click.echo(outcome.message)
    if not wait:
        click.echo(f"`coreexec runs watch {run_id}` follows it")
        return
    sys.exit(watch(handle_for(run_id, instance), quiet=quiet))
