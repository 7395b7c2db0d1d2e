"""``coreexec run``: run a job with this process as its coordinator, showing progress."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import click

from coreexec.cli.exit_codes import exit_code_for, fail
from coreexec.cli.options import (
    config_option,
    instance_from_env,
    load_run_config,
    parse_tags,
    tag_option,
)
from coreexec.cli.progress import ProgressPrinter, format_summary
from coreexec.errors import CoreExecError
from coreexec.execution.run_context import RunContext
from coreexec.plan import ExecutionPlan
from coreexec.reference import load_job
from coreexec.runs.execute import execute_job
from coreexec.runs.summary import summarize


def _install_cancel_handlers(context: RunContext) -> Callable[[], None]:
    """First Ctrl-C or SIGTERM cancels the run cleanly; a second Ctrl-C aborts."""
    previous: dict[int, Any] = {}

    def handler(signum: int, frame: FrameType | None) -> None:
        if context.cancel_requested.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        click.echo(
            f"\n{signal.Signals(signum).name}: canceling run {context.run_id} "
            "(steps are being stopped; Ctrl-C again to abort)",
            err=True,
        )
        context.request_cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        previous[signum] = signal.signal(signum, handler)

    def restore() -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)

    return restore


@click.command("run")
@click.argument("reference")
@config_option
@tag_option
@click.option("--quiet", "-q", is_flag=True, help="No live progress; summary only.")
def run_command(
    reference: str, config_files: tuple[str, ...], tags: tuple[str, ...], quiet: bool
) -> None:
    """Run the job REFERENCE ('package.module:job', 'package.module:defs.job' or
    'path/file.py:job') in this process as coordinator, on the job's executor.

    Prints each step as it starts and ends, then a summary. Exit status: 0 when every
    step succeeded, 1 when the run failed or could not start, 130 when it was canceled
    (Ctrl-C or SIGTERM cancel the run and stop its steps), 2 for bad input.
    """
    try:
        job = load_job(reference)
        run_config = load_run_config(config_files)
        instance = instance_from_env()
        plan = ExecutionPlan.from_job(job)
        listeners = [] if quiet else [ProgressPrinter(total_steps=len(plan))]
        restore: list[Callable[[], None]] = []

        def hook(context: RunContext) -> None:
            click.echo(f"run {context.run_id}  job {job.name}  ({len(plan)} steps)")
            restore.append(_install_cancel_handlers(context))

        try:
            result = execute_job(
                job,
                run_config,
                tags=parse_tags(tags),
                instance=instance,
                listeners=list(listeners),
                run_context_hook=hook,
            )
        finally:
            for undo in restore:
                undo()
    except CoreExecError as exc:
        raise fail(exc) from exc
    rows = summarize(result.events, plan.keys)
    click.echo("")
    click.echo(format_summary(rows))
    click.echo(f"\nrun {result.run_id}: {result.status.value}")
    code = exit_code_for(result.status)
    if code:
        sys.exit(code)
