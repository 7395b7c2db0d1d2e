"""``coreexec worker``: a Celery worker of coreexec's app, as ``celery worker`` would start it.

A thin wrapper: it builds the ``celery -A celery_app worker ...`` command line and
replaces this process with it, so signals, exit codes and logs are Celery's own.
``coreexec`` never imports Celery, so the check that the app exists only locates its
module without importing it.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import sys
from collections.abc import Sequence

import click

STEP_QUEUES = ("coreexec.high", "coreexec.default", "coreexec.low")
RUNS_QUEUE = "coreexec.runs"
DEFAULT_QUEUES = (*STEP_QUEUES, RUNS_QUEUE)
DEFAULT_APP = "celery_app"


def split_queues(values: Sequence[str]) -> list[str]:
    """``-Q a,b -Q c`` → ``[a, b, c]`` (order kept, duplicates and blanks dropped)."""
    queues: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip()
            if name and name not in queues:
                queues.append(name)
    return queues


def worker_argv(
    *,
    app: str,
    queues: Sequence[str],
    concurrency: int | None,
    loglevel: str,
    hostname: str | None,
    extra: Sequence[str],
) -> list[str]:
    """The ``python -m celery ... worker`` command line for these options."""
    argv = [sys.executable, "-m", "celery", "-A", app, "worker", "-Q", ",".join(queues)]
    argv += ["--loglevel", loglevel]
    if concurrency is not None:
        argv += ["-c", str(concurrency)]
    if hostname is not None:
        argv += ["-n", hostname]
    return argv + list(extra)


def _check_importable(module: str, what: str) -> None:
    top = module.split(":")[0].split(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise click.ClickException(
            f"{what} {top!r} is not importable from this Python ({sys.executable}); "
            "install coreexec with `pip install -e .` (it brings celery) or pass --app"
        )


@click.command(
    "worker",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.option(
    "-Q",
    "--queues",
    "queue_values",
    multiple=True,
    metavar="QUEUES",
    help="Queues to consume, comma separated or repeated. Default: "
    + ",".join(DEFAULT_QUEUES)
    + ".",
)
@click.option(
    "-c",
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help="Pool processes (default: Celery's, the number of CPUs).",
)
@click.option(
    "-A", "--app", default=DEFAULT_APP, show_default=True, help="The Celery app to serve."
)
@click.option(
    "-l",
    "--loglevel",
    default="INFO",
    show_default=True,
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    help="Log level of the worker.",
)
@click.option("-n", "--hostname", default=None, help="Node name, e.g. 'high1@%h'.")
@click.option(
    "--print-command",
    is_flag=True,
    help="Print the celery command line instead of running it.",
)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(
    queue_values: tuple[str, ...],
    concurrency: int | None,
    app: str,
    loglevel: str,
    hostname: str | None,
    print_command: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Start a Celery worker that runs coreexec steps and run coordinators.

    Same as `celery -A celery_app worker -Q QUEUES ...`; any further arguments
    (CELERY_ARGS, e.g. `--max-tasks-per-child 100`) go to `celery worker` as they are.

    Step queues are coreexec.high, coreexec.default and coreexec.low (a step's
    `coreexec/priority` tag picks the band; `coreexec/queue` names a queue outright).
    coreexec.runs carries the coordinators of submitted runs: a coordinator holds its
    pool process for the whole run, so give coreexec.runs its own worker (or enough
    concurrency) that steps are never starved of processes.

    Examples:

      coreexec worker -Q coreexec.high -c 4

      coreexec worker -Q coreexec.runs -c 8 -n runs@%h
    """
    queues = split_queues(queue_values) or list(DEFAULT_QUEUES)
    if RUNS_QUEUE in queues and any(q != RUNS_QUEUE for q in queues) and concurrency == 1:
        click.echo(
            f"warning: with -c 1 a coordinator from {RUNS_QUEUE} takes the only pool process, "
            "and the steps of its run cannot run on this worker; start another worker for "
            "the step queues or raise -c",
            err=True,
        )
    argv = worker_argv(
        app=app,
        queues=queues,
        concurrency=concurrency,
        loglevel=loglevel.upper(),
        hostname=hostname,
        extra=celery_args,
    )
    if print_command:
        click.echo(shlex.join(argv))
        return
    _check_importable("celery", "module")
    _check_importable(app, "Celery app module")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
