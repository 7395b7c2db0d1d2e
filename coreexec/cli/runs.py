"""``coreexec runs``: list runs and show one."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import click

from coreexec.cli.exit_codes import fail
from coreexec.cli.options import instance_from_env
from coreexec.cli.progress import format_summary
from coreexec.errors import CoreExecError
from coreexec.events import EventKind
from coreexec.instance import Instance
from coreexec.redis_clients import Redis, redis_client
from coreexec.runs.launcher import event_redis_url
from coreexec.runs.orphans import RUNNING, lost_note
from coreexec.runs.summary import summarize
from coreexec.storage.base import RunRecord, RunStatus


def _notes_client(instance: Instance, records: Sequence[RunRecord]) -> Redis | None:
    """A client of the event Redis when a listed run may have lost its coordinator."""
    if not any(record.status in RUNNING for record in records):
        return None
    url = event_redis_url(instance)
    if url is None:
        return None
    try:
        return redis_client(url)
    except CoreExecError:
        return None


def _lost_notes(instance: Instance, records: Sequence[RunRecord]) -> dict[str, str]:
    client = _notes_client(instance, records)
    if client is None:
        return {}
    with client:
        notes = {record.run_id: lost_note(client, record) for record in records}
    return {run_id: note for run_id, note in notes.items() if note}


_RUN_ENDINGS = (EventKind.RUN_FAILURE, EventKind.RUN_CANCELED, EventKind.RUN_SUCCESS)


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return dt.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


@click.group("runs")
def runs_group() -> None:
    """Inspect and control runs in the run storage ($COREEXEC_STORAGE_URL, else
    $COREEXEC_HOME)."""


@runs_group.command("ls")
@click.option("--limit", default=20, show_default=True, help="How many runs, newest first.")
@click.option(
    "--status",
    "statuses",
    multiple=True,
    type=click.Choice([status.value for status in RunStatus], case_sensitive=False),
    help="Only runs with this status; repeatable.",
)
def list_runs(limit: int, statuses: tuple[str, ...]) -> None:
    """List runs: id, job, status, start time and duration."""
    try:
        chosen = {RunStatus(value.upper()) for value in statuses} or None
        instance = instance_from_env()
        runs = instance.storage.list_runs(limit=limit, statuses=chosen)
        notes = _lost_notes(instance, runs)
    except CoreExecError as exc:
        raise fail(exc) from exc
    if not runs:
        click.echo("no runs yet; start one with `coreexec run package.module:job`")
        return
    click.echo(f"{'run id':<32}  {'job':<24} {'status':<10} {'created':<19} {'duration':>9}")
    for record in runs:
        duration = (
            f"{record.ended_at - record.started_at:.2f}s"
            if record.started_at is not None and record.ended_at is not None
            else "-"
        )
        click.echo(
            f"{record.run_id:<32}  {record.job_name:<24} {record.status.value:<10} "
            f"{_when(record.created_at):<19} {duration:>9}"
        )
        if record.run_id in notes:
            click.echo(f"{'':<34}{notes[record.run_id]}")


@runs_group.command("show")
@click.argument("run_id")
@click.option("--events", "show_events", is_flag=True, help="Also print every event.")
def show_run(run_id: str, show_events: bool) -> None:
    """Show a run: its steps with status, attempts, durations and errors, and why a
    waiting step waits."""
    try:
        instance = instance_from_env()
        storage = instance.storage
        record = storage.get_run(run_id)
        events = [event for _, event in storage.events(run_id)]
        note = _lost_notes(instance, [record]).get(run_id)
    except CoreExecError as exc:
        raise fail(exc) from exc
    click.echo(f"run      {record.run_id}")
    click.echo(f"job      {record.job_name}  ({record.job_reference or 'no reference'})")
    click.echo(f"status   {record.status.value}" + (f"  ({note})" if note else ""))
    click.echo(f"created  {_when(record.created_at)}   ended {_when(record.ended_at)}")
    if record.tags:
        click.echo("tags     " + ", ".join(f"{k}={v}" for k, v in record.tags.items()))
    ended = [e for e in events if e.step_key is None and e.kind in _RUN_ENDINGS]
    if ended and ended[-1].message:
        click.echo(f"ended    {ended[-1].message}")
    click.echo("")
    click.echo(format_summary(summarize(events)))
    failures = [e for e in events if e.kind.value == "STEP_FAILURE" and e.data.get("error")]
    for event in failures:
        trace = str(event.data["error"].get("traceback", "")).rstrip()
        if trace:
            click.echo(f"\n--- {event.step_key} attempt {event.attempt} ---\n{trace}")
    if show_events:
        click.echo("")
        for event in events:
            click.echo(
                f"{_when(event.timestamp)} {event.kind.value:<20} {event.step_key or '':<20} "
                f"{event.message}"
            )
