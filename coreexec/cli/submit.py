"""``coreexec submit``: hand a run to a coordinator worker and (optionally) follow it."""

from __future__ import annotations

import sys

import click

from coreexec.cli.exit_codes import fail
from coreexec.cli.options import (
    config_option,
    instance_from_env,
    load_run_config,
    parse_tags,
    tag_option,
)
from coreexec.cli.runs_control import watch
from coreexec.errors import CoreExecError
from coreexec.runs.submit import submit_job


@click.command("submit")
@click.argument("reference")
@config_option
@tag_option
@click.option(
    "--wait/--no-wait",
    default=False,
    show_default=True,
    help="Follow the run's progress until it ends, as `coreexec runs watch` does.",
)
@click.option("--quiet", "-q", is_flag=True, help="With --wait: only the final status.")
def submit_command(
    reference: str,
    config_files: tuple[str, ...],
    tags: tuple[str, ...],
    wait: bool,
    quiet: bool,
) -> None:
    """Submit a run of the job REFERENCE ('package.module:job') to the coordinator workers.

    The job, run config and tags are checked here; then the run is stored (QUEUED) and
    handed to the run launcher (default: Celery, queue coreexec.runs), and its id is
    printed. A worker consuming coreexec.runs coordinates it; workers on the step queues
    run its steps (`coreexec worker`). Every process must share the run storage
    and outputs (COREEXEC_STORAGE_URL and COREEXEC_IO_URL, else COREEXEC_HOME) and the
    broker (COREEXEC_BROKER_URL); `coreexec settings` shows what a process resolves.

    Exit status: 0 once submitted (with --wait: as for `coreexec runs watch`, 0 when the
    run succeeded, 1 failed, 130 canceled), 1 when the broker cannot be reached (the
    stored run is then marked failed with the reason), 2 for bad input.
    """
    try:
        run_config = load_run_config(config_files)
        handle = submit_job(
            reference, run_config, tags=parse_tags(tags), instance=instance_from_env()
        )
    except CoreExecError as exc:
        raise fail(exc) from exc
    run_id = handle.run_id
    click.echo(f"submitted run {run_id}")
    if not wait:
        click.echo(f"watch it:   coreexec runs watch {run_id}")
        click.echo(f"cancel it:  coreexec runs cancel {run_id}")
        return
    try:
        code = watch(handle, quiet=quiet)
    except CoreExecError as exc:
        raise fail(exc) from exc
    sys.exit(code)
