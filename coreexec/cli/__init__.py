"""The ``coreexec`` command line."""

from __future__ import annotations

import click

from coreexec.cli.exit_codes import exit_codes_help
from coreexec.cli.limits import limits_group
from coreexec.cli.run import run_command
from coreexec.cli.runs import runs_group
from coreexec.cli.runs_control import cancel_command, resume_command, watch_command
from coreexec.cli.settings import settings_command
from coreexec.cli.submit import submit_command
from coreexec.cli.worker import worker_command


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=exit_codes_help())
@click.version_option(package_name="coreexec")
def cli() -> None:
    """coreexec: run data-pipeline jobs (DAGs of Python steps) in-process, on a process
    pool or on a Celery worker fleet.

    Runs, their events and step outputs live under $COREEXEC_HOME (default ~/.coreexec),
    or in the run storage of $COREEXEC_STORAGE_URL (postgresql://...) and at the outputs
    URL $COREEXEC_IO_URL (s3://bucket/prefix) for a fleet across machines; `coreexec
    settings` shows what this process resolves.
    """


cli.add_command(run_command)
cli.add_command(runs_group)
cli.add_command(limits_group)
cli.add_command(submit_command)
cli.add_command(worker_command)
cli.add_command(settings_command)
runs_group.add_command(watch_command)
runs_group.add_command(cancel_command)
runs_group.add_command(resume_command)


def main() -> None:
    cli()
