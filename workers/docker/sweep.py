"""``coreexec-containers sweep``: remove step containers of finished runs, by label.

Supervisors remove the containers they followed (unless ``keep_containers``); what a
killed supervisor left, or what was kept for debugging, is found here by the
``coreexec.managed`` and ``coreexec.run_id`` labels and removed (stopped first when
still running) once the run storage says its run has finished.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import click
import docker
import docker.errors

from coreexec.errors import CoreExecError, RunNotFoundError
from coreexec.instance import Instance
from coreexec.storage.base import RunStorage
from workers.docker.containers import MANAGED_LABEL, RUN_LABEL, STEP_LABEL
from workers.docker.launcher import DEFAULT_SOCKET


@dataclass(frozen=True)
class Swept:
    """One container the sweep removed (or would remove, in a dry run)."""

    name: str
    run_id: str
    step_key: str
    status: str
    why: str


def sweep(
    client: docker.DockerClient,
    storage: RunStorage,
    *,
    unknown_runs: bool = False,
    dry_run: bool = False,
) -> list[Swept]:
    """Remove the containers of finished runs (and of runs this storage does not know,
    with ``unknown_runs``); returns what was removed."""
    # The raw list: the SDK's list() inspects each container and fails on one removed
    # meanwhile (a supervisor cleaning up).
    found = client.api.containers(all=True, filters={"label": f"{MANAGED_LABEL}=1"})
    status_of: dict[str, str | None] = {}
    swept = []
    for summary in found:
        labels = summary.get("Labels") or {}
        run_id = labels.get(RUN_LABEL, "")
        if run_id not in status_of:
            try:
                run = storage.get_run(run_id)
                status_of[run_id] = run.status.value if run.status.is_finished else None
            except RunNotFoundError:
                status_of[run_id] = "unknown" if unknown_runs else None
        why = status_of[run_id]
        if why is None:
            continue
        if not dry_run:
            try:
                client.api.remove_container(summary["Id"], force=True, v=True)
            except docker.errors.NotFound:
                continue
        names = summary.get("Names") or [summary["Id"][:12]]
        swept.append(
            Swept(
                str(names[0]).lstrip("/"),
                run_id,
                labels.get(STEP_LABEL, ""),
                str(summary.get("State", "")),
                f"run {why.lower()}",
            )
        )
    return swept


@click.group()
def main() -> None:
    """Step containers launched by coreexec."""


@main.command("sweep")
@click.option("--docker-host", default=None, help="daemon socket (default DOCKER_HOST)")
@click.option("--unknown-runs", is_flag=True, help="also remove containers of runs not in storage")
@click.option("--dry-run", is_flag=True, help="list what would be removed, remove nothing")
def sweep_command(docker_host: str | None, unknown_runs: bool, dry_run: bool) -> None:
    """Remove containers of finished runs (labels coreexec.managed, coreexec.run_id),
    stopping the ones still running."""
    where = docker_host or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    try:
        client = docker.DockerClient(base_url=where)
        client.ping()
    except docker.errors.DockerException as exc:
        raise click.ClickException(f"cannot reach the Docker daemon at {where}: {exc}") from exc
    try:
        removed = sweep(
            client, Instance.from_env().storage, unknown_runs=unknown_runs, dry_run=dry_run
        )
    except CoreExecError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "would remove" if dry_run else "removed"
    for item in removed:
        click.echo(
            f"{verb} {item.name} (step {item.step_key} of run {item.run_id}, "
            f"{item.status}): {item.why}"
        )
    click.echo(f"{verb} {len(removed)} container(s)")


if __name__ == "__main__":
    main()
