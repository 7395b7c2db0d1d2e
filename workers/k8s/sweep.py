"""``coreexec-k8s sweep``: delete the Jobs (and orphaned pods) of finished runs, by label.

Supervisors delete the Jobs they followed (unless ``keep_jobs``) and the TTL removes the
rest an hour after they end; what a killed supervisor left running, or a pod orphaned
by someone deleting its Job with the API's default propagation, is found here by the
``app.kubernetes.io/managed-by=coreexec`` label and deleted once the run storage says
its run has finished.
"""

from __future__ import annotations

from dataclasses import dataclass

import click

from coreexec.errors import CoreExecError, RunNotFoundError
from coreexec.instance import Instance
from coreexec.storage.base import RunStorage
from workers.k8s.api import KubeApi, Obj
from workers.k8s.config import K8sConfig
from workers.k8s.manifest import RUN_ANNOTATION, STEP_KEY_ANNOTATION
from workers.k8s.pod_watch import POD_SELECTOR


@dataclass(frozen=True)
class Swept:
    """One Job or pod the sweep deleted (or would delete, in a dry run)."""

    kind: str
    name: str
    run_id: str
    step_key: str
    why: str


class _RunStates:
    def __init__(self, storage: RunStorage, unknown_runs: bool) -> None:
        self.storage = storage
        self.unknown_runs = unknown_runs
        self._known: dict[str, str | None] = {}

    def why(self, run_id: str) -> str | None:
        """Why the run's objects may go (``run success``), or None to keep them."""
        if run_id not in self._known:
            try:
                run = self.storage.get_run(run_id)
                self._known[run_id] = run.status.value if run.status.is_finished else None
            except RunNotFoundError:
                self._known[run_id] = "unknown" if self.unknown_runs else None
        state = self._known[run_id]
        return None if state is None else f"run {state.lower()}"


def _ids(obj: Obj) -> tuple[str, str]:
    annotations = obj["metadata"].get("annotations") or {}
    return annotations.get(RUN_ANNOTATION, ""), annotations.get(STEP_KEY_ANNOTATION, "")


def sweep(
    api: KubeApi, storage: RunStorage, *, unknown_runs: bool = False, dry_run: bool = False
) -> list[Swept]:
    """Delete Jobs of finished runs and orphaned step pods; returns what was deleted."""
    namespace = api.config.namespace
    states = _RunStates(storage, unknown_runs)
    swept = []
    for job in api.list_jobs(namespace, POD_SELECTOR):
        run_id, step_key = _ids(job)
        why = states.why(run_id)
        if why is None:
            continue
        name = job["metadata"]["name"]
        if dry_run or api.delete_job(namespace, name, foreground=False):
            swept.append(Swept("Job", name, run_id, step_key, why))
    pods, _version = api.list_pods(namespace, POD_SELECTOR)
    for pod in pods:
        if pod["metadata"].get("ownerReferences"):
            continue  # the garbage collector deletes it with its Job
        run_id, step_key = _ids(pod)
        why = states.why(run_id)
        if why is None:
            continue
        name = pod["metadata"]["name"]
        if dry_run or api.delete_pod(namespace, name):
            swept.append(Swept("Pod", name, run_id, step_key, f"{why}, orphaned"))
    return swept


@click.group()
def main() -> None:
    """Kubernetes Jobs launched by coreexec."""


@main.command("sweep")
@click.option("--namespace", default="default", show_default=True)
@click.option("--kubeconfig", default=None, help="kubeconfig file (default $KUBECONFIG)")
@click.option("--context", default=None, help="kubeconfig context (default: current)")
@click.option("--in-cluster", is_flag=True, help="use the pod's service account")
@click.option("--unknown-runs", is_flag=True, help="also delete Jobs of runs not in storage")
@click.option("--dry-run", is_flag=True, help="list what would be deleted, delete nothing")
def sweep_command(
    namespace: str,
    kubeconfig: str | None,
    context: str | None,
    in_cluster: bool,
    unknown_runs: bool,
    dry_run: bool,
) -> None:
    """Delete Jobs and orphaned pods of finished runs (label
    app.kubernetes.io/managed-by=coreexec; the run from annotation coreexec.io/run-id)."""
    config = K8sConfig(
        namespace=namespace,
        kubeconfig_file=kubeconfig,
        context=context,
        load_incluster_config=True if in_cluster else None,
    )
    try:
        removed = sweep(
            KubeApi(config), Instance.from_env().storage, unknown_runs=unknown_runs, dry_run=dry_run
        )
    except CoreExecError as exc:
        raise click.ClickException(str(exc)) from exc
    verb = "would delete" if dry_run else "deleted"
    for item in removed:
        click.echo(
            f"{verb} {item.kind} {item.name} (step {item.step_key} of run "
            f"{item.run_id}): {item.why}"
        )
    click.echo(f"{verb} {len(removed)} object(s)")
